output "cluster_arn" {
  value = aws_msk_cluster.this.arn
}

output "bootstrap_brokers_sasl_scram" {
  description = "For clients without IAM signing (port 9096)"
  value       = aws_msk_cluster.this.bootstrap_brokers_sasl_scram
}

output "bootstrap_brokers_sasl_iam" {
  description = "For the chart's KAFKA_BROKERS and host.keda.bootstrapServers (port 9098, IAM)"
  value       = aws_msk_cluster.this.bootstrap_brokers_sasl_iam
}

output "scram_secret_arn" {
  description = "Sync it into the namespace's moa-backends Secret (External Secrets)"
  value       = aws_secretsmanager_secret.scram.arn
}
