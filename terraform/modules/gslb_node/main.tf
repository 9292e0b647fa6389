# One GeoEdge authoritative DNS node: a Hetzner Cloud server on two primary IPs (the glue
# addresses, created by the caller), gslb installed with pip at first boot (cloud-init) and run
# under systemd, a cloud firewall opening 53/udp+tcp to everyone and SSH and the API only to
# operators. With MaxMind credentials, geoipupdate keeps a current GeoLite2 City database and
# the service reloads after each update.
#
# user_data only shapes the first boot (changing it would replace the server). Config changes
# (a new edge, a changed record) and package upgrades are pushed over SSH by
# terraform_data.push: `gslb check-config` on the new file, install it, reload (SIGHUP).

locals {
  config_path  = "/etc/geoedge/gslb.toml"
  service_name = "geoedge-gslb.service"
  all_ips      = ["0.0.0.0/0", "::/0"]
  geoipupdate  = var.maxmind_account_id != "" && var.maxmind_license_key != ""
  geoip_conf = join("\n", [
    "AccountID ${var.maxmind_account_id}",
    "LicenseKey ${var.maxmind_license_key}",
    "EditionIDs GeoLite2-City",
    "DatabaseDirectory /var/lib/GeoIP",
    "",
  ])

  unit = templatefile("${path.module}/templates/geoedge-gslb.service.tftpl", {
    config_path = local.config_path
  })

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    geoedge_package  = var.geoedge_package
    config_path      = local.config_path
    config_toml      = var.config_toml
    service_name     = local.service_name
    unit             = local.unit
    geoipupdate      = local.geoipupdate
    geoip_conf       = local.geoip_conf
    api_token        = var.api_token
    token_path       = var.api_token_path
    purge_token      = var.purge_token
    purge_token_path = var.purge_token_path
  })
}

resource "hcloud_firewall" "this" {
  name   = "${var.name}-fw"
  labels = merge(var.labels, { role = "geoedge-gslb" })

  rule {
    description = "DNS over UDP"
    direction   = "in"
    protocol    = "udp"
    port        = "53"
    source_ips  = local.all_ips
  }

  rule {
    description = "DNS over TCP"
    direction   = "in"
    protocol    = "tcp"
    port        = "53"
    source_ips  = local.all_ips
  }

  rule {
    description = "ICMP (path MTU discovery, ping)"
    direction   = "in"
    protocol    = "icmp"
    source_ips  = local.all_ips
  }

  rule {
    description = "SSH from operators"
    direction   = "in"
    protocol    = "tcp"
    port        = "22"
    source_ips  = var.admin_cidrs
  }

  rule {
    description = "gslb HTTP API from operators"
    direction   = "in"
    protocol    = "tcp"
    port        = tostring(var.api_port)
    source_ips  = var.admin_cidrs
  }
}

resource "hcloud_server" "this" {
  name         = var.name
  location     = var.location
  server_type  = var.server_type
  image        = var.image
  ssh_keys     = var.ssh_keys
  labels       = merge(var.labels, { role = "geoedge-gslb" })
  user_data    = local.user_data
  firewall_ids = [hcloud_firewall.this.id]

  public_net {
    ipv4_enabled = true
    ipv4         = var.ipv4_primary_ip_id
    ipv6_enabled = true
    ipv6         = var.ipv6_primary_ip_id
  }

  lifecycle {
    # First boot only; terraform_data.push carries later changes without a rebuild.
    ignore_changes = [user_data, ssh_keys]
  }
}

resource "terraform_data" "push" {
  count = var.push_config ? 1 : 0

  triggers_replace = {
    server  = hcloud_server.this.id
    token   = sha256(var.api_token)
    purge   = sha256(var.purge_token)
    config  = sha256(var.config_toml)
    unit    = sha256(local.unit)
    package = var.geoedge_package
  }

  connection {
    type        = "ssh"
    host        = var.ipv4_address
    user        = "root"
    private_key = var.ssh_private_key_file == null ? null : file(var.ssh_private_key_file)
    agent       = var.ssh_private_key_file == null
  }

  # The token goes first, the new config may name it; a blank line when there is none
  # (a file provisioner needs some content).
  provisioner "file" {
    content     = "${var.api_token}\n"
    destination = "/root/api.token.new"
  }

  provisioner "file" {
    content     = "${var.purge_token}\n"
    destination = "/root/edge-admin.token.new"
  }

  provisioner "file" {
    content     = var.config_toml
    destination = "/root/gslb.toml.new"
  }

  provisioner "file" {
    content     = local.unit
    destination = "/root/${local.service_name}.new"
  }

  provisioner "remote-exec" {
    inline = [
      "set -eu",
      "cloud-init status --wait >/dev/null || true",
      "/opt/geoedge/bin/pip install --upgrade '${var.geoedge_package}' >/root/geoedge-pip.log",
      "if grep -q '[!-~]' /root/api.token.new; then install -m 0640 -g geoedge /root/api.token.new ${var.api_token_path}; fi",
      "rm -f /root/api.token.new",
      "if grep -q '[!-~]' /root/edge-admin.token.new; then install -m 0640 -g geoedge /root/edge-admin.token.new ${var.purge_token_path}; fi",
      "rm -f /root/edge-admin.token.new",
      "/opt/geoedge/bin/gslb check-config /root/gslb.toml.new",
      "install -m 0644 /root/gslb.toml.new ${local.config_path}",
      "install -m 0644 /root/${local.service_name}.new /etc/systemd/system/${local.service_name}",
      "systemctl daemon-reload",
      "if grep -q '^Successfully installed' /root/geoedge-pip.log; then systemctl restart ${local.service_name}; else systemctl reload-or-restart ${local.service_name}; fi",
    ]
  }
}
