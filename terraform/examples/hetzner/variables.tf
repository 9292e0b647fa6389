# Provider inputs of the Hetzner Cloud example; the operator's inputs shared with
# examples/aws-multi-region are in operator-variables.tf (a symlink to ../shared).

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

variable "dns_nodes" {
  description = "The authoritative DNS nodes, named ns1, ns2, ... in list order. Use two or more, in different locations."
  type = list(object({
    location    = string
    server_type = optional(string, "cpx21")
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
    server_type = optional(string, "cpx21")
    latitude    = optional(number)
    longitude   = optional(number)
    weight      = optional(number, 1)
    capacity    = optional(number, 1000)
  }))

  validation {
    condition     = length(var.edge_regions) > 0 && alltrue([for r in values(var.edge_regions) : r.count >= 1 && r.capacity > 0 && r.weight >= 0])
    error_message = "edge_regions must hold at least one region, each with count >= 1, capacity > 0 and weight >= 0."
  }

  validation {
    condition = alltrue([
      for r in values(var.edge_regions) :
      contains(["fsn1", "nbg1", "hel1", "ash", "hil", "sin"], r.location) || (r.latitude != null && r.longitude != null)
    ])
    error_message = "A region in a location this configuration does not know the coordinates of needs latitude and longitude."
  }
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
  description = "Push config, secret and package changes over SSH and reload services (false: first-boot config only)."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Extra labels on every resource."
  type        = map(string)
  default     = {}
}
