//! `moa registry push` and `moa up --from REF` against a real OCI registry (Debian's
//! docker-registry on 127.0.0.1): the app runs from the registry alone, with its static files.

mod common;

use common::{AppDir, Moa, Options, run_moa, wasm};
use moa_test_support::oci_registry::OciRegistry;

/// An app directory with its own copy of the probe component and a mounted static directory.
fn local_app() -> AppDir {
    let app = AppDir::new(
        r#"spin_manifest_version = 2
[application]
name = "registry-probe"
version = "0.3.0"
[[trigger.http]]
route = "/..."
component = "probe"
[component.probe]
source = "wasm/probe.wasm"
files = [{ source = "static", destination = "/static" }]
"#,
    );
    std::fs::create_dir_all(app.path().join("wasm")).unwrap();
    std::fs::create_dir_all(app.path().join("static/deep")).unwrap();
    std::fs::copy(wasm("probe"), app.path().join("wasm/probe.wasm")).unwrap();
    app.write("static/menu.txt", &"bibimbap 9000\n".repeat(30));
    app.write("static/deep/tiny.txt", "kimchi");
    app
}

#[test]
fn an_app_pushed_to_a_registry_runs_from_it_with_its_files() {
    let registry = OciRegistry::start();
    let reference = format!("{}/moa/registry-probe:0.3.0", registry.address);
    let app = local_app();
    let (code, stdout, stderr) = run_moa(
        &["registry", "push", &reference, "-f", "spin.toml"],
        app.path(),
    );
    assert_eq!(code, 0, "push failed:\n{stderr}");
    let pinned = stdout.trim().to_string();
    assert!(
        pinned.starts_with(&format!("{}/moa/registry-probe@sha256:", registry.address)),
        "push prints the pinned reference: {stdout}"
    );
    assert!(stderr.contains("wasm/probe.wasm"), "{stderr}");

    // The local copy is gone: what runs next comes from the registry.
    let menu = std::fs::read_to_string(app.path().join("static/menu.txt")).unwrap();
    std::fs::remove_dir_all(app.path().join("wasm")).unwrap();
    std::fs::remove_dir_all(app.path().join("static")).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let options = Options {
        env: vec![(
            "MOA_REGISTRY_CACHE".into(),
            cache.path().display().to_string(),
        )],
        ..Default::default()
    };
    for from in [&reference, &pinned] {
        let moa = Moa::try_start_from(
            std::ffi::OsStr::new(from.as_str()),
            state.path(),
            options.clone(),
        )
        .unwrap_or_else(|e| panic!("moa up --from {from}: {e}"));
        assert_eq!(moa.get("/file/static/menu.txt"), (200, menu.clone()));
        assert_eq!(
            moa.get("/file/static/deep/tiny.txt"),
            (200, "kimchi".to_string())
        );
        let stderr = moa.stderr();
        assert!(stderr.contains("Pulled"), "{stderr}");
        moa.stop();
    }

    // `moa registry pull` prints the cached manifest; an unknown tag is a clear error.
    let (code, stdout, stderr) = run_moa(
        &["registry", "pull", &pinned, "--registry-cache"],
        cache.path(),
    );
    assert_ne!(code, 0, "--registry-cache needs a value: {stdout}{stderr}");
    let (code, stdout, stderr) = run_moa(
        &[
            "registry",
            "pull",
            &pinned,
            "--registry-cache",
            &cache.path().display().to_string(),
        ],
        cache.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("from the cache"), "{stderr}");
    assert!(
        std::path::Path::new(stdout.trim()).ends_with("spin.toml"),
        "{stdout}"
    );
    let missing = format!("{}/moa/registry-probe:9.9.9", registry.address);
    let (code, _, stderr) = run_moa(&["up", "--from-registry", &missing], cache.path());
    assert_ne!(code, 0);
    assert!(stderr.contains("the registry at"), "{stderr}");
}

#[test]
fn pushing_an_app_whose_component_is_not_built_says_to_build_it() {
    let registry = OciRegistry::start();
    let app = local_app();
    std::fs::remove_file(app.path().join("wasm/probe.wasm")).unwrap();
    let (code, _, stderr) = run_moa(
        &["registry", "push", &format!("{}/moa/x:1", registry.address)],
        app.path(),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("moa build"), "{stderr}");
    let (code, _, stderr) = run_moa(&["registry", "push", "not-a-reference"], app.path());
    assert_ne!(code, 0);
    assert!(stderr.contains("HOST[:PORT]/REPOSITORY"), "{stderr}");
}
