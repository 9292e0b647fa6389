terraform {
  required_version = ">= 1.5.0"

  required_providers {
    hcloud = {
      source = "hetznercloud/hcloud"
      # 1.58 added `location` on primary IPs (datacenters are being phased out by the API).
      version = ">= 1.58.0, < 2.0.0"
    }
  }
}
