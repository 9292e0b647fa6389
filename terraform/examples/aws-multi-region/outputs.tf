output "name_servers" {
  description = "The NS names to enter at the registrar for the zone."
  value       = [for k in keys(local.glue) : "${k}.${local.zone}"]
}

output "glue_records" {
  description = "Glue addresses (A) to enter at the registrar, one per name server."
  value       = { for k, ip in local.glue : "${k}.${local.zone}" => ip }
}

output "registrar_instructions" {
  description = "What to enter at the registrar, and how to check it (docs/delegation.md)."
  value = join("\n", concat(
    ["Delegate ${local.zone} to these name servers, with glue:"],
    [for k, ip in local.glue : "  ${k}.${local.zone}  A ${ip}"],
    ["Then check: dig +norec @${local.glue["ns1"]} ${trimsuffix(local.pool_fqdn, ".")} A"],
  ))
}

output "edges" {
  description = "Every edge: region, Elastic IP and status URL."
  value       = { for k, e in local.edges : k => { region = e.r.region, ipv4 = e.node.public_ip, status_url = e.node.status_url } }
}

output "gslb_api" {
  description = "The gslb HTTP API (status page, metrics) of each DNS node, reachable from admin_cidrs."
  value       = { ns1 = module.ns1.status_url, ns2 = module.ns2.status_url }
}

output "gslb_config" {
  description = "The rendered gslb configuration of each DNS node (the same but for [[peers]], which names the other)."
  value       = { ns1 = module.ns1.config, ns2 = module.ns2.config }

  precondition {
    condition     = length(setsubtract(var.pool.fallback_regions, ["eu", "us", "ap"])) == 0
    error_message = "pool.fallback_regions may name eu, us and ap (the regions of var.regions), nothing else: a misspelt region would leave the fallback empty, which gslb reads as every edge."
  }
}

output "reload_commands" {
  description = "After an apply that changed configs: apply them on every node (fetch from SSM, check, SIGHUP)."
  value       = concat([module.ns1.reload_command, module.ns2.reload_command], [for e in values(local.edges) : e.node.reload_command])
}

output "dnssec_ds" {
  description = "With dnssec_key_pem: the DS record to enter at the registrar (docs/delegation.md), as `gslb ds` prints it."
  value       = one(module.dnssec[*].ds)
}

output "dnssec_dnskey" {
  description = "With dnssec_key_pem: the DNSKEY every DNS node publishes (for registrars that take the key)."
  value       = one(module.dnssec[*].dnskey)
}
