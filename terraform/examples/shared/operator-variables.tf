# The operator's inputs shared by every example, linked into each example folder as
# operator-variables.tf (a symlink: one copy, so the examples cannot drift apart). The
# provider-specific inputs are in each example's variables.tf.

variable "zone" {
  description = "The DNS zone the GSLB is authoritative for, e.g. \"example.com\" (delegated to the name servers at the registrar: docs/delegation.md)."
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

  validation {
    condition     = var.hostmaster == null || can(regex("(?i)^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]*[a-z0-9]\\.?$", var.hostmaster))
    error_message = "hostmaster must be a domain name such as hostmaster.example.com (the mailbox's @ written as a dot)."
  }
}

variable "soa_serial" {
  description = "SOA serial. gslb does no zone transfers (it refuses AXFR and IXFR): every DNS node is a primary with the same config, so nothing here compares serials. Bump it when records change anyway; monitoring and people read it to tell which config a node answers from."
  type        = number
  default     = 1

  validation {
    condition     = var.soa_serial >= 1 && var.soa_serial <= 4294967295 && floor(var.soa_serial) == var.soa_serial
    error_message = "soa_serial must be an integer from 1 to 4294967295 (e.g. 2026120101)."
  }
}

variable "zone_ttl" {
  description = "TTL of the zone's own records (NS, glue, extra_records) in seconds. The registrar's NS and glue TTLs are the parent's; see docs/delegation.md."
  type        = number
  default     = 3600

  validation {
    condition     = var.zone_ttl >= 60 && var.zone_ttl <= 86400
    error_message = "zone_ttl must be 60-86400 seconds."
  }
}

variable "extra_records" {
  description = "More zone records in master-file syntax relative to the zone, e.g. \"@ MX 10 mail\", \"mail A 198.51.100.25\"."
  type        = list(string)
  default     = []
}

variable "pool" {
  description = "The name answered from the edges (\"www\", or \"@\" for the apex) and how: policy nearest|weighted|failover|all, answers per response, ttl (what resolvers cache: part of the failover time, docs/failover.md), load_threshold and hysteresis (spill to the next edge above the threshold, back below threshold - hysteresis), fallback_regions (edge regions answered when every member is down; empty: all edges)."
  type = object({
    name             = optional(string, "www")
    policy           = optional(string, "nearest")
    answers          = optional(number, 1)
    ttl              = optional(number, 30)
    load_threshold   = optional(number, 0.8)
    hysteresis       = optional(number, 0.1)
    fallback_regions = optional(list(string), [])
  })
  default = {}

  validation {
    condition     = contains(["nearest", "weighted", "failover", "all"], var.pool.policy)
    error_message = "pool.policy must be nearest, weighted, failover or all."
  }

  validation {
    condition     = var.pool.answers >= 1 && var.pool.answers <= 8 && floor(var.pool.answers) == var.pool.answers
    error_message = "pool.answers must be an integer from 1 to 8."
  }

  validation {
    condition     = var.pool.ttl >= 5 && var.pool.ttl <= 3600
    error_message = "pool.ttl must be 5-3600 seconds (a long TTL keeps clients on a failed edge that long)."
  }

  validation {
    condition     = var.pool.load_threshold > 0 && var.pool.load_threshold <= 1 && var.pool.hysteresis >= 0 && var.pool.hysteresis < var.pool.load_threshold
    error_message = "pool: 0 < load_threshold <= 1 and 0 <= hysteresis < load_threshold."
  }

  validation {
    condition     = var.pool.name == "@" || can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", var.pool.name))
    error_message = "pool.name must be \"@\" or a name relative to the zone, such as www."
  }
}

