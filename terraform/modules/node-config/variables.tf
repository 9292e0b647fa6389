# Inputs of one GeoEdge node's files: what it runs (role), how GeoEdge is installed (pinned),
# its config (gslb or edge), its secrets, and where the secrets come from at boot.

variable "role" {
  description = "What the node runs: \"gslb\" (authoritative DNS) or \"edge\" (caching proxy)."
  type        = string

  validation {
    condition     = contains(["gslb", "edge"], var.role)
    error_message = "role must be \"gslb\" or \"edge\"."
  }
}

variable "name" {
  description = "The node's name (a hostname label or FQDN); used in comments and as the edge's identity."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?\\.?$", var.name))
    error_message = "name must be a lower-case host name."
  }
}

variable "install" {
  description = "The pinned GeoEdge install: either `requirements` (a lock file where every line carries --hash=sha256:..., e.g. from `pip-compile --generate-hashes`; pip runs with --require-hashes) or `wheel_url` (https, ending in .whl) with its `wheel_sha256`."
  type = object({
    requirements = optional(string, "")
    wheel_url    = optional(string, "")
    wheel_sha256 = optional(string, "")
  })

  validation {
    condition     = (var.install.requirements != "") != (var.install.wheel_url != "")
    error_message = "install needs exactly one of requirements or wheel_url."
  }

  validation {
    condition     = var.install.wheel_url == "" || (can(regex("^https://[^\\s'\"]+/[^/\\s'\"]+\\.whl$", var.install.wheel_url)) && can(regex("^[0-9a-f]{64}$", var.install.wheel_sha256)))
    error_message = "install.wheel_url must be an https URL of a .whl file, with wheel_sha256 its SHA-256 (64 lower-case hex digits)."
  }

  validation {
    condition = alltrue([
      for line in split("\n", replace(var.install.requirements, "\\\n", " ")) :
      can(regex("^\\s*(#.*)?$", line)) || can(regex("--hash=sha256:[0-9a-f]{64}", line))
    ])
    error_message = "Every requirement in install.requirements needs --hash=sha256:... (pip --require-hashes refuses the file otherwise)."
  }
}

variable "ssm" {
  description = "Where secrets and the config come from at boot: null writes them into user data (Hetzner); {region, prefix} makes the node fetch them from SSM Parameter Store parameters named PREFIX/KEY (see output ssm_parameters) with its instance role at every start and reload (AWS)."
  type = object({
    region = string
    prefix = string
  })
  default = null

  validation {
    condition     = var.ssm == null || can(regex("^(/[A-Za-z0-9_.-]+)+$", var.ssm.prefix))
    error_message = "ssm.prefix must be a parameter path such as /geoedge/ns1."
  }
}

variable "token" {
  description = "Bearer token for changes on the node's API (gslb: drain, edge state; edge: purge), 16+ visible ASCII characters, e.g. from `openssl rand -hex 24`. Empty: no token."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.token == "" || can(regex("^[!-~]{16,}$", var.token))
    error_message = "token must be empty or 16+ visible ASCII characters."
  }
}

variable "tls" {
  description = "Edge only: the PEM certificate chain and its private key served on https_listen; null serves plain HTTP only."
  type = object({
    certificate_pem = string
    private_key_pem = string
  })
  default   = null
  sensitive = true

  validation {
    condition     = var.tls == null || (can(regex("-----BEGIN CERTIFICATE-----", var.tls.certificate_pem)) && can(regex("-----BEGIN [A-Z ]*PRIVATE KEY-----", var.tls.private_key_pem)))
    error_message = "tls needs both certificate_pem (a PEM certificate chain) and private_key_pem (its PEM private key): a certificate without its key cannot be served."
  }
}

variable "admin_tls" {
  description = "Edge only: the PEM certificate and private key of the admin listener (admin_listen speaks HTTPS: the DNS nodes' status probes and purges, verified against their health_ca_pems); null: plain HTTP."
  type = object({
    certificate_pem = string
    private_key_pem = string
  })
  default   = null
  sensitive = true

  validation {
    condition     = var.admin_tls == null || (can(regex("-----BEGIN CERTIFICATE-----", var.admin_tls.certificate_pem)) && can(regex("-----BEGIN [A-Z ]*PRIVATE KEY-----", var.admin_tls.private_key_pem)))
    error_message = "admin_tls needs both certificate_pem (a PEM certificate chain) and private_key_pem (its PEM private key)."
  }
}

variable "edge_admin_token" {
  description = "gslb only: the edges' admin token (their `token`), sent with purges and, for edges with admin_private, with status probes ([purge] token_file). Empty: none."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.edge_admin_token == "" || can(regex("^[!-~]{16,}$", var.edge_admin_token))
    error_message = "edge_admin_token must be empty or 16+ visible ASCII characters."
  }
}

variable "peer_token" {
  description = "gslb only: the bearer token sent to gslb.peers (their API `token`; reads of /v1/edges are open without one). Empty: none."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.peer_token == "" || can(regex("^[!-~]{16,}$", var.peer_token))
    error_message = "peer_token must be empty or 16+ visible ASCII characters."
  }
}

