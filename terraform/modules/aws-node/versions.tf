terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.x: aws_vpc_security_group_{ingress,egress}_rule and `domain` on aws_eip.
      version = ">= 5.30.0, < 7.0.0"
    }
  }
}
