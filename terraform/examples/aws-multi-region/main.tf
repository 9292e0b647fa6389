# GeoEdge on AWS in three regions, one provider alias each: DNS nodes ns1 (eu) and ns2 (us) on
# glue Elastic IPs kept by prevent_destroy, edges in eu, us and ap, from modules/aws-node
# (which renders every file with modules/node-config and keeps the config and secrets in SSM
# Parameter Store, read at boot by the instance role).
#
# Order of creation, without cycles: the glue Elastic IPs (and the CA of the edges' admin
# certificates); the edges (their admin port admits the glue addresses; each gets an admin
# certificate for its own Elastic IP); the gslb config (edges + glue); the DNS nodes. Both DNS
# nodes get the same config (they listen on 0.0.0.0: EC2 translates the Elastic IP to the
# private address) but for [[peers]]: each names the other (by its glue address) for the
# health quorum.

provider "aws" {
  alias  = "eu"
  region = var.regions.eu.region
}

provider "aws" {
  alias  = "us"
  region = var.regions.us.region
}

provider "aws" {
  alias  = "ap"
  region = var.regions.ap.region
}

# --- network: each region's default VPC, one of its default subnets -------------------------

data "aws_vpc" "eu" {
  provider = aws.eu
  default  = true
}

data "aws_vpc" "us" {
  provider = aws.us
  default  = true
}

data "aws_vpc" "ap" {
  provider = aws.ap
  default  = true
}

