//! Amazon MSK IAM authentication for Kafka clients that speak SASL/OAUTHBEARER (librdkafka): the
//! token is a base64url SigV4-presigned `kafka-cluster:Connect` URL, signed with the pod's AWS
//! credentials, which are kept fresh in the background.
//!
//! The token format follows AWS's MSK IAM SASL signers: `https://kafka.<region>.amazonaws.com/`
//! with `Action=kafka-cluster:Connect`, presigned for 900 s with service `kafka-cluster`, plus a
//! `User-Agent` parameter, base64url without padding.

mod credentials;
pub mod sigv4;

pub use credentials::CredentialSource;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// How long a token is valid.
pub const TOKEN_EXPIRY: Duration = Duration::from_secs(900);
/// Credentials are refreshed this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// The wait before trying again after a failed refresh.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(15);

/// AWS credentials.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// `None`: they do not expire (static keys).
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MskIamError {
    #[error(
        "no AWS credentials for MSK IAM: run the host with IRSA (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, set by EKS for a service account with an eks.amazonaws.com/role-arn annotation), EKS Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    NoCredentials,
    #[error("cannot get AWS credentials for MSK IAM: {0}")]
    Fetch(String),
    #[error("the AWS credentials for MSK IAM expired at {0} and could not be refreshed")]
    Expired(DateTime<Utc>),
}

/// A token for one SASL/OAUTHBEARER authentication.
#[derive(Debug, Clone)]
pub struct MskToken {
    pub token: String,
    /// Who signed it (the access key id); MSK derives the identity from the signature.
    pub principal: String,
    /// When it stops being valid, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// The MSK token for `region` signed at `at` with `credentials`.
pub fn token_for(credentials: &Credentials, region: &str, at: DateTime<Utc>) -> MskToken {
    let host = format!("kafka.{region}.amazonaws.com");
    let url = sigv4::presign_url(
        &sigv4::Presign {
            method: "GET",
            host: &host,
            path: "/",
            query: &[("Action", "kafka-cluster:Connect")],
            service: "kafka-cluster",
            region,
            expires_seconds: TOKEN_EXPIRY.as_secs(),
            payload_sha256: sigv4::EMPTY_PAYLOAD_SHA256,
        },
        credentials,
        at,
    );
    let url = format!(
        "{url}&User-Agent={}",
        sigv4::encode(concat!("moa-msk-iam/", env!("CARGO_PKG_VERSION")))
    );
    MskToken {
        token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url),
        principal: credentials.access_key_id.clone(),
        expires_at_ms: (at.timestamp() + TOKEN_EXPIRY.as_secs() as i64) * 1000,
    }
}

/// Signs MSK tokens with credentials it keeps fresh.
pub struct MskIam {
    region: String,
    source: CredentialSource,
    credentials: RwLock<Credentials>,
}

impl MskIam {
    /// Finds the credential source the environment configures, fetches credentials once (so a
    /// missing role fails at start, with what to fix), and keeps them fresh on the current Tokio
    /// runtime for as long as the returned value lives.
    pub async fn start(region: &str) -> Result<Arc<MskIam>, MskIamError> {
        let source = CredentialSource::from_env(region)?;
        Self::start_with(region, source).await
    }

    /// [`MskIam::start`] with a given source.
    pub async fn start_with(
        region: &str,
        source: CredentialSource,
    ) -> Result<Arc<MskIam>, MskIamError> {
        let credentials = source.fetch().await?;
        let iam = Arc::new(MskIam {
            region: region.to_string(),
            source,
            credentials: RwLock::new(credentials),
        });
        tokio::spawn(refresh_forever(Arc::downgrade(&iam)));
        Ok(iam)
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The credentials in use now.
    pub fn credentials(&self) -> Credentials {
        match self.credentials.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A token signed now (librdkafka asks from its own thread, so this never blocks on I/O).
    pub fn token(&self) -> Result<MskToken, MskIamError> {
        let credentials = self.credentials();
        let now = Utc::now();
        if let Some(expired) = credentials.expires_at.filter(|at| *at <= now) {
            return Err(MskIamError::Expired(expired));
        }
        Ok(token_for(&credentials, &self.region, now))
    }
}

/// Refreshes expiring credentials ahead of time until the [`MskIam`] is dropped.
async fn refresh_forever(iam: Weak<MskIam>) {
    loop {
        let wait = {
            let Some(iam) = iam.upgrade() else { return };
            match iam.credentials().expires_at {
                None => return,
                Some(at) => (at - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .saturating_sub(REFRESH_BEFORE_EXPIRY),
            }
        };
        tokio::time::sleep(wait).await;
        let Some(iam) = iam.upgrade() else { return };
        match iam.source.fetch().await {
            Ok(fresh) => {
                tracing::debug!(expires_at = ?fresh.expires_at, "MSK IAM credentials refreshed");
                if let Ok(mut current) = iam.credentials.write() {
                    *current = fresh;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in_s = RETRY_AFTER_FAILURE.as_secs(), "cannot refresh the MSK IAM credentials");
                drop(iam);
                tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::BTreeMap;

    fn params(url: &str) -> BTreeMap<String, String> {
        let (_, query) = url.split_once('?').expect("a query");
        query
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("k=v");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// The same token AWS's Python MSK signer (botocore's `SigV4QueryAuth`, region
    /// ap-northeast-2, 900 s) builds for these credentials at 2026-11-30T12:00:00Z: generated
    /// once with botocore 1.43 and written down here. Parameter order differs (botocore appends
    /// the session token after the signed headers); MSK reads them by name.
    #[test]
    fn the_token_matches_what_the_aws_msk_signer_builds() {
        let credentials = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("IQoJb3JpZ2luX2VjEXAMPLE/+token==".into()),
            expires_at: None,
        };
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let token = token_for(&credentials, "ap-northeast-2", at);
        let url = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&token.token)
                .unwrap(),
        )
        .unwrap();
        assert!(
            url.starts_with("https://kafka.ap-northeast-2.amazonaws.com/?"),
            "{url}"
        );
        let botocore = "https://kafka.ap-northeast-2.amazonaws.com/?Action=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261130%2Fap-northeast-2%2Fkafka-cluster%2Faws4_request&X-Amz-Date=20261130T120000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2F%2Btoken%3D%3D&X-Amz-Signature=905ad436b70c70f40db75a2a2ea30585ff158c986eaeafb03fa5896333a02556&User-Agent=moa-msk-iam%2F0.1.0";
        let mut ours = params(&url);
        let mut theirs = params(botocore);
        // The user agent names the signer library.
        assert!(
            ours.remove("User-Agent")
                .unwrap()
                .starts_with("moa-msk-iam%2F")
        );
        theirs.remove("User-Agent");
        assert_eq!(ours, theirs);
        assert_eq!(token.expires_at_ms, (at.timestamp() + 900) * 1000);
        assert_eq!(token.principal, "AKIAIOSFODNN7EXAMPLE");
        assert!(!token.token.contains('='), "no padding");
    }

    #[test]
    fn expired_credentials_give_no_token() {
        let iam = MskIam {
            region: "ap-northeast-2".into(),
            source: CredentialSource::Environment,
            credentials: RwLock::new(Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "wJalrXUtnFEMI-value".into(),
                session_token: None,
                expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
            }),
        };
        assert!(matches!(iam.token(), Err(MskIamError::Expired(_))));
        let shown = format!("{:?}", iam.credentials());
        assert!(!shown.contains("wJalrXUtnFEMI-value"), "{shown}");
    }
}
