# Inputs of one GeoEdge authoritative DNS node (GSLB) on Hetzner Cloud.

variable "name" {
  description = "Server name (RFC 1123 hostname), e.g. geoedge-ns1."
  type        = string
}

variable "location" {
  description = "Hetzner Cloud location; must be the location of both primary IPs."
  type        = string
}

variable "server_type" {
  description = "Hetzner Cloud server type (see `hcloud server-type list` for what the location offers)."
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

variable "ipv4_primary_ip_id" {
  description = "ID of the hcloud_primary_ip (ipv4) this node answers on. Created outside the module so the glue address exists before the config that names it, and survives a rebuild."
  type        = string
}

variable "ipv6_primary_ip_id" {
  description = "ID of the hcloud_primary_ip (ipv6) this node answers on."
  type        = string
}

variable "ipv4_address" {
  description = "The IPv4 address of ipv4_primary_ip_id (used to reach the node for config pushes)."
  type        = string
}

variable "ipv6_address" {
  description = "The IPv6 address the node answers on (first address of the primary /64)."
  type        = string
}

variable "config_toml" {
  description = "The complete gslb TOML configuration for this node (rendered by the root module from the list of edges)."
  type        = string
}

variable "api_token" {
  description = "Bearer token the HTTP API requires for changes, written to api_token_path (readable by the service only). Empty: no token file."
  type        = string
  default     = ""
  sensitive   = true
}

variable "api_token_path" {
  description = "Where the token file goes: the path config_toml names as api.token_file."
  type        = string
  default     = "/etc/geoedge/api.token"
}

variable "purge_token" {
  description = "The edges' admin token (root edge_admin_token), which fleet purges send to the edges; written to purge_token_path (readable by the service only). Empty: no token file."
  type        = string
  default     = ""
  sensitive   = true
}

variable "purge_token_path" {
  description = "Where the edges' admin token goes: the path config_toml names as purge.token_file."
  type        = string
  default     = "/etc/geoedge/edge-admin.token"
}

variable "geoedge_package" {
  description = "pip requirement that installs GeoEdge: a name, a pinned version or a wheel URL."
  type        = string
  default     = "geoedge"

  validation {
    condition     = can(regex("^[^\\s'\"]+$", var.geoedge_package))
    error_message = "geoedge_package must be one pip requirement without spaces or quotes."
  }
}

variable "admin_cidrs" {
  description = "Networks allowed to reach SSH and the HTTP API (healthz, metrics, edges, drain)."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0))])
    error_message = "admin_cidrs must list at least one network in CIDR notation."
  }
}

variable "api_port" {
  description = "TCP port of the gslb HTTP API; must match [api] listen in config_toml."
  type        = number
  default     = 8053
}

variable "maxmind_account_id" {
  description = "MaxMind account ID for geoipupdate; empty keeps the GeoLite2 snapshot bundled with GeoEdge."
  type        = string
  default     = ""
}

variable "maxmind_license_key" {
  description = "MaxMind license key for geoipupdate."
  type        = string
  default     = ""
  sensitive   = true
}

variable "push_config" {
  description = "Push config and package changes over SSH and reload the service, instead of replacing the server."
  type        = bool
  default     = true
}

variable "ssh_private_key_file" {
  description = "Private key for the config push; null uses the local ssh-agent."
  type        = string
  default     = null
}
