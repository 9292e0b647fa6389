# GeoEdge on Hetzner Cloud: N regions of edge nodes and 2+ authoritative GSLB DNS nodes.
#
# Order of creation, without cycles:
#   1. primary IPs of the DNS nodes (the glue addresses, stable across rebuilds);
#   2. the edges, whose admin port admits those DNS addresses;
#   3. the gslb config, rendered from the list of edges and the DNS addresses;
#   4. the DNS nodes, on their primary IPs, with that config.
# Adding an edge changes the rendered config; terraform_data.push in each DNS node checks and
# installs it and reloads gslb (SIGHUP) without replacing the server.

provider "hcloud" {
  token = var.hcloud_token
}

locals {
  zone   = trimsuffix(lower(var.zone), ".")
  origin = "${local.zone}."
  labels = merge(var.labels, { app = "geoedge", zone = replace(local.zone, ".", "-") })

  # City coordinates of the Hetzner Cloud locations: where the GSLB places an edge unless the
  # region says otherwise.
  hetzner_locations = {
    fsn1 = { city = "Falkenstein", latitude = 50.4779, longitude = 12.3713 }
    nbg1 = { city = "Nuremberg", latitude = 49.4521, longitude = 11.0767 }
    hel1 = { city = "Helsinki", latitude = 60.1699, longitude = 24.9384 }
    ash  = { city = "Ashburn, VA", latitude = 39.0438, longitude = -77.4874 }
    hil  = { city = "Hillsboro, OR", latitude = 45.5229, longitude = -122.9898 }
    sin  = { city = "Singapore", latitude = 1.3521, longitude = 103.8198 }
  }

  edges = {
    for e in flatten([
      for region, r in var.edge_regions : [
        for i in range(r.count) : {
          key         = "${region}-${i + 1}"
          location    = r.location
          server_type = coalesce(r.server_type, var.edge_server_type)
          latitude    = coalesce(r.latitude, try(local.hetzner_locations[r.location].latitude, null))
          longitude   = coalesce(r.longitude, try(local.hetzner_locations[r.location].longitude, null))
          weight      = r.weight
          capacity    = r.capacity
        }
      ]
    ]) : e.key => e
  }

  dns_nodes = { for i, n in var.dns_nodes : "ns${i + 1}" => n }

  dns_addresses = {
    for k, n in local.dns_nodes : k => {
      label = k
      fqdn  = "${k}.${local.origin}"
      ipv4  = hcloud_primary_ip.dns_ipv4[k].ip_address
      # A server on an IPv6 primary IP uses the first address of its /64.
      ipv6 = cidrhost(hcloud_primary_ip.dns_ipv6[k].ip_network, 1)
    }
  }

  pool_fqdn  = var.pool_name == "@" ? local.origin : "${var.pool_name}.${local.origin}"
  edge_hosts = length(var.edge_hosts) > 0 ? var.edge_hosts : [trimsuffix(local.pool_fqdn, ".")]
  hostmaster = var.hostmaster != null ? "${trimsuffix(var.hostmaster, ".")}." : "hostmaster.${local.origin}"

  # NS records and their glue come first; the operator's own records follow.
  zone_records = concat(
    [for a in values(local.dns_addresses) : "@ NS ${a.label}"],
    flatten([for a in values(local.dns_addresses) : ["${a.label} A ${a.ipv4}", "${a.label} AAAA ${a.ipv6}"]]),
    var.extra_records,
  )

  # status_url: gslb reads each edge's health and load there (the edge firewall admits the
  # DNS nodes on the admin port).
  gslb_edges = [
    for k, e in local.edges : {
      name       = k
      ipv4       = module.edge[k].ipv4_address
      ipv6       = module.edge[k].ipv6_address
      latitude   = format("%.4f", e.latitude)
      longitude  = format("%.4f", e.longitude)
      weight     = format("%.6f", e.weight)
      capacity   = format("%.1f", e.capacity)
      status_url = module.edge[k].status_url
    }
  ]

  geo_database = var.maxmind_account_id != "" ? "/var/lib/GeoIP/GeoLite2-City.mmdb" : ""
  # Where each DNS node keeps gslb_api_token (the config names the file, never the token).
  gslb_token_path = "/etc/geoedge/api.token"
  # ... and edge_admin_token, which its fleet purges send to the edges (purge.token_file).
  gslb_purge_token_path = "/etc/geoedge/edge-admin.token"

  gslb_config = {
    for k, a in local.dns_addresses : k => templatefile("${path.module}/templates/gslb.toml.tftpl", {
      node_name        = a.fqdn
      listen           = ["${a.ipv4}:53", "[${a.ipv6}]:53"]
      api_listen       = "${a.ipv4}:${var.gslb_api_port}"
      api_token_file   = var.gslb_api_token != "" ? local.gslb_token_path : ""
      purge_token_file = var.edge_admin_token != "" ? local.gslb_purge_token_path : ""
      workers          = var.gslb_workers
      geo_database     = local.geo_database
      origin           = local.origin
      soa_mname        = local.dns_addresses["ns1"].fqdn
      soa_rname        = local.hostmaster
      soa_serial       = var.soa_serial
      records          = local.zone_records
      edges            = local.gslb_edges
      edge_names       = [for e in local.gslb_edges : e.name]
      pool_fqdn        = local.pool_fqdn
      pool_policy      = var.pool_policy
      pool_answers     = var.pool_answers
      pool_ttl         = var.pool_ttl
    })
  }
}

