//! Push and pull against a real OCI registry (Debian's `docker-registry`, distribution 2.8) started
//! on a free 127.0.0.1 port: round trip, the cache, digest pulls, and a tampered blob refused.

use moa_registry::{AppPackage, RegistryError, RegistryOptions, pull, push};
use moa_test_support::oci_registry::OciRegistry;
use std::path::Path;

/// An app directory: a manifest, two "components" (one shared by two paths' content), a large
/// static file and a tiny one (inline in the config).
fn app_dir() -> (tempfile::TempDir, AppPackage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("target")).expect("mkdir");
    std::fs::create_dir_all(root.join("static/css")).expect("mkdir");
    std::fs::write(
        root.join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"shop\"\n",
    )
    .expect("write");
    let wasm: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("target/shop.wasm"), &wasm).expect("write");
    std::fs::write(root.join("target/copy.wasm"), &wasm).expect("write");
    std::fs::write(root.join("static/index.html"), "<h1>shop</h1>\n".repeat(40)).expect("write");
    std::fs::write(root.join("static/css/tiny.css"), "b{}").expect("write");
    let package = AppPackage {
        name: "shop".into(),
        version: Some("1.0.0".into()),
        base_dir: root.to_path_buf(),
        manifest: "spin.toml".into(),
        components: vec!["target/shop.wasm".into(), "target/copy.wasm".into()],
        files: vec!["static/index.html".into(), "static/css/tiny.css".into()],
    };
    (dir, package)
}

fn same_tree(a: &Path, b: &Path, files: &[&str]) {
    for file in files {
        assert_eq!(
            std::fs::read(a.join(file)).expect("source file"),
            std::fs::read(b.join(file)).expect("pulled file"),
            "{file}"
        );
    }
}

const FILES: [&str; 5] = [
    "spin.toml",
    "target/shop.wasm",
    "target/copy.wasm",
    "static/index.html",
    "static/css/tiny.css",
];

#[tokio::test(flavor = "multi_thread")]
async fn an_app_round_trips_through_a_registry_and_its_cache() {
    let registry = OciRegistry::start();
    let (dir, package) = app_dir();
    let options = RegistryOptions::default();
    let reference = format!("{}/moa/shop:1.0.0", registry.address);

    let mut lines = Vec::new();
    let pushed = push(&package, &reference, &options, |l| {
        lines.push(l.to_string())
    })
    .await
    .expect("push");
    assert_eq!(pushed.files, 5);
    // One wasm (two paths, one content) and index.html; spin.toml and tiny.css ride inline.
    assert_eq!((pushed.layers, pushed.uploaded), (2, 2));
    assert!(pushed.digest.starts_with("sha256:"));
    assert_eq!(lines.len(), 2, "{lines:?}");

    // Pushing again uploads nothing and gives the same digest.
    let again = push(&package, &reference, &options, |_| {})
        .await
        .expect("push again");
    assert_eq!(
        (again.uploaded, again.digest.as_str()),
        (0, pushed.digest.as_str())
    );

    let cache = tempfile::tempdir().expect("cache");
    let pulled = pull(&reference, cache.path(), &options, |_| {})
        .await
        .expect("pull");
    assert!(!pulled.cached);
    assert_eq!(pulled.digest, pushed.digest);
    assert_eq!(pulled.files, 5);
    assert!(pulled.fetched >= 200_000);
    let app = pulled.manifest.parent().expect("app dir").to_path_buf();
    same_tree(dir.path(), &app, &FILES);

    // The second pull is the cache's; a digest reference names the same app.
    let by_digest = format!("{}/moa/shop@{}", registry.address, pushed.digest);
    let cached = pull(&by_digest, cache.path(), &options, |_| {})
        .await
        .expect("pull by digest");
    assert!(cached.cached);
    assert_eq!((cached.fetched, cached.manifest), (0, pulled.manifest));

    // A new version reuses the blobs it shares.
    std::fs::write(
        dir.path().join("static/index.html"),
        "<h1>v2</h1>\n".repeat(40),
    )
    .expect("write");
    let v2 = format!("{}/moa/shop:2.0.0", registry.address);
    let pushed2 = push(&package, &v2, &options, |_| {})
        .await
        .expect("push v2");
    assert_eq!(pushed2.uploaded, 1);
    let pulled2 = pull(&v2, cache.path(), &options, |_| {})
        .await
        .expect("pull v2");
    assert_eq!(
        pulled2.fetched,
        40 * "<h1>v2</h1>\n".len() as u64 + pulled2_config_size(&pulled2)
    );
    same_tree(dir.path(), pulled2.manifest.parent().expect("dir"), &FILES);
}

/// The config blob is fetched on every new app; its size is the file beside the layout.
fn pulled2_config_size(pulled: &moa_registry::Pulled) -> u64 {
    let dir = pulled.manifest.parent().expect("dir");
    std::fs::metadata(dir.join(".moa-app.json"))
        .expect("config copy")
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_blob_is_refused_and_nothing_is_cached() {
    let registry = OciRegistry::start();
    let (_dir, package) = app_dir();
    let options = RegistryOptions::default();
    let reference = format!("{}/moa/shop:1.0.0", registry.address);
    push(&package, &reference, &options, |_| {})
        .await
        .expect("push");

    // Flip one byte of the wasm blob in the registry's storage (same size).
    let wasm = std::fs::read(package.base_dir.join("target/shop.wasm")).expect("read");
    let hex = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(&wasm);
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let data = registry
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    let mut bytes = std::fs::read(&data).expect("the blob in storage");
    bytes[1000] ^= 0xff;
    std::fs::write(&data, &bytes).expect("tamper");

    let cache = tempfile::tempdir().expect("cache");
    let error = pull(&reference, cache.path(), &options, |_| {})
        .await
        .expect_err("a tampered blob must be refused");
    assert!(
        matches!(&error, RegistryError::Digest { what, .. } if what.ends_with(".wasm")),
        "{error}"
    );
    assert!(
        error.to_string().contains("does not match its digest"),
        "{error}"
    );
    assert!(
        !cache.path().join("blobs/sha256").join(&hex).exists(),
        "the tampered blob must not be cached"
    );
    let apps: Vec<_> = std::fs::read_dir(cache.path().join("apps"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        apps.iter()
            .all(|name| name.to_string_lossy().ends_with(".tmp")),
        "no app laid out: {apps:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clear_errors_for_missing_apps_and_bad_references() {
    let registry = OciRegistry::start();
    let cache = tempfile::tempdir().expect("cache");
    let options = RegistryOptions::default();
    let missing = format!("{}/moa/nothing:1.0", registry.address);
    let error = pull(&missing, cache.path(), &options, |_| {})
        .await
        .expect_err("no such app");
    assert!(matches!(error, RegistryError::Registry { .. }), "{error}");
    let error = pull("moa/shop:1.0", cache.path(), &options, |_| {})
        .await
        .expect_err("no registry host");
    assert!(
        error.to_string().contains("HOST[:PORT]/REPOSITORY"),
        "{error}"
    );

    // A file outside the app directory is refused before anything is sent.
    let (_dir, mut package) = app_dir();
    package.files.push("../elsewhere.txt".into());
    let error = push(
        &package,
        &format!("{}/moa/shop:x", registry.address),
        &options,
        |_| {},
    )
    .await
    .expect_err("outside the app");
    assert!(matches!(error, RegistryError::OutsideApp(_)), "{error}");
}
