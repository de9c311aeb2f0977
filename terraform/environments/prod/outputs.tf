# The chart's AWS-specific values (docs/operations.md shows where each goes).

output "cluster_name" {
  value = module.eks.cluster_name
}

output "host_role_arn" {
  description = "host.serviceAccount.annotations.eks.amazonaws.com/role-arn"
  value       = module.eks.host_role_arn
}

output "registry" {
  description = "Prefix of app references (app.reference) and images"
  value       = module.ecr.registry
}

output "kafka_brokers_scram" {
  description = "host.env KAFKA_BROKERS"
  value       = module.msk.bootstrap_brokers_sasl_scram
}

output "kafka_brokers_iam" {
  description = "host.keda.bootstrapServers"
  value       = module.msk.bootstrap_brokers_sasl_iam
}

output "data_subnet_cidrs" {
  description = "networkPolicy.egress cidrs of kafka, redis and mongodb"
  value       = module.vpc.data_subnet_cidrs
}

output "secrets" {
  description = "Secrets Manager ARNs to sync into the namespace's moa-backends Secret"
  value = {
    msk_scram   = module.msk.scram_secret_arn
    redis_url   = module.redis.auth_secret_arn
    mongodb_uri = module.mongodb.uri_secret_arn
  }
}
