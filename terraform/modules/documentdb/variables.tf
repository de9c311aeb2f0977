variable "name" {
  description = "Cluster identifier"
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

variable "instances" {
  description = "Instances (1 writer + readers)"
  type        = number
  default     = 3
}

variable "instance_class" {
  description = "Instance class"
  type        = string
  default     = "db.r6g.large"
}

variable "kms_key_arn" {
  description = "KMS key for storage and the URI secret"
  type        = string
}

variable "tags" {
  description = "Tags for every resource"
  type        = map(string)
  default     = {}
}
