//! The `moa` command line: manifest errors a person can act on, the compile cache across
//! restarts, `moa new` templates, `moa build`, and `--help`.

mod common;

use common::{AppDir, Moa, Options, run_moa};

fn up_error(manifest: &str) -> String {
    let app = AppDir::new(manifest);
    let (code, _, stderr) = run_moa(
        &[
            "up",
            "-f",
            app.manifest().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        app.path(),
    );
    assert_ne!(code, 0, "moa up must fail: {stderr}");
    stderr
}

#[test]
fn bad_manifests_name_the_file_line_and_fix() {
    let stderr = up_error(
        r#"spin_manifest_version = 2
[application]
name = "bad"
[[trigger.http]]
route = "/x"
component = "missing"
[component.present]
source = "x.wasm"
"#,
    );
    assert!(stderr.contains("spin.toml:6:"), "{stderr}");
    assert!(
        stderr.contains("`missing`") && stderr.contains("help:") && stderr.contains("present"),
        "{stderr}"
    );

    let stderr = up_error(
        "spin_manifest_version = 2\n[application]\nname = \"bad\"\n[component.a]\nsorce = \"a.wasm\"\n",
    );
    assert!(
        stderr.contains("spin.toml:5:") && stderr.contains("unknown field `sorce`"),
        "{stderr}"
    );

    let stderr = up_error(
        "spin_manifest_version = 2\n[application]\nname = \"k\"\n[[trigger.kafka]]\ntopic = \"orders\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n",
    );
    assert!(
        stderr.contains("unknown field `topic`") && stderr.contains("spin.toml:5:"),
        "{stderr}"
    );

    let stderr = up_error(
        "spin_manifest_version = 2\n[application]\nname = \"m\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n[component.a]\nsource = \"nowhere.wasm\"\n",
    );
    assert!(
        stderr.contains("nowhere.wasm") && stderr.contains("moa build"),
        "{stderr}"
    );
}

#[test]
fn a_missing_manifest_says_where_moa_looked() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_moa(&["up"], dir.path());
    assert_ne!(code, 0);
    assert!(
        stderr.contains("no manifest at spin.toml") && stderr.contains("-f"),
        "{stderr}"
    );
}

#[test]
fn a_restart_loads_components_from_the_compile_cache() {
    let cache = tempfile::tempdir().unwrap();
    let app = AppDir::new(
        "spin_manifest_version = 2\n[application]\nname = \"c\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"hello\"\n[component.hello]\nsource = \"{hello}\"\n",
    );
    let options = Options {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let first = Moa::start(&app, options.clone());
    assert!(
        first
            .stdout
            .iter()
            .any(|l| l.contains("`hello`") && l.contains("compiled in")),
        "{:?}",
        first.stdout
    );
    first.stop();
    let cached_files = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(cached_files, 1, "one compiled artifact per component");

    let second = Moa::start(&app, options);
    assert!(
        second
            .stdout
            .iter()
            .any(|l| l.contains("`hello`") && l.contains("cache in")),
        "{:?}",
        second.stdout
    );
    assert_eq!(second.get("/x").0, 200);
}

#[test]
fn moa_new_writes_projects_whose_manifests_load() {
    for template in ["http-rust", "http-wit"] {
        let dir = tempfile::tempdir().unwrap();
        let (code, stdout, stderr) = run_moa(&["new", template, "order-api"], dir.path());
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("moa build"), "{stdout}");
        let project = dir.path().join("order-api");
        let manifest = std::fs::read_to_string(project.join("spin.toml")).unwrap();
        assert!(
            manifest.contains("[component.order-api]") && manifest.contains("order_api.wasm"),
            "{manifest}"
        );
        assert!(project.join("src/lib.rs").exists());
        if template == "http-wit" {
            assert!(project.join("wit/deps/http.wit").exists());
        }
        // The manifest is valid: `up` gets as far as the missing (unbuilt) wasm file.
        let (code, _, stderr) = run_moa(&["up", "--listen", "127.0.0.1:0"], &project);
        assert_ne!(code, 0);
        assert!(
            stderr.contains("order_api.wasm") && stderr.contains("build it first"),
            "{stderr}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_moa(&["new", "http-rust", "Bad_Name"], dir.path());
    assert_ne!(code, 0);
    assert!(stderr.contains("kebab-case"), "{stderr}");
}

#[test]
fn moa_build_runs_each_command_in_its_workdir_and_stops_at_a_failure() {
    let app = AppDir::new(
        r#"spin_manifest_version = 2
[application]
name = "b"
[component.one]
source = "one.wasm"
[component.one.build]
command = "pwd > built-one.txt"
workdir = "sub"
[component.two]
source = "two.wasm"
[component.two.build]
command = ["echo two > built-two.txt", "exit 3"]
"#,
    );
    std::fs::create_dir(app.path().join("sub")).unwrap();
    let (code, stdout, stderr) = run_moa(&["build"], app.path());
    assert_ne!(code, 0);
    assert!(
        stdout.contains("[1/2] Building component `one`"),
        "{stdout}"
    );
    assert!(
        stderr.contains("component `two` failed to build") && stderr.contains("code 3"),
        "{stderr}"
    );
    let pwd = std::fs::read_to_string(app.path().join("sub/built-one.txt")).unwrap();
    assert!(pwd.trim().ends_with("/sub"), "{pwd}");
    assert!(app.path().join("built-two.txt").exists());

    let (code, stdout, _) = run_moa(&["build", "-c", "one"], app.path());
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Finished building 1 component(s)"),
        "{stdout}"
    );
}

#[test]
fn help_lists_the_commands_and_their_options() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run_moa(&["--help"], dir.path());
    assert_eq!(code, 0);
    for word in ["up", "build", "new"] {
        assert!(stdout.contains(word), "{stdout}");
    }
    let (_, stdout, _) = run_moa(&["up", "--help"], dir.path());
    for flag in [
        "--from",
        "--listen",
        "--runtime-config-file",
        "--admin-listen",
    ] {
        assert!(stdout.contains(flag), "{stdout}");
    }
}
