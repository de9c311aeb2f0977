output "uri_secret_arn" {
  description = "Holds `uri` for the namespace's moa-backends Secret (mongodb-uri)"
  value       = aws_secretsmanager_secret.uri.arn
}