variable "health_ca_pems" {
  description = "gslb only: the PEM CA certificates that verify the edges' HTTPS status URLs (the CA of their admin_tls certificates), written as one bundle ([health] ca_file); empty: the system's CAs. A list, so that whether there is one is known before the certificates exist (Terraform plans the files from it)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for pem in var.health_ca_pems : can(regex("^\\s*-----BEGIN CERTIFICATE-----", pem))])
    error_message = "health_ca_pems must be PEM certificates (-----BEGIN CERTIFICATE-----)."
  }
}

variable "dnssec_key_pem" {
  description = "gslb only: the zone's DNSSEC signing key (EC P-256, PEM, from `gslb dnssec-keygen`); empty leaves the zone unsigned."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.dnssec_key_pem == "" || can(regex("-----BEGIN (EC )?PRIVATE KEY-----", var.dnssec_key_pem))
    error_message = "dnssec_key_pem must be empty or a PEM private key (gslb dnssec-keygen writes one)."
  }
}

variable "geoip" {
  description = "gslb only: MaxMind account for geoipupdate (a current GeoLite2 City database twice a week); null uses the GeoLite2 snapshot bundled with GeoEdge."
  type = object({
    account_id  = string
    license_key = string
  })
  default   = null
  sensitive = true

  validation {
    condition     = var.geoip == null || (can(regex("^[0-9]+$", var.geoip.account_id)) && var.geoip.license_key != "")
    error_message = "geoip needs a numeric account_id and a license_key."
  }
}

variable "gslb" {
  description = "gslb only: the DNS node's config (docs/configuration.md): listeners, the zone, the edges, the pools and how edges are probed."
  type = object({
    listen     = list(string)
    workers    = optional(number, 2)
    api_listen = string
    health = optional(object({
      interval = optional(number, 5)
      timeout  = optional(number, 2)
      rise     = optional(number, 2)
      fall     = optional(number, 3)
      jitter   = optional(number, 0.5)
      quorum   = optional(number, 0)
    }), {})
    peers = optional(list(object({
      name = string
      api  = string
    })), [])
    purge = optional(object({
      timeout     = optional(number, 5)
      attempts    = optional(number, 3)
      backoff     = optional(number, 0.5)
      backoff_max = optional(number, 5)
    }), {})
    zone = object({
      origin     = string
      ttl        = optional(number, 3600)
      soa_mname  = string
      soa_rname  = string
      soa_serial = optional(number, 1)
      records    = list(string)
    })
    edges = list(object({
      name       = string
      ipv4       = optional(string, "")
      ipv6       = optional(string, "")
      latitude   = number
      longitude  = number
      weight     = optional(number, 1)
      capacity   = optional(number, 1000)
      status_url = string
    }))
    pools = list(object({
      name           = string
      edges          = list(string)
      policy         = optional(string, "nearest")
      answers        = optional(number, 1)
      ttl            = optional(number, 30)
      load_threshold = optional(number, 0.8)
      hysteresis     = optional(number, 0.1)
      fallback       = optional(list(string), [])
    }))
  })
  default = null

  validation {
    condition = alltrue([
      for g in tolist([var.gslb]) :
      length(g.listen) > 0 && alltrue([for l in g.listen : can(regex("^(\\[[0-9a-f:.]+\\]|[0-9.]+):([1-9][0-9]{0,4})$", l)) && tonumber(regex(":([0-9]+)$", l)[0]) <= 65535])
      && can(regex(":([1-9][0-9]{0,4})$", g.api_listen)) && tonumber(regex(":([0-9]+)$", g.api_listen)[0]) <= 65535
      if g != null
    ])
    error_message = "gslb.listen and gslb.api_listen must be \"IP:port\" (IPv6 as \"[::]:53\") with ports 1-65535."
  }

  validation {
    condition     = alltrue([for g in tolist([var.gslb]) : g.workers >= 1 && g.workers <= 256 && floor(g.workers) == g.workers if g != null])
    error_message = "gslb.workers must be an integer from 1 to 256."
  }

  validation {
    condition = alltrue([
      for g in tolist([var.gslb]) :
      g.health.interval >= 0.05 && g.health.interval <= 3600 && g.health.timeout > 0 && g.health.timeout <= g.health.interval
      && g.health.jitter >= 0 && g.health.jitter < g.health.interval
      && g.health.rise >= 1 && g.health.rise <= 100 && g.health.fall >= 1 && g.health.fall <= 100
      if g != null
    ])
    error_message = "gslb.health: interval 0.05-3600 s, 0 < timeout <= interval (one probe round at a time), 0 <= jitter < interval, rise and fall 1-100."
  }

  validation {
    condition = alltrue(flatten([
      for g in tolist([var.gslb]) : [
        length(distinct(g.peers[*].name)) == length(g.peers) && length(distinct(g.peers[*].api)) == length(g.peers),
        g.health.quorum >= 0 && g.health.quorum <= length(g.peers) + 1 && floor(g.health.quorum) == g.health.quorum,
        [for p in g.peers : can(regex("^[!-~]+$", p.name)) && can(regex("^https?://[^/\\s?#@]+(/[^\\s?#]*)?$", p.api))],
      ] if g != null
    ]))
    error_message = "gslb.peers: unique names, api an http(s) URL without a query, user or fragment (e.g. \"http://192.0.2.53:8053\"), each once; gslb.health.quorum an integer from 0 (a majority) to the number of vantage points (the peers and this node)."
  }

  validation {
    condition = alltrue([
      for g in tolist([var.gslb]) :
      g.purge.timeout >= 0.05 && g.purge.timeout <= 300 && g.purge.attempts >= 1 && g.purge.attempts <= 10 && floor(g.purge.attempts) == g.purge.attempts
      && g.purge.backoff >= 0 && g.purge.backoff <= 60 && g.purge.backoff_max >= g.purge.backoff && g.purge.backoff_max <= 600
      if g != null
    ])
    error_message = "gslb.purge: timeout 0.05-300 s, attempts 1-10, backoff 0-60 s, backoff <= backoff_max <= 600 s."
  }

  validation {
    condition = alltrue([
      for g in tolist([var.gslb]) :
      g.zone.ttl >= 0 && g.zone.ttl <= 2147483647 && g.zone.soa_serial >= 1 && g.zone.soa_serial <= 4294967295
      if g != null
    ])
    error_message = "gslb.zone: ttl 0-2147483647 seconds, soa_serial 1-4294967295."
  }

  validation {
    condition = alltrue(flatten([
      for g in tolist([var.gslb]) : [
        for p in g.pools :
        contains(["nearest", "weighted", "failover", "all"], p.policy) && p.answers >= 1 && p.answers <= 64
        && p.ttl >= 0 && p.ttl <= 86400 && p.load_threshold > 0 && p.load_threshold <= 1
        && p.hysteresis >= 0 && p.hysteresis < p.load_threshold
        && length(p.edges) > 0 && length(setsubtract(concat(p.edges, p.fallback), g.edges[*].name)) == 0
      ] if g != null
    ]))
    error_message = "gslb.pools: policy nearest|weighted|failover|all, answers 1-64, ttl 0-86400, 0 < load_threshold <= 1, 0 <= hysteresis < load_threshold, and edges/fallback naming configured edges."
  }
}

