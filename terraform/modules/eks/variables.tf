variable "name" {
  description = "Cluster name"
  type        = string
}

variable "kubernetes_version" {
  description = "EKS version"
  type        = string
  default     = "1.30"
}

variable "private_subnet_ids" {
  description = "Subnets of the control plane's interfaces and the nodes"
  type        = list(string)
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to the public API endpoint; empty keeps the endpoint private"
  type        = list(string)
  default     = []
}

variable "kms_key_arn" {
  description = "KMS key for Kubernetes secrets and the control-plane logs"
  type        = string
}

variable "node_instance_types" {
  description = "Instance types of the default node group"
  type        = list(string)
  default     = ["m7i.xlarge"]
}

variable "node_min" {
  description = "Nodes at least"
  type        = number
  default     = 3
}

variable "node_max" {
  description = "Nodes at most"
  type        = number
  default     = 12
}

variable "host_namespace" {
  description = "Namespace of the moa hosts (the chart's release namespace)"
  type        = string
}

variable "host_service_account" {
  description = "The hosts' service account (the chart's fullname by default)"
  type        = string
  default     = "moa"
}

variable "ecr_repository_arns" {
  description = "ECR repositories the hosts pull from (apps and images)"
  type        = list(string)
}

variable "msk_cluster_arn" {
  description = "The MSK cluster the hosts use with IAM auth"
  type        = string
}

variable "tags" {
  description = "Tags for every resource"
  type        = map(string)
  default     = {}
}
