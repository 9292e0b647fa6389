# Inputs of a GeoEdge deployment: a zone served by 2+ GSLB DNS nodes that hand out the
# nearest healthy edge among N regions of edge nodes. Provider: Hetzner Cloud.

variable "hcloud_token" {
  description = "Hetzner Cloud API token; null reads HCLOUD_TOKEN from the environment."
  type        = string
  default     = null
  sensitive   = true
}

variable "name_prefix" {
  description = "Prefix of every server, firewall and IP name."
  type        = string
  default     = "geoedge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.name_prefix))
    error_message = "name_prefix must be a short lower-case hostname label."
  }
}

variable "zone" {
  description = "The DNS zone the GSLB is authoritative for, e.g. \"example.com\" (delegated to it at the registrar)."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]*[a-z0-9]\\.?$", lower(var.zone)))
    error_message = "zone must be a domain name such as example.com."
  }
}

variable "hostmaster" {
  description = "SOA RNAME (the zone contact as a domain name, e.g. hostmaster.example.com); null: hostmaster.<zone>."
  type        = string
  default     = null
}

variable "soa_serial" {
  description = "SOA serial. Every DNS node is a primary with the same config and gslb does no zone transfers, so it only matters to external secondaries; bump it when records change if you run any."
  type        = number
  default     = 1
}

variable "extra_records" {
  description = "More zone records in master-file syntax relative to the zone, e.g. \"@ MX 10 mail\", \"mail A 198.51.100.25\"."
  type        = list(string)
  default     = []
}

variable "pool_name" {
  description = "The name in the zone answered from the edges, relative to the zone (\"www\"), or \"@\" for the apex."
  type        = string
  default     = "www"
}

variable "pool_policy" {
  description = "How the pool picks edges: nearest, weighted, failover or all."
  type        = string
  default     = "nearest"

  validation {
    condition     = contains(["nearest", "weighted", "failover", "all"], var.pool_policy)
    error_message = "pool_policy must be nearest, weighted, failover or all."
  }
}

variable "pool_answers" {
  description = "Addresses per pool answer."
  type        = number
  default     = 1
}

variable "pool_ttl" {
  description = "TTL of pool answers in seconds."
  type        = number
  default     = 30
}

variable "dns_nodes" {
  description = "The authoritative DNS nodes, named ns1, ns2, ... in list order. Use two or more, in different locations."
  type = list(object({
    location    = string
    server_type = optional(string)
  }))

  validation {
    condition     = length(var.dns_nodes) >= 2
    error_message = "Registrars require at least two name servers: list two or more dns_nodes."
  }
}

variable "edge_regions" {
  description = "Edge regions by name (used in server names). Each places `count` edges in a Hetzner location; latitude/longitude default to the location's city and are what the GSLB measures distance to."
  type = map(object({
    location    = string
    count       = optional(number, 1)
    server_type = optional(string)
    latitude    = optional(number)
    longitude   = optional(number)
    weight      = optional(number, 1)
    capacity    = optional(number, 1000)
  }))

  validation {
    condition     = length(var.edge_regions) > 0 && alltrue([for r in values(var.edge_regions) : r.count >= 1])
    error_message = "edge_regions must hold at least one region, each with count >= 1."
  }

  validation {
    condition = alltrue([
      for r in values(var.edge_regions) :
      contains(["fsn1", "nbg1", "hel1", "ash", "hil", "sin"], r.location) || (r.latitude != null && r.longitude != null)
    ])
    error_message = "A region in a location this configuration does not know the coordinates of needs latitude and longitude."
  }
}

variable "dns_server_type" {
  description = "Default server type of DNS nodes."
  type        = string
  default     = "cpx21"
}

variable "edge_server_type" {
  description = "Default server type of edge nodes."
  type        = string
  default     = "cpx21"
}

variable "image" {
  description = "OS image of every node (the cloud-init and systemd files assume Debian 12 or later)."
  type        = string
  default     = "debian-12"
}

variable "ssh_keys" {
  description = "Names or IDs of Hetzner Cloud SSH keys allowed to log in as root on every node."
  type        = list(string)
}

variable "ssh_private_key_file" {
  description = "Private key Terraform uses to push config changes; null uses the local ssh-agent."
  type        = string
  default     = null
}

variable "push_config" {
  description = "Push config and package changes over SSH and reload services (false: first-boot config only)."
  type        = bool
  default     = true
}

variable "admin_cidrs" {
  description = "Operator networks allowed to reach SSH and the admin/API ports of every node."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0))])
    error_message = "admin_cidrs must list at least one network in CIDR notation."
  }
}

variable "geoedge_package" {
  description = "pip requirement that installs GeoEdge on every node: \"geoedge\", \"geoedge==0.1.0\" or a wheel URL."
  type        = string
  default     = "geoedge"
}

variable "gslb_workers" {
  description = "gslb worker processes per DNS node."
  type        = number
  default     = 2
}

variable "gslb_api_port" {
  description = "Port of the gslb HTTP API on each DNS node."
  type        = number
  default     = 8053
}

variable "maxmind_account_id" {
  description = "MaxMind account ID: with a license key, DNS nodes keep a current GeoLite2 City database with geoipupdate. Empty: the snapshot bundled with GeoEdge."
  type        = string
  default     = ""
}

variable "maxmind_license_key" {
  description = "MaxMind license key for geoipupdate."
  type        = string
  default     = ""
  sensitive   = true
}

variable "origins" {
  description = "Origin servers every edge proxies to: base URLs (scheme://host[:port]) with optional integer weights."
  type = list(object({
    url    = string
    weight = optional(number, 1)
  }))
}

variable "edge_hosts" {
  description = "Host names the edges serve; empty: the pool name only (e.g. www.example.com)."
  type        = list(string)
  default     = []
}

variable "edge_admin_port" {
  description = "Port of each edge's admin listener (/__edge/status, /metrics, purge)."
  type        = number
  default     = 9090
}

variable "edge_cache_size" {
  description = "Disk cache size per edge, e.g. \"20GiB\"."
  type        = string
  default     = "20GiB"
}

variable "edge_workers" {
  description = "Edge worker processes per edge node."
  type        = number
  default     = 2
}

variable "tls_certificate_pem" {
  description = "PEM certificate chain every edge serves on 443 (covering edge_hosts); empty: plain HTTP only."
  type        = string
  default     = ""
}

variable "tls_private_key_pem" {
  description = "PEM private key matching tls_certificate_pem."
  type        = string
  default     = ""
  sensitive   = true
}

variable "edge_admin_token" {
  description = "Bearer token the edges require for purges on their admin port (admin.token_file), e.g. from `openssl rand -hex 24`; 16+ visible ASCII characters. Empty: purges need no token (the admin port is still firewalled to admin_cidrs and the DNS nodes)."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.edge_admin_token == "" || can(regex("^[!-~]{16,}$", var.edge_admin_token))
    error_message = "edge_admin_token must be empty or 16+ visible ASCII characters."
  }
}

variable "gslb_api_token" {
  description = "Bearer token the DNS nodes' HTTP API requires for changes (drain, undrain, edge state; api.token_file), e.g. from `openssl rand -hex 24`; 16+ visible ASCII characters. Empty: changes need no token (the API port is still firewalled to admin_cidrs)."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.gslb_api_token == "" || can(regex("^[!-~]{16,}$", var.gslb_api_token))
    error_message = "gslb_api_token must be empty or 16+ visible ASCII characters."
  }
}

variable "labels" {
  description = "Extra labels on every resource."
  type        = map(string)
  default     = {}
}
