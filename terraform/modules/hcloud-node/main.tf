# One GeoEdge node on Hetzner Cloud (role gslb or edge), built on modules/node-config:
#   - a DNS node answers on two primary IPs (IPv4 and IPv6): the glue addresses, created by
#     the caller with delete protection (examples/hetzner) so that they outlive any server and
#     every DNS node's config can name all of them;
#   - a cloud firewall: DNS (53 udp+tcp) or HTTP(S) from anywhere, SSH and the admin/API port
#     from operators only (and the DNS nodes' probes, the DNS peers);
#   - with admin_ca (edges on glue primary IPs): the admin listener's certificate for the
#     glue IPv4, issued by that CA (modules/admin-cert), so the DNS nodes probe and purge
#     over verified HTTPS;
#   - the server (Debian 12). Hetzner has no parameter store: the config and secrets travel
#     in user data (readable by the server through its metadata service) and in later pushes
#     over SSH (terraform_data.push: check-config, install, reload).

locals {
  is_gslb = var.role == "gslb"
  all_ips = ["0.0.0.0/0", "::/0"]
  labels  = merge(var.labels, { role = "geoedge-${var.role}" })

  admin_listen = local.is_gslb ? try(var.gslb.api_listen, "") : try(var.edge.admin_listen, "")
  admin_port   = tonumber(regex(":([0-9]+)$", local.admin_listen)[0])
  admin_https  = !local.is_gslb && nonsensitive(var.admin_ca != null)
  admin_scheme = local.admin_https ? "https" : "http"
  admin_tls = local.admin_https ? {
    certificate_pem = one(module.admin_cert[*].certificate_pem)
    private_key_pem = one(module.admin_cert[*].private_key_pem)
  } : null
  public_listen = local.is_gslb ? try(var.gslb.listen, []) : concat(
    try(var.edge.listen, []), nonsensitive(var.tls == null) ? [] : try(var.edge.https_listen, [])
  )
  public_ports = distinct([for l in local.public_listen : regex(":([0-9]+)$", l)[0]])
  public_rules = concat(
    [for p in local.public_ports : { protocol = "tcp", port = p }],
    local.is_gslb ? [for p in local.public_ports : { protocol = "udp", port = p }] : [],
  )

  # Writes the pushed files: secrets first (the config names them), then the config once
  # `check-config` accepted it next to its target.
  apply_script = <<-EOT
    import json, os, shutil, subprocess, sys
    doc = json.load(open(sys.argv[1]))
    def put(path, content, mode):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".new", "w") as f:
            f.write(content)
        os.chmod(path + ".new", int(mode, 8))
        shutil.chown(path + ".new", "root", "geoedge")
    for key, meta in doc["meta"].items():
        if key != doc["config"]:
            put(meta["path"], doc["contents"][key], meta["mode"])
            os.replace(meta["path"] + ".new", meta["path"])
    config = doc["meta"][doc["config"]]["path"]
    put(config, doc["contents"][doc["config"]], "0644")
    subprocess.run([sys.argv[2], "check-config", config + ".new"], check=True)
    os.replace(config + ".new", config)
  EOT
}

module "config" {
  source = "../node-config"

  role             = var.role
  name             = var.name
  install          = var.install
  ssm              = null
  token            = var.token
  tls              = var.tls
  admin_tls        = local.admin_tls
  edge_admin_token = var.edge_admin_token
  peer_token       = var.peer_token
  health_ca_pems   = var.health_ca_pems
  dnssec_key_pem   = var.dnssec_key_pem
  geoip            = var.geoip
  gslb             = var.gslb
  edge             = var.edge
}

# The edge's admin certificate, for its glue IPv4 (the address in status_url), from admin_ca.
module "admin_cert" {
  source = "../admin-cert"
  count  = local.admin_https ? 1 : 0

  name          = var.name
  ip_addresses  = compact([try(var.glue.ipv4_address, "")])
  ca            = var.admin_ca
  validity_days = var.admin_cert_validity_days
}

