# One GeoEdge node on AWS EC2 (role gslb or edge), built on modules/node-config:
#   - an Elastic IP: a DNS node is associated with its glue address, created by the caller
#     with prevent_destroy (examples/aws-multi-region) so that it outlives any instance and
#     every DNS node's config can name all of them; an edge gets its own, the address gslb
#     hands out;
#   - a security group: DNS (53 udp+tcp) or HTTP(S) from anywhere, SSH and the admin/API
#     port from operators only (and the DNS nodes' probes, the DNS peers);
#   - SSM Parameter Store parameters holding the config and the secrets (SecureString), read
#     at every start and reload by the instance role: no secret travels in user data;
#   - with admin_ca (edges): the admin listener's certificate for the Elastic IP, issued by
#     that CA, so the DNS nodes probe and purge over verified HTTPS;
#   - the instance (Debian 12, IMDSv2 only, encrypted root volume).
# Config changes update the parameters in place; `reload_command` (output) applies them.

data "aws_region" "this" {}

data "aws_caller_identity" "this" {}

data "aws_partition" "this" {}

data "aws_ami" "debian" {
  count       = var.ami_id == "" ? 1 : 0
  most_recent = true
  # Debian's own AWS account (https://wiki.debian.org/Cloud/AmazonEC2Image).
  owners = ["136693071363"]

  filter {
    name   = "name"
    values = ["debian-12-${var.architecture}-*"]
  }
}

locals {
  is_gslb    = var.role == "gslb"
  ssm_prefix = "/geoedge/${var.name}"
  ami        = var.ami_id != "" ? var.ami_id : one(data.aws_ami.debian[*].id)
  tags       = merge(var.tags, { Name = var.name, "geoedge:role" = var.role })

  # The admin/API port and the public ports, from the node's own listeners.
  admin_listen = local.is_gslb ? try(var.gslb.api_listen, "") : try(var.edge.admin_listen, "")
  admin_port   = tonumber(regex(":([0-9]+)$", local.admin_listen)[0])
  public_listen = local.is_gslb ? try(var.gslb.listen, []) : concat(
    try(var.edge.listen, []), nonsensitive(var.tls == null) ? [] : try(var.edge.https_listen, [])
  )
  public_ports = distinct([for l in local.public_listen : tonumber(regex(":([0-9]+)$", l)[0])])
  public_ip    = local.is_gslb ? try(var.glue.public_ip, null) : one(aws_eip.edge[*].public_ip)
  public_rules = merge(
    { for p in local.public_ports : "tcp-${p}" => { protocol = "tcp", port = p } },
    local.is_gslb ? { for p in local.public_ports : "udp-${p}" => { protocol = "udp", port = p } } : {},
  )
  # Keyed by position: the DNS nodes' and peers' addresses are Elastic IPs the same apply may
  # create, unknown at plan, and for_each keys must be known.
  admin_sources = merge(
    { for i, c in var.admin_cidrs : "admin-${i}" => c },
    { for i, c in var.health_checker_cidrs : "dns-${i}" => c },
    { for i, c in var.peer_cidrs : "peer-${i}" => c },
  )

  admin_https = !local.is_gslb && nonsensitive(var.admin_ca != null)
  admin_tls = local.admin_https ? {
    certificate_pem = one(module.admin_cert[*].certificate_pem)
    private_key_pem = one(module.admin_cert[*].private_key_pem)
  } : null
}

module "config" {
  source = "../node-config"

  role             = var.role
  name             = var.name
  install          = var.install
  ssm              = { region = data.aws_region.this.name, prefix = local.ssm_prefix }
  token            = var.token
  tls              = var.tls
  admin_tls        = local.admin_tls
  edge_admin_token = var.edge_admin_token
  peer_token       = var.peer_token
  health_ca_pems   = var.health_ca_pems
  dnssec_key_pem   = var.dnssec_key_pem
  geoip            = var.geoip
  gslb             = var.gslb
  edge             = var.edge
}

# --- the admin certificate: issued by admin_ca for the edge's Elastic IP ----------------------
# The DNS nodes probe https://EIP:PORT/__edge/status, so the certificate names that address.
# The key lives in the state and in a SecureString parameter, like every other secret here.

module "admin_cert" {
  source = "../admin-cert"
  count  = local.admin_https ? 1 : 0

  name          = var.name
  ip_addresses  = [one(aws_eip.edge[*].public_ip)]
  ca            = var.admin_ca
  validity_days = var.admin_cert_validity_days
}

# --- addresses ------------------------------------------------------------------------------

resource "aws_eip" "edge" {
  count  = local.is_gslb ? 0 : 1
  domain = "vpc"
  tags   = local.tags
}

