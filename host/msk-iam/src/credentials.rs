//! Where a host's AWS credentials come from, looked up the way AWS SDKs do for a pod: static keys
//! in the environment, IRSA (a web identity token exchanged at STS), or EKS Pod Identity.

use crate::{Credentials, MskIamError};
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::time::Duration;

/// How long one credentials request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One way to get credentials.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`.
    Environment,
    /// IRSA: `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE` (projected by EKS), exchanged with
    /// STS `AssumeRoleWithWebIdentity` (regional endpoint, or `AWS_ENDPOINT_URL_STS`).
    WebIdentity {
        role_arn: String,
        token_file: PathBuf,
        session_name: String,
        sts_endpoint: String,
    },
    /// EKS Pod Identity (or any container credentials endpoint):
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` with the token of `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
    Container {
        uri: String,
        token_file: Option<PathBuf>,
    },
}

impl CredentialSource {
    /// The first source the environment configures, in the AWS SDKs' order; `region` picks the
    /// regional STS endpoint.
    pub fn from_env(region: &str) -> Result<CredentialSource, MskIamError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if var("AWS_ACCESS_KEY_ID").is_some() && var("AWS_SECRET_ACCESS_KEY").is_some() {
            return Ok(CredentialSource::Environment);
        }
        if let (Some(role_arn), Some(token_file)) =
            (var("AWS_ROLE_ARN"), var("AWS_WEB_IDENTITY_TOKEN_FILE"))
        {
            let sts_endpoint = var("AWS_ENDPOINT_URL_STS")
                .or_else(|| var("AWS_ENDPOINT_URL"))
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
            return Ok(CredentialSource::WebIdentity {
                role_arn,
                token_file: token_file.into(),
                session_name: var("AWS_ROLE_SESSION_NAME")
                    .unwrap_or_else(|| "moa-msk-iam".to_string()),
                sts_endpoint,
            });
        }
        if let Some(uri) = var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            return Ok(CredentialSource::Container {
                uri,
                token_file: var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(PathBuf::from),
            });
        }
        Err(MskIamError::NoCredentials)
    }

    /// Fetches credentials now.
    pub async fn fetch(&self) -> Result<Credentials, MskIamError> {
        match self {
            CredentialSource::Environment => {
                let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                Ok(Credentials {
                    access_key_id: var("AWS_ACCESS_KEY_ID").ok_or(MskIamError::NoCredentials)?,
                    secret_access_key: var("AWS_SECRET_ACCESS_KEY")
                        .ok_or(MskIamError::NoCredentials)?,
                    session_token: var("AWS_SESSION_TOKEN"),
                    expires_at: None,
                })
            }
            CredentialSource::WebIdentity {
                role_arn,
                token_file,
                session_name,
                sts_endpoint,
            } => {
                assume_role_with_web_identity(role_arn, token_file, session_name, sts_endpoint)
                    .await
            }
            CredentialSource::Container { uri, token_file } => {
                container_credentials(uri, token_file.as_deref()).await
            }
        }
    }
}

fn client() -> Result<reqwest::Client, MskIamError> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| MskIamError::Fetch(format!("cannot create an HTTP client: {e}")))
}

async fn assume_role_with_web_identity(
    role_arn: &str,
    token_file: &std::path::Path,
    session_name: &str,
    sts_endpoint: &str,
) -> Result<Credentials, MskIamError> {
    // EKS rotates the projected token: read it for every exchange.
    let token = std::fs::read_to_string(token_file).map_err(|e| {
        MskIamError::Fetch(format!(
            "cannot read the web identity token {} (AWS_WEB_IDENTITY_TOKEN_FILE): {e}",
            token_file.display()
        ))
    })?;
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", session_name),
        ("WebIdentityToken", token.trim()),
    ];
    let response = client()?
        .post(sts_endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| MskIamError::Fetch(format!("STS at {sts_endpoint}: {e}")))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| MskIamError::Fetch(format!("STS at {sts_endpoint}: {e}")))?;
    if !status.is_success() {
        let code = element(&body, "Code").unwrap_or_default();
        let message = element(&body, "Message").unwrap_or_default();
        return Err(MskIamError::Fetch(format!(
            "STS AssumeRoleWithWebIdentity for {role_arn} answered {status}: {code} {message}"
        )));
    }
    let field = |name: &str| {
        element(&body, name)
            .ok_or_else(|| MskIamError::Fetch(format!("STS answered without <{name}>: {body}")))
    };
    Ok(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: Some(field("SessionToken")?),
        expires_at: Some(parse_time(&field("Expiration")?)?),
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<String>,
}

async fn container_credentials(
    uri: &str,
    token_file: Option<&std::path::Path>,
) -> Result<Credentials, MskIamError> {
    let mut request = client()?.get(uri);
    if let Some(file) = token_file {
        let token = std::fs::read_to_string(file).map_err(|e| {
            MskIamError::Fetch(format!(
                "cannot read {} (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE): {e}",
                file.display()
            ))
        })?;
        request = request.header("Authorization", token.trim());
    }
    let response = request
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| MskIamError::Fetch(format!("container credentials at {uri}: {e}")))?;
    let body: ContainerCredentials = response
        .json()
        .await
        .map_err(|e| MskIamError::Fetch(format!("container credentials at {uri}: {e}")))?;
    Ok(Credentials {
        access_key_id: body.access_key_id,
        secret_access_key: body.secret_access_key,
        session_token: body.token,
        expires_at: body.expiration.as_deref().map(parse_time).transpose()?,
    })
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, MskIamError> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| MskIamError::Fetch(format!("bad expiration time `{text}`: {e}")))
}

/// The text of the first `<name>` element of an STS answer (a flat, known document), unescaped.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(
        xml[start..end]
            .trim()
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn elements_are_found_and_unescaped() {
        let xml = "<R><Credentials><SessionToken>a&amp;b</SessionToken><Expiration>2026-11-30T10:00:00Z</Expiration></Credentials></R>";
        assert_eq!(super::element(xml, "SessionToken").as_deref(), Some("a&b"));
        assert_eq!(super::element(xml, "Missing"), None);
        assert_eq!(
            super::parse_time("2026-11-30T10:00:00Z")
                .unwrap()
                .to_rfc3339(),
            "2026-11-30T10:00:00+00:00"
        );
    }
}
