# The prod environment: modules/stack with prod's sizes. State lives in S3
# (terraform init -backend-config=backend.hcl; that file is not in the repository).

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
    tags = { project = "moa", environment = "prod" }
  }
}

# Atlas API keys from MONGODB_ATLAS_PUBLIC_KEY / MONGODB_ATLAS_PRIVATE_KEY, never from files.
provider "mongodbatlas" {}

module "stack" {
  source               = "../../modules/stack"
  name                 = "moa-prod"
  environment          = "prod"
  region               = var.region
  atlas_project_id     = var.atlas_project_id
  atlas_region         = var.atlas_region
  namespace            = var.namespace
  admin_cidrs          = var.admin_cidrs
  cidr                 = "10.20.0.0/16"
  single_nat_gateway   = false
  node_instance_types  = ["m7i.xlarge"]
  node_min             = 3
  node_max             = 12
  broker_instance_type = "kafka.m7g.large"
  broker_volume_gb     = 500
  redis_node_type      = "cache.r7g.large"
  redis_replicas       = 2
  atlas_instance_size  = "M30"
}
