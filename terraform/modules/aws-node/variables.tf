# Inputs of one GeoEdge node on AWS EC2. The config inputs (role, install, token, tls,
# edge_admin_token, peer_token, health_ca_pems, dnssec_key_pem, geoip, gslb, edge) go to
# modules/node-config unchanged; see its README. admin_ca issues the edge's admin_tls here.

variable "role" {
  description = "\"gslb\" (authoritative DNS node, on the glue Elastic IP passed in glue) or \"edge\" (caching proxy)."
  type        = string

  validation {
    condition     = contains(["gslb", "edge"], var.role)
    error_message = "role must be \"gslb\" or \"edge\"."
  }
}

variable "name" {
  description = "Node name: the instance's Name tag, the prefix of its security group and IAM role, and its SSM path /geoedge/NAME."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,40}$", var.name))
    error_message = "name must be a lower-case label of at most 41 characters (IAM role names add a suffix)."
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
  description = "Bearer token for state changes on the node's API (stored as a SecureString parameter). Empty: none."
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
  description = "Edge only: a private CA {certificate_pem, private_key_pem} that issues the edge's admin certificate for its Elastic IP: admin_listen speaks HTTPS, and the DNS nodes verify it with the CA certificate (their health_ca_pems). null: plain HTTP."
  type = object({
    certificate_pem = string
    private_key_pem = string
  })
  default   = null
  sensitive = true
}

variable "admin_cert_validity_days" {
  description = "Edge with admin_ca: how long the issued admin certificate is valid (modules/admin-cert); Terraform issues a new one (a config update, then reload_command) within the last 30 days."
  type        = number
  default     = 365
}

variable "edge_admin_token" {
  description = "gslb only: the edges' admin token, sent with purges and with status probes of private edges (a SecureString parameter). Empty: none."
  type        = string
  default     = ""
  sensitive   = true
}

variable "peer_token" {
  description = "gslb only: the bearer token sent to the gslb.peers (a SecureString parameter). Empty: none."
  type        = string
  default     = ""
  sensitive   = true
}

variable "health_ca_pems" {
  description = "gslb only: PEM CA certificates verifying the edges' HTTPS status URLs (the admin_ca certificate of the edges); empty: the system's CAs."
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
  description = "gslb only: the DNS node's config object (see modules/node-config). On EC2 listen on 0.0.0.0: the Elastic IP is translated to the instance's private address."
  type        = any
  default     = null
}

variable "edge" {
  description = "edge only: the edge's config object (see modules/node-config)."
  type        = any
  default     = null
}

variable "glue" {
  description = "gslb only: the Elastic IP the DNS node answers on (its glue address), created by the caller with prevent_destroy: {allocation_id, public_ip}."
  type = object({
    allocation_id = string
    public_ip     = string
  })
  default = null
}

variable "subnet_id" {
  description = "Subnet of the instance (a public subnet: its route table needs an Internet gateway)."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type."
  type        = string
  default     = "t3.small"
}

variable "architecture" {
  description = "CPU architecture of the Debian 12 AMI looked up when ami_id is empty: amd64 or arm64 (match instance_type)."
  type        = string
  default     = "amd64"

  validation {
    condition     = contains(["amd64", "arm64"], var.architecture)
    error_message = "architecture must be amd64 or arm64."
  }
}

variable "ami_id" {
  description = "AMI to boot (Debian 12 or later); empty: the newest official Debian 12 AMI of the region."
  type        = string
  default     = ""
}

variable "key_name" {
  description = "EC2 key pair for SSH as admin (Debian AMI user); null: no SSH key."
  type        = string
  default     = null
}

variable "root_volume_size" {
  description = "Root volume size in GiB (the edge's disk cache lives there: leave room for cache_size)."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 16384
    error_message = "root_volume_size must be 8-16384 GiB."
  }
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
  description = "Edge only: the DNS nodes' addresses (/32), allowed on the admin port: status probes and purges."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.health_checker_cidrs : can(cidrhost(c, 0))])
    error_message = "health_checker_cidrs must be networks in CIDR notation."
  }
}

variable "peer_cidrs" {
  description = "gslb only: the other DNS nodes (/32), allowed to reach this node's API port: the DNS peers of the health quorum (gslb.peers), which read /v1/edges."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.peer_cidrs : can(cidrhost(c, 0))])
    error_message = "peer_cidrs must be networks in CIDR notation."
  }
}

variable "egress_ports" {
  description = "TCP ports the node may connect out to (anywhere): 80 and 443 for packages, pip and SSM; add the edges' admin port on DNS nodes and the origins' ports on edges."
  type        = list(number)
  default     = [80, 443]

  validation {
    condition     = alltrue([for p in var.egress_ports : p >= 1 && p <= 65535 && floor(p) == p])
    error_message = "egress_ports must be port numbers 1-65535."
  }
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
