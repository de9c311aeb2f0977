//! AWS Signature Version 4 for presigned URLs (the signature in the query string): the canonical
//! request, the string to sign, the derived key and the final URL, as AWS documents them.

use crate::Credentials;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The hash of an empty payload, which a presigned `GET` signs.
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What to presign.
pub struct Presign<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The absolute path, e.g. `/`.
    pub path: &'a str,
    /// Query parameters besides the signature's own.
    pub query: &'a [(&'a str, &'a str)],
    pub service: &'a str,
    pub region: &'a str,
    pub expires_seconds: u64,
    /// Hex SHA-256 of the payload, or `UNSIGNED-PAYLOAD` where the service allows it (S3).
    pub payload_sha256: &'a str,
}

/// The presigned `https://` URL: the query parameters, the `X-Amz-*` ones, and `X-Amz-Signature`
/// last. The session token, if any, is signed along (`X-Amz-Security-Token`).
pub fn presign_url(request: &Presign<'_>, credentials: &Credentials, at: DateTime<Utc>) -> String {
    let amz_date = at.format("%Y%m%dT%H%M%SZ").to_string();
    let date = at.format("%Y%m%d").to_string();
    let scope = format!("{date}/{}/{}/aws4_request", request.region, request.service);
    let credential = format!("{}/{scope}", credentials.access_key_id);
    let expires = request.expires_seconds.to_string();
    let mut params: Vec<(String, String)> = request
        .query
        .iter()
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    let mut add = |k: &str, v: &str| params.push((encode(k), encode(v)));
    add("X-Amz-Algorithm", "AWS4-HMAC-SHA256");
    add("X-Amz-Credential", &credential);
    add("X-Amz-Date", &amz_date);
    add("X-Amz-Expires", &expires);
    if let Some(token) = &credentials.session_token {
        add("X-Amz-Security-Token", token);
    }
    add("X-Amz-SignedHeaders", "host");
    params.sort();
    let canonical_query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_path = request
        .path
        .split('/')
        .map(encode)
        .collect::<Vec<_>>()
        .join("/");
    let canonical_request = format!(
        "{}\n{canonical_path}\n{canonical_query}\nhost:{}\n\nhost\n{}",
        request.method, request.host, request.payload_sha256
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let key = [
        date.as_str(),
        request.region,
        request.service,
        "aws4_request",
    ]
    .iter()
    .fold(
        format!("AWS4{}", credentials.secret_access_key).into_bytes(),
        |key, part| hmac(&key, part.as_bytes()),
    );
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    format!(
        "https://{}{canonical_path}?{canonical_query}&X-Amz-Signature={signature}",
        request.host
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 percent-encoding as SigV4 wants it: everything but `A-Z a-z 0-9 - _ . ~`.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The example of AWS's "Authenticating Requests: Using Query Parameters (AWS Signature
    /// Version 4)" (Amazon S3 API reference): its published signature.
    #[test]
    fn the_documented_s3_presigned_url_example_gives_its_published_signature() {
        let credentials = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            expires_at: None,
        };
        let url = presign_url(
            &Presign {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: &[],
                service: "s3",
                region: "us-east-1",
                expires_seconds: 86400,
                payload_sha256: "UNSIGNED-PAYLOAD",
            },
            &credentials,
            Utc.with_ymd_and_hms(2013, 5, 24, 0, 0, 0).unwrap(),
        );
        assert_eq!(
            url,
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("kafka-cluster:Connect"), "kafka-cluster%3AConnect");
        assert_eq!(encode("a/b+c= ~._"), "a%2Fb%2Bc%3D%20~._");
        assert_eq!(encode("한"), "%ED%95%9C");
    }
}
