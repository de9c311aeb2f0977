//! Event throughput, moa vs the raw clients, on the same broker and Redis in one run (driven by
//! `scripts/bench-events.sh`). Each case is end to end: from the first publish until the last
//! message was committed (offset stored / acknowledged). Every contender repeats rounds of
//! `--messages` until it has run at least `--seconds` (default 10), so a short burst does not decide
//! the ratio; its rate is all messages over all rounds' time.
//!
//! - raw Kafka: an idempotent acks=all rdkafka producer with every message in flight, and a group
//!   consumer that stores each offset (auto-commit), no wasm.
//! - raw Redis: pipelined `XADD`s, and `XREADGROUP COUNT 128` + one `XACK` per batch, no wasm.
//! - moa: the probe component publishes with `publish-batch` (one HTTP request), and a
//!   `[[trigger.kafka]]` / `[[trigger.redis-stream]]` delivers every message to the relay component
//!   (a fresh instance per message); the clock stops when moa's `moa_event_commits_total` (offset
//!   stored / XACKed, counted by the host) reaches the last message.

use anyhow::{Context as _, Result, bail};
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEYS: usize = 64;
const PAYLOAD_BYTES: usize = 100;
const PARTITIONS: i32 = 4;

struct Args {
    kafka: String,
    redis: String,
    moa: PathBuf,
    probe: PathBuf,
    relay: PathBuf,
    messages: usize,
    seconds: f64,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut get = |name: &str| -> Result<String> {
        match args.next() {
            Some(flag) if flag == name => {
                args.next().with_context(|| format!("{name} needs a value"))
            }
            other => bail!(
                "expected {name}, got {other:?}\nusage: bench_events --kafka HOST:PORT --redis URL --moa BIN --probe WASM --relay WASM --messages N"
            ),
        }
    };
    Ok(Args {
        kafka: get("--kafka")?,
        redis: get("--redis")?,
        moa: get("--moa")?.into(),
        probe: get("--probe")?.into(),
        relay: get("--relay")?.into(),
        messages: get("--messages")?.parse()?,
        seconds: std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10.0),
    })
}

#[path = "common/raw_kafka.rs"]
mod raw_kafka;

use raw_kafka::{Rounds, create_topic, raw_kafka};

fn payload(i: usize) -> (String, Vec<u8>) {
    let key = format!("k{}", i % KEYS);
    let mut payload = format!("{key}:{}", i / KEYS).into_bytes();
    payload.resize(PAYLOAD_BYTES, b'x');
    (key, payload)
}

async fn raw_redis(url: &str, n: usize, min_seconds: f64) -> Result<f64> {
    let stream = format!("raw-{}", std::process::id());
    let client = redis::Client::open(url)?;
    let mut producer = client.get_multiplexed_async_connection().await?;
    let mut reader = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut producer)
        .await?;
    let mut rounds = Rounds::new();
    while !rounds.done(min_seconds) {
        let started = Instant::now();
        let produce = async {
            for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
                let mut pipe = redis::pipe();
                for &i in chunk {
                    let (key, payload) = payload(i);
                    pipe.cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("payload")
                        .arg(payload)
                        .arg("key")
                        .arg(key)
                        .ignore();
                }
                let _: () = pipe.query_async(&mut producer).await?;
            }
            anyhow::Ok(())
        };
        let consume = async {
            let mut seen = 0;
            while seen < n {
                let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("COUNT")
                    .arg(128)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut reader)
                    .await?;
                let ids: Vec<String> = reply
                    .map(|r| {
                        r.keys
                            .into_iter()
                            .flat_map(|k| k.ids)
                            .map(|e| e.id)
                            .collect()
                    })
                    .unwrap_or_default();
                if ids.is_empty() {
                    continue;
                }
                seen += ids.len();
                let _: i64 = redis::cmd("XACK")
                    .arg(&stream)
                    .arg("g")
                    .arg(&ids)
                    .query_async(&mut reader)
                    .await?;
            }
            anyhow::Ok(())
        };
        let (produced, consumed) = tokio::join!(produce, consume);
        produced?;
        consumed?;
        rounds.add(n, started.elapsed());
    }
    Ok(rounds.rate())
}

