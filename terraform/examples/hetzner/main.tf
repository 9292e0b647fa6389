# GeoEdge on Hetzner Cloud: N regions of edge nodes and 2+ authoritative DNS nodes, from
# modules/hcloud-node (which renders every file with modules/node-config).
#
# Order of creation, without cycles:
#   1. the primary IPs of the DNS nodes (the glue addresses, delete-protected) and of the
#      edges (so that an edge's admin certificate can name its address before the server
#      exists), and the private CA of those certificates;
#   2. the edges, whose admin port admits those DNS addresses;
#   3. the gslb config, from the list of edges and the glue addresses (each DNS node's peers,
#      for the health quorum, are the others' glue addresses);
#   4. the DNS nodes, on their primary IPs, with that config.
# Adding an edge changes the config; each DNS node's push (modules/hcloud-node) checks it,
# installs it and reloads gslb without replacing the server.

provider "hcloud" {
  token = var.hcloud_token
}

locals {
  zone       = trimsuffix(lower(var.zone), ".")
  origin     = "${local.zone}."
  labels     = merge(var.labels, { app = "geoedge", zone = replace(local.zone, ".", "-") })
  pool_fqdn  = var.pool.name == "@" ? local.origin : "${var.pool.name}.${local.origin}"
  edge_hosts = length(var.edge.hosts) > 0 ? var.edge.hosts : [trimsuffix(local.pool_fqdn, ".")]
  hostmaster = var.hostmaster != null ? "${trimsuffix(var.hostmaster, ".")}." : "hostmaster.${local.origin}"

  # City coordinates of the Hetzner Cloud locations: where the GSLB places an edge unless the
  # region says otherwise.
  locations = {
    fsn1 = { latitude = 50.4779, longitude = 12.3713 }
    nbg1 = { latitude = 49.4521, longitude = 11.0767 }
    hel1 = { latitude = 60.1699, longitude = 24.9384 }
    ash  = { latitude = 39.0438, longitude = -77.4874 }
    hil  = { latitude = 45.5229, longitude = -122.9898 }
    sin  = { latitude = 1.3521, longitude = 103.8198 }
  }

  edges = {
    for e in flatten([
      for region, r in var.edge_regions : [
        for i in range(r.count) : {
          key         = "${region}-${i + 1}"
          region      = region
          location    = r.location
          server_type = r.server_type
          latitude    = coalesce(r.latitude, try(local.locations[r.location].latitude, null))
          longitude   = coalesce(r.longitude, try(local.locations[r.location].longitude, null))
          weight      = r.weight
          capacity    = r.capacity
        }
      ]
    ]) : e.key => e
  }

  dns_nodes = { for i, n in var.dns_nodes : "ns${i + 1}" => n }
  glue = {
    for k in keys(local.dns_nodes) : k => {
      ipv4 = hcloud_primary_ip.ipv4[k].ip_address
      # A server on an IPv6 primary IP answers on the first address of its /64.
      ipv6 = cidrhost(hcloud_primary_ip.ipv6[k].ip_network, 1)
    }
  }
  dns_cidrs = flatten([for g in values(local.glue) : ["${g.ipv4}/32", "${g.ipv6}/128"]])

  admin_ca      = var.edge_admin_https ? { certificate_pem = tls_self_signed_cert.admin_ca[0].cert_pem, private_key_pem = tls_private_key.admin_ca[0].private_key_pem } : null
  admin_ca_pems = var.edge_admin_https ? [tls_self_signed_cert.admin_ca[0].cert_pem] : []

  # The health quorum: each DNS node reads the others' /v1/edges (on their glue IPv4, known
  # before any server), and the operator's dns_peers.
  peer_hosts = [for p in var.dns_peers : regex("^https?://\\[?([0-9A-Fa-f:.]+?)\\]?:[0-9]+$", p.api)[0]]
  peer_cidrs = [for h in local.peer_hosts : can(cidrnetmask("${h}/32")) ? "${h}/32" : "${h}/128"]
  peers = {
    for k in keys(local.glue) : k => concat(
      [for o, g in local.glue : { name = o, api = "http://${g.ipv4}:${var.gslb_api_port}" } if o != k],
      var.dns_peers,
    )
  }

  # NS records and their glue first, the operator's own records after.
  records = concat(
    [for k in keys(local.glue) : "@ NS ${k}"],
    flatten([for k, g in local.glue : ["${k} A ${g.ipv4}", "${k} AAAA ${g.ipv6}"]]),
    var.extra_records,
  )

  gslb = {
    for k, g in local.glue : k => {
      listen     = ["${g.ipv4}:53", "[${g.ipv6}]:53"]
      workers    = var.gslb_workers
      api_listen = "${g.ipv4}:${var.gslb_api_port}"
      health     = var.health
      peers      = local.peers[k]
      zone = {
        origin     = local.origin
        ttl        = var.zone_ttl
        soa_mname  = "ns1.${local.origin}"
        soa_rname  = local.hostmaster
        soa_serial = var.soa_serial
        records    = local.records
      }
      edges = [
        for ek, e in local.edges : {
          name       = ek
          ipv4       = module.edge[ek].ipv4_address
          ipv6       = module.edge[ek].ipv6_address
          latitude   = e.latitude
          longitude  = e.longitude
          weight     = e.weight
          capacity   = e.capacity
          status_url = module.edge[ek].status_url
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
        fallback       = [for ek, e in local.edges : ek if contains(var.pool.fallback_regions, e.region)]
      }]
    }
  }
}

