# The provider-neutral part of a GeoEdge node: its config (gslb.toml or edge.toml), the
# systemd units and logrotate file from packaging/ (one source of truth with the packaged
# services), a pinned install script, and the cloud-init document that puts them on a
# Debian 12 machine. No resources: the node modules (aws-*, hcloud-*) create the machines and,
# on AWS, the SSM parameters this module names.

locals {
  is_gslb     = var.role == "gslb"
  service     = "geoedge-${var.role}.service"
  config_path = "/etc/geoedge/${var.role}.toml"
  packaging   = "${path.module}/../../../packaging"

  has_token      = nonsensitive(var.token != "")
  has_tls        = nonsensitive(var.tls != null)
  has_admin_tls  = nonsensitive(var.admin_tls != null)
  has_edge_token = nonsensitive(var.edge_admin_token != "")
  has_peer_token = nonsensitive(var.peer_token != "")
  has_health_ca  = length(var.health_ca_pems) > 0
  has_dnssec     = nonsensitive(var.dnssec_key_pem != "")
  geoipupdate    = nonsensitive(var.geoip != null)

  token_path  = local.is_gslb ? "/etc/geoedge/api.token" : "/etc/geoedge/admin.token"
  tls_cert    = "/etc/geoedge/tls/cert.pem"
  tls_key     = "/etc/geoedge/tls/key.pem"
  admin_cert  = "/etc/geoedge/tls/admin-cert.pem"
  admin_key   = "/etc/geoedge/tls/admin-key.pem"
  health_ca   = "/etc/geoedge/tls/health-ca.pem"
  edge_token  = "/etc/geoedge/edge-admin.token"
  peer_token  = "/etc/geoedge/peer.token"
  dnssec_key  = "/etc/geoedge/keys/zone.pem"
  geo_db      = "/var/lib/GeoIP/GeoLite2-City.mmdb"
  wheel_file  = "/var/tmp/${basename(var.install.wheel_url)}"
  use_wheel   = var.install.wheel_url != ""
  install_cmd = local.use_wheel ? "/opt/geoedge/bin/pip install --quiet ${local.wheel_file}" : "/opt/geoedge/bin/pip install --quiet --require-hashes --requirement /etc/geoedge/requirements.txt"

  gslb_config = one([
    for g in tolist([var.gslb]) : templatefile("${path.module}/templates/gslb.toml.tftpl", {
      name            = var.name
      listen          = g.listen
      workers         = g.workers
      api_listen      = g.api_listen
      token_file      = local.has_token ? local.token_path : ""
      health          = g.health
      ca_file         = local.has_health_ca ? local.health_ca : ""
      purge           = g.purge
      edge_token_file = local.has_edge_token ? local.edge_token : ""
      peers           = g.peers
      peer_token_file = local.has_peer_token ? local.peer_token : ""
      geo_database    = local.geoipupdate ? local.geo_db : ""
      zone            = g.zone
      dnssec_key_file = local.has_dnssec ? local.dnssec_key : ""
      edges           = g.edges
      # TOML: a list of edge names, or "all" when the pool names no fallback.
      pools = [for p in g.pools : merge(p, { fallback = length(p.fallback) > 0 ? jsonencode(p.fallback) : jsonencode("all") })]
    }) if g != null
  ])

  edge_config = one([
    for e in tolist([var.edge]) : templatefile("${path.module}/templates/edge.toml.tftpl", {
      name          = var.name
      listen        = e.listen
      https_listen  = e.https_listen
      tls_enabled   = local.has_tls
      redirect_http = e.redirect_http
      tls_cert_file = local.tls_cert
      tls_key_file  = local.tls_key
      workers       = e.workers
      hosts         = e.hosts
      algorithm     = e.algorithm
      origins       = e.origins
      probe_path    = e.probe_path
      cache_size    = e.cache_size
      memory_cache  = e.memory_cache
      admin_listen  = e.admin_listen
      admin_tls     = local.has_admin_tls
      admin_cert    = local.admin_cert
      admin_key     = local.admin_key
      admin_private = e.admin_private
      capacity_rps  = e.capacity_rps
      # The token itself is never in the config, which is world-readable.
      token_file = local.has_token ? local.token_path : ""
      access_log = "/var/log/geoedge/access.log"
    }) if e != null
  ])

  config = local.is_gslb ? local.gslb_config : local.edge_config

  # What the node reads at start: from SSM Parameter Store at every start and reload (AWS),
  # or written once by cloud-init (user data). Keys name the parameters (PREFIX/KEY). The
  # metadata stays apart from the (sensitive) contents so it can drive for_each.
  meta = merge(
    { config = { path = local.config_path, mode = "0644" } },
    local.has_token ? { token = { path = local.token_path, mode = "0640" } } : {},
    local.has_tls ? {
      tls-cert = { path = local.tls_cert, mode = "0644" }
      tls-key  = { path = local.tls_key, mode = "0640" }
    } : {},
    local.has_admin_tls ? {
      admin-tls-cert = { path = local.admin_cert, mode = "0644" }
      admin-tls-key  = { path = local.admin_key, mode = "0640" }
    } : {},
    local.has_edge_token ? { edge-admin-token = { path = local.edge_token, mode = "0640" } } : {},
    local.has_peer_token ? { peer-token = { path = local.peer_token, mode = "0640" } } : {},
    local.has_health_ca ? { health-ca = { path = local.health_ca, mode = "0644" } } : {},
    local.has_dnssec ? { dnssec-key = { path = local.dnssec_key, mode = "0640" } } : {},
    local.geoipupdate ? { geoip-conf = { path = "/etc/GeoIP.conf", mode = "0600" } } : {},
  )

  contents = {
    config           = local.config
    token            = var.token
    tls-cert         = try(var.tls.certificate_pem, "")
    tls-key          = try(var.tls.private_key_pem, "")
    admin-tls-cert   = try(var.admin_tls.certificate_pem, "")
    admin-tls-key    = try(var.admin_tls.private_key_pem, "")
    edge-admin-token = var.edge_admin_token
    peer-token       = var.peer_token
    health-ca        = join("", [for pem in var.health_ca_pems : "${trimspace(pem)}\n"])
    dnssec-key       = var.dnssec_key_pem
    geoip-conf       = try("AccountID ${var.geoip.account_id}\nLicenseKey ${var.geoip.license_key}\nEditionIDs GeoLite2-City\nDatabaseDirectory /var/lib/GeoIP\n", "")
  }

  install_script = join("\n", concat(
    [
      "#!/bin/sh",
      "# Installs the pinned GeoEdge release into /opt/geoedge (terraform/modules/node-config).",
      "set -eu",
      "[ -x /opt/geoedge/bin/pip ] || python3 -m venv /opt/geoedge",
    ],
    local.use_wheel ? [
      "curl -fsSL --retry 5 -o ${local.wheel_file} '${var.install.wheel_url}'",
      "echo '${var.install.wheel_sha256}  ${local.wheel_file}' | sha256sum -c -",
    ] : [],
    [local.install_cmd, ""],
  ))

  unit_files = merge(
    { "/etc/systemd/system/${local.service}" = file("${local.packaging}/systemd/${local.service}") },
    local.is_gslb && local.geoipupdate ? {
      "/etc/systemd/system/geoedge-geoipupdate.service" = file("${local.packaging}/systemd/geoedge-geoipupdate.service")
      "/etc/systemd/system/geoedge-geoipupdate.timer"   = file("${local.packaging}/systemd/geoedge-geoipupdate.timer")
    } : {},
    local.is_gslb ? {} : { "/etc/logrotate.d/geoedge-edge" = file("${local.packaging}/logrotate/geoedge-edge") },
    var.ssm == null ? {} : {
      "/etc/systemd/system/${local.service}.d/ssm.conf" = file("${local.packaging}/aws/${local.service}.d/ssm.conf")
    },
  )

  ssm_list = var.ssm == null ? "" : join("\n", concat(
    ["# SSM parameters this node fetches at every start (packaging/aws/geoedge-fetch).", "region ${var.ssm.region}"],
    [for k, f in local.meta : "${var.ssm.prefix}/${k} ${f.mode} ${f.path}"],
    [""],
  ))

  boot_files = concat(
    [for p, content in local.unit_files : { path = p, mode = "0644", owner = "root:root", content = content }],
    [{ path = "/usr/local/sbin/geoedge-install", mode = "0755", owner = "root:root", content = local.install_script }],
    local.use_wheel ? [] : [{ path = "/etc/geoedge/requirements.txt", mode = "0644", owner = "root:root", content = var.install.requirements }],
    var.ssm == null ? [] : [
      { path = "/usr/local/sbin/geoedge-fetch", mode = "0755", owner = "root:root", content = file("${local.packaging}/aws/geoedge-fetch") },
      { path = "/etc/geoedge/ssm.list", mode = "0644", owner = "root:root", content = local.ssm_list },
    ],
    # Without SSM the config and secrets travel in user data, readable by the group only.
    var.ssm != null ? [] : [
      for k, f in local.meta : {
        path    = f.path
        mode    = f.mode
        owner   = f.mode == "0640" ? "root:geoedge" : "root:root"
        content = local.contents[k]
      }
    ],
  )

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    role        = var.role
    service     = local.service
    geoipupdate = local.is_gslb && local.geoipupdate
    ssm         = var.ssm != null
    packages    = concat(["python3-venv", "curl"], var.ssm == null ? [] : ["awscli"], local.is_gslb && local.geoipupdate ? ["geoipupdate"] : [])
    files       = local.boot_files
  })
}
