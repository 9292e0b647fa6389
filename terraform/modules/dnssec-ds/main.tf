# The DS record of a zone's DNSSEC key, for the registrar, and the DNSKEY every DNS node
# publishes: computed by ds.py (Python 3, standard library only) where Terraform runs, so
# the key never leaves the operator's machine for it.

data "external" "records" {
  program = ["python3", "${path.module}/ds.py"]

  query = {
    zone    = var.zone
    key_pem = var.key_pem
  }
}
