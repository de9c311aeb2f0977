variable "name" {
  description = "Cluster name"
  type        = string
}

variable "atlas_project_id" {
  description = "The Atlas project (its API keys come from MONGODB_ATLAS_PUBLIC_KEY / _PRIVATE_KEY)"
  type        = string
}

variable "atlas_region" {
  description = "Atlas's name of the region, e.g. AP_NORTHEAST_2"
  type        = string
}

variable "aws_region" {
  description = "The AWS region, e.g. ap-northeast-2"
  type        = string
}

variable "instance_size" {
  description = "Atlas tier (M30+ for production; vector search needs M10+)"
  type        = string
  default     = "M30"
}

variable "database" {
  description = "The database moa uses"
  type        = string
  default     = "moa"
}

variable "vpc_id" {
  description = "The VPC"
  type        = string
}

variable "subnet_ids" {
  description = "Data subnets for the PrivateLink endpoint"
  type        = list(string)
}

variable "client_security_group_id" {
  description = "The EKS cluster's security group"
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for the connection-string secret"
  type        = string
}

variable "tags" {
  description = "Tags for AWS resources"
  type        = map(string)
  default     = {}
}
