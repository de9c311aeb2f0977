variable "name" {
  description = "Cluster name"
  type        = string
}

variable "vpc_id" {
  description = "The VPC"
  type        = string
}

variable "subnet_ids" {
  description = "Three data subnets, one per zone"
  type        = list(string)
}

variable "client_security_group_id" {
  description = "The EKS cluster's security group (the only clients)"
  type        = string
}

variable "kafka_version" {
  description = "Kafka version"
  type        = string
  default     = "3.6.0"
}

variable "broker_instance_type" {
  description = "Broker instance type"
  type        = string
  default     = "kafka.m7g.large"
}

variable "broker_volume_gb" {
  description = "EBS per broker"
  type        = number
  default     = 500
}

variable "kms_key_arn" {
  description = "KMS key for data at rest, logs and the SCRAM secret"
  type        = string
}

variable "tags" {
  description = "Tags for every resource"
  type        = map(string)
  default     = {}
}
