output "config" {
  description = "The rendered node config (gslb.toml or edge.toml)."
  value       = local.config

  precondition {
    condition     = (var.role == "gslb") == (var.gslb != null) && (var.role == "edge") == (var.edge != null)
    error_message = "Pass gslb for role gslb and edge for role edge (and not the other)."
  }

  precondition {
    condition     = var.role == "edge" || !local.has_tls
    error_message = "tls is for edges; gslb serves DNS, not HTTPS."
  }

  precondition {
    condition     = var.role == "gslb" || (!local.has_dnssec && !local.geoipupdate && !local.has_edge_token && !local.has_peer_token && !local.has_health_ca)
    error_message = "dnssec_key_pem, geoip, edge_admin_token, peer_token and health_ca_pems are for gslb nodes."
  }

  precondition {
    condition     = var.role == "edge" || !local.has_admin_tls
    error_message = "admin_tls is for edges (the gslb API is plain HTTP)."
  }

  precondition {
    condition     = !try(var.edge.admin_private, false) || local.has_token
    error_message = "edge.admin_private needs a token: status and metrics then want it, and the DNS nodes send it (their edge_admin_token)."
  }

  precondition {
    condition     = !local.has_peer_token || length(try(var.gslb.peers, [])) > 0
    error_message = "peer_token is sent to gslb.peers: pass the peers too."
  }
}

output "config_path" {
  description = "Where the config lives on the node."
  value       = local.config_path
}

output "service" {
  description = "The systemd unit that runs the node (geoedge-gslb.service or geoedge-edge.service)."
  value       = local.service
}

output "install_script" {
  description = "The pinned install script (also on the node as /usr/local/sbin/geoedge-install); run again to upgrade after changing install."
  value       = local.install_script
}

output "user_data" {
  description = "The cloud-init document of the node's first boot. Holds the config and secrets when ssm is null."
  value       = local.user_data
  sensitive   = true
}

output "files" {
  description = "The config and secret files by key (config, token, tls-cert, tls-key, admin-tls-cert, admin-tls-key, edge-admin-token, peer-token, health-ca, dnssec-key, geoip-conf): {path, mode}; their contents are in file_contents."
  value       = local.meta
}

output "file_contents" {
  description = "The contents of files by key, for pushing changes over SSH."
  value       = { for k in keys(local.meta) : k => local.contents[k] }
  sensitive   = true
}