data "aws_subnets" "eu" {
  provider = aws.eu

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.eu.id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

data "aws_subnets" "us" {
  provider = aws.us

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.us.id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

data "aws_subnets" "ap" {
  provider = aws.ap

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.ap.id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

# --- the glue addresses -------------------------------------------------------------------

resource "aws_eip" "ns1" {
  #checkov:skip=CKV2_AWS_19:Associated with module.ns1's instance by aws_eip_association inside modules/aws-node.
  provider = aws.eu
  domain   = "vpc"
  tags     = merge(var.tags, { Name = "${var.name_prefix}-ns1-glue" })

  lifecycle {
    # The registrar's glue record names this address: losing it takes ns1 off the Internet
    # until the registrar is updated. Remove this line to really delete it.
    prevent_destroy = true
  }
}

resource "aws_eip" "ns2" {
  #checkov:skip=CKV2_AWS_19:Associated with module.ns2's instance by aws_eip_association inside modules/aws-node.
  provider = aws.us
  domain   = "vpc"
  tags     = merge(var.tags, { Name = "${var.name_prefix}-ns2-glue" })

  lifecycle {
    prevent_destroy = true
  }
}

locals {
  zone       = trimsuffix(lower(var.zone), ".")
  origin     = "${local.zone}."
  pool_fqdn  = var.pool.name == "@" ? local.origin : "${var.pool.name}.${local.origin}"
  edge_hosts = length(var.edge.hosts) > 0 ? var.edge.hosts : [trimsuffix(local.pool_fqdn, ".")]
  hostmaster = var.hostmaster != null ? "${trimsuffix(var.hostmaster, ".")}." : "hostmaster.${local.origin}"
  tags       = merge(var.tags, { app = "geoedge", zone = local.zone })

  glue      = { ns1 = aws_eip.ns1.public_ip, ns2 = aws_eip.ns2.public_ip }
  dns_cidrs = [for ip in values(local.glue) : "${ip}/32"]

  # The health quorum: each DNS node reads the others' /v1/edges (this deployment's over the
  # glue addresses, known before any instance), and the operator's dns_peers.
  peers         = { for k, ip in local.glue : k => { name = k, api = "http://${ip}:${var.gslb_api_port}" } }
  peer_hosts    = [for p in var.dns_peers : regex("^https?://\\[?([0-9A-Fa-f:.]+?)\\]?:[0-9]+$", p.api)[0]]
  peer_cidrs    = [for h in local.peer_hosts : can(cidrnetmask("${h}/32")) ? "${h}/32" : "${h}/128"]
  peer_ports    = [for p in var.dns_peers : tonumber(regex(":([0-9]+)$", p.api)[0])]
  dns_egress    = distinct(concat([80, 443, var.edge.admin_port, var.gslb_api_port], local.peer_ports))
  admin_ca      = var.edge_admin_https ? { certificate_pem = tls_self_signed_cert.admin_ca[0].cert_pem, private_key_pem = tls_private_key.admin_ca[0].private_key_pem } : null
  admin_ca_pems = var.edge_admin_https ? [tls_self_signed_cert.admin_ca[0].cert_pem] : []

  # Origins' ports, which edges may connect out to (plus 80 and 443 for packages and SSM).
  origin_ports = [for o in var.origins : tonumber(try(regex(":([0-9]+)$", o.url)[0], startswith(o.url, "https:") ? "443" : "80"))]

  edge_config = {
    listen        = ["0.0.0.0:80"]
    https_listen  = ["0.0.0.0:443"]
    redirect_http = true
    workers       = var.edge.workers
    hosts         = local.edge_hosts
    origins       = var.origins
    algorithm     = var.edge.algorithm
    probe_path    = var.edge.probe_path
    cache_size    = var.edge.cache_size
    memory_cache  = var.edge.memory_cache
    admin_listen  = "0.0.0.0:${var.edge.admin_port}"
    admin_private = var.edge.admin_private
  }

  edges = merge(
    { for i, m in module.edge_eu : "eu-${i + 1}" => { node = m, region = "eu", r = var.regions.eu } },
    { for i, m in module.edge_us : "us-${i + 1}" => { node = m, region = "us", r = var.regions.us } },
    { for i, m in module.edge_ap : "ap-${i + 1}" => { node = m, region = "ap", r = var.regions.ap } },
  )

  # One config for both DNS nodes (peers aside): NS records and glue first, the operator's
  # records after.
  gslb_config = {
    listen     = ["0.0.0.0:53"]
    workers    = var.gslb_workers
    api_listen = "0.0.0.0:${var.gslb_api_port}"
    health     = var.health
    zone = {
      origin     = local.origin
      ttl        = var.zone_ttl
      soa_mname  = "ns1.${local.origin}"
      soa_rname  = local.hostmaster
      soa_serial = var.soa_serial
      records = concat(
        [for k in keys(local.glue) : "@ NS ${k}"],
        [for k, ip in local.glue : "${k} A ${ip}"],
        var.extra_records,
      )
    }
    edges = [
      for k, e in local.edges : {
        name       = k
        ipv4       = e.node.public_ip
        latitude   = e.r.latitude
        longitude  = e.r.longitude
        capacity   = e.r.capacity
        status_url = e.node.status_url
      }
    ]
    pools = [{
      name           = local.pool_fqdn
      edges          = keys(local.edges)
      policy         = var.pool.policy
      answers        = var.pool.answers
      ttl            = var.pool.ttl
      load_threshold = var.pool.load_threshold
      hysteresis     = var.pool.hysteresis
      fallback       = [for k, e in local.edges : k if contains(var.pool.fallback_regions, e.region)]
    }]
  }
}

# --- the private CA of the edges' admin certificates ------------------------------------------
# Each edge's admin listener gets a certificate for its Elastic IP from this CA (modules/
# aws-node), and the DNS nodes verify the edges' status endpoints with its certificate
# (health_ca_pems). Its key is in the state only (keep the state in an encrypted backend).

resource "tls_private_key" "admin_ca" {
  count       = var.edge_admin_https ? 1 : 0
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "admin_ca" {
  count                 = var.edge_admin_https ? 1 : 0
  private_key_pem       = tls_private_key.admin_ca[0].private_key_pem
  is_ca_certificate     = true
  validity_period_hours = 10 * 365 * 24
  allowed_uses          = ["cert_signing", "crl_signing"]

  subject {
    common_name  = "${var.name_prefix} edge admin CA"
    organization = "GeoEdge"
  }
}

# --- edges ---------------------------------------------------------------------------------

module "edge_eu" {
  source    = "../../modules/aws-node"
  count     = var.regions.eu.edges
  providers = { aws = aws.eu }

  role                 = "edge"
  name                 = "${var.name_prefix}-edge-eu-${count.index + 1}"
  subnet_id            = data.aws_subnets.eu.ids[count.index % length(data.aws_subnets.eu.ids)]
  instance_type        = var.regions.eu.instance_type
  key_name             = var.key_name
  tags                 = local.tags
  install              = var.install
  token                = var.edge_admin_token
  tls                  = var.tls
  admin_ca             = local.admin_ca
  admin_cidrs          = var.admin_cidrs
  health_checker_cidrs = concat(local.dns_cidrs, local.peer_cidrs)
  egress_ports         = distinct(concat([80, 443], local.origin_ports))
  edge                 = merge(local.edge_config, { capacity_rps = var.regions.eu.capacity })
}

module "edge_us" {
  source    = "../../modules/aws-node"
  count     = var.regions.us.edges
  providers = { aws = aws.us }

  role                 = "edge"
  name                 = "${var.name_prefix}-edge-us-${count.index + 1}"
  subnet_id            = data.aws_subnets.us.ids[count.index % length(data.aws_subnets.us.ids)]
  instance_type        = var.regions.us.instance_type
  key_name             = var.key_name
  tags                 = local.tags
  install              = var.install
  token                = var.edge_admin_token
  tls                  = var.tls
  admin_ca             = local.admin_ca
  admin_cidrs          = var.admin_cidrs
  health_checker_cidrs = concat(local.dns_cidrs, local.peer_cidrs)
  egress_ports         = distinct(concat([80, 443], local.origin_ports))
  edge                 = merge(local.edge_config, { capacity_rps = var.regions.us.capacity })
}

module "edge_ap" {
  source    = "../../modules/aws-node"
  count     = var.regions.ap.edges
  providers = { aws = aws.ap }

  role                 = "edge"
  name                 = "${var.name_prefix}-edge-ap-${count.index + 1}"
  subnet_id            = data.aws_subnets.ap.ids[count.index % length(data.aws_subnets.ap.ids)]
  instance_type        = var.regions.ap.instance_type
  key_name             = var.key_name
  tags                 = local.tags
  install              = var.install
  token                = var.edge_admin_token
  tls                  = var.tls
  admin_ca             = local.admin_ca
  admin_cidrs          = var.admin_cidrs
  health_checker_cidrs = concat(local.dns_cidrs, local.peer_cidrs)
  egress_ports         = distinct(concat([80, 443], local.origin_ports))
  edge                 = merge(local.edge_config, { capacity_rps = var.regions.ap.capacity })
}

# --- DNS nodes -------------------------------------------------------------------------------

module "ns1" {
  source    = "../../modules/aws-node"
  providers = { aws = aws.eu }

  role             = "gslb"
  name             = "${var.name_prefix}-ns1"
  glue             = { allocation_id = aws_eip.ns1.id, public_ip = aws_eip.ns1.public_ip }
  subnet_id        = data.aws_subnets.eu.ids[0]
  instance_type    = var.dns_instance_type
  key_name         = var.key_name
  tags             = local.tags
  install          = var.install
  token            = var.gslb_api_token
  edge_admin_token = var.edge_admin_token
  peer_token       = var.gslb_api_token
  health_ca_pems   = local.admin_ca_pems
  dnssec_key_pem   = var.dnssec_key_pem
  geoip            = var.geoip
  admin_cidrs      = var.admin_cidrs
  peer_cidrs       = concat(["${aws_eip.ns2.public_ip}/32"], local.peer_cidrs)
  egress_ports     = local.dns_egress
  gslb             = merge(local.gslb_config, { peers = concat([local.peers["ns2"]], var.dns_peers) })
}

module "ns2" {
  source    = "../../modules/aws-node"
  providers = { aws = aws.us }

  role             = "gslb"
  name             = "${var.name_prefix}-ns2"
  glue             = { allocation_id = aws_eip.ns2.id, public_ip = aws_eip.ns2.public_ip }
  subnet_id        = data.aws_subnets.us.ids[0]
  instance_type    = var.dns_instance_type
  key_name         = var.key_name
  tags             = local.tags
  install          = var.install
  token            = var.gslb_api_token
  edge_admin_token = var.edge_admin_token
  peer_token       = var.gslb_api_token
  health_ca_pems   = local.admin_ca_pems
  dnssec_key_pem   = var.dnssec_key_pem
  geoip            = var.geoip
  admin_cidrs      = var.admin_cidrs
  peer_cidrs       = concat(["${aws_eip.ns1.public_ip}/32"], local.peer_cidrs)
  egress_ports     = local.dns_egress
  gslb             = merge(local.gslb_config, { peers = concat([local.peers["ns1"]], var.dns_peers) })
}

# --- DNSSEC: the DS for the registrar, computed where Terraform runs ------------------------

module "dnssec" {
  source = "../../modules/dnssec-ds"
  count  = nonsensitive(var.dnssec_key_pem != "") ? 1 : 0

  zone    = local.zone
  key_pem = var.dnssec_key_pem
}
