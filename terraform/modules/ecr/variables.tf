variable "repositories" {
  description = "Repository names"
  type        = list(string)
  default     = ["moa", "moa-model-runtime", "moa-model-runtime-baked", "moa/shop", "charts/moa"]
}

variable "kms_key_arn" {
  description = "KMS key for the repositories"
  type        = string
}

variable "tags" {
  description = "Tags for every resource"
  type        = map(string)
  default     = {}
}
