//! Spin-compatible capabilities against a real `moa up`: key-value persistence and grants,
//! variables from defaults/env/runtime config, outbound HTTP allow-lists against a local server.

mod common;

use common::{AppDir, Moa, Options, RedisServer, Upstream};
use reqwest::Method;

const KV_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "kv"
[[trigger.http]]
route = "/granted/..."
component = "granted"
[[trigger.http]]
route = "/stranger/..."
component = "stranger"
[[trigger.http]]
route = "/counter"
component = "counter"
[component.granted]
source = "{probe}"
key_value_stores = ["default", "cache"]
[component.stranger]
source = "{probe}"
[component.counter]
source = "{counter}"
key_value_stores = ["default"]
"#;

/// Runtime config with the `cache` store on SQLite (embedded) or on a real Redis server.
fn kv_options(app: &AppDir, redis: Option<&RedisServer>) -> Options {
    let text = match redis {
        None => "[key_value_store.cache]\ntype = \"spin\"\npath = \"cache.db\"\n".to_string(),
        Some(redis) => format!(
            "[key_value_store.cache]\ntype = \"redis\"\nurl = \"{}\"\nprefix = \"app1:\"\n",
            redis.url
        ),
    };
    let rc = app.write("runtime-config.toml", &text);
    Options::runtime_config(&rc)
}

/// The behaviour every key-value backend must have, whichever serves the `cache` store.
fn key_value_behaviour_survives_a_restart(redis: Option<&RedisServer>) {
    let app = AppDir::new(KV_APP);
    let moa = Moa::start(&app, kv_options(&app, redis));
    assert_eq!(
        moa.send(
            Method::PUT,
            "/granted/kv/default/greeting",
            Some(b"annyeong".to_vec())
        )
        .0,
        200
    );
    assert_eq!(
        moa.send(
            Method::PUT,
            "/granted/kv/cache/token",
            Some(b"t-1".to_vec())
        )
        .0,
        200
    );
    assert_eq!(
        moa.send(
            Method::PUT,
            "/granted/kv/cache/user:7",
            Some(vec![0, 159, 146, 150])
        )
        .0,
        200
    );
    assert_eq!(moa.get("/counter").1.trim(), "1");
    assert_eq!(moa.get("/counter").1.trim(), "2");
    moa.stop();

    let moa = Moa::start(&app, kv_options(&app, redis));
    assert_eq!(
        moa.get("/granted/kv/default/greeting"),
        (200, "annyeong".to_string())
    );
    assert_eq!(moa.get("/granted/kv/cache/token"), (200, "t-1".to_string()));
    assert_eq!(moa.get("/counter").1.trim(), "3");
    // The two labels are separate stores.
    assert_eq!(moa.get("/granted/kv/cache/greeting").0, 404);
    assert_eq!(moa.get("/granted/keys/default").1, "count\ngreeting");
    assert_eq!(moa.get("/granted/keys/cache").1, "token\nuser:7");
    assert_eq!(
        moa.send(Method::DELETE, "/granted/kv/cache/token", None).0,
        200
    );
    assert_eq!(moa.get("/granted/kv/cache/token").0, 404);
    assert_eq!(moa.get("/granted/keys/cache").1, "user:7");
}

#[test]
fn key_value_data_survives_a_restart_on_embedded_sqlite() {
    key_value_behaviour_survives_a_restart(None);
}

#[test]
fn key_value_data_survives_a_restart_on_redis() {
    let redis = RedisServer::start();
    key_value_behaviour_survives_a_restart(Some(&redis));
    // The data really is in Redis, under the configured prefix.
    let output = std::process::Command::new("redis-cli")
        .args(["-u", &redis.url, "GET", "app1:user:7"])
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"\0\x9f\x92\x96\n");
}

#[test]
fn an_unreachable_redis_store_fails_at_load_naming_the_table() {
    let app = AppDir::new(KV_APP);
    let rc = app.write(
        "rc.toml",
        "[key_value_store.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n",
    );
    let err = Moa::try_start(&app, Options::runtime_config(&rc))
        .err()
        .expect("must fail");
    assert!(
        err.contains("[key_value_store.cache]") && err.contains("cannot connect to Redis"),
        "{err}"
    );
}

#[test]
fn a_component_opens_only_the_stores_it_was_granted() {
    let app = AppDir::new(KV_APP);
    let moa = Moa::start(&app, kv_options(&app, None));
    let (status, body) = moa.get("/stranger/kv/default/x");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");
    let (status, body) = moa.get("/granted/kv/nowhere/x");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");
}