variable "edge" {
  description = "edge only: the edge node's config (docs/configuration.md): listeners, host names, origins and how they are balanced and probed, cache sizes, the admin port."
  type = object({
    listen        = list(string)
    https_listen  = optional(list(string), [])
    redirect_http = optional(bool, true)
    workers       = optional(number, 2)
    hosts         = list(string)
    origins = list(object({
      url    = string
      weight = optional(number, 1)
    }))
    algorithm     = optional(string, "round_robin")
    probe_path    = optional(string, "/")
    cache_size    = optional(string, "20GiB")
    memory_cache  = optional(string, "256MiB")
    admin_listen  = string
    admin_private = optional(bool, false)
    capacity_rps  = optional(number, 1000)
  })
  default = null

  validation {
    condition = alltrue([
      for e in tolist([var.edge]) :
      length(e.listen) > 0 && alltrue([
        for l in concat(e.listen, e.https_listen, [e.admin_listen]) :
        can(regex("^(\\[[0-9a-f:.]+\\]|[0-9.]+):([1-9][0-9]{0,4})$", l)) && tonumber(regex(":([0-9]+)$", l)[0]) <= 65535
      ])
      if e != null
    ])
    error_message = "edge.listen, https_listen and admin_listen must be \"IP:port\" (IPv6 as \"[::]:80\") with ports 1-65535."
  }

  validation {
    condition = alltrue([
      for e in tolist([var.edge]) :
      e.workers >= 1 && e.workers <= 256 && floor(e.workers) == e.workers && e.capacity_rps > 0
      && can(regex("^(?i)[0-9]+(\\.[0-9]+)?\\s*([kmgt]i?b?)?$", e.cache_size)) && can(regex("^(?i)[0-9]+(\\.[0-9]+)?\\s*([kmgt]i?b?)?$", e.memory_cache))
      if e != null
    ])
    error_message = "edge: workers 1-256, capacity_rps > 0, cache_size and memory_cache sizes such as \"20GiB\" or \"256MiB\"."
  }

  validation {
    condition = alltrue([
      for e in tolist([var.edge]) :
      length(e.hosts) > 0 && length(e.origins) > 0
      && alltrue([for o in e.origins : can(regex("^https?://[^/\\s]+$", o.url)) && o.weight >= 0 && floor(o.weight) == o.weight])
      && anytrue([for o in e.origins : o.weight > 0])
      && contains(["round_robin", "weighted", "least_conn", "consistent_hash"], e.algorithm)
      && startswith(e.probe_path, "/")
      if e != null
    ])
    error_message = "edge: at least one host; origins as http(s)://host[:port] without a path, integer weights >= 0 and one above 0; algorithm round_robin|weighted|least_conn|consistent_hash; probe_path starting with /."
  }
}
