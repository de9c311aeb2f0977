output "chart" {
  description = "The chart's AWS-specific values (docs/operations.md)"
  value       = module.stack.chart
}

output "secrets" {
  description = "Secrets Manager ARNs for the namespace's moa-backends Secret"
  value       = module.stack.secrets
}