#[test]
fn spin2_key_value_interface_shares_stores_and_grants_with_spin3() {
    let app = AppDir::new(KV_APP);
    let moa = Moa::start(&app, kv_options(&app, None));
    // Written through fermyon:spin/key-value@2.0.0, read through spin:key-value@3.0.0 and back.
    assert_eq!(
        moa.send(
            Method::PUT,
            "/granted/kv2/default/menu",
            Some(b"bibimbap".to_vec())
        )
        .0,
        200
    );
    assert_eq!(
        moa.get("/granted/kv/default/menu"),
        (200, "bibimbap".to_string())
    );
    assert_eq!(
        moa.send(
            Method::PUT,
            "/granted/kv/cache/price",
            Some(b"9000".to_vec())
        )
        .0,
        200
    );
    assert_eq!(
        moa.get("/granted/kv2/cache/price"),
        (200, "9000".to_string())
    );
    assert_eq!(moa.get("/granted/kv2/default/missing").0, 404);
    let (status, body) = moa.get("/stranger/kv2/default/menu");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("AccessDenied"), "{body}");
}

#[test]
fn a_store_label_missing_from_the_runtime_config_fails_at_load_with_the_line() {
    let app = AppDir::new(KV_APP);
    let err = Moa::try_start(&app, Options::default())
        .err()
        .expect("moa must refuse the app");
    assert!(err.contains("spin.toml:16:"), "{err}");
    assert!(
        err.contains("key-value store `cache`") && err.contains("[key_value_store.cache]"),
        "{err}"
    );
}

const VARS_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "vars"
[variables]
greeting = { default = "hello" }
region = { required = true }
api_token = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "probe"
[component.probe]
source = "{probe}"
variables = { message = "{{ greeting }} from {{ region }}", token = "{{ api_token }}" }
environment = { ORDER_TOPIC = "orders.v1" }
"#;

#[test]
fn variables_come_from_defaults_env_and_runtime_config() {
    let app = AppDir::new(VARS_APP);
    let rc = app.write(
        "rc.toml",
        "[variables]\nregion = \"seoul\"\napi_token = { env = \"TEST_TOKEN_SOURCE\" }\n",
    );
    let moa = Moa::start(
        &app,
        Options {
            args: vec!["--runtime-config-file".into(), rc.display().to_string()],
            env: vec![
                ("TEST_TOKEN_SOURCE".into(), "s3cret".into()),
                ("MOA_VARIABLE_GREETING".into(), "annyeong".into()),
            ],
            ..Default::default()
        },
    );
    assert_eq!(
        moa.get("/var/message"),
        (200, "annyeong from seoul".to_string())
    );
    assert_eq!(moa.get("/var/token"), (200, "s3cret".to_string()));
    // Application variables are not visible unless the component maps them.
    let (status, body) = moa.get("/var/region");
    assert_eq!(status, 404);
    assert!(body.contains("Undefined"), "{body}");
    let (status, body) = moa.get("/var/Bad-Name");
    assert_eq!(status, 404);
    assert!(body.contains("InvalidName"), "{body}");
    assert_eq!(moa.get("/env/ORDER_TOPIC"), (200, "orders.v1".to_string()));
}

#[test]
fn spin_variable_env_prefix_works_and_a_missing_required_variable_says_how_to_set_it() {
    let app = AppDir::new(VARS_APP);
    let err = Moa::try_start(
        &app,
        Options {
            env: vec![("SPIN_VARIABLE_REGION".into(), "busan".into())],
            ..Default::default()
        },
    )
    .err()
    .expect("api_token is required");
    assert!(
        err.contains("variable `api_token` is required") && err.contains("MOA_VARIABLE_API_TOKEN"),
        "{err}"
    );

    let moa = Moa::start(
        &app,
        Options {
            env: vec![
                ("SPIN_VARIABLE_REGION".into(), "busan".into()),
                ("SPIN_VARIABLE_API_TOKEN".into(), "t".into()),
            ],
            ..Default::default()
        },
    );
    assert_eq!(
        moa.get("/var/message"),
        (200, "hello from busan".to_string())
    );
}

/// The app directory's `.env` supplies variables as Spin's environment provider reads it (quotes,
/// comments, `export`); the process environment still wins; a broken line is a clear error.
#[test]
fn variables_come_from_the_app_directorys_dotenv_file() {
    let app = AppDir::new(VARS_APP);
    app.write(
        ".env",
        "# local settings, never committed\nSPIN_VARIABLE_REGION='jeju'\nexport MOA_VARIABLE_API_TOKEN=\"tok # not a comment\"\n\nSPIN_VARIABLE_GREETING=hi\n",
    );
    let moa = Moa::start(
        &app,
        Options {
            env: vec![("MOA_VARIABLE_GREETING".into(), "annyeong".into())],
            ..Default::default()
        },
    );
    assert_eq!(
        moa.get("/var/message"),
        (200, "annyeong from jeju".to_string()),
        "the environment wins over .env"
    );
    assert_eq!(
        moa.get("/var/token"),
        (200, "tok # not a comment".to_string())
    );
    drop(moa);

    app.write(
        ".env",
        "SPIN_VARIABLE_REGION=jeju\nthis is not an assignment\n",
    );
    let err = Moa::try_start(&app, Options::default())
        .err()
        .expect("a broken .env is refused");
    assert!(
        err.contains(".env")
            && err.contains("this is not an assignment")
            && err.contains("KEY=value"),
        "{err}"
    );
}

