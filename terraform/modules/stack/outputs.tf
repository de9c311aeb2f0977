output "chart" {
  description = "The chart's AWS-specific values (docs/operations.md shows where each goes)"
  value = {
    cluster_name        = module.eks.cluster_name
    host_role_arn       = module.eks.host_role_arn
    registry            = module.ecr.registry
    kafka_brokers_scram = module.msk.bootstrap_brokers_sasl_scram
    kafka_brokers_iam   = module.msk.bootstrap_brokers_sasl_iam
    data_subnet_cidrs   = module.vpc.data_subnet_cidrs
  }
}

output "secrets" {
  description = "Secrets Manager ARNs to sync into the namespace's moa-backends Secret"
  value = {
    msk_scram   = module.msk.scram_secret_arn
    redis_url   = module.redis.auth_secret_arn
    mongodb_uri = module.mongodb.uri_secret_arn
  }
}
