output "server_id" {
  description = "Hetzner Cloud server ID."
  value       = hcloud_server.this.id
}

output "name" {
  description = "Server name."
  value       = hcloud_server.this.name
}

output "ipv4_address" {
  description = "The IPv4 address the node answers DNS on (glue A)."
  value       = var.ipv4_address
}

output "ipv6_address" {
  description = "The IPv6 address the node answers DNS on (glue AAAA)."
  value       = var.ipv6_address
}

output "api_url" {
  description = "The gslb HTTP API (reachable from admin_cidrs only)."
  value       = "http://${var.ipv4_address}:${var.api_port}"
}
