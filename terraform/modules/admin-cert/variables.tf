# Inputs of one admin certificate: whose, for which addresses, from which CA, for how long.

variable "name" {
  description = "The edge's name: the certificate's common name."
  type        = string
}

variable "ip_addresses" {
  description = "The addresses the certificate names (IP subject alternative names): those in the edge's status_url."
  type        = list(string)

  validation {
    condition     = length(var.ip_addresses) > 0 && alltrue([for ip in var.ip_addresses : can(cidrhost("${ip}/32", 0)) || can(cidrhost("${ip}/128", 0))])
    error_message = "ip_addresses must name at least one address, each an IPv4 or IPv6 address."
  }
}

variable "ca" {
  description = "The private CA that issues it: {certificate_pem, private_key_pem}."
  type = object({
    certificate_pem = string
    private_key_pem = string
  })
  sensitive = true

  validation {
    condition     = can(regex("-----BEGIN CERTIFICATE-----", var.ca.certificate_pem)) && can(regex("-----BEGIN [A-Z ]*PRIVATE KEY-----", var.ca.private_key_pem))
    error_message = "ca needs both certificate_pem (the CA certificate) and private_key_pem (its PEM private key)."
  }
}

variable "validity_days" {
  description = "How long the certificate is valid; Terraform issues a new one (a config update) within the last 30 days."
  type        = number
  default     = 365

  validation {
    condition     = var.validity_days >= 60 && var.validity_days <= 825 && floor(var.validity_days) == var.validity_days
    error_message = "validity_days must be an integer from 60 to 825."
  }
}
