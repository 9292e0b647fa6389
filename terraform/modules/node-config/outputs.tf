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
    condition     = var.role == "gslb" || (!local.has_dnssec && !local.geoipupdate)
    error_message = "dnssec_key_pem and geoip are for gslb nodes."
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
  description = "The config and secret files by key (config, token, tls-cert, tls-key, dnssec-key, geoip-conf): {path, mode}; their contents are in file_contents."
  value       = local.meta
}

output "file_contents" {
  description = "The contents of files by key, for pushing changes over SSH."
  value       = { for k in keys(local.meta) : k => local.contents[k] }
  sensitive   = true
}