resource "aws_eip_association" "this" {
  instance_id   = aws_instance.this.id
  allocation_id = local.is_gslb ? try(var.glue.allocation_id, null) : one(aws_eip.edge[*].id)

  lifecycle {
    precondition {
      condition     = var.role == "edge" || var.glue != null
      error_message = "A gslb node answers on its glue address: pass glue (the Elastic IP's allocation_id and public_ip)."
    }

    precondition {
      condition     = var.role == "edge" || nonsensitive(var.admin_ca == null)
      error_message = "admin_ca issues an edge's admin certificate; a gslb node verifies edges with health_ca_pems."
    }
  }
}

# --- firewall -------------------------------------------------------------------------------

resource "aws_security_group" "this" {
  name        = "${var.name}-sg"
  description = "GeoEdge ${var.role} node ${var.name}"
  vpc_id      = data.aws_subnet.this.vpc_id
  tags        = local.tags
}

data "aws_subnet" "this" {
  id = var.subnet_id
}

resource "aws_vpc_security_group_ingress_rule" "public" {
  for_each = local.public_rules

  security_group_id = aws_security_group.this.id
  description       = local.is_gslb ? "DNS over ${upper(each.value.protocol)} from anywhere" : "HTTP(S) from anywhere"
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = toset(var.admin_cidrs)

  security_group_id = aws_security_group.this.id
  description       = "SSH from operators"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = can(cidrnetmask(each.key)) ? each.key : null
  cidr_ipv6         = can(cidrnetmask(each.key)) ? null : each.key
}

resource "aws_vpc_security_group_ingress_rule" "admin" {
  for_each = local.admin_sources

  security_group_id = aws_security_group.this.id
  description       = local.is_gslb ? "gslb API from operators and DNS peers" : "edge admin port from operators and DNS nodes"
  ip_protocol       = "tcp"
  from_port         = local.admin_port
  to_port           = local.admin_port
  cidr_ipv4         = can(cidrnetmask(each.value)) ? each.value : null
  cidr_ipv6         = can(cidrnetmask(each.value)) ? null : each.value
}

resource "aws_vpc_security_group_egress_rule" "this" {
  for_each = toset([for p in var.egress_ports : tostring(p)])

  security_group_id = aws_security_group.this.id
  description       = "Outbound TCP ${each.key}: packages, SSM, origins, edge probes"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.key)
  to_port           = tonumber(each.key)
  cidr_ipv4         = "0.0.0.0/0"
}

# --- config and secrets -------------------------------------------------------------------

resource "aws_ssm_parameter" "this" {
  #checkov:skip=CKV_AWS_337:The AWS managed key (aws/ssm) encrypts SecureStrings; a customer managed key adds cost and a key policy to keep per region without changing who can read them (the instance role).
  for_each = module.config.files

  name        = "${local.ssm_prefix}/${each.key}"
  description = "GeoEdge ${var.role} node ${var.name}: ${each.value.path}"
  # SecureString for all, the config too: one rule, and the config names where secrets are.
  type  = "SecureString"
  value = module.config.file_contents[each.key]
  # Standard parameters hold 4 KB; a gslb config with many edges and records can be larger.
  tier = "Intelligent-Tiering"
  tags = local.tags
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "read" {
  statement {
    sid     = "ReadOwnParameters"
    actions = ["ssm:GetParameter"]
    # SecureStrings use the AWS managed key aws/ssm, whose key policy lets the account's
    # principals decrypt through SSM: no kms:Decrypt statement needed.
    resources = ["arn:${data.aws_partition.this.partition}:ssm:${data.aws_region.this.name}:${data.aws_caller_identity.this.account_id}:parameter${local.ssm_prefix}/*"]
  }
}

resource "aws_iam_role" "this" {
  name               = "${var.name}-node"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "read" {
  name   = "read-geoedge-parameters"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.read.json
}

resource "aws_iam_instance_profile" "this" {
  name = "${var.name}-node"
  role = aws_iam_role.this.name
  tags = local.tags
}

# --- the instance -------------------------------------------------------------------------

resource "aws_instance" "this" {
  #checkov:skip=CKV_AWS_88:A name server and an edge serve the public: the instance is reached on its Elastic IP.
  ami                    = local.ami
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.this.id]
  iam_instance_profile   = aws_iam_instance_profile.this.name
  key_name               = var.key_name
  user_data              = module.config.user_data
  monitoring             = true
  ebs_optimized          = true
  tags                   = local.tags

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = var.root_volume_size
  }

  # The first boot fetches these; they must exist before it.
  depends_on = [aws_ssm_parameter.this, aws_iam_role_policy.read]

  lifecycle {
    # First boot only: later config changes go through the parameters (reload_command), and
    # a newer Debian AMI must not replace a running name server.
    ignore_changes = [user_data, ami]
  }
}
