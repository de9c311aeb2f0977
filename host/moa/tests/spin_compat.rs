//! Spin's component interfaces as spin-sdk 7 components use them, against a real `moa up`:
//! SQLite (embedded files, in-memory databases, a remote libSQL server: a real sqld), the Redis
//! pub/sub trigger (a real redis-server), wasi:keyvalue and wasi:config, relative URIs, outbound
//! MQTT (a real Mosquitto); one section per interface or trigger.

mod common;

use common::{AppDir, Moa, MosquittoServer, Options, RedisServer, SqldServer, metric};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SQLITE_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "sqlite"
[[trigger.http]]
route = "/db/..."
component = "db"
[[trigger.http]]
route = "/stranger/..."
component = "stranger"
[component.db]
source = "{sqliteprobe}"
sqlite_databases = ["default", "orders"]
[component.stranger]
source = "{sqliteprobe}"
sqlite_databases = ["orders"]
"#;

/// Sends a batch of statements to the probe; returns the status and the JSON answer.
fn sql(moa: &Moa, path: &str, batch: Value) -> (u16, Value) {
    let (status, body) = moa.send(Method::POST, path, Some(batch.to_string().into_bytes()));
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: {body}"));
    (status, value)
}

fn statements(sync: bool, list: &[(&str, Value)]) -> Value {
    json!({
        "sync": sync,
        "statements": list.iter().map(|(sql, params)| json!({"sql": sql, "params": params})).collect::<Vec<_>>(),
    })
}

fn sqlite_options(app: &AppDir, orders: &str) -> Options {
    let rc = app.write(
        "runtime-config.toml",
        &format!("[sqlite_database.orders]\ntype = \"spin\"\n{orders}"),
    );
    Options::runtime_config(&rc)
}

/// Every value type round-trips, and `changes` / `last-insert-rowid` are the connection's own;
/// the same with spin-sdk 7's streaming calls and with the interface's synchronous ones.
fn sqlite_round_trip(sync: bool) {
    let app = AppDir::new(SQLITE_APP);
    let options = sqlite_options(&app, "path = \"orders.db\"\n");
    sqlite_round_trip_on(sync, &app, options);
}

/// [`sqlite_round_trip`] on the `default` database of `app` started with `options`.
fn sqlite_round_trip_on(sync: bool, app: &AppDir, options: Options) {
    let moa = Moa::start(app, options);
    let blob: Vec<u8> = (0..=255).collect();
    let table = if sync { "typed_sync" } else { "typed_async" };
    let (status, answer) = sql(
        &moa,
        "/db/default",
        statements(
            sync,
            &[
                (
                    &format!(
                        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n TEXT)"
                    ),
                    json!([]),
                ),
                (
                    &format!(
                        "INSERT INTO {table} (i, r, t, b, n) VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)"
                    ),
                    json!([
                        {"integer": i64::MAX}, {"real": 0.1}, {"text": "떡볶이 2인분"}, {"blob": blob}, null,
                        {"integer": i64::MIN}, {"real": -1.5e300}, {"text": ""}, {"blob": []}, null,
                    ]),
                ),
                (
                    &format!("UPDATE {table} SET n = 'seen' WHERE id >= ?"),
                    json!([{"integer": 1}]),
                ),
                (
                    &format!("SELECT id, i, r, t, b, n FROM {table} ORDER BY id"),
                    json!([]),
                ),
            ],
        ),
    );
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[1]["changes"], 2, "{answer}");
    assert_eq!(results[1]["last_insert_rowid"], 2, "{answer}");
    assert_eq!(results[2]["changes"], 2, "{answer}");
    let select = &results[3];
    assert_eq!(select["columns"], json!(["id", "i", "r", "t", "b", "n"]));
    assert_eq!(
        select["rows"],
        json!([
            [{"integer": 1}, {"integer": i64::MAX}, {"real": 0.1}, {"text": "떡볶이 2인분"}, {"blob": blob}, {"text": "seen"}],
            [{"integer": 2}, {"integer": i64::MIN}, {"real": -1.5e300}, {"text": ""}, {"blob": []}, {"text": "seen"}],
        ])
    );
    // A new connection starts with no insert of its own.
    let (_, answer) = sql(
        &moa,
        "/db/default",
        statements(
            sync,
            &[(&format!("SELECT count(*) FROM {table}"), json!([]))],
        ),
    );
    assert_eq!(answer["results"][0]["rows"], json!([[{"integer": 2}]]));
    assert_eq!(answer["results"][0]["last_insert_rowid"], 0);
}

#[test]
fn sqlite_value_types_round_trip_with_spin_sdk_7s_streaming_calls() {
    sqlite_round_trip(false);
}

#[test]
fn sqlite_value_types_round_trip_with_the_synchronous_calls() {
    sqlite_round_trip(true);
}