resource "hcloud_primary_ip" "dns_ipv4" {
  for_each = local.dns_nodes

  name          = "${var.name_prefix}-${each.key}-ipv4"
  type          = "ipv4"
  location      = each.value.location
  assignee_type = "server"
  # The glue address at the registrar must outlive any one server.
  auto_delete = false
  labels      = merge(local.labels, { role = "geoedge-gslb" })
}

resource "hcloud_primary_ip" "dns_ipv6" {
  for_each = local.dns_nodes

  name          = "${var.name_prefix}-${each.key}-ipv6"
  type          = "ipv6"
  location      = each.value.location
  assignee_type = "server"
  auto_delete   = false
  labels        = merge(local.labels, { role = "geoedge-gslb" })
}

module "edge" {
  source   = "./modules/edge_node"
  for_each = local.edges

  name                 = "${var.name_prefix}-edge-${each.key}"
  location             = each.value.location
  server_type          = each.value.server_type
  image                = var.image
  ssh_keys             = var.ssh_keys
  labels               = local.labels
  geoedge_package      = var.geoedge_package
  admin_cidrs          = var.admin_cidrs
  health_checker_cidrs = flatten([for a in values(local.dns_addresses) : ["${a.ipv4}/32", "${a.ipv6}/128"]])
  hosts                = local.edge_hosts
  origins              = var.origins
  workers              = var.edge_workers
  cache_size           = var.edge_cache_size
  capacity_rps         = each.value.capacity
  admin_port           = var.edge_admin_port
  tls_certificate_pem  = var.tls_certificate_pem
  tls_private_key_pem  = var.tls_private_key_pem
  admin_token          = var.edge_admin_token
  push_config          = var.push_config
  ssh_private_key_file = var.ssh_private_key_file
}

module "dns" {
  source   = "./modules/gslb_node"
  for_each = local.dns_nodes

  name                 = "${var.name_prefix}-${each.key}"
  location             = each.value.location
  server_type          = coalesce(each.value.server_type, var.dns_server_type)
  image                = var.image
  ssh_keys             = var.ssh_keys
  labels               = local.labels
  ipv4_primary_ip_id   = hcloud_primary_ip.dns_ipv4[each.key].id
  ipv6_primary_ip_id   = hcloud_primary_ip.dns_ipv6[each.key].id
  ipv4_address         = local.dns_addresses[each.key].ipv4
  ipv6_address         = local.dns_addresses[each.key].ipv6
  config_toml          = local.gslb_config[each.key]
  api_token            = var.gslb_api_token
  api_token_path       = local.gslb_token_path
  purge_token          = var.edge_admin_token
  purge_token_path     = local.gslb_purge_token_path
  geoedge_package      = var.geoedge_package
  admin_cidrs          = var.admin_cidrs
  api_port             = var.gslb_api_port
  maxmind_account_id   = var.maxmind_account_id
  maxmind_license_key  = var.maxmind_license_key
  push_config          = var.push_config
  ssh_private_key_file = var.ssh_private_key_file
}
