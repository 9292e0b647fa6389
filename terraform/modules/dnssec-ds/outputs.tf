output "ds" {
  description = "The DS record to enter at the registrar (key tag, algorithm 13, digest type 2, SHA-256 digest)."
  value       = data.external.records.result.ds
}

output "dnskey" {
  description = "The DNSKEY record the DNS nodes publish (for registrars that take the key rather than the DS)."
  value       = data.external.records.result.dnskey
}

output "key_tag" {
  description = "The key's tag, as `gslb dnssec-keygen` and `gslb ds` print it."
  value       = data.external.records.result.key_tag
}