#[test]
fn sqlite_data_lives_in_the_state_dir_and_the_configured_file_across_restarts() {
    let app = AppDir::new(SQLITE_APP);
    let create = |db: &str| {
        statements(
            false,
            &[
                (
                    "CREATE TABLE IF NOT EXISTS menu (name TEXT PRIMARY KEY, price INTEGER)",
                    json!([]),
                ),
                (
                    "INSERT INTO menu VALUES (?, ?)",
                    json!([{"text": db}, {"integer": 9000}]),
                ),
            ],
        )
    };
    let moa = Moa::start(&app, sqlite_options(&app, "path = \"data/orders.db\"\n"));
    assert_eq!(sql(&moa, "/db/default", create("default")).0, 200);
    assert_eq!(sql(&moa, "/db/orders", create("orders")).0, 200);
    moa.stop();

    // The files are where the docs say, and are plain SQLite databases.
    for (file, name) in [
        (app.path().join(".moa/sqlite.default.db"), "default"),
        (app.path().join("data/orders.db"), "orders"),
    ] {
        let connection = rusqlite::Connection::open(&file).unwrap();
        let found: String = connection
            .query_row("SELECT name FROM menu", [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(found, name);
    }

    let moa = Moa::start(&app, sqlite_options(&app, "path = \"data/orders.db\"\n"));
    let select = statements(false, &[("SELECT name, price FROM menu", json!([]))]);
    let (_, answer) = sql(&moa, "/db/orders", select.clone());
    assert_eq!(
        answer["results"][0]["rows"],
        json!([[{"text": "orders"}, {"integer": 9000}]])
    );
    let (_, answer) = sql(&moa, "/db/default", select);
    assert_eq!(
        answer["results"][0]["rows"],
        json!([[{"text": "default"}, {"integer": 9000}]])
    );
}

#[test]
fn sqlite_in_memory_database_is_shared_by_requests_while_the_app_runs() {
    let app = AppDir::new(SQLITE_APP);
    let moa = Moa::start(&app, sqlite_options(&app, ""));
    let insert = statements(
        false,
        &[
            ("CREATE TABLE IF NOT EXISTS hits (n INTEGER)", json!([])),
            ("INSERT INTO hits VALUES (1)", json!([])),
            ("SELECT count(*) FROM hits", json!([])),
        ],
    );
    assert_eq!(
        sql(&moa, "/db/orders", insert.clone()).1["results"][2]["rows"],
        json!([[{"integer": 1}]])
    );
    assert_eq!(
        sql(&moa, "/db/orders", insert.clone()).1["results"][2]["rows"],
        json!([[{"integer": 2}]])
    );
    moa.stop();
    assert!(!app.path().join("orders.db").exists());
    let moa = Moa::start(&app, sqlite_options(&app, ""));
    assert_eq!(
        sql(&moa, "/db/orders", insert).1["results"][2]["rows"],
        json!([[{"integer": 1}]])
    );
}

/// SQL the database refuses: the component gets `io` with the database's message.
fn refused_sql(moa: &Moa, sync: bool) {
    let (status, answer) = sql(
        moa,
        "/db/default",
        statements(sync, &[("SELEC 1", json!([]))]),
    );
    assert_eq!(status, 409, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.starts_with("Error::Io(") && error.contains("syntax error"),
        "{error}"
    );
}

/// Creates `stock` (one item, 3 in stock) on the `default` database, then in a transaction takes 2
/// twice: the second violates the CHECK, and the component drops the connection with the
/// transaction open.
fn failed_transaction(moa: &Moa) {
    let (status, answer) = sql(
        moa,
        "/db/default",
        statements(
            false,
            &[
                (
                    "CREATE TABLE stock (item TEXT PRIMARY KEY, qty INTEGER CHECK (qty >= 0))",
                    json!([]),
                ),
                ("INSERT INTO stock VALUES ('kimchi', 3)", json!([])),
                ("BEGIN", json!([])),
                (
                    "UPDATE stock SET qty = qty - 2 WHERE item = 'kimchi'",
                    json!([]),
                ),
                (
                    "UPDATE stock SET qty = qty - 2 WHERE item = 'kimchi'",
                    json!([]),
                ),
            ],
        ),
    );
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["statement"], 4);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("CHECK constraint failed"),
        "{answer}"
    );
}

#[test]
fn sqlite_errors_reach_the_component_and_a_transaction_rolls_back() {
    let app = AppDir::new(SQLITE_APP);
    let moa = Moa::start(&app, sqlite_options(&app, ""));
    for sync in [false, true] {
        // SQL the database refuses: the component gets `io` with SQLite's message.
        refused_sql(&moa, sync);
        // Parameters that do not match the statement.
        let (status, answer) = sql(
            &moa,
            "/db/default",
            statements(sync, &[("SELECT ?, ?", json!([{"integer": 1}]))]),
        );
        assert_eq!(status, 409, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("2 parameter(s) but 1"),
            "{answer}"
        );
        // A database the component was not granted, and one that does not exist.
        for path in ["/stranger/default", "/db/nowhere"] {
            let (status, answer) = sql(&moa, path, statements(sync, &[("SELECT 1", json!([]))]));
            assert_eq!(status, 409, "{answer}");
            assert_eq!(answer["error"], "Error::AccessDenied", "{path}");
        }
    }
    // A constraint violation inside a transaction, then a rollback: nothing of it stays.
    failed_transaction(&moa);
    // The connection was dropped with the transaction open: SQLite rolled it back.
    let (_, answer) = sql(
        &moa,
        "/db/default",
        statements(false, &[("SELECT qty FROM stock", json!([]))]),
    );
    assert_eq!(answer["results"][0]["rows"], json!([[{"integer": 3}]]));
}

