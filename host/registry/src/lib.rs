//! moa apps as OCI artifacts, as `spin registry push/pull` ships Spin apps: [`push`] packages the
//! manifest and every file it names into one artifact of moa's media types; [`pull`] fetches one,
//! checks every blob against its digest, and lays the app out in a cache directory to run from.
//!
//! The artifact is an OCI image manifest whose config blob ([`CONFIG_MEDIA_TYPE`]) lists the app's
//! files by relative path, digest and size; each distinct file is one layer (files of at most
//! [`INLINE_MAX`] bytes ride inline in the config, since registries treat tiny blobs unevenly).

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The artifact's type (the manifest's `artifactType`).
pub const ARTIFACT_TYPE: &str = "application/vnd.moa.app.v1";
/// The config blob: [`AppConfig`] as JSON.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.moa.app.config.v1+json";
/// The app's manifest (spin.toml, as written).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.moa.app.manifest.v1+toml";
/// A component's wasm file.
pub const COMPONENT_MEDIA_TYPE: &str = "application/vnd.moa.app.component.v1+wasm";
/// Any other file the app names (static files a component mounts).
pub const FILE_MEDIA_TYPE: &str = "application/vnd.moa.app.file.v1";
/// Files this small travel inside the config.
pub const INLINE_MAX: u64 = 128;

/// What went wrong pushing or pulling.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "`{0}` is not a registry reference\n  help: write it as HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST], e.g. 127.0.0.1:5000/moa/shop:1.0"
    )]
    Reference(String),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} is outside the app directory; a registry app carries only files under the directory of its spin.toml\n  help: move it under the app directory and point the manifest there"
    )]
    OutsideApp(PathBuf),
    #[error("the registry at {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error(
        "{reference} is not a moa app (its config is `{media_type}`, not `{CONFIG_MEDIA_TYPE}`)\n  help: push apps with `moa registry push`"
    )]
    NotAnApp {
        reference: String,
        media_type: String,
    },
    #[error(
        "{what} from {reference} does not match its digest (expected {expected}, got {actual}); nothing was cached\n  help: the registry or something between it and you changed the content; push the app again"
    )]
    Digest {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{reference}: the app's file list is invalid: {message}")]
    Invalid { reference: String, message: String },
}

/// One file of an app, as the config lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppFile {
    /// Relative to the manifest's directory, with `/` separators.
    pub path: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// The content in base64 when it is at most [`INLINE_MAX`] bytes (then no layer holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

/// The config blob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The manifest's path among `files`.
    pub manifest: String,
    pub files: Vec<AppFile>,
}

/// An app to push: its directory, its manifest and the other files it names (all relative).
#[derive(Debug, Clone)]
pub struct AppPackage {
    pub name: String,
    pub version: Option<String>,
    pub base_dir: PathBuf,
    pub manifest: PathBuf,
    pub components: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP for every registry (otherwise only for loopback ones: localhost, 127.0.0.0/8, ::1).
    pub insecure: bool,
    /// Basic credentials (for ECR: `AWS` and `aws ecr get-login-password`); anonymous otherwise.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// What [`push`] did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `sha256:...` of the manifest: `REPOSITORY@DIGEST` pulls exactly this app.
    pub digest: String,
    pub files: usize,
    pub layers: usize,
    /// Layers the registry did not have yet.
    pub uploaded: usize,
    pub bytes: u64,
}

/// What [`pull`] did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub digest: String,
    /// The app's manifest in the cache, to run from.
    pub manifest: PathBuf,
    /// Whether every file came from the cache.
    pub cached: bool,
    pub files: usize,
    /// Bytes fetched from the registry.
    pub fetched: u64,
}

