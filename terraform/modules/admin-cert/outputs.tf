output "certificate_pem" {
  description = "The issued certificate (PEM): the edge's admin_tls certificate_pem."
  value       = tls_locally_signed_cert.this.cert_pem
}

output "private_key_pem" {
  description = "Its private key (PEM): the edge's admin_tls private_key_pem."
  value       = tls_private_key.this.private_key_pem
  sensitive   = true
}
