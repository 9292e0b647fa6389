# One GeoEdge edge node: a Hetzner Cloud server that installs GeoEdge with pip at first boot
# (cloud-init), runs `edge serve` under systemd, and sits behind a cloud firewall that opens
# 80/443 to everyone and the admin port only to operators and the DNS nodes.
#
# user_data only shapes the first boot (changing it would replace the server). Later config
# and package changes are pushed over SSH by terraform_data.push, which checks the new config
# with `edge check-config` before installing it and reloads the service (SIGHUP).

locals {
  tls_enabled  = var.tls_certificate_pem != ""
  config_path  = "/etc/geoedge/edge.toml"
  service_name = "geoedge-edge.service"
  token_path   = "/etc/geoedge/admin.token"
  all_ips      = ["0.0.0.0/0", "::/0"]

  config_toml = templatefile("${path.module}/templates/edge.toml.tftpl", {
    name             = var.name
    http_listen      = ["0.0.0.0:80", "[::]:80"]
    https_listen     = ["0.0.0.0:443", "[::]:443"]
    tls_enabled      = local.tls_enabled
    redirect_http    = var.redirect_http
    workers          = var.workers
    hosts            = var.hosts
    algorithm        = var.origin_algorithm
    origins          = var.origins
    probe_path       = var.probe_path
    cache_size       = var.cache_size
    memory_cache     = var.memory_cache
    admin_listen     = "0.0.0.0:${var.admin_port}"
    capacity_rps     = format("%.1f", var.capacity_rps)
    # The token itself is never in the config, which is world-readable.
    admin_token_file = var.admin_token != "" ? local.token_path : ""
  })

  unit = templatefile("${path.module}/templates/geoedge-edge.service.tftpl", {
    config_path = local.config_path
  })

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    geoedge_package     = var.geoedge_package
    config_path         = local.config_path
    config_toml         = local.config_toml
    service_name        = local.service_name
    unit                = local.unit
    tls_enabled         = local.tls_enabled
    tls_certificate_pem = var.tls_certificate_pem
    tls_private_key_pem = var.tls_private_key_pem
    admin_token         = var.admin_token
    token_path          = local.token_path
  })
}

resource "hcloud_firewall" "this" {
  name   = "${var.name}-fw"
  labels = merge(var.labels, { role = "geoedge-edge" })

  rule {
    description = "HTTP"
    direction   = "in"
    protocol    = "tcp"
    port        = "80"
    source_ips  = local.all_ips
  }

  rule {
    description = "HTTPS"
    direction   = "in"
    protocol    = "tcp"
    port        = "443"
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
    description = "Admin port from operators and DNS nodes"
    direction   = "in"
    protocol    = "tcp"
    port        = tostring(var.admin_port)
    source_ips  = distinct(concat(var.admin_cidrs, var.health_checker_cidrs))
  }
}

resource "hcloud_server" "this" {
  name         = var.name
  location     = var.location
  server_type  = var.server_type
  image        = var.image
  ssh_keys     = var.ssh_keys
  labels       = merge(var.labels, { role = "geoedge-edge" })
  user_data    = local.user_data
  firewall_ids = [hcloud_firewall.this.id]

  public_net {
    ipv4_enabled = true
    ipv6_enabled = true
  }

  lifecycle {
    # First boot only; terraform_data.push carries later changes without a rebuild.
    ignore_changes = [user_data, ssh_keys]
  }
}

# The certificate and key follow the same path when they change (renewals): written with
# the key readable by the service's group only, before the config that names them is checked.
resource "terraform_data" "push_tls" {
  count = var.push_config && local.tls_enabled ? 1 : 0

  triggers_replace = {
    server = hcloud_server.this.id
    cert   = sha256(var.tls_certificate_pem)
    key    = sha256(var.tls_private_key_pem)
  }

  connection {
    type        = "ssh"
    host        = hcloud_server.this.ipv4_address
    user        = "root"
    private_key = var.ssh_private_key_file == null ? null : file(var.ssh_private_key_file)
    agent       = var.ssh_private_key_file == null
  }

  provisioner "remote-exec" {
    inline = [
      "set -eu",
      "cloud-init status --wait >/dev/null || true",
      "install -d -m 0755 /etc/geoedge/tls",
      "install -m 0600 /dev/null /root/key.pem.new",
    ]
  }

  provisioner "file" {
    content     = var.tls_certificate_pem
    destination = "/root/cert.pem.new"
  }

  provisioner "file" {
    content     = var.tls_private_key_pem
    destination = "/root/key.pem.new"
  }

  provisioner "remote-exec" {
    inline = [
      "set -eu",
      "install -m 0644 /root/cert.pem.new /etc/geoedge/tls/cert.pem",
      "install -m 0640 -g geoedge /root/key.pem.new /etc/geoedge/tls/key.pem",
      "rm -f /root/cert.pem.new /root/key.pem.new",
      "systemctl reload-or-restart ${local.service_name}",
    ]
  }
}

resource "terraform_data" "push" {
  count = var.push_config ? 1 : 0

  depends_on = [terraform_data.push_tls]

  triggers_replace = {
    server  = hcloud_server.this.id
    token   = sha256(var.admin_token)
    config  = sha256(local.config_toml)
    unit    = sha256(local.unit)
    package = var.geoedge_package
  }

  connection {
    type        = "ssh"
    host        = hcloud_server.this.ipv4_address
    user        = "root"
    private_key = var.ssh_private_key_file == null ? null : file(var.ssh_private_key_file)
    agent       = var.ssh_private_key_file == null
  }

  # The token goes first, the new config may name it; a blank line when there is none
  # (a file provisioner needs some content).
  provisioner "file" {
    content     = "${var.admin_token}\n"
    destination = "/root/admin.token.new"
  }

  provisioner "file" {
    content     = local.config_toml
    destination = "/root/edge.toml.new"
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
      "if grep -q '[!-~]' /root/admin.token.new; then install -m 0640 -g geoedge /root/admin.token.new ${local.token_path}; fi",
      "rm -f /root/admin.token.new",
      "/opt/geoedge/bin/edge check-config /root/edge.toml.new",
      "install -m 0644 /root/edge.toml.new ${local.config_path}",
      "install -m 0644 /root/${local.service_name}.new /etc/systemd/system/${local.service_name}",
      "systemctl daemon-reload",
      "if grep -q '^Successfully installed' /root/geoedge-pip.log; then systemctl restart ${local.service_name}; else systemctl reload-or-restart ${local.service_name}; fi",
    ]
  }
}
