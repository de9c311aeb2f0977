output "cluster_name" {
  value = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  value = aws_eks_cluster.this.endpoint
}

output "cluster_security_group_id" {
  value = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

output "oidc_provider_arn" {
  value = aws_iam_openid_connect_provider.this.arn
}

output "host_role_arn" {
  description = "For the chart's host.serviceAccount.annotations.eks.amazonaws.com/role-arn"
  value       = aws_iam_role.host.arn
}
