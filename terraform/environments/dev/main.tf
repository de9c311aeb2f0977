# The dev environment: VPC, EKS with IRSA for the hosts, ECR, MSK, ElastiCache Redis and MongoDB
# Atlas, wired together. Its outputs are the chart's AWS-specific values (docs/operations.md).
# State lives in S3 (terraform init -backend-config=backend.hcl; the file is not in the repo).

terraform {
  required_version = ">= 1.6"
  backend "s3" {}
  required_providers {
    aws          = { source = "hashicorp/aws", version = "~> 5.60" }
    mongodbatlas = { source = "mongodb/mongodbatlas", version = "~> 1.21" }
    random       = { source = "hashicorp/random", version = "~> 3.6" }
    tls          = { source = "hashicorp/tls", version = "~> 4.0" }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

# Atlas API keys from MONGODB_ATLAS_PUBLIC_KEY / MONGODB_ATLAS_PRIVATE_KEY, never from files.
provider "mongodbatlas" {}

locals {
  name = "moa-dev"
  tags = { project = "moa", environment = "dev" }
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
  description         = "${local.name}: EKS secrets, MSK, ElastiCache, ECR, logs and Secrets Manager"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.kms.json
}

module "vpc" {
  source             = "../../modules/vpc"
  name               = local.name
  cidr               = "10.10.0.0/16"
  zones              = ["${var.region}a", "${var.region}b", "${var.region}c"]
  single_nat_gateway = true
  kms_key_arn        = aws_kms_key.this.arn
  tags               = local.tags
}

module "ecr" {
  source      = "../../modules/ecr"
  kms_key_arn = aws_kms_key.this.arn
  tags        = local.tags
}

module "eks" {
  source              = "../../modules/eks"
  name                = local.name
  private_subnet_ids  = module.vpc.private_subnet_ids
  public_access_cidrs = var.admin_cidrs
  kms_key_arn         = aws_kms_key.this.arn
  node_instance_types = ["m7i.large"]
  node_min            = 2
  node_max            = 4
  host_namespace      = var.namespace
  ecr_repository_arns = module.ecr.repository_arns
  msk_cluster_arn     = module.msk.cluster_arn
  tags                = local.tags
}

module "msk" {
  source                   = "../../modules/msk"
  name                     = local.name
  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.data_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  broker_instance_type     = "kafka.t3.small"
  broker_volume_gb         = 50
  kms_key_arn              = aws_kms_key.this.arn
  tags                     = local.tags
}

module "redis" {
  source                   = "../../modules/elasticache"
  name                     = local.name
  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.data_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  node_type                = "cache.t4g.small"
  replicas                 = 0
  kms_key_arn              = aws_kms_key.this.arn
  tags                     = local.tags
}

module "mongodb" {
  source                   = "../../modules/mongodb-atlas"
  name                     = local.name
  atlas_project_id         = var.atlas_project_id
  atlas_region             = var.atlas_region
  aws_region               = var.region
  instance_size            = "M10"
  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.data_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  kms_key_arn              = aws_kms_key.this.arn
  tags                     = local.tags
}
