output "ipv4_address" {
  description = "The server's public IPv4 address: a DNS node's glue A (its primary IP), the A record an edge is answered with."
  value       = hcloud_server.this.ipv4_address
}

output "ipv6_address" {
  description = "The server's public IPv6 address (the first of its /64): the edge's AAAA."
  value       = hcloud_server.this.ipv6_address
}

output "server_id" {
  description = "Hetzner Cloud server ID."
  value       = hcloud_server.this.id
}

output "status_url" {
  description = "Edge: the status endpoint gslb probes (health and load; https with admin_ca). gslb: its HTTP API."
  value       = "${local.admin_scheme}://${hcloud_server.this.ipv4_address}:${local.admin_port}${local.is_gslb ? "" : "/__edge/status"}"
}

output "config" {
  description = "The rendered node config."
  value       = module.config.config
}
