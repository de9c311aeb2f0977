variable "name" {
  description = "Replication group id"
  type        = string
}

variable "vpc_id" {
  description = "The VPC"
  type        = string
}

variable "subnet_ids" {
  description = "Data subnets"
  type        = list(string)
}

variable "client_security_group_id" {
  description = "The EKS cluster's security group"
  type        = string
}

variable "node_type" {
  description = "Cache node type"
  type        = string
  default     = "cache.r7g.large"
}

variable "replicas" {
  description = "Read replicas (0 in dev: no failover)"
  type        = number
  default     = 2
}

variable "kms_key_arn" {
  description = "KMS key for data at rest and the AUTH secret"
  type        = string
}

variable "tags" {
  description = "Tags for every resource"
  type        = map(string)
  default     = {}
}
