# terraform apply -var-file=example.tfvars   (with HCLOUD_TOKEN set in the environment)

zone        = "example.com"
hostmaster  = "hostmaster.example.com"
pool_name   = "www"
ssh_keys    = ["ops"]
admin_cidrs = ["198.51.100.0/24", "2001:db8:100::/48"]

geoedge_package = "geoedge==0.1.0"

# Two name servers on two continents: ns1.example.com and ns2.example.com.
dns_nodes = [
  { location = "fsn1" },
  { location = "ash" },
]

edge_regions = {
  eu-central   = { location = "fsn1", count = 2, capacity = 2000 }
  eu-north     = { location = "hel1" }
  us-east      = { location = "ash" }
  us-west      = { location = "hil" }
  ap-southeast = { location = "sin", server_type = "cpx31" }
}

origins = [
  { url = "https://origin-a.example.com" },
  { url = "https://origin-b.example.com", weight = 2 },
]

extra_records = [
  "@ MX 10 mail",
  "mail A 198.51.100.25",
  "@ TXT \"v=spf1 mx -all\"",
  "@ CAA 0 issue \"letsencrypt.org\"",
]

# Optional: keep the GeoIP data current (free GeoLite2 account at maxmind.com).
# maxmind_account_id  = "123456"
# maxmind_license_key = "..."   # better: TF_VAR_maxmind_license_key in the environment

# Bearer tokens for the APIs that change state (empty: none; the ports stay firewalled).
# Better passed in the environment: TF_VAR_edge_admin_token=$(openssl rand -hex 24)
# edge_admin_token = "..."
# gslb_api_token   = "..."