#[test]
fn sqlite_rows_stream_and_a_component_may_stop_reading_early() {
    let app = AppDir::new(SQLITE_APP);
    let moa = Moa::start(&app, sqlite_options(&app, ""));
    let count = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000) SELECT x FROM n";
    let (status, answer) = sql(
        &moa,
        "/db/default",
        statements(false, &[(count, json!([]))]),
    );
    assert_eq!(status, 200);
    let rows = answer["results"][0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5000);
    assert_eq!(rows[4999], json!([{"integer": 5000}]));
    // Three rows of an endless query, then the next statement on the same connection.
    let endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT x FROM n";
    let mut batch = statements(false, &[(endless, json!([])), ("SELECT 42", json!([]))]);
    batch["take"] = json!(3);
    let (status, answer) = sql(&moa, "/db/default", batch);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["results"][0]["rows"],
        json!([[{"integer": 1}], [{"integer": 2}], [{"integer": 3}]])
    );
    assert_eq!(answer["results"][1]["rows"], json!([[{"integer": 42}]]));
}

#[test]
fn a_runaway_sqlite_query_ends_at_the_request_deadline_and_the_host_serves_on() {
    let app = AppDir::new(SQLITE_APP);
    let rc = app.write(
        "runtime-config.toml",
        // The statement stops a tenth of the time before the deadline: 400 ms for the component
        // to answer, which 150 ms (at 1500) was not always on a loaded 2-core machine.
        "[limits]\nrequest_timeout_ms = 4000\n[sqlite_database.orders]\ntype = \"spin\"\n",
    );
    let moa = Moa::start(&app, Options::runtime_config(&rc));
    let endless =
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n";
    for sync in [false, true] {
        // The query alone never ends: the component's own answer says it was stopped.
        let (status, answer) = sql(
            &moa,
            "/db/default",
            statements(sync, &[(endless, json!([]))]),
        );
        assert_eq!(status, 409, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("deadline"),
            "{answer}"
        );
    }
    let (status, answer) = sql(
        &moa,
        "/db/default",
        statements(false, &[("SELECT 1", json!([]))]),
    );
    assert_eq!(
        (status, &answer["results"][0]["rows"]),
        (200, &json!([[{"integer": 1}]]))
    );
}

#[test]
fn sqlite_configuration_mistakes_fail_at_load_with_the_fix() {
    let app = AppDir::new(SQLITE_APP);
    // `orders` is granted but not configured.
    let err = Moa::try_start(&app, Options::default())
        .err()
        .expect("must fail");
    assert!(
        err.contains("uses SQLite database `orders`, which is not defined")
            && err.contains("[sqlite_database.orders]"),
        "{err}"
    );
    let rc = app.write("rc.toml", "[sqlite_database.orders]\ntype = \"postgres\"\n");
    let err = Moa::try_start(&app, Options::runtime_config(&rc))
        .err()
        .expect("must fail");
    assert!(
        err.contains("unknown type `postgres`") && err.contains("type = \\\"spin\\\"")
            || err.contains("type = \"spin\""),
        "{err}"
    );
}

// ---- Spin 2's interfaces (spin-sdk 2 to 5) ----

#[test]
fn spin2_sqlite_works_on_the_same_databases_and_grants_as_3_1() {
    let app = AppDir::new(&format!(
        "{SQLITE_APP}[[trigger.http]]\nroute = \"/v2/...\"\ncomponent = \"v2\"\n[component.v2]\nsource = \"{{spinv2probe}}\"\nsqlite_databases = [\"default\"]\n"
    ));
    let moa = Moa::start(&app, sqlite_options(&app, ""));
    let blob: Vec<u8> = (0..=255).collect();
    let (status, answer) = sql(
        &moa,
        "/v2/sqlite/default",
        json!({"statements": [
            {"sql": "CREATE TABLE legacy (i INTEGER, r REAL, t TEXT, b BLOB, n TEXT)", "params": []},
            {"sql": "INSERT INTO legacy VALUES (?, ?, ?, ?, ?)", "params": [
                {"integer": i64::MIN}, {"real": 2.5}, {"text": "순대"}, {"blob": blob}, null
            ]},
            {"sql": "SELECT i, r, t, b, n FROM legacy", "params": []},
        ]}),
    );
    assert_eq!(status, 200, "{answer}");
    let row = json!([{"integer": i64::MIN}, {"real": 2.5}, {"text": "순대"}, {"blob": blob}, null]);
    assert_eq!(
        answer["results"][2]["columns"],
        json!(["i", "r", "t", "b", "n"])
    );
    assert_eq!(answer["results"][2]["rows"], json!([row]));
    // The same database through spin:sqlite@3.1.0.
    let (status, answer) = sql(
        &moa,
        "/db/default",
        statements(true, &[("SELECT i, r, t, b, n FROM legacy", json!([]))]),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["rows"], json!([row]));
    // Errors: SQL the database refuses, and a database the component was not granted.
    let (status, answer) = sql(
        &moa,
        "/v2/sqlite/default",
        json!({"statements": [{"sql": "SELEC 1", "params": []}]}),
    );
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("syntax error"),
        "{answer}"
    );
    let (status, answer) = sql(&moa, "/v2/sqlite/orders", json!({"statements": []}));
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "Error::AccessDenied");
}

