output "public_ip" {
  description = "The node's Elastic IP: the glue address of a DNS node, the A record an edge is answered with."
  value       = local.public_ip
}

output "instance_id" {
  description = "EC2 instance ID."
  value       = aws_instance.this.id
}

output "security_group_id" {
  description = "The node's security group."
  value       = aws_security_group.this.id
}

output "status_url" {
  description = "Edge: the status endpoint gslb probes (health and load; https with admin_ca). gslb: its HTTP API."
  value       = "${local.admin_https ? "https" : "http"}://${local.public_ip}:${local.admin_port}${local.is_gslb ? "" : "/__edge/status"}"
}

output "ssm_parameters" {
  description = "Names of the SSM parameters the node reads at every start and reload."
  value       = [for p in aws_ssm_parameter.this : p.name]
}

output "config" {
  description = "The rendered node config (as stored in SSM)."
  value       = module.config.config
}

output "reload_command" {
  description = "After a config change (apply updated the parameters): fetch, check and apply it on the node (Debian's AMI user is admin)."
  value       = "ssh admin@${local.public_ip} sudo systemctl reload ${module.config.service}"
}
