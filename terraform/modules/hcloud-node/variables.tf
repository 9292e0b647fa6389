# Inputs of one GeoEdge node on Hetzner Cloud. The config inputs (role, install, token, tls,
# edge_admin_token, peer_token, health_ca_pems, dnssec_key_pem, geoip, gslb, edge) go to
# modules/node-config unchanged; see its README. admin_ca issues the edge's admin_tls here.

variable "role" {
  description = "\"gslb\" (authoritative DNS node, on the primary IPs passed in glue) or \"edge\" (caching proxy)."
  type        = string

  validation {
    condition     = contains(["gslb", "edge"], var.role)
    error_message = "role must be \"gslb\" or \"edge\"."
  }
}

variable "name" {
  description = "Server name (also the prefix of its firewall and primary IPs)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,59}[a-z0-9]$", var.name))
    error_message = "name must be a lower-case hostname label."
  }
}

variable "install" {
  description = "The pinned GeoEdge install (node-config): {requirements} with hashes, or {wheel_url, wheel_sha256}."
  type = object({
    requirements = optional(string, "")
    wheel_url    = optional(string, "")
    wheel_sha256 = optional(string, "")
  })
}

variable "token" {
  description = "Bearer token for state changes on the node's API (in user data and pushed over SSH). Empty: none."
  type        = string
  default     = ""
  sensitive   = true
}

variable "tls" {
  description = "Edge only: {certificate_pem, private_key_pem} for HTTPS; null: plain HTTP."
  type = object({
    certificate_pem = string
    private_key_pem = string
  })
  default   = null
  sensitive = true
}

variable "admin_ca" {
  description = "Edge only: a private CA {certificate_pem, private_key_pem} that issues the edge's admin certificate for its glue IPv4 (modules/admin-cert): admin_listen speaks HTTPS, and the DNS nodes verify it with the CA certificate (their health_ca_pems). Needs glue with ipv4_address: the certificate is in the first boot's user data, before the server has an address of its own. null: plain HTTP."
  type = object({
    certificate_pem = string
    private_key_pem = string
  })
  default   = null
  sensitive = true
}

variable "admin_cert_validity_days" {
  description = "Edge with admin_ca: how long the issued admin certificate is valid; Terraform issues a new one (pushed with push_config) within the last 30 days."
  type        = number
  default     = 365
}

variable "edge_admin_token" {
  description = "gslb only: the edges' admin token, sent with purges and with status probes of private edges. Empty: none."
  type        = string
  default     = ""
  sensitive   = true
}

variable "peer_token" {
  description = "gslb only: the bearer token sent to the gslb.peers. Empty: none."
  type        = string
  default     = ""
  sensitive   = true
}

variable "health_ca_pems" {
  description = "gslb only: PEM CA certificates verifying the edges' HTTPS status URLs; empty: the system's CAs."
  type        = list(string)
  default     = []
}

variable "dnssec_key_pem" {
  description = "gslb only: the zone's DNSSEC signing key (PEM); empty: unsigned."
  type        = string
  default     = ""
  sensitive   = true
}

variable "geoip" {
  description = "gslb only: {account_id, license_key} of a MaxMind account for geoipupdate; null: the bundled GeoLite2 snapshot."
  type = object({
    account_id  = string
    license_key = string
  })
  default   = null
  sensitive = true
}

variable "gslb" {
  description = "gslb only: the DNS node's config object (see modules/node-config). Listen on 0.0.0.0 and [::]: the primary IPs are on the interface."
  type        = any
  default     = null
}

variable "edge" {
  description = "edge only: the edge's config object (see modules/node-config)."
  type        = any
  default     = null
}

variable "glue" {
  description = "The primary IPs the node answers on, created by the caller: {ipv4_id, ipv6_id} (hcloud_primary_ip IDs in the node's location) and ipv4_address (the IPv4 itself, which an edge's admin certificate names). Required for gslb (the glue addresses); for an edge, needed with admin_ca; null: the server's own addresses."
  type = object({
    ipv4_id      = string
    ipv6_id      = string
    ipv4_address = optional(string, "")
  })
  default = null
}

variable "location" {
  description = "Hetzner Cloud location: fsn1, nbg1, hel1, ash, hil or sin (a DNS node's primary IPs live there too)."
  type        = string
}

variable "server_type" {
  description = "Hetzner Cloud server type (see `hcloud server-type list`)."
  type        = string
  default     = "cpx21"
}

variable "image" {
  description = "OS image; the cloud-init and systemd files assume Debian 12 or later."
  type        = string
  default     = "debian-12"
}

variable "ssh_keys" {
  description = "Names or IDs of Hetzner Cloud SSH keys allowed to log in as root."
  type        = list(string)
}

variable "labels" {
  description = "Extra labels on every resource of this node."
  type        = map(string)
  default     = {}
}

variable "admin_cidrs" {
  description = "Operator networks allowed to reach SSH and the admin/API port."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "admin_cidrs must list at least one network in CIDR notation, and not the whole Internet."
  }
}

variable "health_checker_cidrs" {
  description = "Edge only: the DNS nodes' addresses, allowed on the admin port: status probes and purges."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.health_checker_cidrs : can(cidrhost(c, 0))])
    error_message = "health_checker_cidrs must be networks in CIDR notation."
  }
}

variable "peer_cidrs" {
  description = "gslb only: the other DNS nodes, allowed to reach this node's API port: the DNS peers of the health quorum (gslb.peers), which read /v1/edges."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.peer_cidrs : can(cidrhost(c, 0))])
    error_message = "peer_cidrs must be networks in CIDR notation."
  }
}

variable "push_config" {
  description = "Push config, secret and install changes over SSH and reload the service, instead of replacing the server."
  type        = bool
  default     = true
}

variable "ssh_private_key_file" {
  description = "Private key for the push; null uses the local ssh-agent."
  type        = string
  default     = null
}