variable "health" {
  description = "How gslb probes each edge's /__edge/status: every interval seconds (plus up to jitter), timeout per probe, rise good probes to bring an edge back, fall failed ones to take it out. Detection takes about interval x fall (docs/failover.md). The DNS nodes decide together (the health quorum, docs/gslb-operations.md): an edge goes out when quorum of them (0: a majority) see it down."
  type = object({
    interval = optional(number, 5)
    timeout  = optional(number, 2)
    rise     = optional(number, 2)
    fall     = optional(number, 3)
    jitter   = optional(number, 0.5)
    quorum   = optional(number, 0)
  })
  default = {}

  validation {
    condition     = var.health.interval >= 1 && var.health.interval <= 300 && var.health.timeout > 0 && var.health.timeout <= var.health.interval
    error_message = "health: interval 1-300 s, and 0 < timeout <= interval (one probe round at a time)."
  }

  validation {
    condition     = var.health.jitter >= 0 && var.health.jitter < var.health.interval
    error_message = "health.jitter must be at least 0 and below health.interval."
  }

  validation {
    condition     = alltrue([for n in [var.health.rise, var.health.fall] : n >= 1 && n <= 100 && floor(n) == n])
    error_message = "health.rise and health.fall must be integers from 1 to 100."
  }

  validation {
    condition     = var.health.quorum >= 0 && var.health.quorum <= 32 && floor(var.health.quorum) == var.health.quorum
    error_message = "health.quorum must be an integer from 0 (a majority of the DNS nodes) to the number of DNS nodes."
  }
}

variable "origins" {
  description = "Origin servers every edge proxies to: base URLs (scheme://host[:port], no path) with optional integer weights."
  type = list(object({
    url    = string
    weight = optional(number, 1)
  }))

  validation {
    condition     = length(var.origins) > 0 && alltrue([for o in var.origins : can(regex("^https?://[^/\\s]+$", o.url)) && o.weight >= 0 && floor(o.weight) == o.weight])
    error_message = "origins must list at least one http(s)://host[:port] URL without a path, with integer weights >= 0."
  }
}

variable "edge" {
  description = "Settings every edge shares: algorithm (round_robin, weighted, least_conn, consistent_hash) over the origins, probe_path they probe on each origin, workers, cache_size (disk) and memory_cache, admin_port (status, metrics, purge; probed by gslb), admin_private (status and metrics want edge_admin_token too; the DNS nodes send it), hosts served (empty: the pool name)."
  type = object({
    algorithm     = optional(string, "round_robin")
    probe_path    = optional(string, "/")
    workers       = optional(number, 2)
    cache_size    = optional(string, "20GiB")
    memory_cache  = optional(string, "256MiB")
    admin_port    = optional(number, 9090)
    admin_private = optional(bool, false)
    hosts         = optional(list(string), [])
  })
  default = {}

  validation {
    condition     = contains(["round_robin", "weighted", "least_conn", "consistent_hash"], var.edge.algorithm)
    error_message = "edge.algorithm must be round_robin, weighted, least_conn or consistent_hash."
  }

  validation {
    condition     = can(regex("^/[!-~]*$", var.edge.probe_path))
    error_message = "edge.probe_path must be a path starting with /."
  }

  validation {
    condition     = var.edge.workers >= 1 && var.edge.workers <= 64 && floor(var.edge.workers) == var.edge.workers
    error_message = "edge.workers must be an integer from 1 to 64 (one per vCPU is a good start)."
  }

  validation {
    condition     = alltrue([for s in [var.edge.cache_size, var.edge.memory_cache] : can(regex("^(?i)[0-9]+(\\.[0-9]+)?\\s*([kmgt]i?b?)?$", s))])
    error_message = "edge.cache_size and edge.memory_cache must be sizes such as \"20GiB\" or \"256MiB\"."
  }

  validation {
    condition     = var.edge.admin_port >= 1024 && var.edge.admin_port <= 65535 && !contains([80, 443], var.edge.admin_port)
    error_message = "edge.admin_port must be 1024-65535 (and not a public port)."
  }
}

variable "gslb_workers" {
  description = "gslb worker processes per DNS node (one per vCPU)."
  type        = number
  default     = 2

  validation {
    condition     = var.gslb_workers >= 1 && var.gslb_workers <= 64 && floor(var.gslb_workers) == var.gslb_workers
    error_message = "gslb_workers must be an integer from 1 to 64."
  }
}

variable "gslb_api_port" {
  description = "Port of the gslb HTTP API (status page, /metrics, drains) on each DNS node."
  type        = number
  default     = 8053

  validation {
    condition     = var.gslb_api_port >= 1024 && var.gslb_api_port <= 65535 && var.gslb_api_port != 53
    error_message = "gslb_api_port must be 1024-65535."
  }
}

