output "name_servers" {
  description = "The NS names to enter at the registrar for the zone."
  value       = [for a in values(local.dns_addresses) : trimsuffix(a.fqdn, ".")]
}

output "glue_records" {
  description = "Glue addresses to enter at the registrar, one entry per name server."
  value = {
    for a in values(local.dns_addresses) : trimsuffix(a.fqdn, ".") => {
      ipv4 = a.ipv4
      ipv6 = a.ipv6
    }
  }
}

output "registrar_instructions" {
  description = "What to enter at the registrar, as text."
  value = join("\n", concat(
    ["Delegate ${local.zone} to these name servers, with glue:"],
    [for a in values(local.dns_addresses) : "  ${trimsuffix(a.fqdn, ".")}  A ${a.ipv4}  AAAA ${a.ipv6}"],
    ["Then check: dig +norec @${local.dns_addresses["ns1"].ipv4} ${trimsuffix(local.pool_fqdn, ".")} A"],
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
  description = "The gslb HTTP API of each DNS node (reachable from admin_cidrs only)."
  value       = { for k, m in module.dns : k => m.api_url }
}

output "gslb_config" {
  description = "The rendered gslb configuration of each DNS node."
  value       = local.gslb_config
}
