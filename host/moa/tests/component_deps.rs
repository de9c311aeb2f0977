//! Component dependencies (`[component.<id>.dependencies]`) against a real `moa up`: `greet-http`
//! (spin-sdk 7, WASIp3) imports `moa-test:greet/greeter`, which only a dependency provides —
//! from a local path, another app component or a URL with a digest — with the key forms, `export`,
//! configuration inheritance, load errors that name the line and the fix, the compile cache and
//! registry push.

mod common;

use common::{AppDir, Moa, Options, run_moa, wasm};
use moa_test_support::oci_registry::OciRegistry;

/// `greet-http` on `/greet/...` with `deps` as its dependencies table and `extra` appended.
fn app(deps: &str, extra: &str) -> AppDir {
    AppDir::new(&format!(
        r#"spin_manifest_version = 2
[application]
name = "deps"
[[trigger.http]]
route = "/greet/..."
component = "greet"
[component.greet]
source = "{{greet-http}}"
environment = {{ GREETING = "hej" }}
[component.greet.dependencies]
{deps}
{extra}"#
    ))
}

/// Copies the built `greeter` into the app directory, for `path = "deps/greeter.wasm"`.
fn with_local_greeter(app: &AppDir) {
    std::fs::create_dir_all(app.path().join("deps")).unwrap();
    std::fs::copy(wasm("greeter"), app.path().join("deps/greeter.wasm")).unwrap();
}

fn load_error(app: &AppDir) -> String {
    match Moa::try_start(app, Options::default()) {
        Ok(_) => panic!("the app loaded"),
        Err(stderr) => stderr,
    }
}

#[test]
fn a_local_path_dependency_satisfies_the_import_and_a_resource_crosses_it() {
    let app = app(
        r#""moa-test:greet/greeter@0.1.0" = { path = "deps/greeter.wasm" }"#,
        "",
    );
    with_local_greeter(&app);
    let moa = Moa::start(&app, Options::default());
    let (status, body) = moa.get("/greet/ann/bo");
    assert_eq!(status, 200, "{body}");
    // The dependency did not inherit `environment`: it sees none, so the default greeting; the
    // tally resource the dependency owns kept both names the main component added.
    assert_eq!(body, "hello, bo!\nann,bo");
}

