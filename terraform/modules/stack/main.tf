# One environment's AWS side: VPC, EKS with IRSA for the hosts, ECR, MSK, ElastiCache Redis and
# MongoDB Atlas, wired together under one KMS key. terraform/environments/<env> call it with their
# sizes; its `chart` output is the Helm chart's AWS-specific values (docs/operations.md).

terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = { source = "hashicorp/aws", version = "~> 5.60" }
  }
}

locals {
  tags = { project = "moa", environment = var.environment }
}

data "aws_caller_identity" "current" {}

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_111: a key policy's resource "*" is this key only
  # checkov:skip=CKV_AWS_356: a key policy's resource "*" is this key only
  # checkov:skip=CKV_AWS_109: the account root administers its own key (AWS's default key policy)
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "this" {
  description         = "${var.name}: EKS secrets, MSK, ElastiCache, ECR, logs and Secrets Manager"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.kms.json
}

module "vpc" {
  source             = "../vpc"
  name               = var.name
  cidr               = var.cidr
  zones              = ["${var.region}a", "${var.region}b", "${var.region}c"]
  single_nat_gateway = var.single_nat_gateway
  kms_key_arn        = aws_kms_key.this.arn
  tags               = local.tags
}

module "ecr" {
  source      = "../ecr"
  kms_key_arn = aws_kms_key.this.arn
  tags        = local.tags
}

module "eks" {
  source              = "../eks"
  name                = var.name
  private_subnet_ids  = module.vpc.private_subnet_ids
  public_access_cidrs = var.admin_cidrs
  kms_key_arn         = aws_kms_key.this.arn
  node_instance_types = var.node_instance_types
  node_min            = var.node_min
  node_max            = var.node_max
  host_namespace      = var.namespace
  ecr_repository_arns = module.ecr.repository_arns
  msk_cluster_arn     = module.msk.cluster_arn
  tags                = local.tags
}

module "msk" {
  source                   = "../msk"
  name                     = var.name
  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.data_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  broker_instance_type     = var.broker_instance_type
  broker_volume_gb         = var.broker_volume_gb
  kms_key_arn              = aws_kms_key.this.arn
  tags                     = local.tags
}

module "redis" {
  source                   = "../elasticache"
  name                     = var.name
  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.data_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  node_type                = var.redis_node_type
  replicas                 = var.redis_replicas
  kms_key_arn              = aws_kms_key.this.arn
  tags                     = local.tags
}

module "mongodb" {
  source                   = "../mongodb-atlas"
  name                     = var.name
  atlas_project_id         = var.atlas_project_id
  atlas_region             = var.atlas_region
  aws_region               = var.region
  instance_size            = var.atlas_instance_size
  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.data_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  kms_key_arn              = aws_kms_key.this.arn
  tags                     = local.tags
}