/// Parses `reference`, which must name its registry host (no implicit Docker Hub).
pub fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    let host = reference.split('/').next().unwrap_or_default();
    let names_host = reference.contains('/')
        && (host.contains('.') || host.contains(':') || host == "localhost");
    if !names_host {
        return Err(RegistryError::Reference(reference.to_string()));
    }
    reference
        .parse::<Reference>()
        .map_err(|_| RegistryError::Reference(reference.to_string()))
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn client(reference: &Reference, options: &RegistryOptions) -> Result<Client, RegistryError> {
    // reqwest 0.13 without a bundled provider: the same ring provider the rest of moa uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = reference.resolve_registry().to_string();
    let protocol = if options.insecure || is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    Client::try_from(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
    .map_err(|e| RegistryError::Registry {
        registry,
        message: e.to_string(),
    })
}

fn auth(options: &RegistryOptions) -> RegistryAuth {
    match (&options.username, &options.password) {
        (Some(user), Some(password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        _ => RegistryAuth::Anonymous,
    }
}

fn registry_error(
    reference: &Reference,
) -> impl Fn(oci_client::errors::OciDistributionError) -> RegistryError + '_ {
    move |e| RegistryError::Registry {
        registry: reference.resolve_registry().to_string(),
        message: e.to_string(),
    }
}

/// The client's digest check failing is a [`RegistryError::Digest`]; the rest are the registry's.
fn digest_or_registry(
    error: oci_client::errors::OciDistributionError,
    image: &Reference,
    reference: &str,
    what: &str,
) -> RegistryError {
    use oci_client::errors::{DigestError, OciDistributionError};
    match error {
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            RegistryError::Digest {
                reference: reference.to_string(),
                what: what.to_string(),
                expected,
                actual,
            }
        }
        other => registry_error(image)(other),
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `relative` as the artifact names it: `/`-separated, only normal parts.
fn artifact_path(relative: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for part in relative.components() {
        match part {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Where a listed path goes under `dir`, refusing anything that would leave it.
fn safe_join(dir: &Path, path: &str) -> Option<PathBuf> {
    if path.is_empty() || path.starts_with('/') || path.contains('\\') {
        return None;
    }
    let mut out = dir.to_path_buf();
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return None;
        }
        out.push(part);
    }
    Some(out)
}

/// Pushes `app` as `reference`, uploading only the layers the registry lacks; `progress` hears
/// about each file.
pub async fn push(
    app: &AppPackage,
    reference: &str,
    options: &RegistryOptions,
    mut progress: impl FnMut(&str),
) -> Result<Pushed, RegistryError> {
    let image = parse_reference(reference)?;
    let client = client(&image, options)?;
    client
        .store_auth_if_needed(image.resolve_registry(), &auth(options))
        .await;

    let mut files: Vec<AppFile> = Vec::new();
    let mut blobs: BTreeMap<String, (Vec<u8>, String)> = BTreeMap::new();
    let entries = std::iter::once((&app.manifest, MANIFEST_MEDIA_TYPE))
        .chain(app.components.iter().map(|p| (p, COMPONENT_MEDIA_TYPE)))
        .chain(app.files.iter().map(|p| (p, FILE_MEDIA_TYPE)));
    for (relative, media_type) in entries {
        let path = artifact_path(relative)
            .ok_or_else(|| RegistryError::OutsideApp(app.base_dir.join(relative)))?;
        if files.iter().any(|f| f.path == path) {
            continue;
        }
        let full = app.base_dir.join(relative);
        let bytes = std::fs::read(&full).map_err(|source| RegistryError::File {
            path: full.clone(),
            source,
        })?;
        let digest = sha256(&bytes);
        let size = bytes.len() as u64;
        let inline =
            (size <= INLINE_MAX).then(|| base64::engine::general_purpose::STANDARD.encode(&bytes));
        if inline.is_none() {
            blobs
                .entry(digest.clone())
                .or_insert((bytes, media_type.to_string()));
        }
        files.push(AppFile {
            path,
            digest,
            size,
            media_type: media_type.to_string(),
            inline,
        });
    }
    let config = AppConfig {
        name: app.name.clone(),
        version: app.version.clone(),
        manifest: artifact_path(&app.manifest)
            .ok_or_else(|| RegistryError::OutsideApp(app.base_dir.join(&app.manifest)))?,
        files,
    };
    let config_bytes = serde_json::to_vec(&config).map_err(|e| RegistryError::Invalid {
        reference: reference.to_string(),
        message: e.to_string(),
    })?;

    let mut uploaded = 0;
    let mut bytes_total = 0u64;
    let mut layers = Vec::new();
    for (digest, (bytes, media_type)) in &blobs {
        let title = config
            .files
            .iter()
            .find(|f| &f.digest == digest)
            .map(|f| f.path.clone())
            .unwrap_or_default();
        if client
            .blob_exists(&image, digest)
            .await
            .map_err(registry_error(&image))?
        {
            progress(&format!("{title}: already in the registry"));
        } else {
            client
                .push_blob(&image, bytes.clone(), digest)
                .await
                .map_err(registry_error(&image))?;
            uploaded += 1;
            progress(&format!("{title}: uploaded {} bytes", bytes.len()));
        }
        bytes_total += bytes.len() as u64;
        layers.push(OciDescriptor {
            media_type: media_type.clone(),
            digest: digest.clone(),
            size: bytes.len() as i64,
            annotations: Some(BTreeMap::from([(
                "org.opencontainers.image.title".to_string(),
                title,
            )])),
            ..Default::default()
        });
    }
    let config_digest = sha256(&config_bytes);
    client
        .push_blob(&image, config_bytes.clone(), &config_digest)
        .await
        .map_err(registry_error(&image))?;
    let mut annotations = BTreeMap::from([(
        "org.opencontainers.image.title".to_string(),
        app.name.clone(),
    )]);
    if let Some(version) = &app.version {
        annotations.insert(
            "org.opencontainers.image.version".to_string(),
            version.clone(),
        );
    }
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: CONFIG_MEDIA_TYPE.to_string(),
            digest: config_digest,
            size: config_bytes.len() as i64,
            ..Default::default()
        },
        layers,
        subject: None,
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        annotations: Some(annotations),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| RegistryError::Invalid {
        reference: reference.to_string(),
        message: e.to_string(),
    })?;
    let digest = sha256(&manifest_bytes);
    client
        .push_manifest_raw(
            &image,
            manifest_bytes,
            OCI_IMAGE_MEDIA_TYPE
                .parse()
                .map_err(|_| RegistryError::Invalid {
                    reference: reference.to_string(),
                    message: "media type".into(),
                })?,
        )
        .await
        .map_err(registry_error(&image))?;
    Ok(Pushed {
        digest,
        files: config.files.len(),
        layers: blobs.len(),
        uploaded,
        bytes: bytes_total,
    })
}

/// Pulls `reference` into `cache` (blobs by digest under `cache/blobs`, the app laid out under
/// `cache/apps/<digest>`), checking every blob's digest before it is kept. An app already in the
/// cache is not fetched again; a tag is always resolved at the registry.
pub async fn pull(
    reference: &str,
    cache: &Path,
    options: &RegistryOptions,
    mut progress: impl FnMut(&str),
) -> Result<Pulled, RegistryError> {
    let image = parse_reference(reference)?;
    let client = client(&image, options)?;
    let auth = auth(options);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RegistryError::File { path, source }
    };

    let (manifest_bytes, digest) = client
        .pull_manifest_raw(&image, &auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .map_err(|e| digest_or_registry(e, &image, reference, "the manifest"))?;
    let actual = sha256(&manifest_bytes);
    let expected = image.digest().map_or(digest.clone(), str::to_string);
    if actual != expected {
        return Err(RegistryError::Digest {
            reference: reference.to_string(),
            what: "the manifest".into(),
            expected,
            actual,
        });
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| RegistryError::Invalid {
            reference: reference.to_string(),
            message: format!("the manifest does not parse: {e}"),
        })?;
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(RegistryError::NotAnApp {
            reference: reference.to_string(),
            media_type: manifest.config.media_type.clone(),
        });
    }
    let hex = actual.trim_start_matches("sha256:").to_string();
    let app_dir = cache.join("apps").join(&hex);
    let config_path = app_dir.join(".moa-app.json");
    if let Ok(bytes) = std::fs::read(&config_path)
        && let Ok(config) = serde_json::from_slice::<AppConfig>(&bytes)
        && let Some(manifest_path) = safe_join(&app_dir, &config.manifest)
    {
        progress("the app is in the cache");
        return Ok(Pulled {
            digest: actual,
            manifest: manifest_path,
            cached: true,
            files: config.files.len(),
            fetched: 0,
        });
    }

    let blobs = cache.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let mut fetched = 0u64;
    // Fetches one blob into the blob cache (unless there), checked against its digest.
    let mut fetch =
        async |descriptor: &OciDescriptor, what: &str| -> Result<PathBuf, RegistryError> {
            let hex = descriptor
                .digest
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| RegistryError::Invalid {
                    reference: reference.to_string(),
                    message: format!("{what} has digest {}, not sha256", descriptor.digest),
                })?;
            let target = blobs.join(hex);
            if target.exists() {
                return Ok(target);
            }
            let mut bytes = Vec::with_capacity(descriptor.size.max(0) as usize);
            client
                .pull_blob(&image, descriptor, &mut bytes)
                .await
                .map_err(|e| digest_or_registry(e, &image, reference, what))?;
            let actual = sha256(&bytes);
            if actual != descriptor.digest || bytes.len() as i64 != descriptor.size {
                return Err(RegistryError::Digest {
                    reference: reference.to_string(),
                    what: what.to_string(),
                    expected: descriptor.digest.clone(),
                    actual,
                });
            }
            fetched += bytes.len() as u64;
            let tmp = blobs.join(format!("{hex}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &target).map_err(io(&target))?;
            Ok(target)
        };

    let config_blob = fetch(&manifest.config, "the app's config").await?;
    let config_bytes = std::fs::read(&config_blob).map_err(io(&config_blob))?;
    let config: AppConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| RegistryError::Invalid {
            reference: reference.to_string(),
            message: format!("the config does not parse: {e}"),
        })?;
    let invalid = |message: String| RegistryError::Invalid {
        reference: reference.to_string(),
        message,
    };
    if !config.files.iter().any(|f| f.path == config.manifest) {
        return Err(invalid(format!(
            "the manifest {} is not among the files",
            config.manifest
        )));
    }

    // The app is laid out beside its final place and moved there whole.
    std::fs::create_dir_all(cache.join("apps")).map_err(io(&cache.join("apps")))?;
    let staging = cache
        .join("apps")
        .join(format!("{hex}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for file in &config.files {
        let target = safe_join(&staging, &file.path)
            .ok_or_else(|| invalid(format!("the path `{}` leaves the app directory", file.path)))?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match &file.inline {
            Some(content) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|e| invalid(format!("{}: {e}", file.path)))?;
                let actual = sha256(&bytes);
                if actual != file.digest {
                    return Err(RegistryError::Digest {
                        reference: reference.to_string(),
                        what: file.path.clone(),
                        expected: file.digest.clone(),
                        actual,
                    });
                }
                std::fs::write(&target, &bytes).map_err(io(&target))?;
            }
            None => {
                let descriptor = manifest
                    .layers
                    .iter()
                    .find(|l| l.digest == file.digest)
                    .ok_or_else(|| {
                        invalid(format!("{} names a layer the manifest lacks", file.path))
                    })?;
                let blob = fetch(descriptor, &file.path).await?;
                progress(&format!("{}: {} bytes", file.path, file.size));
                if std::fs::hard_link(&blob, &target).is_err() {
                    std::fs::copy(&blob, &target).map_err(io(&target))?;
                }
            }
        }
    }
    std::fs::write(staging.join(".moa-app.json"), &config_bytes)
        .map_err(io(&staging.join(".moa-app.json")))?;
    match std::fs::rename(&staging, &app_dir) {
        Ok(()) => {}
        // Another pull laid it out first: theirs is the same content.
        Err(_) if app_dir.join(".moa-app.json").exists() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => return Err(io(&app_dir)(e)),
    }
    let manifest_path = safe_join(&app_dir, &config.manifest)
        .ok_or_else(|| invalid(format!("the manifest path `{}`", config.manifest)))?;
    Ok(Pulled {
        digest: actual,
        manifest: manifest_path,
        cached: false,
        files: config.files.len(),
        fetched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_must_name_their_registry() {
        assert!(parse_reference("127.0.0.1:5000/moa/shop:1.0").is_ok());
        assert!(parse_reference("registry.example.com/shop@sha256:0000000000000000000000000000000000000000000000000000000000000000").is_ok());
        assert!(parse_reference("localhost/shop").is_ok());
        for bad in ["shop:1.0", "moa/shop:1.0", "", "127.0.0.1:5000/Shop:1.0"] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn pulled_paths_never_leave_the_app_directory() {
        let dir = Path::new("/cache/app");
        assert_eq!(
            safe_join(dir, "static/index.html"),
            Some(dir.join("static").join("index.html"))
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a\\b",
            "./a",
        ] {
            assert_eq!(safe_join(dir, bad), None, "{bad}");
        }
        assert_eq!(
            artifact_path(Path::new("./a/b.wasm")),
            Some("a/b.wasm".into())
        );
        assert_eq!(artifact_path(Path::new("../a")), None);
        assert_eq!(artifact_path(Path::new("/a")), None);
    }
}