#[test]
fn an_app_component_dependency_and_every_key_form_compose() {
    for key in [
        "moa-test:greet/greeter@0.1.0",
        "moa-test:greet/greeter",
        "moa-test:greet@0.1.0",
        "moa-test:greet",
    ] {
        let app = app(
            &format!(r#""{key}" = {{ component = "greeter" }}"#),
            "[component.greeter]\nsource = \"{greeter}\"\n",
        );
        let moa = Moa::start(&app, Options::default());
        assert_eq!(
            moa.get("/greet/cy"),
            (200, "hello, cy!\ncy".into()),
            "{key}"
        );
        // The dependency-only component is not loaded on its own.
        assert!(
            !moa.stdout.iter().any(|l| l.contains("`greeter`")),
            "{key}: {:?}",
            moa.stdout
        );
    }
}

#[test]
fn inheriting_environment_gives_the_dependency_the_depending_components() {
    for inherit in [
        r#"inherit_configuration = ["environment"]"#,
        "inherit_configuration = true",
    ] {
        let app = app(
            &format!(r#""moa-test:greet/greeter" = {{ path = "deps/greeter.wasm", {inherit} }}"#),
            "",
        );
        with_local_greeter(&app);
        let moa = Moa::start(&app, Options::default());
        assert_eq!(
            moa.get("/greet/di"),
            (200, "hej, di!\ndi".into()),
            "{inherit}"
        );
    }
    let app = app(
        r#""moa-test:greet/greeter" = { path = "deps/greeter.wasm" }"#,
        "",
    )
    .replace_manifest(
        "[component.greet.dependencies]",
        "dependencies_inherit_configuration = true\n[component.greet.dependencies]",
    );
    with_local_greeter(&app);
    let moa = Moa::start(&app, Options::default());
    assert_eq!(moa.get("/greet/ed"), (200, "hej, ed!\ned".into()));
}

#[test]
fn export_picks_another_interface_of_the_same_shape() {
    let app = app(
        r#""moa-test:greet/greeter" = { path = "deps/greeter.wasm", export = "moa-test:greet/shouter@0.1.0" }"#,
        "",
    );
    with_local_greeter(&app);
    let moa = Moa::start(&app, Options::default());
    assert_eq!(
        moa.get("/greet/fay/gil"),
        (200, "HELLO, GIL!\nFAY,GIL".into())
    );
}

#[test]
fn dependencies_that_cannot_be_composed_are_load_errors_naming_the_fix() {
    let cases: &[(&str, &str)] = &[
        // Versions match exactly, as in Spin.
        (
            r#""moa-test:greet/greeter@0.1.1" = { path = "deps/greeter.wasm" }"#,
            "does not match any import of the component",
        ),
        (
            r#""moa-test:greet/greeter" = { path = "deps/greeter.wasm", export = "moa-test:greet/missing@0.1.0" }"#,
            "does not export `moa-test:greet/missing@0.1.0`",
        ),
        (
            r#""moa-test:greet/greeter" = { path = "deps/greeter.wasm", export = "moa-test:greet/counter@0.1.0" }"#,
            "not compatible with import `moa-test:greet/greeter@0.1.0`",
        ),
        (
            r#""moa-test:greet/greeter" = { path = "deps/nothing.wasm" }"#,
            "cannot read dependency `moa-test:greet/greeter`",
        ),
        (
            r#""moa-test:greet/greeter" = { path = "deps/core.wasm" }"#,
            "is not a WebAssembly component",
        ),
        // `counter` imports spin:key-value and wasi:http: without those grants it is refused,
        // with them the composition gets as far as the missing export.
        (
            r#""moa-test:greet/greeter" = { path = "deps/counter.wasm", inherit_configuration = ["allowed_outbound_hosts"] }"#,
            "imports `spin:key-value/key-value@3.0.0`: that needs the `key_value_stores` grant",
        ),
        (
            r#""moa-test:greet/greeter" = { path = "deps/counter.wasm", inherit_configuration = ["key_value_stores"] }"#,
            "imports `wasi:http/handler@0.3.0`: that needs the `allowed_outbound_hosts` grant",
        ),
        (
            r#""moa-test:greet/greeter" = { path = "deps/counter.wasm", inherit_configuration = true }"#,
            "does not export `moa-test:greet/greeter@0.1.0`",
        ),
    ];
    for (deps, expected) in cases {
        let app = app(deps, "");
        with_local_greeter(&app);
        std::fs::copy(wasm("counter"), app.path().join("deps/counter.wasm")).unwrap();
        std::fs::write(app.path().join("deps/core.wasm"), b"\0asm\x01\0\0\0").unwrap();
        let stderr = load_error(&app);
        assert!(stderr.contains(expected), "{deps}:\n{stderr}");
        assert!(stderr.contains("component `greet`"), "{deps}:\n{stderr}");
    }
    // Manifest mistakes name the line.
    let app = app(
        r#""moa-test:greet/greeter" = { component = "greeter" }"#,
        "[component.greeter]\nsource = \"{greeter}\"\nkey_value_stores = [\"default\"]\n",
    );
    let stderr = load_error(&app);
    assert!(
        stderr.contains("spin.toml:11")
            && stderr.contains("because it specifies: key_value_stores"),
        "{stderr}"
    );
}

#[test]
fn a_restart_loads_the_composition_from_the_cache_until_a_dependency_changes() {
    let cache = tempfile::tempdir().unwrap();
    let options = Options {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let app = app(
        r#""moa-test:greet/greeter" = { path = "deps/greeter.wasm" }"#,
        "",
    );
    with_local_greeter(&app);
    let loaded = |moa: &Moa| {
        moa.stdout
            .iter()
            .find(|l| l.contains("`greet`"))
            .cloned()
            .unwrap_or_default()
    };
    let first = Moa::start(&app, options.clone());
    assert!(loaded(&first).contains("compiled in"), "{:?}", first.stdout);
    assert!(
        loaded(&first).contains("composed with `moa-test:greet/greeter`"),
        "{:?}",
        first.stdout
    );
    first.stop();
    let second = Moa::start(&app, options.clone());
    assert!(loaded(&second).contains("cache in"), "{:?}", second.stdout);
    assert_eq!(second.get("/greet/hu").0, 200);
    second.stop();
    // Another dependency file (the same code with a custom section appended) recompiles.
    let mut changed = std::fs::read(app.path().join("deps/greeter.wasm")).unwrap();
    changed.extend_from_slice(&[0, 4, 1, b'x', 0, 0]);
    std::fs::write(app.path().join("deps/greeter.wasm"), changed).unwrap();
    let third = Moa::start(&app, options);
    assert!(loaded(&third).contains("compiled in"), "{:?}", third.stdout);
    assert_eq!(third.get("/greet/io"), (200, "hello, io!\nio".into()));
}

#[test]
fn registry_push_carries_local_dependencies() {
    let registry = OciRegistry::start();
    let app = app(
        r#""moa-test:greet/greeter" = { path = "deps/greeter.wasm" }"#,
        "",
    );
    // The registry app carries only files under the app directory.
    let main = std::fs::read(wasm("greet-http")).unwrap();
    std::fs::write(app.path().join("greet.wasm"), main).unwrap();
    let manifest = std::fs::read_to_string(app.manifest())
        .unwrap()
        .replace(&wasm("greet-http"), "greet.wasm");
    std::fs::write(app.manifest(), manifest).unwrap();
    with_local_greeter(&app);
    let reference = format!("{}/moa-test/deps:0.1.0", registry.address);
    let (code, stdout, stderr) = run_moa(
        &["registry", "push", &reference, "-f", "spin.toml"],
        app.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("2 component(s)"), "{stderr}");
    let pinned = stdout.trim().to_string();
    // What runs next comes from the registry alone.
    std::fs::remove_dir_all(app.path().join("deps")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let moa = Moa::try_start_from(
        std::ffi::OsStr::new(&pinned),
        state.path(),
        Options {
            env: vec![(
                "MOA_REGISTRY_CACHE".into(),
                cache.path().display().to_string(),
            )],
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("moa up --from {pinned}: {e}"));
    assert_eq!(moa.get("/greet/jo"), (200, "hello, jo!\njo".into()));
}

/// A one-file HTTP server: `GET /greeter.wasm` answers `body`, anything else 404; counts requests.
struct FileServer {
    url: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FileServer {
    fn start(body: Vec<u8>) -> FileServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let found = request.starts_with(b"GET /greeter.wasm ");
                let (status, payload): (&str, &[u8]) = if found {
                    ("200 OK", &body)
                } else {
                    ("404 Not Found", b"not here")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    payload.len()
                );
                let _ = stream.write_all(payload);
            }
        });
        FileServer { url, hits }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_url_dependency_is_downloaded_checked_against_its_digest_and_kept() {
    let greeter = std::fs::read(wasm("greeter")).unwrap();
    let digest = sha256_hex(&greeter);
    let server = FileServer::start(greeter);
    let cache = tempfile::tempdir().unwrap();
    let options = Options {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let downloaded = app(
        &format!(
            r#""moa-test:greet/greeter" = {{ url = "{}/greeter.wasm", digest = "sha256:{digest}" }}"#,
            server.url
        ),
        "",
    );
    let moa = Moa::start(&downloaded, options.clone());
    assert_eq!(moa.get("/greet/ka"), (200, "hello, ka!\nka".into()));
    moa.stop();
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The second start uses the kept download.
    let moa = Moa::start(&downloaded, options.clone());
    assert_eq!(moa.get("/greet/lu"), (200, "hello, lu!\nlu".into()));
    moa.stop();
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Another digest: refused, naming both digests; a missing file: the server's answer.
    let wrong = "0".repeat(64);
    for (deps, expected) in [
        (
            format!(
                r#""moa-test:greet/greeter" = {{ url = "{}/greeter.wasm", digest = "sha256:{wrong}" }}"#,
                server.url
            ),
            format!("has digest sha256:{digest}, not the manifest's sha256:{wrong}"),
        ),
        (
            format!(
                r#""moa-test:greet/greeter" = {{ url = "{}/nothing.wasm", digest = "sha256:{wrong}" }}"#,
                server.url
            ),
            "404".to_string(),
        ),
    ] {
        let refused = app(&deps, "");
        let stderr = match Moa::try_start(&refused, options.clone()) {
            Ok(_) => panic!("the app loaded"),
            Err(stderr) => stderr,
        };
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(
            stderr.contains("dependency `moa-test:greet/greeter`"),
            "{stderr}"
        );
    }
}

trait ReplaceManifest {
    fn replace_manifest(self, from: &str, to: &str) -> Self;
}

impl ReplaceManifest for AppDir {
    fn replace_manifest(self, from: &str, to: &str) -> Self {
        let text = std::fs::read_to_string(self.manifest()).unwrap();
        std::fs::write(self.manifest(), text.replacen(from, to, 1)).unwrap();
        self
    }
}