#[test]
fn redis_trigger_calls_spin_sdk_5_handlers_of_the_unversioned_export() {
    let redis = RedisServer::start();
    let app =
        AppDir::new(&redis_app(&redis.url).replace("{redissub}", &common::wasm("spinv2probe")));
    let moa = Moa::start(&app, Options::default());
    publish_when_subscribed(&redis, "orders", "first");
    for message in ["fail", "second"] {
        assert_eq!(redis_cli(&redis, &["PUBLISH", "orders", message]), "1");
    }
    wait_until("both messages were handled", || {
        seen(&moa, "first") == 1 && seen(&moa, "second") == 1
    });
    wait_until("the failure was counted", || {
        metric(
            &moa,
            "moa_events_total",
            r#"component="sub",topic="orders",outcome="dropped""#,
        ) == 1.0
    });
    assert_eq!(
        metric(
            &moa,
            "moa_events_total",
            r#"component="sub",topic="orders",outcome="ok""#
        ),
        2.0
    );
    assert!(
        moa.stderr().contains("the component returned Error"),
        "{}",
        moa.stderr()
    );
}

#[test]
fn spin2_outbound_redis_and_mqtt_work_as_their_3_0_versions() {
    let redis = RedisServer::start();
    let broker = MosquittoServer::start();
    let app = AppDir::new(&format!(
        r#"
spin_manifest_version = 2
[application]
name = "v2"
[[trigger.http]]
route = "/v2/..."
component = "v2"
[[trigger.http]]
route = "/denied/..."
component = "denied"
[component.v2]
source = "{{spinv2probe}}"
allowed_outbound_hosts = ["{}", "mqtt://127.0.0.1:{}"]
[component.denied]
source = "{{spinv2probe}}"
"#,
        redis.url, broker.port
    ));
    let moa = Moa::start(&app, Options::default());
    let redis_script = |path: &str| {
        sql(
            &moa,
            &format!("{path}/redis"),
            json!({ "address": redis.url }),
        )
    };
    let (status, answer) = redis_script("/v2");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["get"], json!([0, 98, 121, 116, 101, 115]));
    assert_eq!(answer["incr"], json!([1, 2]));
    assert_eq!(answer["incr_wrong_type"], "Err(Error::TypeError)");
    assert_eq!(answer["sadd"], 2);
    assert_eq!(answer["smembers"], json!(["a", "b"]));
    assert_eq!(answer["srem"], 1);
    assert_eq!(answer["del"], 1);
    assert_eq!(answer["execute"], "[RedisResult::Int64(1)]");
    assert_eq!(redis_cli(&redis, &["HGET", "v2:hash", "f"]), "7");
    // A component without the grant is refused before any connection.
    let (status, answer) = redis_script("/denied");
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not in this component's allowed_outbound_hosts"),
        "{answer}"
    );

    let publish = |path: &str, password: &str, qos: u64| {
        sql(
            &moa,
            &format!("{path}/mqtt"),
            json!({
                "address": format!("mqtt://127.0.0.1:{}?client_id=v2-{qos}", broker.port),
                "username": broker.user,
                "password": password,
                "topic": "orders/v2",
                "payload": format!("v2 q{qos}"),
                "qos": qos,
            }),
        )
    };
    for qos in [0, 1, 2] {
        let subscriber = broker.subscribe("orders/v2", 1, 20);
        let (status, answer) = publish("/v2", &broker.password, qos);
        assert_eq!(status, 200, "{answer}");
        let output = subscriber.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("v2 q{qos}\n")
        );
    }
    let (status, answer) = publish("/v2", "wrong", 1);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("ConnectionFailed"),
        "{answer}"
    );
    let (status, answer) = publish("/denied", &broker.password, 1);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not in this component's allowed_outbound_hosts"),
        "{answer}"
    );
}

// ---- SQLite on a remote libSQL server (`type = "libsql"`) ----

/// The `default` database on `sqld`, `orders` embedded in memory.
fn libsql_options(app: &AppDir, sqld: &SqldServer) -> Options {
    let rc = app.write(
        "runtime-config.toml",
        &format!(
            "[sqlite_database.default]\ntype = \"libsql\"\nurl = \"{}\"\ntoken = \"unused-by-a-local-sqld\"\n[sqlite_database.orders]\ntype = \"spin\"\n",
            sqld.url()
        ),
    );
    Options::runtime_config(&rc)
}

#[test]
fn sqlite_on_a_remote_libsql_server_round_trips_every_value_type() {
    let sqld = SqldServer::start();
    for sync in [false, true] {
        let app = AppDir::new(SQLITE_APP);
        let options = libsql_options(&app, &sqld);
        sqlite_round_trip_on(sync, &app, options);
    }
}

