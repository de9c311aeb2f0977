//! Spin's outbound PostgreSQL (`spin:postgres@4.2.0`) and MySQL (`spin:mysql@3.0.0`) as spin-sdk 7
//! components use them, and the older interfaces of spin-sdk 6 and earlier, against a real `moa up` and the real servers: PostgreSQL on 127.0.0.1:5432
//! and MariaDB on 127.0.0.1:3306 (`MOA_TEST_POSTGRES_URL`, `MOA_TEST_MYSQL_URL` to point elsewhere).

mod common;

use common::{AppDir, Moa, Options, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

fn postgres_url() -> String {
    std::env::var("MOA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn mysql_url() -> String {
    std::env::var("MOA_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "rdbms"
[[trigger.http]]
route = "/pg"
component = "pg"
[[trigger.http]]
route = "/pg-admin"
component = "pg-admin"
[[trigger.http]]
route = "/pg-denied"
component = "pg-denied"
[[trigger.http]]
route = "/mysql"
component = "mysql"
[[trigger.http]]
route = "/mysql-admin"
component = "mysql-admin"
[[trigger.http]]
route = "/mysql-denied"
component = "mysql-denied"
[[trigger.http]]
route = "/legacy"
component = "legacy"
[[trigger.http]]
route = "/legacy-denied"
component = "legacy-denied"
[component.legacy]
source = "{rdbmslegacy}"
allowed_outbound_hosts = ["postgres://127.0.0.1:5432", "mysql://127.0.0.1:3306"]
[component.legacy-denied]
source = "{rdbmslegacy}"
allowed_outbound_hosts = ["postgres://127.0.0.1:5433", "mysql://127.0.0.1:3307"]
[component.pg]
source = "{pgprobe}"
allowed_outbound_hosts = ["postgres://127.0.0.1:5432", "postgres://localhost:5432"]
[component.pg-admin]
source = "{pgprobe}"
allowed_outbound_hosts = ["postgres://127.0.0.1:5432"]
[component.pg-denied]
source = "{pgprobe}"
allowed_outbound_hosts = ["postgres://127.0.0.1:5433", "mysql://127.0.0.1:3306", "https://127.0.0.1:5432"]
[component.mysql]
source = "{mysqlprobe}"
allowed_outbound_hosts = ["mysql://127.0.0.1:3306"]
[component.mysql-admin]
source = "{mysqlprobe}"
allowed_outbound_hosts = ["mysql://127.0.0.1"]
[component.mysql-denied]
source = "{mysqlprobe}"
allowed_outbound_hosts = ["mysql://127.0.0.1:3307", "postgres://127.0.0.1:3306"]
"#;

/// A table name no other test (or earlier run) uses.
fn table(name: &str) -> String {
    format!(
        "moa_{name}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// Sends a batch to a probe; returns the status and the JSON answer.
fn run(moa: &Moa, path: &str, batch: Value) -> (u16, Value) {
    let (status, body) = moa.send(Method::POST, path, Some(batch.to_string().into_bytes()));
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: {body}"));
    (status, value)
}

fn stmt(sql: &str, params: Value, query: bool) -> Value {
    json!({"sql": sql, "params": params, "query": query})
}

/// A PostgreSQL batch on the test server.
fn pg_batch(statements: Vec<Value>) -> Value {
    json!({"address": postgres_url(), "statements": statements})
}

/// The rows of statement `i` of a successful answer.
fn rows(answer: &Value, i: usize) -> &Value {
    &answer["results"][i]["rows"]
}

/// Runs one query as the admin component and returns its rows.
fn pg_admin(moa: &Moa, sql: &str) -> Value {
    let (status, answer) = run(moa, "/pg-admin", pg_batch(vec![stmt(sql, json!([]), true)]));
    assert_eq!(status, 200, "{answer}");
    rows(&answer, 0).clone()
}

fn start() -> (AppDir, Moa) {
    let app = AppDir::new(APP);
    let moa = Moa::start(&app, Options::default());
    (app, moa)
}

// ---- PostgreSQL ----

fn pg_round_trip(sync: bool) {
    let (_app, moa) = start();
    let t = table(if sync {
        "pg_types_sync"
    } else {
        "pg_types_async"
    });
    let bytes: Vec<u8> = (0..=255).collect();
    let create = format!(
        "CREATE TABLE {t} (id int4 PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, \
         s text, v varchar(10), c char(5), by bytea, d date, tm time, ts timestamp, tz timestamptz, \
         u uuid, j jsonb, n numeric, r4 int4range, r8 int8range, rn numrange, a4 int4[], a8 int8[], \
         an numeric[], at text[], iv interval, small int2)"
    );
    let insert = format!(
        "INSERT INTO {t} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)"
    );
    let values = json!([
        {"int32": 1}, {"boolean": true}, {"int16": -32768}, {"int32": i32::MAX}, {"int64": i64::MIN},
        {"floating32": 1.5}, {"floating64": -2.25}, {"str": "한국어 리뷰 ✓"}, {"str": "varchar"},
        {"str": "ab"}, {"binary": bytes}, {"date": [2024, 2, 29]}, {"time": [23, 59, 58, 123456000]},
        {"datetime": [1999, 12, 31, 23, 59, 59, 999999000]},
        {"datetime": [2024, 1, 2, 3, 4, 5, 0]},
        {"uuid": "6F9619FF-8B86-D011-B42D-00CF4FC964FF"}, {"jsonb": {"k": "v", "a": [1, 2]}},
        {"decimal": "123456789.123456789"},
        {"range_int32": [[30, "exclusive"], [100, "inclusive"]]},
        {"range_int64": [[5, "inclusive"], null]},
        {"range_decimal": [["1.5", "exclusive"], ["2.25", "inclusive"]]},
        {"array_int32": [1, null, 3]}, {"array_int64": [i64::MAX]},
        {"array_decimal": ["100", "200.123456789"]}, {"array_str": ["x", null]},
        {"interval": [123456, 10, 200]},
        // An int8 parameter into a smallint column (Spin binds int8 only to "char").
        {"int8": -7}
    ]);
    let nulls: Vec<Value> = std::iter::once(json!({"int32": 2}))
        .chain(std::iter::repeat_n(json!("db_null"), 26))
        .collect();
    let batch = json!({
        "address": postgres_url(),
        "sync": sync,
        "statements": [
            stmt(&create, json!([]), false),
            stmt(&insert, values, false),
            stmt(&insert, json!(nulls), false),
            stmt(&format!("SELECT * FROM {t} ORDER BY id"), json!([]), true),
            stmt(&format!("SELECT id, s FROM {t} WHERE false"), json!([]), true),
            stmt(&format!("DROP TABLE {t}"), json!([]), false),
        ]
    });
    let (status, answer) = run(&moa, "/pg", batch);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][1]["affected"], 1, "{answer}");
    let expected = json!([
        {"int32": 1}, {"boolean": true}, {"int16": -32768}, {"int32": i32::MAX}, {"int64": i64::MIN},
        {"floating32": 1.5}, {"floating64": -2.25}, {"str": "한국어 리뷰 ✓"}, {"str": "varchar"},
        {"str": "ab   "}, {"binary": (0..=255).collect::<Vec<u8>>()}, {"date": [2024, 2, 29]},
        {"time": [23, 59, 58, 123456000]}, {"datetime": [1999, 12, 31, 23, 59, 59, 999999000]},
        {"datetime": [2024, 1, 2, 3, 4, 5, 0]},
        {"uuid": "6f9619ff-8b86-d011-b42d-00cf4fc964ff"}, {"jsonb": {"a": [1, 2], "k": "v"}},
        {"decimal": "123456789.123456789"},
        // PostgreSQL normalises discrete ranges to [lower, upper).
        {"range_int32": [[31, "inclusive"], [101, "exclusive"]]},
        {"range_int64": [[5, "inclusive"], null]},
        {"range_decimal": [["1.5", "exclusive"], ["2.25", "inclusive"]]},
        {"array_int32": [1, null, 3]}, {"array_int64": [i64::MAX]},
        {"array_decimal": ["100", "200.123456789"]}, {"array_str": ["x", null]},
        {"interval": [123456, 10, 200]}, {"int16": -7}
    ]);
    let got = rows(&answer, 3);
    assert_eq!(got[0], expected, "{answer}");
    assert_eq!(got[1][0], json!({"int32": 2}));
    for (i, value) in got[1].as_array().unwrap().iter().enumerate().skip(1) {
        assert_eq!(value, &json!("db_null"), "column {i}: {answer}");
    }
    let columns = &answer["results"][3]["columns"];
    assert_eq!(columns[0], json!(["id", "Int32"]));
    assert_eq!(columns[14], json!(["tz", "Datetime"]));
    assert_eq!(columns[18], json!(["r4", "RangeInt32"]));
    // An empty result still names its columns (Spin's are empty then).
    assert_eq!(
        answer["results"][4]["columns"],
        json!([["id", "Int32"], ["s", "Str"]]),
        "{answer}"
    );
    assert_eq!(rows(&answer, 4), &json!([]));
}

#[test]
fn postgres_value_types_round_trip_with_spin_sdk_7s_async_calls() {
    pg_round_trip(false);
}

#[test]
fn postgres_value_types_round_trip_with_the_synchronous_calls() {
    pg_round_trip(true);
}

#[test]
fn postgres_values_postgres_writes_itself_decode_as_spin_documents_them() {
    let (_app, moa) = start();
    let sql = "SELECT '2024-01-02 03:04:05+09'::timestamptz AS tz, \
               'P1Y2M3DT4H5M6.7S'::interval AS iv, '(1,40]'::int4range AS r, \
               'empty'::int4range AS e, '0.123456789'::numeric AS n, '{\"b\": 1}'::json AS j, \
               '127.0.0.1'::inet AS ip, current_user AS who";
    let (status, answer) = run(&moa, "/pg", pg_batch(vec![stmt(sql, json!([]), true)]));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        rows(&answer, 0)[0],
        json!([
            // timestamptz reads as UTC, whatever the session's time zone.
            {"datetime": [2024, 1, 1, 18, 4, 5, 0]},
            {"interval": [14706700000i64, 3, 14]},
            {"range_int32": [[2, "inclusive"], [41, "exclusive"]]},
            {"range_int32": [null, null]},
            {"decimal": "0.123456789"},
            {"jsonb": {"b": 1}},
            // A type with no WIT value: its binary form, typed `other("inet")`.
            {"unsupported": [2, 32, 0, 4, 127, 0, 0, 1]},
            {"str": "postgres"}
        ]),
        "{answer}"
    );
    assert_eq!(
        answer["results"][0]["columns"][6],
        json!(["ip", "Other(\"inet\")"])
    );
}

#[test]
fn postgres_errors_reach_the_component_with_spins_variants_and_sqlstate() {
    let (_app, moa) = start();
    let t = table("pg_errors");
    let batch = |statements: Vec<Value>| pg_batch(statements);
    let setup = vec![stmt(
        &format!("CREATE TABLE {t} (id int4 PRIMARY KEY, n int4 NOT NULL)"),
        json!([]),
        false,
    )];
    assert_eq!(run(&moa, "/pg", batch(setup)).0, 200);
    let cases: Vec<(Value, &str, Option<&str>, &str)> = vec![
        (
            stmt("SELEC 1", json!([]), true),
            "query-failed",
            Some("42601"),
            "syntax error",
        ),
        (
            stmt(
                &format!("INSERT INTO {t} VALUES (1, 1), (1, 2)"),
                json!([]),
                false,
            ),
            "query-failed",
            Some("23505"),
            "duplicate key",
        ),
        (
            stmt(&format!("SELECT * FROM {t}_missing"), json!([]), true),
            "query-failed",
            Some("42P01"),
            "does not exist",
        ),
        (
            stmt("SELECT $1::uuid", json!([{"uuid": "not-a-uuid"}]), true),
            "bad-parameter",
            None,
            "parameter $1",
        ),
        (
            stmt(
                &format!("INSERT INTO {t} VALUES ($1, 1)"),
                json!([{"uuid": "nope"}]),
                false,
            ),
            "value-conversion-failed",
            None,
            "is not a UUID",
        ),
        (
            stmt("SELECT $1::int4", json!([{"boolean": true}]), true),
            "query-failed",
            None,
            "cannot be bound where PostgreSQL expects `int4`",
        ),
        (
            stmt("SELECT $1::int4", json!([]), true),
            "query-failed",
            None,
            "expected 1 parameter",
        ),
        (
            // Spin's host panics on this bound; here PostgreSQL judges it.
            stmt(
                "SELECT $1::int4range",
                json!([{"range_int32": [[1, "inclusive"], [i32::MAX, "inclusive"]]}]),
                true,
            ),
            "query-failed",
            Some("22003"),
            "out of range",
        ),
    ];
    for (statement, kind, code, text) in cases {
        let (status, answer) = run(&moa, "/pg", batch(vec![statement.clone()]));
        assert_eq!(status, 409, "{statement}: {answer}");
        assert_eq!(answer["kind"], kind, "{statement}: {answer}");
        if let Some(code) = code {
            assert_eq!(answer["code"], code, "{statement}: {answer}");
        }
        assert!(
            answer["error"].as_str().unwrap_or("").contains(text),
            "{statement}: {answer}"
        );
    }
    // Nothing of the failed insert stayed; the host serves on.
    let (status, answer) = run(
        &moa,
        "/pg",
        batch(vec![
            stmt(&format!("SELECT count(*) FROM {t}"), json!([]), true),
            stmt(&format!("DROP TABLE {t}"), json!([]), false),
        ]),
    );
    assert_eq!((status, rows(&answer, 0)), (200, &json!([[{"int64": 0}]])));
}

#[test]
fn postgres_refuses_hosts_outside_the_allow_list_on_every_open_path_without_connecting() {
    let (_app, moa) = start();
    for open in ["async", "sync", "builder", "builder-async"] {
        let (status, answer) = run(
            &moa,
            "/pg-denied",
            json!({"address": postgres_url(), "open": open, "statements": []}),
        );
        assert_eq!(status, 409, "{open}: {answer}");
        assert_eq!(answer["kind"], "connection-failed", "{open}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("address postgres://127.0.0.1:5432 is not permitted"),
            "{open}: {answer}"
        );
    }
    for (address, message) in [
        // `hostaddr` is where the session would go, whatever `host` says.
        (
            "host=localhost hostaddr=192.0.2.1 user=postgres dbname=test",
            "address postgres://192.0.2.1:5432 is not permitted",
        ),
        ("host=/var/run/postgresql user=postgres", "Unix sockets"),
        ("hello", "invalid PostgreSQL address"),
    ] {
        let (status, answer) = run(&moa, "/pg", json!({"address": address, "statements": []}));
        assert_eq!(status, 409, "{address}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "{address}: {answer}"
        );
    }
    let sessions = pg_admin(
        &moa,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'moa/pg-denied'",
    );
    assert_eq!(sessions, json!([[{"int64": 0}]]));
}

#[test]
fn postgres_sessions_are_pooled_and_come_back_clean() {
    let (_app, moa) = start();
    let t = table("pg_sessions");
    let create = pg_batch(vec![stmt(
        &format!("CREATE TABLE {t} (id int4)"),
        json!([]),
        false,
    )]);
    assert_eq!(run(&moa, "/pg", create).0, 200);
    // One connection is one session.
    let pid = stmt("SELECT pg_backend_pid()", json!([]), true);
    let (status, answer) = run(&moa, "/pg", pg_batch(vec![pid.clone(), pid.clone()]));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(rows(&answer, 0), rows(&answer, 1));
    // A transaction the component leaves open, a temp table and a setting end with the request.
    let (status, answer) = run(
        &moa,
        "/pg",
        pg_batch(vec![
            stmt("BEGIN", json!([]), false),
            stmt(&format!("INSERT INTO {t} VALUES (1)"), json!([]), false),
            stmt("CREATE TEMP TABLE scratch (x int)", json!([]), false),
        ]),
    );
    assert_eq!(status, 200, "{answer}");
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, answer) = run(
            &moa,
            "/pg",
            pg_batch(vec![
                stmt(&format!("SELECT count(*) FROM {t}"), json!([]), true),
                stmt(
                    "SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'",
                    json!([]),
                    true,
                ),
                pid.clone(),
            ]),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(rows(&answer, 0), &json!([[{"int64": 0}]]), "{answer}");
        assert_eq!(rows(&answer, 1), &json!([[{"int64": 0}]]), "{answer}");
        pids.insert(rows(&answer, 2).to_string());
    }
    // Sequential requests reuse pooled sessions instead of connecting each time.
    assert!(pids.len() < 10, "{pids:?}");
    let drop = pg_batch(vec![stmt(&format!("DROP TABLE {t}"), json!([]), false)]);
    assert_eq!(run(&moa, "/pg", drop).0, 200);
}

#[test]
fn postgres_rows_stream_and_a_component_may_stop_reading_early() {
    let (_app, moa) = start();
    let (status, answer) = run(
        &moa,
        "/pg",
        pg_batch(vec![stmt(
            "SELECT g FROM generate_series(1, 5000) g",
            json!([]),
            true,
        )]),
    );
    assert_eq!(status, 200, "{answer}");
    let all = rows(&answer, 0).as_array().unwrap();
    assert_eq!(all.len(), 5000);
    assert_eq!(all[4999], json!([{"int32": 5000}]));
    // Three rows of an endless query, then the stream is dropped: the statement stops.
    // (In the select list the function streams; in FROM, PostgreSQL would materialise it first.)
    let endless = "SELECT generate_series(1, 2000000000)";
    let (status, answer) = run(
        &moa,
        "/pg",
        json!({"address": postgres_url(), "take": 3, "statements": [
            stmt(endless, json!([]), true),
            // The same connection runs its next statement (Spin's would wait for the endless one).
            stmt("SELECT 7", json!([]), true),
        ]}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        rows(&answer, 0),
        &json!([[{"int32": 1}], [{"int32": 2}], [{"int32": 3}]])
    );
    assert_eq!(rows(&answer, 1), &json!([[{"int32": 7}]]));
    wait_until("the dropped query is no longer running", || {
        pg_admin(
            &moa,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT generate_series(1, 2000000000)' AND application_name = 'moa/pg'",
        ) == json!([[{"int64": 0}]])
    });
    let (status, _) = run(
        &moa,
        "/pg",
        pg_batch(vec![stmt("SELECT 1", json!([]), true)]),
    );
    assert_eq!(status, 200);
}

#[test]
fn an_instance_holds_at_most_16_postgres_connections_and_the_next_request_has_them_back() {
    let (_app, moa) = start();
    let batch = |extra: usize| {
        json!({"address": postgres_url(), "extra_connections": extra, "statements": [
            stmt("SELECT 1", json!([]), true)
        ]})
    };
    let (status, answer) = run(&moa, "/pg", batch(15));
    assert_eq!(status, 200, "sixteen connections in all: {answer}");
    let (status, answer) = run(&moa, "/pg", batch(16));
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["opened"], 16, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("too many connections"),
        "{answer}"
    );
    // The instance is gone with its request: its connections went back to the pool.
    let (status, answer) = run(&moa, "/pg", batch(15));
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_postgres_result_over_128_mib_is_refused_not_buffered() {
    let (_app, moa) = start();
    // 160 rows of 1 MiB: the synchronous `query` holds every row, so it stops at 128 MiB.
    let big = "SELECT repeat('x', 1048576) FROM generate_series(1, 160)";
    let (status, answer) = run(
        &moa,
        "/pg",
        json!({"address": postgres_url(), "sync": true, "statements": [stmt(big, json!([]), true)]}),
    );
    assert_eq!(
        status,
        409,
        "{}",
        &answer.to_string()[..300.min(answer.to_string().len())]
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("query result exceeds limit of 134217728 bytes"),
        "{answer}"
    );
    // Streamed, the same rows flow through (the component holds what it keeps).
    let (status, answer) = run(
        &moa,
        "/pg",
        json!({"address": postgres_url(), "take": 2, "statements": [stmt(big, json!([]), true)]}),
    );
    assert_eq!(status, 200);
    assert_eq!(rows(&answer, 0).as_array().unwrap().len(), 2);
}

#[test]
fn a_postgres_statement_past_the_request_deadline_is_cancelled_on_the_server() {
    let app = AppDir::new(APP);
    let rc = app.write(
        "runtime-config.toml",
        "[limits]\nrequest_timeout_ms = 1500\n",
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    for sync in [false, true] {
        let (status, answer) = run(
            &moa,
            "/pg",
            json!({"address": postgres_url(), "sync": sync, "statements": [stmt("SELECT pg_sleep(60)", json!([]), true)]}),
        );
        assert_eq!(status, 409, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("deadline"),
            "{answer}"
        );
    }
    wait_until("the server stopped the sleeping statements", || {
        pg_admin(
            &moa,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(60)'",
        ) == json!([[{"int64": 0}]])
    });
}

#[test]
fn postgres_server_ending_the_session_mid_query_is_an_error_and_the_next_request_works() {
    let (_app, moa) = start();
    let moa = std::sync::Arc::new(moa);
    let sleeper = {
        let moa = moa.clone();
        std::thread::spawn(move || {
            run(
                &moa,
                "/pg",
                pg_batch(vec![stmt("SELECT pg_sleep(20)", json!([]), true)]),
            )
        })
    };
    let running = "FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(20)' AND application_name = 'moa/pg'";
    wait_until("the query runs", || {
        pg_admin(&moa, &format!("SELECT count(*) {running}")) == json!([[{"int64": 1}]])
    });
    pg_admin(&moa, &format!("SELECT pg_terminate_backend(pid) {running}"));
    let (status, answer) = sleeper.join().expect("sleeper");
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["kind"], "query-failed", "{answer}");
    let (status, answer) = run(
        &moa,
        "/pg",
        pg_batch(vec![stmt("SELECT 41 + 1", json!([]), true)]),
    );
    assert_eq!((status, rows(&answer, 0)), (200, &json!([[{"int32": 42}]])));
}

#[test]
fn postgres_tls_encrypts_by_default_verifies_when_required_and_takes_a_components_ca() {
    let app = AppDir::new(APP);
    // Only the system bundle: Debian's /etc/ssl/certs directory (SSL_CERT_DIR here) also holds the
    // server's own self-signed certificate, which would make it trusted without the component's CA.
    let moa = Moa::start(
        &app,
        Options {
            env: vec![
                (
                    "SSL_CERT_FILE".into(),
                    "/etc/ssl/certs/ca-certificates.crt".into(),
                ),
                ("SSL_CERT_DIR".into(), String::new()),
            ],
            ..Options::default()
        },
    );
    let ssl = pg_admin(
        &moa,
        "SELECT current_setting('ssl'), current_setting('ssl_cert_file')",
    );
    assert_eq!(
        ssl[0][0],
        json!({"str": "on"}),
        "the test server must have TLS on (Debian's default): {ssl}"
    );
    let cert_file = ssl[0][1]["str"].as_str().unwrap().to_string();
    let pem = std::fs::read_to_string(&cert_file).unwrap_or_else(|e| panic!("{cert_file}: {e}"));
    let in_tls = stmt(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        json!([]),
        true,
    );
    // `prefer` (the default, as in the test address): encrypted, the certificate unchecked.
    let (status, answer) = run(&moa, "/pg", pg_batch(vec![in_tls.clone()]));
    assert_eq!(
        (status, rows(&answer, 0)),
        (200, &json!([[{"boolean": true}]])),
        "{answer}"
    );
    // `disable`: plaintext.
    let plain = format!("{}?sslmode=disable", postgres_url());
    let (status, answer) = run(
        &moa,
        "/pg",
        json!({"address": plain, "statements": [in_tls.clone()]}),
    );
    assert_eq!(
        (status, rows(&answer, 0)),
        (200, &json!([[{"boolean": false}]])),
        "{answer}"
    );
    // `require`: the self-signed certificate is not trusted...
    let required = "postgres://postgres@localhost:5432/test?sslmode=require";
    let (status, answer) = run(
        &moa,
        "/pg",
        json!({"address": required, "statements": [in_tls.clone()]}),
    );
    assert_eq!(
        (status, &answer["kind"]),
        (409, &json!("connection-failed")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("UnknownIssuer"),
        "{answer}"
    );
    // ...until the component adds it as its CA (spin-sdk's `open_with_options`); the name is checked.
    for open in ["builder", "builder-async"] {
        let (status, answer) = run(
            &moa,
            "/pg",
            json!({"address": required, "open": open, "ca": pem, "statements": [in_tls.clone()]}),
        );
        assert_eq!(
            (status, rows(&answer, 0)),
            (200, &json!([[{"boolean": true}]])),
            "{open}: {answer}"
        );
    }
    let wrong_name = "postgres://postgres@127.0.0.1:5432/test?sslmode=require";
    let (status, answer) = run(
        &moa,
        "/pg",
        json!({"address": wrong_name, "open": "builder-async", "ca": pem, "statements": []}),
    );
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not valid for name"),
        "{answer}"
    );
    let (status, answer) = run(
        &moa,
        "/pg",
        json!({"address": required, "open": "builder", "ca": "not a certificate", "statements": []}),
    );
    assert_eq!(
        (status, &answer["kind"]),
        (409, &json!("other")),
        "{answer}"
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("invalid root certificate"),
        "{answer}"
    );
}

// ---- MySQL / MariaDB ----

fn mysql_batch(statements: Vec<Value>) -> Value {
    json!({"address": mysql_url(), "statements": statements})
}

#[test]
fn mysql_value_types_round_trip() {
    let (_app, moa) = start();
    let t = table("my_types");
    let create = format!(
        "CREATE TABLE {t} (id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, \
         su SMALLINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, f FLOAT, \
         d DOUBLE, b BOOLEAN, v VARCHAR(20), tx TEXT, c CHAR(5), bn BINARY(4), vb VARBINARY(8), \
         bl BLOB, dc DECIMAL(10,3), dt DATETIME) CHARACTER SET utf8mb4"
    );
    let insert = format!(
        "INSERT INTO {t} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    );
    let blob: Vec<u8> = (0..=255).collect();
    let values = json!([
        {"int32": 1}, {"int8": -128}, {"uint8": 255}, {"int16": -32768}, {"uint16": 65535},
        {"int32": i32::MIN}, {"uint32": u32::MAX}, {"int64": i64::MIN}, {"uint64": u64::MAX},
        {"floating32": 1.5}, {"floating64": -2.25}, {"boolean": true}, {"str": "한국어 ✓"},
        {"str": "long text"}, {"str": "ab"}, {"binary": [1, 2, 3, 4]}, {"binary": [0, 255]},
        {"binary": blob}, {"str": "1234.5"}, {"str": "2024-02-29 23:59:58"}
    ]);
    let nulls: Vec<Value> = std::iter::once(json!({"int32": 2}))
        .chain(std::iter::repeat_n(json!("db_null"), 19))
        .collect();
    let (status, answer) = run(
        &moa,
        "/mysql",
        mysql_batch(vec![
            stmt(&create, json!([]), false),
            stmt(&insert, values, false),
            stmt(&insert, json!(nulls), false),
            stmt(&format!("SELECT * FROM {t} ORDER BY id"), json!([]), true),
            stmt(&format!("SELECT id FROM {t} WHERE 1 = 0"), json!([]), true),
            stmt(&format!("DROP TABLE {t}"), json!([]), false),
        ]),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        rows(&answer, 3)[0],
        json!([
            {"int32": 1}, {"int8": -128}, {"uint8": 255}, {"int16": -32768}, {"uint16": 65535},
            {"int32": i32::MIN}, {"uint32": u32::MAX}, {"int64": i64::MIN}, {"uint64": u64::MAX},
            {"floating32": 1.5}, {"floating64": -2.25},
            // BOOLEAN is TINYINT(1): Spin reads it as int8 too.
            {"int8": 1},
            {"str": "한국어 ✓"}, {"str": "long text"}, {"str": "ab"}, {"binary": [1, 2, 3, 4]},
            {"binary": [0, 255]}, {"binary": (0..=255).collect::<Vec<u8>>()},
            // `other` columns come as their text (Spin fails the query on them).
            {"str": "1234.500"}, {"str": "2024-02-29 23:59:58"}
        ]),
        "{answer}"
    );
    assert_eq!(rows(&answer, 3)[1][0], json!({"int32": 2}));
    for value in rows(&answer, 3)[1].as_array().unwrap().iter().skip(1) {
        assert_eq!(value, &json!("db_null"), "{answer}");
    }
    let columns = &answer["results"][3]["columns"];
    assert_eq!(columns[2], json!(["tu", "Uint8"]));
    assert_eq!(columns[15], json!(["bn", "Binary"]));
    assert_eq!(columns[13], json!(["tx", "Str"]));
    assert_eq!(columns[18], json!(["dc", "Other"]));
    // Zero rows, yet the columns are known.
    assert_eq!(answer["results"][4]["columns"], json!([["id", "Int32"]]));
}

#[test]
fn mysql_errors_and_refusals_reach_the_component() {
    let (_app, moa) = start();
    for (statement, kind, text) in [
        (stmt("SELEC 1", json!([]), true), "query-failed", "1064"),
        (stmt("SELEC 1", json!([]), false), "query-failed", "1064"),
        (
            stmt("SELECT * FROM moa_no_such_table", json!([]), true),
            "query-failed",
            "doesn't exist",
        ),
        (stmt("SELECT ?", json!([]), true), "query-failed", ""),
    ] {
        let (status, answer) = run(&moa, "/mysql", mysql_batch(vec![statement.clone()]));
        assert_eq!(status, 409, "{statement}: {answer}");
        assert_eq!(answer["kind"], kind, "{statement}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(text), "{answer}");
    }
    let (status, answer) = run(&moa, "/mysql-denied", mysql_batch(vec![]));
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["kind"], "connection-failed");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("address mysql://127.0.0.1:3306 is not permitted"),
        "{answer}"
    );
    for (address, message) in [
        (
            "mysql://root@127.0.0.1:3306/test?socket=/run/mysqld/mysqld.sock",
            "socket",
        ),
        ("hello", "invalid MySQL address"),
        (
            "postgres://root@127.0.0.1:3306/test",
            "invalid MySQL address",
        ),
    ] {
        let (status, answer) = run(
            &moa,
            "/mysql",
            json!({"address": address, "statements": []}),
        );
        assert_eq!(status, 409, "{address}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "{address}: {answer}"
        );
    }
}

#[test]
fn mysql_rows_stream_and_a_transaction_left_open_rolls_back() {
    let (_app, moa) = start();
    let t = table("my_stream");
    let (status, answer) = run(
        &moa,
        "/mysql",
        mysql_batch(vec![
            stmt(&format!("CREATE TABLE {t} (id INT)"), json!([]), false),
            stmt(
                &format!("INSERT INTO {t} SELECT seq FROM seq_1_to_5000"),
                json!([]),
                false,
            ),
            stmt(&format!("SELECT id FROM {t} ORDER BY id"), json!([]), true),
        ]),
    );
    assert_eq!(status, 200, "{answer}");
    let all = rows(&answer, 2).as_array().unwrap();
    assert_eq!((all.len(), &all[4999]), (5000, &json!([{"int32": 5000}])));
    // Three rows, the rest dropped unread; the same connection then runs the next statement.
    let (status, answer) = run(
        &moa,
        "/mysql",
        json!({"address": mysql_url(), "take": 3, "statements": [
            stmt(&format!("SELECT id FROM {t} ORDER BY id"), json!([]), true),
            stmt("SELECT 7", json!([]), true),
        ]}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(rows(&answer, 0).as_array().unwrap().len(), 3);
    assert_eq!(rows(&answer, 1), &json!([[{"int32": 7}]]));
    let (status, answer) = run(
        &moa,
        "/mysql",
        mysql_batch(vec![
            stmt("START TRANSACTION", json!([]), false),
            stmt(&format!("DELETE FROM {t}"), json!([]), false),
        ]),
    );
    assert_eq!(status, 200, "{answer}");
    for _ in 0..3 {
        let (status, answer) = run(
            &moa,
            "/mysql",
            mysql_batch(vec![stmt(
                &format!("SELECT count(*) FROM {t}"),
                json!([]),
                true,
            )]),
        );
        assert_eq!(
            (status, rows(&answer, 0)),
            (200, &json!([[{"int64": 5000}]]))
        );
    }
    let drop = mysql_batch(vec![stmt(&format!("DROP TABLE {t}"), json!([]), false)]);
    assert_eq!(run(&moa, "/mysql", drop).0, 200);
}

#[test]
fn mysql_server_killing_the_session_mid_query_is_an_error_and_the_next_request_works() {
    let (_app, moa) = start();
    let moa = std::sync::Arc::new(moa);
    let sleeper = {
        let moa = moa.clone();
        std::thread::spawn(move || {
            run(
                &moa,
                "/mysql",
                mysql_batch(vec![stmt("SELECT SLEEP(20)", json!([]), true)]),
            )
        })
    };
    let find = "SELECT id FROM information_schema.processlist WHERE info = 'SELECT SLEEP(20)'";
    let mut id = Value::Null;
    wait_until("the query runs", || {
        let (_, answer) = run(
            &moa,
            "/mysql-admin",
            mysql_batch(vec![stmt(find, json!([]), true)]),
        );
        id = rows(&answer, 0)[0][0].clone();
        !id.is_null()
    });
    let id = id
        .as_object()
        .and_then(|o| o.values().next())
        .cloned()
        .unwrap();
    let (status, answer) = run(
        &moa,
        "/mysql-admin",
        mysql_batch(vec![stmt(&format!("KILL {id}"), json!([]), false)]),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = sleeper.join().expect("sleeper");
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = run(
        &moa,
        "/mysql",
        mysql_batch(vec![stmt("SELECT 41 + 1", json!([]), true)]),
    );
    assert_eq!((status, rows(&answer, 0)), (200, &json!([[{"int32": 42}]])));
}

#[test]
fn a_mysql_statement_past_the_request_deadline_is_killed_on_the_server() {
    let app = AppDir::new(APP);
    let rc = app.write(
        "runtime-config.toml",
        "[limits]\nrequest_timeout_ms = 1500\n",
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    for (query, sql) in [(true, "SELECT SLEEP(60)"), (false, "DO SLEEP(61)")] {
        let (status, answer) = run(
            &moa,
            "/mysql",
            mysql_batch(vec![stmt(sql, json!([]), query)]),
        );
        assert_eq!(status, 409, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("deadline"),
            "{answer}"
        );
    }
    wait_until("the server stopped the sleeping statements", || {
        let (_, answer) = run(
            &moa,
            "/mysql-admin",
            mysql_batch(vec![stmt(
                "SELECT count(*) FROM information_schema.processlist WHERE info IN ('SELECT SLEEP(60)', 'DO SLEEP(61)')",
                json!([]),
                true,
            )]),
        );
        rows(&answer, 0) == &json!([[{"int64": 0}]])
    });
}

// ---- The older interfaces (spin-sdk 6 and earlier) ----

fn legacy(
    moa: &Moa,
    path: &str,
    interface: &str,
    address: &str,
    statements: Vec<Value>,
) -> (u16, Value) {
    run(
        moa,
        path,
        json!({"interface": interface, "address": address, "statements": statements}),
    )
}

#[test]
fn older_postgres_interfaces_share_the_sessions_and_downgrade_what_they_cannot_type() {
    let (_app, moa) = start();
    let t = table("pg_legacy");
    let create = format!("CREATE TABLE {t} (id int4, name text, day date, u uuid)");
    let (status, answer) = run(
        &moa,
        "/pg",
        pg_batch(vec![
            stmt(&create, json!([]), false),
            stmt(
                &format!("INSERT INTO {t} VALUES (1, 'one', '2024-02-29', gen_random_uuid())"),
                json!([]),
                false,
            ),
        ]),
    );
    assert_eq!(status, 200, "{answer}");
    let select = format!("SELECT id, name, day, u FROM {t} WHERE id = $1 AND name = $2");
    let params = json!([{"int32": 1}, {"str": "one"}]);
    // spin:postgres@3.0.0 knows dates; uuid is beyond it.
    let (status, answer) = legacy(
        &moa,
        "/legacy",
        "pg3",
        &postgres_url(),
        vec![
            stmt(&select, params.clone(), true),
            stmt(
                &format!("INSERT INTO {t} (id, day) VALUES ($1, $2)"),
                json!([{"int32": 2}, {"date": [1999, 12, 31]}]),
                false,
            ),
        ],
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["results"][0]["rows"],
        json!([[
            "Int32(1)",
            "Str(\"one\")",
            "Date((2024, 2, 29))",
            "Unsupported"
        ]]),
        "{answer}"
    );
    assert_eq!(
        answer["results"][0]["columns"],
        json!([
            ["id", "Int32"],
            ["name", "Str"],
            ["day", "Date"],
            ["u", "Other"]
        ])
    );
    assert_eq!(answer["results"][1]["affected"], 1);
    // Spin 2 and Spin 1 have no dates either.
    for interface in ["pg2", "pg1"] {
        let (status, answer) = legacy(
            &moa,
            "/legacy",
            interface,
            &postgres_url(),
            vec![stmt(&select, params.clone(), true)],
        );
        assert_eq!(status, 200, "{interface}: {answer}");
        assert_eq!(
            answer["results"][0]["rows"],
            json!([["Int32(1)", "Str(\"one\")", "Unsupported", "Unsupported"]]),
            "{interface}: {answer}"
        );
        // PostgreSQL has no unsigned integers: refused before anything runs.
        let (status, answer) = legacy(
            &moa,
            "/legacy",
            interface,
            &postgres_url(),
            vec![stmt(
                &format!("SELECT $1::int2 FROM {t}"),
                json!([{"uint8": 7}]),
                true,
            )],
        );
        assert_eq!(status, 409, "{interface}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("ValueConversionFailed(\"Postgres does not support unsigned integers\")"),
            "{interface}: {answer}"
        );
        let (status, answer) = legacy(
            &moa,
            "/legacy-denied",
            interface,
            &postgres_url(),
            vec![stmt("SELECT 1", json!([]), true)],
        );
        assert_eq!(status, 409, "{interface}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("address postgres://127.0.0.1:5432 is not permitted"),
            "{interface}: {answer}"
        );
    }
    // A server error reaches the older interfaces as query-failed text.
    let (status, answer) = legacy(
        &moa,
        "/legacy",
        "pg3",
        &postgres_url(),
        vec![stmt("SELEC 1", json!([]), true)],
    );
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("Error::QueryFailed("),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("42601"),
        "{answer}"
    );
    let drop = pg_batch(vec![stmt(&format!("DROP TABLE {t}"), json!([]), false)]);
    assert_eq!(run(&moa, "/pg", drop).0, 200);
}

#[test]
fn older_mysql_interfaces_round_trip_through_the_same_sessions() {
    let (_app, moa) = start();
    let t = table("my_legacy");
    for interface in ["mysql2", "mysql1"] {
        let (status, answer) = legacy(
            &moa,
            "/legacy",
            interface,
            &mysql_url(),
            vec![
                stmt(
                    &format!("CREATE TABLE {t} (id INT, small TINYINT UNSIGNED, name VARCHAR(20))"),
                    json!([]),
                    false,
                ),
                stmt(
                    &format!("INSERT INTO {t} VALUES (?, ?, ?)"),
                    json!([{"int32": 1}, {"uint8": 200}, {"str": "하나"}]),
                    false,
                ),
                stmt(&format!("SELECT id, small, name FROM {t}"), json!([]), true),
                stmt(&format!("DROP TABLE {t}"), json!([]), false),
            ],
        );
        assert_eq!(status, 200, "{interface}: {answer}");
        assert_eq!(
            answer["results"][2]["rows"],
            json!([["Int32(1)", "Uint8(200)", "Str(\"하나\")"]]),
            "{interface}: {answer}"
        );
        assert_eq!(
            answer["results"][2]["columns"],
            json!([["id", "Int32"], ["small", "Uint8"], ["name", "Str"]])
        );
        let (status, answer) = legacy(
            &moa,
            "/legacy",
            interface,
            &mysql_url(),
            vec![stmt("SELEC 1", json!([]), true)],
        );
        assert_eq!(status, 409, "{interface}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("QueryFailed"),
            "{answer}"
        );
        let (status, answer) = legacy(
            &moa,
            "/legacy-denied",
            interface,
            &mysql_url(),
            vec![stmt("SELECT 1", json!([]), true)],
        );
        assert_eq!(status, 409, "{interface}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("address mysql://127.0.0.1:3306 is not permitted"),
            "{interface}: {answer}"
        );
    }
}
