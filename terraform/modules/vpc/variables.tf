variable "name" {
  description = "Name prefix of every resource"
  type        = string
}

variable "cidr" {
  description = "The VPC's CIDR (a /16: subnets are /20)"
  type        = string
}

variable "zones" {
  description = "Three availability zones, named explicitly (a new zone in the region changes nothing)"
  type        = list(string)
  validation {
    condition     = length(var.zones) == 3
    error_message = "Give exactly three zones."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway instead of one per zone (dev)"
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key for the flow logs"
  type        = string
}

variable "tags" {
  description = "Tags for every resource"
  type        = map(string)
  default     = {}
}