# --- the private CA of the edges' admin certificates ------------------------------------------
# Each edge's admin listener gets a certificate for its primary IPv4 from this CA (modules/
# hcloud-node, modules/admin-cert), and the DNS nodes verify the edges' status endpoints with
# its certificate (health_ca_pems). Its key is in the state only (keep it encrypted).

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

# An edge's addresses: known before its server, kept across rebuilds (the DNS answers do not
# change), released with the edge (no delete protection: edges come and go).
resource "hcloud_primary_ip" "edge_ipv4" {
  for_each = local.edges

  name              = "${var.name_prefix}-edge-${each.key}-ipv4"
  type              = "ipv4"
  location          = each.value.location
  assignee_type     = "server"
  auto_delete       = false
  delete_protection = false
  labels            = merge(local.labels, { role = "geoedge-edge" })
}

resource "hcloud_primary_ip" "edge_ipv6" {
  for_each = local.edges

  name              = "${var.name_prefix}-edge-${each.key}-ipv6"
  type              = "ipv6"
  location          = each.value.location
  assignee_type     = "server"
  auto_delete       = false
  delete_protection = false
  labels            = merge(local.labels, { role = "geoedge-edge" })
}

resource "hcloud_primary_ip" "ipv4" {
  for_each = local.dns_nodes

  name          = "${var.name_prefix}-${each.key}-ipv4"
  type          = "ipv4"
  location      = each.value.location
  assignee_type = "server"
  # The glue address at the registrar must outlive any one server.
  auto_delete       = false
  delete_protection = true
  labels            = merge(local.labels, { role = "geoedge-gslb" })

  lifecycle {
    prevent_destroy = true
  }
}

resource "hcloud_primary_ip" "ipv6" {
  for_each = local.dns_nodes

  name              = "${var.name_prefix}-${each.key}-ipv6"
  type              = "ipv6"
  location          = each.value.location
  assignee_type     = "server"
  auto_delete       = false
  delete_protection = true
  labels            = merge(local.labels, { role = "geoedge-gslb" })

  lifecycle {
    prevent_destroy = true
  }
}

module "edge" {
  source   = "../../modules/hcloud-node"
  for_each = local.edges

  role                 = "edge"
  name                 = "${var.name_prefix}-edge-${each.key}"
  location             = each.value.location
  server_type          = each.value.server_type
  image                = var.image
  ssh_keys             = var.ssh_keys
  labels               = local.labels
  install              = var.install
  token                = var.edge_admin_token
  tls                  = var.tls
  admin_ca             = local.admin_ca
  glue                 = { ipv4_id = hcloud_primary_ip.edge_ipv4[each.key].id, ipv6_id = hcloud_primary_ip.edge_ipv6[each.key].id, ipv4_address = hcloud_primary_ip.edge_ipv4[each.key].ip_address }
  admin_cidrs          = var.admin_cidrs
  health_checker_cidrs = concat(local.dns_cidrs, local.peer_cidrs)
  push_config          = var.push_config
  ssh_private_key_file = var.ssh_private_key_file

  edge = {
    listen        = ["0.0.0.0:80", "[::]:80"]
    https_listen  = ["0.0.0.0:443", "[::]:443"]
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
    capacity_rps  = each.value.capacity
  }
}

module "dns" {
  source   = "../../modules/hcloud-node"
  for_each = local.dns_nodes

  role                 = "gslb"
  name                 = "${var.name_prefix}-${each.key}"
  location             = each.value.location
  server_type          = each.value.server_type
  image                = var.image
  ssh_keys             = var.ssh_keys
  labels               = local.labels
  install              = var.install
  token                = var.gslb_api_token
  edge_admin_token     = var.edge_admin_token
  peer_token           = var.gslb_api_token
  health_ca_pems       = local.admin_ca_pems
  dnssec_key_pem       = var.dnssec_key_pem
  geoip                = var.geoip
  glue                 = { ipv4_id = hcloud_primary_ip.ipv4[each.key].id, ipv6_id = hcloud_primary_ip.ipv6[each.key].id }
  admin_cidrs          = var.admin_cidrs
  peer_cidrs           = concat([for c in local.dns_cidrs : c if !contains(["${local.glue[each.key].ipv4}/32", "${local.glue[each.key].ipv6}/128"], c)], local.peer_cidrs)
  push_config          = var.push_config
  ssh_private_key_file = var.ssh_private_key_file
  gslb                 = local.gslb[each.key]
}

# --- DNSSEC: the DS for the registrar, computed where Terraform runs ------------------------

module "dnssec" {
  source = "../../modules/dnssec-ds"
  count  = nonsensitive(var.dnssec_key_pem != "") ? 1 : 0

  zone    = local.zone
  key_pem = var.dnssec_key_pem
}