#[test]
fn libsql_errors_transactions_and_the_server_going_away() {
    let mut sqld = SqldServer::start();
    let app = AppDir::new(SQLITE_APP);
    let moa = Moa::start(&app, libsql_options(&app, &sqld));
    // The server's own errors reach the component as `io`.
    for sync in [false, true] {
        refused_sql(&moa, sync);
    }
    // A transaction spans the statements of one connection; a failed one is rolled back when the
    // component drops the connection, and releases the database for the next writer.
    failed_transaction(&moa);
    let (status, answer) = sql(
        &moa,
        "/db/default",
        statements(
            true,
            &[
                ("UPDATE stock SET qty = qty + 10", json!([])),
                ("SELECT qty FROM stock", json!([])),
            ],
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][1]["rows"], json!([[{"integer": 13}]]));
    // An explicit transaction commits across statements.
    let (status, answer) = sql(
        &moa,
        "/db/default",
        statements(
            false,
            &[
                ("BEGIN", json!([])),
                ("UPDATE stock SET qty = 1", json!([])),
                ("COMMIT", json!([])),
            ],
        ),
    );
    assert_eq!(status, 200, "{answer}");

    // The server goes away: the component gets an error naming it, the host serves on.
    sqld.stop();
    for sync in [false, true] {
        let (status, answer) = sql(
            &moa,
            "/db/default",
            statements(sync, &[("SELECT qty FROM stock", json!([]))]),
        );
        assert_eq!(status, 409, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("cannot be reached"),
            "{answer}"
        );
    }
    let (status, _) = sql(
        &moa,
        "/db/orders",
        statements(true, &[("SELECT 1", json!([]))]),
    );
    assert_eq!(status, 200, "the embedded database still answers");
    // Back on its data: the next connection works again.
    sqld.restart();
    let (status, answer) = sql(
        &moa,
        "/db/default",
        statements(true, &[("SELECT qty FROM stock", json!([]))]),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["rows"], json!([[{"integer": 1}]]));
}

#[test]
fn libsql_configuration_mistakes_fail_at_load_with_the_fix() {
    let app = AppDir::new(SQLITE_APP);
    for (config, expected) in [
        ("type = \"libsql\"\n", "needs `url`"),
        (
            "type = \"libsql\"\nurl = \"http://127.0.0.1:1\"\npath = \"x.db\"\n",
            "`path` does not apply to type = \"libsql\"",
        ),
        (
            "type = \"spin\"\nurl = \"http://127.0.0.1:1\"\n",
            "`url` does not apply to type = \"spin\"",
        ),
        (
            "type = \"libsql\"\nurl = \"postgres://127.0.0.1\"\n",
            "must be a libsql://, https:// or http:// URL",
        ),
    ] {
        let rc = app.write("rc.toml", &format!("[sqlite_database.orders]\n{config}"));
        let err = Moa::try_start(&app, Options::runtime_config(&rc))
            .err()
            .expect("must fail");
        assert!(err.contains(expected), "{config}: {err}");
    }
}

// ---- Redis pub/sub trigger (`[[trigger.redis]]`) ----

fn redis_app(address: &str) -> String {
    format!(
        r#"
spin_manifest_version = 2
[application]
name = "pubsub"
[application.trigger.redis]
address = "{address}"
[[trigger.redis]]
channel = "orders"
component = "sub"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[component.sub]
source = "{{redissub}}"
key_value_stores = ["default"]
[component.probe]
source = "{{probe}}"
key_value_stores = ["default"]
"#
    )
}

fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-u", &redis.url])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Publishes `message` once moa is subscribed (PUBLISH answers how many subscribers got it).
fn publish_when_subscribed(redis: &RedisServer, channel: &str, message: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis_cli(redis, &["PUBLISH", channel, message]) != "1" {
        assert!(Instant::now() < deadline, "nobody subscribed to {channel}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many times the subscriber recorded `message` (from the shared key-value store).
fn seen(moa: &Moa, message: &str) -> u64 {
    let (status, body) = moa.get(&format!("/probe/kv/default/seen:{message}"));
    if status == 404 {
        return 0;
    }
    assert_eq!(status, 200, "{body}");
    body.trim().parse().unwrap_or_else(|_| panic!("{body}"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_trigger_calls_the_component_once_per_published_message() {
    let redis = RedisServer::start();
    let app = AppDir::new(&redis_app(&redis.url));
    let moa = Moa::start(&app, Options::default());
    assert!(
        moa.stdout
            .iter()
            .any(|l| l.contains("sub on channel orders")),
        "{:?}",
        moa.stdout
    );
    publish_when_subscribed(&redis, "orders", "first");
    for i in 0..50 {
        assert_eq!(
            redis_cli(&redis, &["PUBLISH", "orders", &format!("order-{i}")]),
            "1"
        );
    }
    // Another channel on the same server is not ours.
    assert_eq!(redis_cli(&redis, &["PUBLISH", "reviews", "order-0"]), "0");
    wait_until("every message was handled", || {
        (0..50).all(|i| seen(&moa, &format!("order-{i}")) >= 1)
    });
    assert_eq!(seen(&moa, "first"), 1);
    for i in 0..50 {
        assert_eq!(
            seen(&moa, &format!("order-{i}")),
            1,
            "order-{i} handled once"
        );
    }
    wait_until("the calls were counted", || {
        metric(&moa, "moa_events_total", r#"outcome="ok""#) >= 51.0
    });
    assert_eq!(
        metric(
            &moa,
            "moa_events_total",
            r#"component="sub",topic="orders",outcome="ok""#
        ),
        51.0
    );
}

#[test]
fn redis_trigger_failures_are_logged_and_counted_and_later_messages_still_arrive() {
    let redis = RedisServer::start();
    let app = AppDir::new(&redis_app(&redis.url));
    let moa = Moa::start(&app, Options::default());
    publish_when_subscribed(&redis, "orders", "trap");
    assert_eq!(redis_cli(&redis, &["PUBLISH", "orders", "fail"]), "1");
    assert_eq!(redis_cli(&redis, &["PUBLISH", "orders", "after"]), "1");
    wait_until("the message after the failures was handled", || {
        seen(&moa, "after") == 1
    });
    wait_until("both failures were counted", || {
        metric(
            &moa,
            "moa_events_total",
            r#"component="sub",topic="orders",outcome="dropped""#,
        ) == 2.0
    });
    assert_eq!(metric(&moa, "moa_traps_total", r#"component="sub""#), 1.0);
    wait_until("both failures are logged", || {
        moa.stderr().matches("Redis message not handled").count() == 2
    });
    let stderr = moa.stderr();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Redis message not handled") && l.contains("ERROR"))
        .collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(
        errors
            .iter()
            .all(|l| l.contains(r#""component":"sub""#) && l.contains("request_id")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|l| l.contains("redissub was asked to fail")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|l| l.contains("trapped")), "{errors:?}");
}

#[test]
fn redis_trigger_resubscribes_after_the_connection_drops() {
    let redis = RedisServer::start();
    let app = AppDir::new(&redis_app(&redis.url));
    let moa = Moa::start(&app, Options::default());
    publish_when_subscribed(&redis, "orders", "before");
    wait_until("the first message was handled", || {
        seen(&moa, "before") == 1
    });
    // The server drops the subscriber's connection, as a failover or restart would.
    assert_eq!(
        redis_cli(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]),
        "1"
    );
    publish_when_subscribed(&redis, "orders", "after");
    wait_until("the message after the reconnect was handled", || {
        seen(&moa, "after") == 1
    });
    wait_until("the lost connection is logged", || {
        moa.stderr().contains("Redis trigger lost its connection")
    });
}

#[test]
fn redis_trigger_with_no_server_stops_moa_up_with_the_address() {
    let app = AppDir::new(&redis_app("redis://127.0.0.1:1"));
    let err = Moa::try_start(&app, Options::default())
        .err()
        .expect("must fail");
    assert!(
        err.contains("cannot connect to Redis at redis://127.0.0.1:1"),
        "{err}"
    );
    // A component without Spin's inbound-redis export is refused at load.
    let redis = RedisServer::start();
    let app = AppDir::new(&redis_app(&redis.url).replace(
        "channel = \"orders\"\ncomponent = \"sub\"",
        "channel = \"orders\"\ncomponent = \"probe\"",
    ));
    let err = Moa::try_start(&app, Options::default())
        .err()
        .expect("must fail");
    assert!(err.contains("does not export handle-message"), "{err}");
}

// ---- wasi:keyvalue and wasi:config (Spin 3+) ----

const WASI_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "wasi"
[variables]
greeting = { default = "annyeong" }
region = { default = "ap-northeast-2" }
[[trigger.http]]
route = "/w/..."
component = "wasi"
[[trigger.http]]
route = "/spin/..."
component = "spin"
[[trigger.http]]
route = "/stranger/..."
component = "stranger"
[component.wasi]
source = "{wasiprobe}"
key_value_stores = ["default", "cache"]
variables = { greeting = "{{ greeting }}", where = "seoul {{ region }}" }
[component.spin]
source = "{probe}"
key_value_stores = ["cache"]
[component.stranger]
source = "{wasiprobe}"
"#;

fn wasi_options(app: &AppDir, redis: Option<&RedisServer>) -> Options {
    let text = match redis {
        None => "[key_value_store.cache]\ntype = \"spin\"\npath = \"cache.db\"\n".to_string(),
        Some(redis) => format!(
            "[key_value_store.cache]\ntype = \"redis\"\nurl = \"{}\"\nprefix = \"wasi:\"\n",
            redis.url
        ),
    };
    Options::runtime_config(&app.write("runtime-config.toml", &text))
}

fn wasi_keyvalue_behaviour(redis: Option<&RedisServer>) {
    let app = AppDir::new(WASI_APP);
    let moa = Moa::start(&app, wasi_options(&app, redis));
    let put = |path: &str, body: &str| moa.send(Method::PUT, path, Some(body.as_bytes().to_vec()));
    let post = |path: &str| moa.send(Method::POST, path, None);

    // store: get, set, exists, delete, list-keys.
    assert_eq!(put("/w/kv/cache/menu:1", "bibimbap").0, 200);
    assert_eq!(moa.get("/w/kv/cache/menu:1"), (200, "bibimbap".into()));
    assert_eq!(put("/w/kv/cache/menu:2", "naengmyeon").0, 200);
    assert_eq!(moa.get("/w/keys/cache"), (200, "menu:1\nmenu:2".into()));
    assert_eq!(
        moa.send(Method::DELETE, "/w/kv/cache/menu:2", None),
        (200, "exists=false".into())
    );
    assert_eq!(moa.get("/w/kv/cache/menu:2").0, 404);
    // The same store as spin:key-value: what one interface writes the other reads.
    assert_eq!(put("/spin/kv/cache/shared", "from spin").0, 200);
    assert_eq!(moa.get("/w/kv/cache/shared"), (200, "from spin".into()));
    assert_eq!(moa.get("/spin/kv/cache/menu:1"), (200, "bibimbap".into()));

    // atomics: increment is a decimal counter; a value that is not one is an error.
    assert_eq!(post("/w/incr/cache/orders/5"), (200, "5".into()));
    assert_eq!(post("/w/incr/cache/orders/-2"), (200, "3".into()));
    assert_eq!(moa.get("/w/kv/cache/orders"), (200, "3".into()));
    let (status, body) = post("/w/incr/cache/menu:1/1");
    assert_eq!(status, 409, "{body}");
    assert!(body.starts_with("Error::Other("), "{body}");
    // compare-and-swap: a swap after the value changed fails and hands back the new value.
    assert_eq!(put("/w/kv/cache/stock", "7").0, 200);
    assert_eq!(
        post("/w/cas-race/cache/stock"),
        (
            409,
            "cas failed: read Some(\"7\"), now Some(\"changed\")".into()
        )
    );
    assert_eq!(moa.get("/w/kv/cache/stock"), (200, "changed".into()));
    let (status, body) = post("/w/cas-race/cache/fresh-key");
    assert_eq!(
        (status, body.as_str()),
        (409, "cas failed: read None, now Some(\"changed\")")
    );
    // Concurrent compare-and-swap loops lose no update.
    std::thread::scope(|scope| {
        for _ in 0..12 {
            scope.spawn(|| assert_eq!(post("/w/cas-add/cache/likes").0, 200));
        }
    });
    assert_eq!(moa.get("/w/kv/cache/likes"), (200, "12".into()));

    // batch.
    assert_eq!(put("/w/many/cache", "a=1\nb=2\nc=3").0, 200);
    assert_eq!(
        moa.get("/w/many/cache/a,b,z"),
        (200, "a=1\nb=2\nz absent".into())
    );
    assert_eq!(moa.send(Method::DELETE, "/w/many/cache/a,b", None).0, 200);
    assert_eq!(
        moa.get("/w/many/cache/a,b,c"),
        (200, "a absent\nb absent\nc=3".into())
    );

    // Grants are the component's key_value_stores, as for spin:key-value.
    assert_eq!(
        moa.get("/stranger/kv/cache/menu:1"),
        (409, "Error::AccessDenied".into())
    );
    assert_eq!(
        moa.get("/w/kv/nowhere/x"),
        (409, "Error::AccessDenied".into())
    );
}

#[test]
fn wasi_keyvalue_works_on_embedded_sqlite() {
    wasi_keyvalue_behaviour(None);
}

#[test]
fn wasi_keyvalue_works_on_redis() {
    let redis = RedisServer::start();
    wasi_keyvalue_behaviour(Some(&redis));
    // The counter is a plain Redis integer under the store's prefix.
    assert_eq!(redis_cli(&redis, &["GET", "wasi:orders"]), "3");
}

#[test]
fn wasi_config_reads_the_components_variables() {
    let app = AppDir::new(WASI_APP);
    let mut options = wasi_options(&app, None);
    options.env = vec![("SPIN_VARIABLE_GREETING".into(), "hello from env".into())];
    let moa = Moa::start(&app, options);
    assert_eq!(
        moa.get("/w/config/greeting"),
        (200, "hello from env".into())
    );
    assert_eq!(
        moa.get("/w/config/where"),
        (200, "seoul ap-northeast-2".into())
    );
    // Undefined and invalid names are "no value", as Spin answers them.
    assert_eq!(moa.get("/w/config/region").0, 404);
    assert_eq!(moa.get("/w/config/Not-A-Name").0, 404);
    assert_eq!(
        moa.get("/w/config"),
        (
            200,
            "greeting=hello from env\nwhere=seoul ap-northeast-2".into()
        )
    );
    assert_eq!(moa.get("/stranger/config"), (200, String::new()));
}

// ---- Relative URIs from WASIp3 and WASIp2 components ----

#[test]
fn relative_uris_reach_the_app_itself_from_wasip3_and_wasip2_components() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "relative"
[[trigger.http]]
route = "/hello"
component = "hello"
[[trigger.http]]
route = "/p3/..."
component = "p3"
[[trigger.http]]
route = "/p2/..."
component = "p2"
[[trigger.http]]
route = "/ungranted/..."
component = "ungranted"
[component.hello]
source = "{hello}"
[component.p3]
source = "{probe}"
allowed_outbound_hosts = ["http://self"]
[component.p2]
source = "{hello-p2}"
allowed_outbound_hosts = ["http://self"]
[component.ungranted]
source = "{probe}"
allowed_outbound_hosts = ["http://example.com"]
"#,
    );
    let moa = Moa::start(&app, Options::default());
    let (_, direct) = moa.get("/hello");
    assert!(direct.contains("Hello"), "{direct}");
    // spin-sdk 7 (WASIp3): `send(Request::get("/hello"))`.
    let (status, body) = moa.get("/p3/fetch?url=/hello");
    assert_eq!(
        (status, body.clone()),
        (200, format!("status 200\n{direct}"))
    );
    // wit-bindgen (WASIp2): an outgoing-request with a path and nothing else.
    let (status, body) = moa.get("/p2/fetch?/hello");
    assert_eq!(
        (status, body.clone()),
        (200, format!("status 200\n{direct}"))
    );
    // A relative URI is a call to the app: it needs http://self like any other.
    let (status, body) = moa.get("/ungranted/fetch?url=/hello");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
}

// ---- Outbound MQTT (`spin:mqtt@3.0.0`) against a real Mosquitto ----

fn mqtt_app(port: u16) -> String {
    format!(
        r#"
spin_manifest_version = 2
[application]
name = "mqtt"
[variables]
mqtt_address = {{ default = "mqtt://127.0.0.1:{port}?client_id=moa-test" }}
mqtt_username = {{ default = "moa" }}
mqtt_password = {{ required = true, secret = true }}
[[trigger.http]]
route = "/granted"
component = "granted"
[[trigger.http]]
route = "/ungranted"
component = "ungranted"
[[trigger.http]]
route = "/elsewhere"
component = "elsewhere"
[component.granted]
source = "{{mqttprobe}}"
allowed_outbound_hosts = ["mqtt://127.0.0.1:{port}"]
variables = {{ mqtt_address = "{{{{ mqtt_address }}}}", mqtt_username = "{{{{ mqtt_username }}}}", mqtt_password = "{{{{ mqtt_password }}}}" }}
[component.ungranted]
source = "{{mqttprobe}}"
allowed_outbound_hosts = ["mqtt://127.0.0.1:1"]
variables = {{ mqtt_address = "{{{{ mqtt_address }}}}", mqtt_username = "{{{{ mqtt_username }}}}", mqtt_password = "{{{{ mqtt_password }}}}" }}
[component.elsewhere]
source = "{{mqttprobe}}"
allowed_outbound_hosts = ["http://127.0.0.1:{port}"]
variables = {{ mqtt_address = "http://127.0.0.1:{port}" }}
"#
    )
}

fn mqtt_moa(broker: &MosquittoServer, password: &str) -> (AppDir, Moa) {
    let app = AppDir::new(&mqtt_app(broker.port));
    let moa = Moa::start(
        &app,
        Options {
            env: vec![("SPIN_VARIABLE_MQTT_PASSWORD".into(), password.into())],
            ..Options::default()
        },
    );
    (app, moa)
}

#[test]
fn mqtt_publishes_at_every_qos_with_credentials_from_variables() {
    let broker = MosquittoServer::start();
    let (_app, moa) = mqtt_moa(&broker, &broker.password);
    for qos in ["0", "1", "2"] {
        let topic = format!("orders/ready/q{qos}");
        let subscriber = broker.subscribe(&topic, 3, 20);
        let (status, body) = moa.send(
            Method::POST,
            &format!("/granted?topic={topic}&qos={qos}&count=3"),
            Some(format!("주문 q{qos}").into_bytes()),
        );
        assert_eq!((status, body.as_str()), (200, "published 3"));
        let output = subscriber.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("주문 q{qos} 0\n주문 q{qos} 1\n주문 q{qos} 2\n"),
            "QoS {qos}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The broker saw moa's client log in with the user from the variables, at each QoS.
    let log = broker.log();
    assert!(
        log.contains("as moa-test") && log.contains("u'moa'"),
        "{log}"
    );
    assert!(
        log.contains("Received PUBLISH from moa-test (d0, q2"),
        "{log}"
    );
    assert!(log.contains("Received PUBREL from moa-test"), "{log}");
}

#[test]
fn mqtt_refusals_reach_the_component_without_touching_the_broker() {
    let broker = MosquittoServer::start();
    let (_app, moa) = mqtt_moa(&broker, "wrong password");
    // (The broker's start-up check is a connection too.)
    let before = broker.log().matches("New connection from").count();
    // A wrong password: the broker refuses, the component gets connection-failed.
    let (status, body) = moa.send(Method::POST, "/granted?count=1", Some(b"x".to_vec()));
    assert_eq!(status, 409, "{body}");
    assert!(
        body.starts_with("open: Error::ConnectionFailed(") && body.contains("refused"),
        "{body}"
    );
    let connections = broker.log().matches("New connection from").count();
    assert_eq!(connections, before + 1, "{}", broker.log());
    // Not in allowed_outbound_hosts: refused before any connection.
    let (status, body) = moa.send(Method::POST, "/ungranted?count=1", Some(b"x".to_vec()));
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("is not in this component's allowed_outbound_hosts"),
        "{body}"
    );
    // Not an MQTT address.
    let (status, body) = moa.send(Method::POST, "/elsewhere?count=1", Some(b"x".to_vec()));
    assert_eq!(
        (status, body.as_str()),
        (409, "open: Error::InvalidAddress")
    );
    // Both answers came back before anything could have connected: nothing did.
    assert_eq!(
        broker.log().matches("New connection from").count(),
        connections
    );
    // (moa's log reader may be a moment behind its answers.)
    wait_until("the denial is logged with the component", || {
        moa.stderr().lines().any(|l| {
            l.contains("MQTT connection denied") && l.contains(r#""component":"ungranted""#)
        })
    });
}

#[test]
fn mqtt_broker_going_away_mid_request_is_an_error_and_the_host_serves_on() {
    let mut broker = MosquittoServer::start();
    let (_app, moa) = mqtt_moa(&broker, &broker.password);
    let url = format!("{}/granted?topic=t&qos=1&count=100&pause_ms=50", moa.url);
    let request =
        std::thread::spawn(move || common::blocking(Method::POST, &url, Some(b"m".to_vec())));
    // Kill the broker once the component has published a few messages.
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker
        .log()
        .matches("Received PUBLISH from moa-test")
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "{}", broker.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.kill();
    let (status, body) = request.join().unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body.starts_with("publish ") && body.contains("ConnectionFailed"),
        "{body}"
    );
    // Another request finds no broker, and says so.
    let (status, body) = moa.send(Method::POST, "/granted?count=1", Some(b"x".to_vec()));
    assert_eq!(status, 409, "{body}");
    assert!(body.starts_with("open: Error::ConnectionFailed("), "{body}");
}