#[test]
fn outbound_http_reaches_allowed_hosts_only_and_denied_requests_never_connect() {
    let upstream = Upstream::start();
    let port = upstream.url.rsplit(':').next().unwrap().to_string();
    let app = AppDir::new(&format!(
        r#"
spin_manifest_version = 2
[application]
name = "outbound"
[variables]
upstream_port = {{ default = "{port}" }}
[[trigger.http]]
route = "/allowed/..."
component = "allowed"
[[trigger.http]]
route = "/wildcard/..."
component = "wildcard"
[[trigger.http]]
route = "/denied/..."
component = "denied"
[component.allowed]
source = "{{probe}}"
allowed_outbound_hosts = ["http://127.0.0.1:{{{{ upstream_port }}}}"]
[component.wildcard]
source = "{{probe}}"
allowed_outbound_hosts = ["http://127.0.0.1:*"]
[component.denied]
source = "{{probe}}"
allowed_outbound_hosts = ["https://127.0.0.1:{port}", "http://localhost:{port}"]
"#
    ));
    let moa = Moa::start(&app, Options::default());
    let target = format!("{}/ping", upstream.url);

    let (status, body) = moa.get(&format!("/allowed/fetch?url={target}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "status 200\nupstream ok /ping");
    let (status, body) = moa.get(&format!("/wildcard/fetch?url={target}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.hits(), 2);

    // Wrong scheme and wrong host spelling are both denied, and nothing reaches the server.
    let (status, body) = moa.get(&format!("/denied/fetch?url={target}"));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let (status, _) = moa.get("/allowed/fetch?url=http://127.0.0.1:1/other-port");
    assert_eq!(status, 502);
    assert_eq!(upstream.hits(), 2, "a denied request must not connect");

    let (_, metrics) = common::blocking(Method::GET, &format!("{}/metrics", moa.admin_url), None);
    assert!(
        metrics.contains(r#"moa_outbound_http_denied_total{component="denied"} 1"#),
        "{metrics}"
    );
}

#[test]
fn a_malformed_allowed_host_is_a_load_error_naming_the_line() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "bad-host"
[[trigger.http]]
route = "/..."
component = "probe"
[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["api.toss.im"]
"#,
    );
    let err = Moa::try_start(&app, Options::default())
        .err()
        .expect("must fail");
    assert!(
        err.contains("spin.toml:10:") && err.contains("https://api.toss.im"),
        "{err}"
    );
}

#[test]
fn outbound_redis_works_on_granted_addresses_only() {
    let redis = RedisServer::start();
    let app = AppDir::new(&format!(
        r#"
spin_manifest_version = 2
[application]
name = "redis-out"
[[trigger.http]]
route = "/granted/..."
component = "granted"
[[trigger.http]]
route = "/denied/..."
component = "denied"
[component.granted]
source = "{{probe}}"
allowed_outbound_hosts = ["{}"]
[component.denied]
source = "{{probe}}"
allowed_outbound_hosts = ["redis://example.com:6379"]
"#,
        redis.url
    ));
    let moa = Moa::start(&app, Options::default());
    let addr = format!("addr={}", redis.url);
    assert_eq!(
        moa.get(&format!("/granted/redis/incr/visits?{addr}")),
        (200, "1\n".into())
    );
    assert_eq!(
        moa.get(&format!("/granted/redis/incr/visits?{addr}")),
        (200, "2\n".into())
    );
    let (status, _) = moa.send(
        reqwest::Method::POST,
        &format!("/granted/redis/set/greeting?{addr}"),
        Some(b"annyeong".to_vec()),
    );
    assert_eq!(status, 200);
    assert_eq!(
        moa.get(&format!("/granted/redis/get/greeting?{addr}")),
        (200, "annyeong\n".into())
    );
    assert_eq!(
        moa.get(&format!("/granted/redis/sadd/tags?{addr}")),
        (200, "2\n".into()),
        "SADD a b a adds two members"
    );
    // The value is really in Redis, where other services can read it.
    let mut direct = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stored: String = redis::cmd("GET")
        .arg("greeting")
        .query(&mut direct)
        .unwrap();
    assert_eq!(stored, "annyeong");
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("f1")
        .arg("v1")
        .query(&mut direct)
        .unwrap();
    assert_eq!(
        moa.get(&format!("/granted/redis/execute/h?{addr}")),
        (
            200,
            "[RedisResult::Binary([118, 49]), RedisResult::Nil]\n".into()
        )
    );
    // A type error is reported as such, not as a trap.
    let (status, body) = moa.get(&format!("/granted/redis/incr/greeting?{addr}"));
    assert_eq!((status, body.contains("TypeError")), (500, true), "{body}");
    // Not in the allow-list: refused before any connection.
    let (status, body) = moa.get(&format!("/denied/redis/incr/visits?{addr}"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allowed_outbound_hosts"), "{body}");
    let (status, body) = moa.get("/granted/redis/incr/visits?addr=not-a-url");
    assert_eq!(
        (status, body.contains("InvalidAddress")),
        (403, true),
        "{body}"
    );
    let visits: i64 = redis::cmd("GET").arg("visits").query(&mut direct).unwrap();
    assert_eq!(visits, 2);
    moa.stop();
}