resource "hcloud_firewall" "this" {
  name   = "${var.name}-fw"
  labels = local.labels

  dynamic "rule" {
    for_each = local.public_rules
    content {
      description = "${upper(rule.value.protocol)} ${rule.value.port} from anywhere"
      direction   = "in"
      protocol    = rule.value.protocol
      port        = rule.value.port
      source_ips  = local.all_ips
    }
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
    description = "Admin/API port from operators, DNS nodes and DNS peers"
    direction   = "in"
    protocol    = "tcp"
    port        = tostring(local.admin_port)
    source_ips  = distinct(concat(var.admin_cidrs, var.health_checker_cidrs, var.peer_cidrs))
  }
}

resource "hcloud_server" "this" {
  name         = var.name
  location     = var.location
  server_type  = var.server_type
  image        = var.image
  ssh_keys     = var.ssh_keys
  labels       = local.labels
  user_data    = module.config.user_data
  firewall_ids = [hcloud_firewall.this.id]

  public_net {
    ipv4_enabled = true
    ipv4         = try(var.glue.ipv4_id, null)
    ipv6_enabled = true
    ipv6         = try(var.glue.ipv6_id, null)
  }

  lifecycle {
    # First boot only; terraform_data.push carries later changes without a rebuild.
    ignore_changes = [user_data, ssh_keys]

    precondition {
      condition     = var.role == "edge" || var.glue != null
      error_message = "A gslb node answers on its glue addresses: pass glue (the primary IP IDs)."
    }

    precondition {
      condition     = !local.admin_https || try(var.glue.ipv4_address, "") != ""
      error_message = "admin_ca issues the admin certificate for the edge's glue IPv4: pass glue with ipv4_address (a primary IP created before the server)."
    }

    precondition {
      condition     = var.role == "edge" || nonsensitive(var.admin_ca == null)
      error_message = "admin_ca issues an edge's admin certificate; a gslb node verifies edges with health_ca_pems."
    }
  }
}

# Later changes (a new edge in a DNS node's config, a renewed certificate, a rotated token, a
# new release) go over SSH: upload, install the secrets, check the new config, install it,
# reload (or restart when the install changed the package).
resource "terraform_data" "push" {
  count = var.push_config ? 1 : 0

  triggers_replace = {
    server  = hcloud_server.this.id
    files   = sha256(jsonencode(module.config.file_contents))
    install = sha256(module.config.install_script)
  }

  connection {
    type        = "ssh"
    host        = hcloud_server.this.ipv4_address
    user        = "root"
    private_key = var.ssh_private_key_file == null ? null : file(var.ssh_private_key_file)
    agent       = var.ssh_private_key_file == null
  }

  provisioner "remote-exec" {
    inline = ["set -eu", "cloud-init status --wait >/dev/null || true", "install -d -m 0700 /root/geoedge.new"]
  }

  provisioner "file" {
    content     = module.config.install_script
    destination = "/root/geoedge.new/install"
  }

  provisioner "file" {
    content     = jsonencode({ meta = module.config.files, contents = module.config.file_contents, config = "config" })
    destination = "/root/geoedge.new/files.json"
  }

  provisioner "file" {
    content     = local.apply_script
    destination = "/root/geoedge.new/apply.py"
  }

  provisioner "remote-exec" {
    inline = [
      "set -eu",
      "before=$(/opt/geoedge/bin/pip freeze | sha256sum)",
      "install -m 0755 /root/geoedge.new/install /usr/local/sbin/geoedge-install && /usr/local/sbin/geoedge-install",
      "python3 /root/geoedge.new/apply.py /root/geoedge.new/files.json /opt/geoedge/bin/${var.role}",
      "rm -rf /root/geoedge.new",
      "systemctl daemon-reload",
      "if [ \"$before\" != \"$(/opt/geoedge/bin/pip freeze | sha256sum)\" ]; then systemctl restart ${module.config.service}; else systemctl reload-or-restart ${module.config.service}; fi",
    ]
  }
}
