variable "zone" {
  description = "The signed zone, e.g. \"example.com\"."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]*[a-z0-9]\\.?$", lower(var.zone)))
    error_message = "zone must be a domain name such as example.com."
  }
}

variable "key_pem" {
  description = "The zone's signing key: EC P-256 PEM from `gslb dnssec-keygen` (the dnssec_key_pem the DNS nodes get)."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("-----BEGIN (EC )?PRIVATE KEY-----", var.key_pem))
    error_message = "key_pem must be a PEM private key."
  }
}
