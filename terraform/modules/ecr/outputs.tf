output "repository_arns" {
  value = [for r in aws_ecr_repository.this : r.arn]
}

output "registry" {
  description = "ACCOUNT.dkr.ecr.REGION.amazonaws.com, the prefix of app references"
  value       = split("/", values(aws_ecr_repository.this)[0].repository_url)[0]
}
