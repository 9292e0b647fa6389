# An edge's admin certificate: a new ECDSA P-256 key and a certificate for the addresses the
# DNS nodes probe (https://IP:PORT/__edge/status), issued by the deployment's private CA.
# The DNS nodes verify it with that CA's certificate ([health] ca_file). Terraform issues a
# new one within the last 30 days of its validity; the key lives in the state.

resource "tls_private_key" "this" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "this" {
  private_key_pem = tls_private_key.this.private_key_pem
  ip_addresses    = var.ip_addresses

  subject {
    common_name = var.name
  }
}

resource "tls_locally_signed_cert" "this" {
  cert_request_pem      = tls_cert_request.this.cert_request_pem
  ca_cert_pem           = var.ca.certificate_pem
  ca_private_key_pem    = var.ca.private_key_pem
  validity_period_hours = var.validity_days * 24
  early_renewal_hours   = 30 * 24
  allowed_uses          = ["digital_signature", "key_encipherment", "server_auth"]
}
