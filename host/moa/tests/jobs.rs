//! Batch jobs (`[[trigger.job]]`) through the real `moa job run` / `moa job status` processes on
//! the embedded store: bad records skipped with their reasons, flaky chunks retried, a trapping
//! record found by the chunk scan, a fatal error failing the execution at once (resumed after the
//! fix), a completed execution refused, and a host killed mid-job whose
//! execution two other hosts finish together with no record written twice or left out.

mod common;

use common::{AppDir, Moa, Options};
use reqwest::Method;
use serde_json::{Value, json};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "jobs"
[[trigger.http]]
route = "/run"
component = "docprobe"
[[trigger.job]]
name = "probe"
component = "jobprobe"
source = { type = "jsonl", path = "${input}" }
chunk_size = 10
range_chunks = 3
workers = 2
skip_limit = 40
retry_limit = 3
lease_ms = 2000
parameters = { input = "records.jsonl" }
[component.jobprobe]
source = "{jobprobe}"
document_stores = ["default", "attempts"]
[component.docprobe]
source = "{docprobe}"
document_stores = ["default", "attempts"]
"#;

fn moa_job(app: &AppDir, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moa"));
    command
        .arg("job")
        .args(args)
        .arg("-f")
        .arg(app.manifest())
        .arg("--state-dir")
        .arg(app.path().join(".moa"))
        .env(
            "MOA_CACHE_DIR",
            std::env::temp_dir().join(format!("moa-test-cache-{}", std::process::id())),
        )
        .env("MOA_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn run(app: &AppDir, args: &[&str]) -> Output {
    moa_job(app, args).output().expect("moa job runs")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `n` records, one per line; `line(i)` may change any.
fn write_records(app: &AppDir, name: &str, n: usize, line: impl Fn(usize) -> String) {
    let lines: Vec<String> = (0..n).map(line).collect();
    app.write(name, &(lines.join("\n") + "\n"));
}

fn record(i: usize) -> String {
    json!({"id": format!("r{i}"), "n": i}).to_string()
}

/// The documents of `collection` in `store`, read through the docprobe component of a `moa up`.
fn documents(app: &AppDir, store: &str, collection: &str) -> Vec<Value> {
    let moa = Moa::start(app, Options::default());
    let script =
        json!({"store": store, "ops": [{"op": "find", "collection": collection, "filter": {}}]});
    let (status, body) = moa.send(Method::POST, "/run", Some(script.to_string().into_bytes()));
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    reply["results"][0]["ok"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{reply}"))
}

fn status_line(app: &AppDir) -> String {
    let output = run(app, &["status", "probe"]);
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The `written N` figure of `moa job status`.
fn written(status: &str) -> u64 {
    status
        .split_whitespace()
        .skip_while(|w| *w != "written")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn bad_records_are_skipped_with_reasons_and_flaky_chunks_retried() {
    let app = AppDir::new(APP);
    let bad = |i: usize| i % 17 == 5;
    write_records(&app, "records.jsonl", 200, |i| match i {
        55 => json!({"id": "r55", "n": 55, "trap": true}).to_string(),
        90 => "{oops".to_string(),
        120 => String::new(),
        i if bad(i) => json!({"id": format!("r{i}"), "n": i, "bad": true}).to_string(),
        i => record(i),
    });
    let output = run(&app, &["run", "probe", "--param", "flaky=1", "--quiet"]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let marked_bad = (0..200)
        .filter(|i| bad(*i) && ![55, 90, 120].contains(i))
        .count();
    let expected_written = 200 - marked_bad - 3;
    assert!(
        stdout.contains(&format!(
            "{expected_written} records written, {} skipped",
            marked_bad + 2
        )),
        "{}",
        text(&output)
    );

    let status = run(&app, &["status", "probe", "--skips", "100"]);
    let listing = String::from_utf8_lossy(&status.stdout);
    assert!(listing.contains("COMPLETED"), "{listing}");
    assert!(
        listing.contains("skipped record 56: ") && listing.contains("trapped"),
        "the trap is found by the scan: {listing}"
    );
    assert!(listing.contains("skipped record 91: not JSON"), "{listing}");
    assert!(
        listing.contains("skipped record 6: record \"r5\" is marked bad"),
        "{listing}"
    );
    assert!(
        !listing.contains("skipped record 121"),
        "an empty line is not a record: {listing}"
    );

    // The same parameters again: refused, with the way to run it anew.
    let again = run(&app, &["run", "probe", "--param", "flaky=1", "--quiet"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already completed") && text(&again).contains("--param run="),
        "{}",
        text(&again)
    );

    // Bad input: clear errors, nothing started.
    let unknown = run(&app, &["run", "nope"]);
    assert!(
        !unknown.status.success()
            && text(&unknown).contains("no job named `nope`")
            && text(&unknown).contains("probe"),
        "{}",
        text(&unknown)
    );
    let missing = run(&app, &["run", "probe", "--param", "input=missing.jsonl"]);
    assert!(
        !missing.status.success() && text(&missing).contains("cannot read the job's source"),
        "{}",
        text(&missing)
    );
    let malformed = run(&app, &["run", "probe", "--param", "oops"]);
    assert!(
        !malformed.status.success() && text(&malformed).contains("KEY=VALUE"),
        "{}",
        text(&malformed)
    );

    // Every good record written exactly once (a repeated chunk would have failed on duplicate ids).
    let out = documents(&app, "default", "job_out");
    assert_eq!(out.len(), expected_written);
    let attempts = documents(&app, "attempts", "job_attempts");
    assert!(
        attempts.iter().any(|a| a["n"].as_i64() >= Some(2)),
        "flaky chunks ran again: {attempts:?}"
    );
}

#[test]
fn a_fatal_chunk_error_fails_the_job_at_once_and_the_same_run_resumes_after_the_fix() {
    let app = AppDir::new(APP);
    let fatal = |i: usize| match i {
        35 => json!({"id": "r35", "n": 35, "fatal": true}).to_string(),
        i => record(i),
    };
    write_records(&app, "records.jsonl", 60, fatal);
    let failed = run(&app, &["run", "probe", "--quiet"]);
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        text(&failed).contains("FAILED")
            && text(&failed).contains("the component stopped the job")
            && text(&failed).contains("\"r35\" says nothing can go on"),
        "{}",
        text(&failed)
    );
    let status = status_line(&app);
    assert!(
        status.contains("FAILED") && status.contains("skipped 0"),
        "nothing is skipped for a fatal error: {status}"
    );

    // The cause fixed, the same command resumes the execution and writes every record once.
    write_records(&app, "records.jsonl", 60, record);
    let resumed = run(&app, &["run", "probe", "--quiet"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        text(&resumed).contains("60 records written, 0 skipped"),
        "{}",
        text(&resumed)
    );
    let out = documents(&app, "default", "job_out");
    let mut ids: Vec<String> = out
        .iter()
        .filter_map(|d| d["_id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 60, "every record once: {out:?}");
    assert_eq!(out.len(), 60);
}

#[test]
fn a_killed_host_loses_nothing_and_two_hosts_finish_the_job_together() {
    let app = AppDir::new(APP);
    write_records(&app, "records.jsonl", 1200, record);
    let args = ["run", "probe", "--param", "sleep_ms=300", "--quiet"];
    let mut first: Child = moa_job(&app, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("moa job runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = status_line(&app);
        if written(&status) >= 100 {
            break;
        }
        // A first host that stopped early says why (its output is piped).
        if let Ok(Some(_)) = first.try_wait() {
            let output = first.wait_with_output().expect("the first host's output");
            panic!(
                "the first host exited before writing 100 records: {status}\n{}",
                text(&output)
            );
        }
        if Instant::now() >= deadline {
            let _ = first.kill();
            let output = first.wait_with_output().expect("the first host's output");
            panic!(
                "the first host wrote nothing in 120 s: {status}\n{}",
                text(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    first.kill().expect("kill -9");
    let _ = first.wait();
    let before = written(&status_line(&app));
    assert!(before < 1000, "killed mid-job: {before}");

    // Two hosts join the same execution; the dead host's claimed range is taken when its lease ends.
    let second = moa_job(&app, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let third = moa_job(&app, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let outputs = [
        second.wait_with_output().expect("second"),
        third.wait_with_output().expect("third"),
    ];
    let mut ranges_run = Vec::new();
    for output in &outputs {
        assert!(output.status.success(), "{}", text(output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let ran: u64 = stdout
            .split("this host ran ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}", text(output)));
        ranges_run.push(ran);
        assert!(
            stdout.contains("1200 records written, 0 skipped"),
            "{}",
            text(output)
        );
    }
    assert!(
        ranges_run.iter().all(|r| *r > 0),
        "both hosts ran ranges: {ranges_run:?}"
    );
    let out = documents(&app, "default", "job_out");
    assert_eq!(out.len(), 1200, "no record left out");
    let mut ids: Vec<&str> = out.iter().filter_map(|d| d["_id"].as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1200, "no record written twice");
}

#[test]
fn a_cron_entry_starts_a_job_on_schedule() {
    let scheduled = APP.replace(
        "[component.jobprobe]",
        "[[trigger.cron]]\ncomponent = \"jobprobe\"\njob = \"probe\"\ncron_expression = \"*/2 * * * * *\"\n[component.jobprobe]",
    );
    let app = AppDir::new(&scheduled);
    write_records(&app, "records.jsonl", 50, record);
    let moa = Moa::start(&app, Options::default());
    assert!(
        moa.stdout.iter().any(|l| l.contains("job probe on")),
        "{:?}",
        moa.stdout
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let listing = loop {
        let listing = status_line(&app);
        if listing.contains("COMPLETED") {
            break listing;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled execution completed: {listing}\n{}",
            moa.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(listing.contains("scheduled_at="), "{listing}");
    assert!(listing.contains("written 50"), "{listing}");
    drop(moa);

    // A cron entry naming a job nobody defines is refused at start, with the line.
    let broken = APP.replace(
        "[component.jobprobe]",
        "[[trigger.cron]]\ncomponent = \"jobprobe\"\njob = \"nope\"\ncron_expression = \"*/2 * * * * *\"\n[component.jobprobe]",
    );
    let app = AppDir::new(&broken);
    let error = Moa::try_start(&app, Options::default())
        .err()
        .expect("refused");
    assert!(error.contains("names job `nope`"), "{error}");
}
