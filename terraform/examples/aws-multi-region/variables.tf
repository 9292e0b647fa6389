# Provider inputs of the AWS example (three regions, one provider alias each); the operator's
# inputs shared with examples/hetzner are in operator-variables.tf (a symlink to ../shared).

variable "name_prefix" {
  description = "Prefix of every instance, security group, IAM role and SSM path."
  type        = string
  default     = "geoedge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,20}$", var.name_prefix))
    error_message = "name_prefix must be a lower-case label of at most 21 characters."
  }
}

variable "regions" {
  description = "The three regions, one provider alias each: ns1 and edges in eu, ns2 and edges in us, edges in ap. Per region: the AWS region, edge count, instance type, and the coordinates the GSLB measures distance to."
  type = object({
    eu = optional(object({
      region        = optional(string, "eu-central-1")
      edges         = optional(number, 1)
      instance_type = optional(string, "t3.small")
      latitude      = optional(number, 50.1109)
      longitude     = optional(number, 8.6821)
      capacity      = optional(number, 1000)
    }), {})
    us = optional(object({
      region        = optional(string, "us-east-1")
      edges         = optional(number, 1)
      instance_type = optional(string, "t3.small")
      latitude      = optional(number, 39.0438)
      longitude     = optional(number, -77.4874)
      capacity      = optional(number, 1000)
    }), {})
    ap = optional(object({
      region        = optional(string, "ap-southeast-1")
      edges         = optional(number, 1)
      instance_type = optional(string, "t3.small")
      latitude      = optional(number, 1.3521)
      longitude     = optional(number, 103.8198)
      capacity      = optional(number, 1000)
    }), {})
  })
  default = {}

  validation {
    condition     = alltrue([for r in [var.regions.eu, var.regions.us, var.regions.ap] : r.edges >= 1 && r.edges <= 20 && floor(r.edges) == r.edges && r.capacity > 0])
    error_message = "Each region needs 1-20 edges and a capacity above 0."
  }

  validation {
    condition     = var.regions.eu.region != var.regions.us.region
    error_message = "ns1 (eu) and ns2 (us) must be in different regions."
  }

  validation {
    condition     = alltrue([for r in [var.regions.eu, var.regions.us, var.regions.ap] : abs(r.latitude) <= 90 && abs(r.longitude) <= 180])
    error_message = "latitude must be within -90..90 and longitude within -180..180."
  }
}

variable "dns_instance_type" {
  description = "Instance type of the two DNS nodes."
  type        = string
  default     = "t3.small"
}

variable "key_name" {
  description = "EC2 key pair name (the same name in every region) for SSH as admin; null: none."
  type        = string
  default     = null
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