struct MoaProcess {
    child: Child,
    url: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for MoaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moa(args: &Args, trigger: &str, runtime_config: &str) -> Result<MoaProcess> {
    let dir = tempfile::tempdir()?;
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "bench"
[[trigger.http]]
route = "/..."
component = "front"
{trigger}
component = "relay"
group = "bench-relay"
[component.front]
source = "{}"
allowed_publish_topics = ["*"]
[component.relay]
source = "{}"
"#,
        args.probe.display(),
        args.relay.display()
    );
    std::fs::write(dir.path().join("spin.toml"), manifest)?;
    // MOA_BENCH_EXTRA_RC: more runtime-config TOML (e.g. an [engine] table) to compare settings.
    let extra = std::env::var("MOA_BENCH_EXTRA_RC").unwrap_or_default();
    std::fs::write(
        dir.path().join("rc.toml"),
        format!("{runtime_config}\n{}\n", extra.replace("\\n", "\n")),
    )?;
    let mut child = Command::new(&args.moa)
        .arg("up")
        .arg("-f")
        .arg(dir.path().join("spin.toml"))
        .arg("--runtime-config-file")
        .arg(dir.path().join("rc.toml"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--state-dir")
        .arg(dir.path().join(".moa"))
        .env("MOA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start moa")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut url = String::new();
    let mut admin = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("Serving ") {
            url = rest.trim().to_string();
        }
        if let Some(rest) = line.strip_prefix("Admin: ") {
            admin = rest.trim().trim_end_matches("/metrics").to_string();
            break;
        }
    }
    if url.is_empty() || admin.is_empty() {
        bail!("moa did not start");
    }
    Ok(MoaProcess {
        child,
        url,
        admin,
        _dir: dir,
    })
}

/// Messages moa has committed (offset stored / XACKed), from its own counter.
async fn committed(client: &reqwest::Client, admin: &str) -> Result<u64> {
    let metrics = client
        .get(format!("{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("moa_event_commits_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn wait_committed(client: &reqwest::Client, admin: &str, target: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while committed(client, admin).await? < target {
        if Instant::now() > deadline {
            bail!(
                "moa committed only {} of {target}",
                committed(client, admin).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn through_moa(args: &Args, topic: &str, trigger: &str, runtime_config: &str) -> Result<f64> {
    let moa = start_moa(args, trigger, runtime_config)?;
    let client = reqwest::Client::new();
    let publish = |n: usize| {
        let url = format!(
            "{}/publish-many/{topic}?n={n}&keys={KEYS}&batch=1000&size={}",
            moa.url,
            PAYLOAD_BYTES - 8
        );
        let client = client.clone();
        async move {
            let response = client.post(url).send().await?;
            let status = response.status();
            let body = response.text().await?;
            if !status.is_success() {
                bail!("publish failed: {status} {body}");
            }
            anyhow::Ok(())
        }
    };
    // Warm-up: the consumer has joined and the component is compiled before the clock starts.
    let warmup = 200;
    publish(warmup).await?;
    wait_committed(&client, &moa.admin, warmup as u64).await?;
    let mut target = warmup as u64;
    let mut rounds = Rounds::new();
    while !rounds.done(args.seconds) {
        target += args.messages as u64;
        let started = Instant::now();
        let (published, consumed) = tokio::join!(
            async {
                publish(args.messages).await?;
                anyhow::Ok(started.elapsed())
            },
            wait_committed(&client, &moa.admin, target)
        );
        let published = published?;
        consumed?;
        let elapsed = started.elapsed();
        eprintln!(
            "  moa {topic}: published in {:.2} s, all committed in {:.2} s",
            published.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        rounds.add(args.messages, elapsed);
    }
    Ok(rounds.rate())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let n = args.messages;
    eprintln!("== {n} messages of {PAYLOAD_BYTES} bytes, {KEYS} keys, {PARTITIONS} partitions");

    let kafka_raw = raw_kafka(&args.kafka, PARTITIONS, n, args.seconds, payload).await?;
    eprintln!("raw rdkafka produce+consume: {kafka_raw:.0} msg/s");
    // moa's default (a fresh instance per delivery) is the RESULT; instance reuse is for information.
    let mut kafka_moa = 0.0;
    for (mode, reuse) in [
        ("fresh instance per message", 1),
        ("max_instance_reuse = 128", 128),
    ] {
        let topic = format!("moa-{}-{reuse}", std::process::id());
        create_topic(&args.kafka, &topic, PARTITIONS).await?;
        let rate = through_moa(
            &args,
            &topic,
            &format!("[[trigger.kafka]]\ntopics = [\"{topic}\"]"),
            &format!(
                "[messaging.brokers.main]\ntype = \"kafka\"\nbrokers = \"{}\"\n[limits]\nmax_instance_reuse = {reuse}\n",
                args.kafka
            ),
        )
        .await?;
        eprintln!("moa kafka, {mode} (component publishes, trigger delivers): {rate:.0} msg/s");
        if reuse == 1 {
            kafka_moa = rate;
        }
    }

    let redis_raw = raw_redis(&args.redis, n, args.seconds).await?;
    eprintln!("raw XADD/XREADGROUP/XACK: {redis_raw:.0} msg/s");
    let mut redis_moa = 0.0;
    for (mode, reuse) in [
        ("fresh instance per message", 1),
        ("max_instance_reuse = 128", 128),
    ] {
        let stream = format!("moa-{}-{reuse}", std::process::id());
        let rate = through_moa(
            &args,
            &stream,
            &format!("[[trigger.redis-stream]]\nstream = \"{stream}\""),
            &format!(
                "[messaging.brokers.main]\ntype = \"redis\"\nurl = \"{}\"\n[limits]\nmax_instance_reuse = {reuse}\n",
                args.redis
            ),
        )
        .await?;
        eprintln!(
            "moa redis streams, {mode} (component publishes, trigger delivers): {rate:.0} msg/s"
        );
        if reuse == 1 {
            redis_moa = rate;
        }
    }

    println!(
        "RESULT events kafka_msgs_s={kafka_moa:.0} kafka_raw_msgs_s={kafka_raw:.0} kafka_ratio={:.2} redis_msgs_s={redis_moa:.0} redis_raw_msgs_s={redis_raw:.0} redis_ratio={:.2}",
        kafka_moa / kafka_raw,
        redis_moa / redis_raw
    );
    Ok(())
}