variable "dns_peers" {
  description = "GeoEdge DNS nodes outside this deployment that probe the same edges and join the health quorum, beside this deployment's own DNS nodes (which are peers of each other already): {name, api = \"http://IP:PORT\"}. Their address may reach the DNS nodes' API port and the edges' admin port."
  type = list(object({
    name = string
    api  = string
  }))
  default = []

  validation {
    condition     = alltrue([for p in var.dns_peers : can(regex("^https?://([0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+|\\[[0-9A-Fa-f:]+\\]):[0-9]{1,5}$", p.api)) && can(regex("^[a-z0-9][a-z0-9.-]*$", p.name))])
    error_message = "dns_peers: api must be http(s)://IP:PORT (IPv6 in brackets; an address the firewalls can admit), name a lower-case label such as ns3."
  }

  validation {
    condition     = length(distinct(var.dns_peers[*].name)) == length(var.dns_peers) && length(distinct(var.dns_peers[*].api)) == length(var.dns_peers)
    error_message = "dns_peers: each name and each api once."
  }
}

variable "admin_cidrs" {
  description = "Operator networks allowed to reach SSH and the admin/API ports of every node."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "admin_cidrs must list at least one network in CIDR notation, and not the whole Internet."
  }
}

variable "install" {
  description = "The pinned GeoEdge install on every node: {requirements} (a lock file with --hash=sha256 on every line) or {wheel_url, wheel_sha256}."
  type = object({
    requirements = optional(string, "")
    wheel_url    = optional(string, "")
    wheel_sha256 = optional(string, "")
  })
}

variable "tls" {
  description = "PEM certificate chain (covering the edge hosts) and its private key, served by every edge on 443; null: plain HTTP only. Better passed as TF_VAR_tls."
  type = object({
    certificate_pem = string
    private_key_pem = string
  })
  default   = null
  sensitive = true

  validation {
    condition     = var.tls == null || (can(regex("-----BEGIN CERTIFICATE-----", var.tls.certificate_pem)) && can(regex("-----BEGIN [A-Z ]*PRIVATE KEY-----", var.tls.private_key_pem)))
    error_message = "tls needs both certificate_pem and the private_key_pem that goes with it."
  }
}

variable "dnssec_key_pem" {
  description = "The zone's DNSSEC signing key (EC P-256 PEM from `gslb dnssec-keygen`); empty: unsigned. The DS record for the registrar: output dnssec_ds."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.dnssec_key_pem == "" || can(regex("-----BEGIN (EC )?PRIVATE KEY-----", var.dnssec_key_pem))
    error_message = "dnssec_key_pem must be empty or a PEM private key."
  }
}

variable "geoip" {
  description = "MaxMind account {account_id, license_key}: DNS nodes keep a current GeoLite2 City database with geoipupdate. null: the snapshot bundled with GeoEdge."
  type = object({
    account_id  = string
    license_key = string
  })
  default   = null
  sensitive = true

  validation {
    condition     = var.geoip == null || (can(regex("^[0-9]+$", var.geoip.account_id)) && can(regex("^[!-~]+$", var.geoip.license_key)))
    error_message = "geoip needs the numeric MaxMind account_id and its license_key."
  }
}

variable "edge_admin_https" {
  description = "Serve the edges' admin port (status, metrics, purge) over HTTPS: this configuration creates a private CA, each edge gets a certificate for its address from it (modules/admin-cert), and the DNS nodes verify it. false: plain HTTP (still firewalled to the DNS nodes and admin_cidrs)."
  type        = bool
  default     = true
}

variable "edge_admin_token" {
  description = "Bearer token the edges require for purges (and, with edge.admin_private, for status and metrics), e.g. from `openssl rand -hex 24`; the DNS nodes send it with purges and probes. Empty: none (the admin port stays firewalled)."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.edge_admin_token == "" || can(regex("^[!-~]{16,}$", var.edge_admin_token))
    error_message = "edge_admin_token must be empty or 16+ visible ASCII characters."
  }
}

variable "gslb_api_token" {
  description = "Bearer token the DNS nodes' API requires for changes (drain, edge state); the DNS nodes send it to each other (their peers). Empty: none (the API port stays firewalled)."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.gslb_api_token == "" || can(regex("^[!-~]{16,}$", var.gslb_api_token))
    error_message = "gslb_api_token must be empty or 16+ visible ASCII characters."
  }
}
