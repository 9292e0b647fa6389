# Inputs of one GeoEdge edge node (caching reverse proxy) on Hetzner Cloud.

variable "name" {
  description = "Server name (RFC 1123 hostname), e.g. geoedge-edge-eu-central-1."
  type        = string
}

variable "location" {
  description = "Hetzner Cloud location: fsn1, nbg1, hel1, ash, hil or sin."
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
  description = "Networks allowed to reach SSH and the admin port (status, metrics, purge)."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0))])
    error_message = "admin_cidrs must list at least one network in CIDR notation."
  }
}

variable "health_checker_cidrs" {
  description = "Networks (the DNS nodes) allowed to read the admin port's /__edge/status for health and load."
  type        = list(string)
  default     = []
}

variable "hosts" {
  description = "Host names this edge serves; requests for any other host are refused."
  type        = list(string)

  validation {
    condition     = length(var.hosts) > 0
    error_message = "hosts must name at least one host, or the edge would serve any Host header."
  }
}

variable "origins" {
  description = "Origin servers: base URLs (scheme://host[:port], no path) with optional weights."
  type = list(object({
    url    = string
    weight = optional(number, 1)
  }))

  validation {
    condition     = length(var.origins) > 0 && alltrue([for o in var.origins : can(regex("^https?://[^/]+$", o.url))])
    error_message = "origins must list at least one http(s)://host[:port] URL without a path."
  }
}

variable "origin_algorithm" {
  description = "How requests are spread over origins: round_robin, weighted, least_conn or consistent_hash."
  type        = string
  default     = "round_robin"

  validation {
    condition     = contains(["round_robin", "weighted", "least_conn", "consistent_hash"], var.origin_algorithm)
    error_message = "origin_algorithm must be round_robin, weighted, least_conn or consistent_hash."
  }
}

variable "probe_path" {
  description = "Path the edge probes on every origin to decide whether it is healthy."
  type        = string
  default     = "/"
}

variable "workers" {
  description = "Edge worker processes (SO_REUSEPORT); one per vCPU is a good start."
  type        = number
  default     = 2
}

variable "cache_size" {
  description = "Disk cache size limit, e.g. \"20GiB\"."
  type        = string
  default     = "20GiB"
}

variable "memory_cache" {
  description = "In-memory hot-object tier, e.g. \"256MiB\"."
  type        = string
  default     = "256MiB"
}

variable "capacity_rps" {
  description = "Requests per second this edge is sized for; its load factor (and the GSLB's spill-over) is measured against it."
  type        = number
  default     = 1000
}

variable "admin_port" {
  description = "TCP port of the admin listener (/__edge/status, /metrics, purge)."
  type        = number
  default     = 9090
}

variable "tls_certificate_pem" {
  description = "PEM certificate chain for HTTPS on 443; empty serves plain HTTP only."
  type        = string
  default     = ""
}

variable "tls_private_key_pem" {
  description = "PEM private key matching tls_certificate_pem."
  type        = string
  default     = ""
  sensitive   = true
}

variable "admin_token" {
  description = "Bearer token purges on the admin port need (written to /etc/geoedge/admin.token, readable by the service only). Empty: no token."
  type        = string
  default     = ""
  sensitive   = true
}

variable "redirect_http" {
  description = "With TLS configured, answer plain HTTP with a redirect to HTTPS."
  type        = bool
  default     = true
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
