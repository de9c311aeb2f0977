variable "region" {
  description = "AWS region"
  type        = string
  default     = "ap-northeast-2"
}

variable "atlas_region" {
  description = "The same region in Atlas's naming"
  type        = string
  default     = "AP_NORTHEAST_2"
}

variable "atlas_project_id" {
  description = "The Atlas project for this environment"
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
