output "name_servers" {
  description = "The NS names to enter at the registrar for the zone."
  value       = [for k in keys(local.glue) : "${k}.${local.zone}"]
}

output "glue_records" {
  description = "Glue addresses to enter at the registrar, one entry per name server."
  value       = { for k, g in local.glue : "${k}.${local.zone}" => g }
}

output "registrar_instructions" {
  description = "What to enter at the registrar, and how to check it (docs/delegation.md)."
  value = join("\n", concat(
    ["Delegate ${local.zone} to these name servers, with glue:"],
    [for k, g in local.glue : "  ${k}.${local.zone}  A ${g.ipv4}  AAAA ${g.ipv6}"],
    ["Then check: dig +norec @${local.glue["ns1"].ipv4} ${trimsuffix(local.pool_fqdn, ".")} A"],
  ))
}

output "edges" {
  description = "Every edge with its addresses and the coordinates the GSLB measures distance to."
  value = {
    for k, e in local.edges : k => {
      location   = e.location
      latitude   = e.latitude
      longitude  = e.longitude
      ipv4       = module.edge[k].ipv4_address
      ipv6       = module.edge[k].ipv6_address
      status_url = module.edge[k].status_url
    }
  }
}

output "gslb_api" {
  description = "The gslb HTTP API (status page, metrics) of each DNS node, reachable from admin_cidrs."
  value       = { for k, m in module.dns : k => m.status_url }
}

output "gslb_config" {
  description = "The rendered gslb configuration of each DNS node."
  value       = { for k, m in module.dns : k => m.config }

  precondition {
    condition     = length(setsubtract(var.pool.fallback_regions, keys(var.edge_regions))) == 0
    error_message = "pool.fallback_regions must name regions of edge_regions: a misspelt region would leave the fallback empty, which gslb reads as every edge."
  }
}

output "dnssec_ds" {
  description = "With dnssec_key_pem: the DS record to enter at the registrar (docs/delegation.md), as `gslb ds` prints it."
  value       = one(module.dnssec[*].ds)
}

output "dnssec_dnskey" {
  description = "With dnssec_key_pem: the DNSKEY every DNS node publishes (for registrars that take the key)."
  value       = one(module.dnssec[*].dnskey)
}
