output "server_id" {
  description = "Hetzner Cloud server ID."
  value       = hcloud_server.this.id
}

output "name" {
  description = "Server name."
  value       = hcloud_server.this.name
}

output "ipv4_address" {
  description = "Public IPv4 address: what the GSLB hands out in A answers."
  value       = hcloud_server.this.ipv4_address
}

output "ipv6_address" {
  description = "Public IPv6 address (the first address of the server's /64): what the GSLB hands out in AAAA answers."
  value       = hcloud_server.this.ipv6_address
}

output "status_url" {
  description = "The admin status endpoint the DNS tier reads for health and load."
  value       = "http://${hcloud_server.this.ipv4_address}:${var.admin_port}/__edge/status"
}
