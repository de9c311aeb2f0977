variable "name" {
  description = "Name prefix (moa-<environment>)"
  type        = string
}

variable "environment" {
  description = "dev or prod"
  type        = string
}

variable "region" {
  description = "AWS region"
  type        = string
}

variable "atlas_project_id" {
  description = "The Atlas project for this environment"
  type        = string
}

variable "atlas_region" {
  description = "The region in Atlas's naming"
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the moa release"
  type        = string
}

variable "admin_cidrs" {
  description = "CIDRs allowed to the EKS public API endpoint (empty: private only)"
  type        = list(string)
  default     = []
}

variable "cidr" {
  description = "The VPC's /16"
  type        = string
}

variable "single_nat_gateway" {
  description = "One NAT gateway instead of one per zone"
  type        = bool
}

variable "node_instance_types" {
  description = "EKS node instance types"
  type        = list(string)
}

variable "node_min" {
  description = "EKS nodes at least"
  type        = number
}

variable "node_max" {
  description = "EKS nodes at most"
  type        = number
}

variable "broker_instance_type" {
  description = "MSK broker instance type"
  type        = string
}

variable "broker_volume_gb" {
  description = "MSK EBS per broker"
  type        = number
}

variable "redis_node_type" {
  description = "ElastiCache node type"
  type        = string
}

variable "redis_replicas" {
  description = "ElastiCache read replicas (0: no failover)"
  type        = number
}

variable "atlas_instance_size" {
  description = "Atlas tier"
  type        = string
}
