//! Drives the reference app's order saga on real servers, for `scripts/chaos-saga.sh` and
//! `scripts/bench-saga.sh`. The script starts Redis, SecantusDB, the Toss emulator and the dev
//! issuer; this driver owns the Kafka broker and the `moa up` hosts, so it can kill and restart them.
//!
//! - `chaos`: two hosts share the consumer groups; orders with declines, stock shortages and
//!   payment timeouts; hosts SIGKILLed and restarted, the broker restarted; then, once quiet, the
//!   orders, stock and the emulator's ledger are checked. Ends with `RESULT saga ...`.
//! - `bench`: one host, no faults; orders/s end to end beside the raw broker's produce+consume rate
//!   for the same number of messages. Ends with `RESULT saga-bench ...`.

#[path = "common/raw_kafka.rs"]
mod raw_kafka;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use futures::TryStreamExt as _;
use mongodb::bson::{Bson, Document, doc};
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TERMINAL: &[&str] = &[
    "COMPLETED",
    "REJECTED_OUT_OF_STOCK",
    "PAYMENT_DECLINED",
    "CANCELLED_BY_CUSTOMER",
    "FAILED",
    "COMPENSATION_FAILED",
];
/// The saga's messages for a completed order: OrderCreated, Reserve, Reserved, Confirm,
/// Confirmed, Commit, Committed.
const MSGS_PER_ORDER: usize = 7;
const STOCKED: i64 = 1_000_000;
/// Menu items orders are spread over (one hot item would make every reservation conflict).
const ITEMS: usize = 32;

fn item(i: usize) -> String {
    format!("item-{:02}", i % ITEMS)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Chaos,
    Bench,
}

/// Drives the order saga of the reference app on real servers (see the module docs).
#[derive(Parser)]
struct Args {
    #[arg(value_enum)]
    mode: Mode,
    /// The moa binary.
    #[arg(long)]
    moa: PathBuf,
    /// The app (the reference spin.toml).
    #[arg(long)]
    manifest: PathBuf,
    /// The runtime config that points the app at Kafka, Redis and MongoDB.
    #[arg(long)]
    runtime_config: PathBuf,
    /// Where hosts keep their state and logs.
    #[arg(long)]
    work: PathBuf,
    /// A shell command that runs the Kafka broker in the foreground (`exec ...`).
    #[arg(long)]
    broker_cmd: String,
    /// The broker's bootstrap address.
    #[arg(long)]
    kafka: String,
    /// MongoDB URL and database the app's `default` document store uses (chaos: required, to
    /// check the stores; bench without it: the hosts keep documents embedded, and orders are
    /// followed through the API).
    #[arg(long)]
    mongo: Option<String>,
    #[arg(long, default_value = "moa")]
    database: String,
    /// The dev issuer and the Toss emulator.
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    toss: String,
    #[arg(long, default_value_t = 1000)]
    orders: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value_t = 2)]
    hosts: usize,
    /// Host kills (SIGKILL, then a restart) during the run.
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Broker restarts during the run.
    #[arg(long, default_value_t = 1)]
    broker_restarts: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Partitions of the saga's topics, created before the hosts start (as an operator would).
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// How long to wait for every order to end after the last one was placed.
    #[arg(long, default_value_t = 420)]
    quiet_timeout_s: u64,
}

/// What kind of order a client places.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ok,
    Decline,
    Short,
    Late,
}

impl Kind {
    /// 20% declines, 10% stock shortages, 5% payment timeouts (late success), the rest plain.
    fn of(i: usize, mode: Mode) -> Kind {
        if mode == Mode::Bench {
            return Kind::Ok;
        }
        match i % 20 {
            0..=3 => Kind::Decline,
            4 | 5 => Kind::Short,
            6 => Kind::Late,
            _ => Kind::Ok,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Decline => "decline",
            Kind::Short => "short",
            Kind::Late => "late",
        }
    }
}

/// The broker and the hosts, which the chaos task kills and restarts.
struct Processes {
    args: Arc<Args>,
    broker: Mutex<Option<Child>>,
    hosts: Mutex<Vec<Option<Child>>>,
    ports: Vec<(u16, u16)>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn log_file(args: &Args, name: &str) -> Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.work.join(format!("{name}.log")))?)
}

impl Processes {
    fn new(args: Arc<Args>) -> Result<Arc<Processes>> {
        let ports = (0..args.hosts)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Processes {
            broker: Mutex::new(None),
            hosts: Mutex::new((0..args.hosts).map(|_| None).collect()),
            ports,
            args,
        }))
    }

    fn url(&self, host: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[host].0)
    }

    fn admin(&self, host: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[host].1)
    }

    fn start_broker(&self) -> Result<()> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(&self.args.broker_cmd)
            .stdout(log_file(&self.args, "broker")?)
            .stderr(log_file(&self.args, "broker")?)
            .spawn()
            .context("cannot start the broker")?;
        *self.broker.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    fn kill_broker(&self) {
        if let Some(mut child) = self.broker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn start_host(&self, host: usize) -> Result<()> {
        let (port, admin) = self.ports[host];
        let args = &self.args;
        let child = Command::new(&args.moa)
            .arg("up")
            .arg("-f")
            .arg(&args.manifest)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .arg("--state-dir")
            .arg(args.work.join(format!("host{host}")))
            .arg("--runtime-config-file")
            .arg(&args.runtime_config)
            .args(["--drain-timeout", "2"])
            .stdin(Stdio::null())
            .stdout(log_file(args, &format!("host{host}"))?)
            .stderr(log_file(args, &format!("host{host}"))?)
            .spawn()
            .context("cannot start moa")?;
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())[host] = Some(child);
        Ok(())
    }

    fn kill_host(&self, host: usize) {
        if let Some(mut child) = self.hosts.lock().unwrap_or_else(|e| e.into_inner())[host].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the host answers `/readyz` with 200 (its triggers work).
    async fn wait_ready(&self, http: &reqwest::Client, host: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        let url = format!("{}/readyz", self.admin(host));
        while Instant::now() < deadline {
            if let Ok(reply) = http.get(&url).send().await
                && reply.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "host {host} not ready after 180 s; see {}",
            self.args.work.join(format!("host{host}.log")).display()
        )
    }

    fn stop_all(&self) {
        for host in 0..self.ports.len() {
            self.kill_host(host);
        }
        self.kill_broker();
    }
}

async fn wait_tcp(address: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing listens on {address}")
}

/// The saga's topics with `partitions` each (a topic that exists is left as it is).
async fn create_topics(bootstrap: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let names = [
        "orders.events",
        "inventory.commands",
        "inventory.replies",
        "payment.commands",
        "payment.replies",
    ];
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

async fn token(http: &reqwest::Client, issuer: &str, sub: &str, group: &str) -> Result<String> {
    let reply: Value = http
        .post(format!("{issuer}/token"))
        .json(&json!({ "sub": sub, "groups": [group], "ttl_s": 86400 }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    reply["token"]
        .as_str()
        .map(str::to_string)
        .context("the issuer answered without a token")
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Value,
) -> Result<Value> {
    let reply = http
        .request(method.clone(), url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = reply.status();
    let text = reply.text().await?;
    if !status.is_success() {
        bail!("{method} {url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// A store with `ITEMS` items (stocked plenty) and `sold-out` (none); returns its id.
async fn seed(http: &reqwest::Client, app: &str, owner: &str) -> Result<String> {
    let store = call(
        http,
        reqwest::Method::POST,
        &format!("{app}/stores"),
        owner,
        json!({ "name": "부하 시험 김밥" }),
    )
    .await?;
    let id = store["id"].as_str().context("no store id")?.to_string();
    call(
        http,
        reqwest::Method::PUT,
        &format!("{app}/stores/{id}/menu"),
        owner,
        json!({ "items": (0..ITEMS)
            .map(|i| json!({ "id": item(i), "name": format!("김밥 {i}"), "price": 3000 + 100 * i as i64 }))
            .chain([json!({ "id": "sold-out", "name": "품절 메뉴", "price": 9000 })])
            .collect::<Vec<_>>() }),
    )
    .await?;
    let stock = (0..ITEMS)
        .map(|i| (item(i), STOCKED))
        .chain([("sold-out".to_string(), 0)]);
    for (item, quantity) in stock {
        call(
            http,
            reqwest::Method::PUT,
            &format!("{app}/inventory/{id}/{item}"),
            owner,
            json!({ "quantity": quantity }),
        )
        .await?;
    }
    Ok(id)
}

/// Places order `i`, on another host after a connection error or a 5xx, with the same payment key
/// (a 409 `payment_key_used` then says an earlier try got through). `Some((key, id))`: accepted
/// (`id` is unknown when only the 409 said so).
async fn place(
    http: &reqwest::Client,
    processes: &Processes,
    customer: &str,
    store: &str,
    run: u64,
    i: usize,
    mode: Mode,
) -> Option<(String, Option<String>)> {
    let kind = Kind::of(i, mode);
    let key = format!("pk-{}-{run}-{i}", kind.tag());
    let mut items = vec![json!({ "item_id": item(i), "quantity": 1 })];
    if kind == Kind::Short {
        items.push(json!({ "item_id": "sold-out", "quantity": 1 }));
    }
    let body = json!({ "store_id": store, "items": items, "payment_key": key });
    for attempt in 0..240 {
        let host = (i + attempt) % processes.ports.len();
        let reply = http
            .post(format!("{}/orders", processes.url(host)))
            .bearer_auth(customer)
            .json(&body)
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        match reply {
            Ok(reply) if reply.status().as_u16() == 202 => {
                let order: Value = reply.json().await.unwrap_or_default();
                return Some((key, order["id"].as_str().map(str::to_string)));
            }
            Ok(reply) if reply.status().as_u16() == 409 => {
                let text = reply.text().await.unwrap_or_default();
                if text.contains("payment_key_used") {
                    return Some((key, None));
                }
                eprintln!("order {i}: 409 {text}");
                return None;
            }
            Ok(reply) if reply.status().is_client_error() => {
                let status = reply.status();
                eprintln!(
                    "order {i}: refused {status}: {}",
                    reply.text().await.unwrap_or_default()
                );
                return None;
            }
            // A killed host, a 5xx while the broker or the store is away: try again.
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    eprintln!("order {i}: never accepted");
    None
}

/// Kills a host `kills` times and restarts the broker `broker_restarts` times, at random moments
/// within `window`.
async fn chaos(
    processes: Arc<Processes>,
    http: reqwest::Client,
    window: Duration,
    seed: u64,
) -> Result<Vec<String>> {
    let args = processes.args.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut events: Vec<(Duration, Option<usize>)> = Vec::new();
    for k in 0..args.kills {
        events.push((
            window.mul_f64(rng.gen_range(0.1..0.9)),
            Some(k % args.hosts),
        ));
    }
    for _ in 0..args.broker_restarts {
        events.push((window.mul_f64(rng.gen_range(0.2..0.8)), None));
    }
    events.sort_by_key(|(at, _)| *at);
    let started = Instant::now();
    let mut done = Vec::new();
    for (at, what) in events {
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        match what {
            Some(host) => {
                processes.kill_host(host);
                done.push(format!(
                    "{:.1}s SIGKILL host {host}",
                    started.elapsed().as_secs_f64()
                ));
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2500))).await;
                processes.start_host(host)?;
                processes.wait_ready(&http, host).await?;
                done.push(format!(
                    "{:.1}s host {host} ready again",
                    started.elapsed().as_secs_f64()
                ));
            }
            None => {
                processes.kill_broker();
                done.push(format!(
                    "{:.1}s broker stopped",
                    started.elapsed().as_secs_f64()
                ));
                tokio::time::sleep(Duration::from_secs(2)).await;
                processes.start_broker()?;
                wait_tcp(&args.kafka).await?;
                done.push(format!(
                    "{:.1}s broker back",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    }
    Ok(done)
}

fn number(doc: &Document, field: &str) -> i64 {
    match doc.get(field) {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

/// Waits until no order of the store is in flight and the outbox is empty.
async fn wait_quiet(db: &mongodb::Database, store: &str, timeout: Duration) -> Result<bool> {
    let orders = db.collection::<Document>("orders");
    let outbox = db.collection::<Document>("_moa_outbox");
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let in_flight = orders
            .count_documents(doc! { "store_id": store, "state": { "$nin": TERMINAL } })
            .await?;
        let backlog = outbox.count_documents(doc! {}).await?;
        if in_flight == 0 && backlog == 0 {
            return Ok(true);
        }
        if Instant::now() > deadline {
            eprintln!("not quiet: {in_flight} orders in flight, {backlog} outbox messages");
            return Ok(false);
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("waiting: {in_flight} orders in flight, {backlog} outbox messages");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Messages ever written to the dead-letter topics (their high watermarks).
fn dead_letters(kafka: &str) -> Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()?;
    let mut total = 0;
    for topic in [
        "orders.events.dlq",
        "inventory.commands.dlq",
        "inventory.replies.dlq",
        "payment.commands.dlq",
        "payment.replies.dlq",
    ] {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
            continue;
        };
        for t in metadata.topics() {
            for p in t.partitions() {
                if let Ok((low, high)) =
                    consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                {
                    total += high - low;
                }
            }
        }
    }
    Ok(total)
}

struct Report {
    orders: usize,
    terminal: usize,
    lost: usize,
    double_charges: usize,
    charge_mismatch: usize,
    stock_mismatch: usize,
    states: BTreeMap<String, usize>,
    orders_per_s: f64,
    p99_order_ms: i64,
}

async fn check(
    args: &Args,
    http: &reqwest::Client,
    db: &mongodb::Database,
    store: &str,
    accepted: &[String],
) -> Result<Report> {
    let orders: Vec<Document> = db
        .collection::<Document>("orders")
        .find(doc! { "store_id": store })
        .await?
        .try_collect()
        .await?;
    let by_key: HashMap<String, &Document> = orders
        .iter()
        .filter_map(|o| Some((o.get_str("payment_key").ok()?.to_string(), o)))
        .collect();
    let ledger: Value = http
        .get(format!("{}/__emulator/ledger", args.toss))
        .send()
        .await?
        .json()
        .await?;
    let mut report = Report {
        orders: accepted.len(),
        terminal: 0,
        lost: 0,
        double_charges: 0,
        charge_mismatch: 0,
        stock_mismatch: 0,
        states: BTreeMap::new(),
        orders_per_s: 0.0,
        p99_order_ms: 0,
    };
    let mut lifetimes = Vec::new();
    let mut slowest = Vec::new();
    let mut sold: HashMap<String, i64> = HashMap::new();
    let (mut first, mut last) = (i64::MAX, 0);
    for key in accepted {
        let Some(order) = by_key.get(key) else {
            eprintln!("lost: no order paid by {key}");
            report.lost += 1;
            continue;
        };
        let id = order.get_str("_id").unwrap_or_default();
        let state = order.get_str("state").unwrap_or_default();
        *report.states.entry(state.to_string()).or_default() += 1;
        if !TERMINAL.contains(&state) {
            eprintln!("lost: order {id} ({key}) is still {state}");
            report.lost += 1;
            continue;
        }
        report.terminal += 1;
        let (created, updated) = (
            number(order, "created_at_ms"),
            number(order, "updated_at_ms"),
        );
        lifetimes.push(updated - created);
        slowest.push((
            updated - created,
            created,
            id.to_string(),
            state.to_string(),
        ));
        first = first.min(created);
        last = last.max(updated);
        let paid = &ledger["orders"][id];
        let charges = paid["charges"].as_i64().unwrap_or(0);
        let net = paid["charged"].as_i64().unwrap_or(0) - paid["refunded"].as_i64().unwrap_or(0);
        let expected = if state == "COMPLETED" {
            for line in order.get_array("lines").into_iter().flatten() {
                if let Some(line) = line.as_document() {
                    *sold
                        .entry(line.get_str("item_id").unwrap_or_default().to_string())
                        .or_default() += number(line, "quantity");
                }
            }
            number(order, "amount")
        } else {
            0
        };
        if charges > 1 {
            eprintln!("double charge: order {id} charged {charges} times: {paid}");
            report.double_charges += 1;
        }
        if net != expected {
            eprintln!(
                "charge mismatch: order {id} is {state}, net charge {net}, expected {expected}"
            );
            report.charge_mismatch += 1;
        }
    }
    let stock: Vec<Document> = db
        .collection::<Document>("stock")
        .find(doc! { "_id": { "$regex": format!("^{store}/") } })
        .await?
        .try_collect()
        .await?;
    for item in &stock {
        let id = item.get_str("_id").unwrap_or_default();
        let (available, reserved, sold_now) = (
            number(item, "available"),
            number(item, "reserved"),
            number(item, "sold"),
        );
        let name = id.rsplit('/').next().unwrap_or_default();
        let initial = if name == "sold-out" { 0 } else { STOCKED };
        let expected_sold = sold.get(name).copied().unwrap_or(0);
        if available + reserved + sold_now != initial || reserved != 0 || sold_now != expected_sold
        {
            eprintln!(
                "stock mismatch: {id}: available {available} + reserved {reserved} + sold {sold_now} (expected {initial} stocked, 0 reserved, {expected_sold} sold)"
            );
            report.stock_mismatch += 1;
        }
    }
    lifetimes.sort_unstable();
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    let start = slowest.iter().map(|s| s.1).min().unwrap_or_default();
    for (ms, created, id, state) in slowest.iter().take(5) {
        eprintln!(
            "slow: {id} created at +{:.1} s took {:.1} s to {state}",
            (created - start) as f64 / 1000.0,
            *ms as f64 / 1000.0
        );
    }
    let over_10s = slowest.iter().filter(|s| s.0 > 10_000).count();
    eprintln!("{over_10s} orders took over 10 s");
    if !lifetimes.is_empty() {
        report.p99_order_ms = lifetimes[(lifetimes.len() * 99 / 100).min(lifetimes.len() - 1)];
    }
    if last > first {
        report.orders_per_s = report.terminal as f64 / ((last - first) as f64 / 1000.0);
    }
    Ok(report)
}

/// Transactions per second the MongoDB driver gets from the server with no moa in between, in
/// the shape of one saga step (read a document, update it, insert an outbox document, commit),
/// from 16 tasks for `run`. `tx_ratio` = the saga's transactions per second (one per message) over
/// this.
async fn raw_mongo_transactions(db: &mongodb::Database, run: Duration) -> Result<f64> {
    let state = db.collection::<Document>("raw_tx_state");
    let outbox = db.collection::<Document>("raw_tx_outbox");
    let deadline = Instant::now() + run;
    let committed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (client, state, outbox, committed) = (
            db.client().clone(),
            state.clone(),
            outbox.clone(),
            committed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let id = format!("w{worker}-{}", n % 64);
                n += 1;
                let mut session = client.start_session().await?;
                // A transaction the server refuses (a transient error) is not counted.
                let step = async {
                    session.start_transaction().await?;
                    state
                        .find_one(doc! { "_id": &id })
                        .session(&mut session)
                        .await?;
                    state
                        .update_one(doc! { "_id": &id }, doc! { "$inc": { "n": 1 } })
                        .upsert(true)
                        .session(&mut session)
                        .await?;
                    outbox
                        .insert_one(doc! { "key": &id, "payload": "step" })
                        .session(&mut session)
                        .await?;
                    session.commit_transaction().await
                };
                if step.await.is_ok() {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(committed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Prints the host's mean handler time per component, HTTP request time and outbox publish lag.
async fn where_time_goes(http: &reqwest::Client, admin: &str) {
    let Ok(reply) = http.get(format!("{admin}/metrics")).send().await else {
        return;
    };
    let text = reply.text().await.unwrap_or_default();
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        for (metric, label) in [
            ("moa_event_handle_duration_seconds", "handle"),
            ("moa_http_request_duration_seconds", "http"),
            ("moa_outbox_publish_lag_seconds", "outbox lag"),
            ("moa_event_batch_size", "batch of"),
        ] {
            let component = name
                .split("component=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("all");
            let key = format!("{label} {component}");
            if name.starts_with(&format!("{metric}_sum")) {
                sums.entry(key).or_default().0 += value;
            } else if name.starts_with(&format!("{metric}_count")) {
                sums.entry(key).or_default().1 += value;
            }
        }
    }
    let means: Vec<String> = sums
        .iter()
        .filter(|(_, (_, count))| *count > 0.0)
        .map(|(key, (sum, count))| match key.strip_prefix("batch of ") {
            Some(component) => {
                format!("batch {component}: {:.1} deliveries x {count}", sum / count)
            }
            None => format!("{key}: {:.1} ms x {count}", sum / count * 1000.0),
        })
        .collect();
    eprintln!("where the time goes (means): {}", means.join("; "));
}

/// Follows the orders through the API until every one is terminal; returns how many completed
/// and the seconds from the first order's creation to the last one's end (the orders' own clocks).
async fn follow(
    http: &reqwest::Client,
    app: &str,
    customer: &str,
    ids: &[String],
    timeout_s: u64,
) -> Result<(usize, f64)> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let mut pending: Vec<&String> = ids.iter().collect();
    let (mut first, mut last, mut completed) = (i64::MAX, 0i64, 0);
    while !pending.is_empty() {
        if Instant::now() > deadline {
            bail!(
                "{} orders still in flight after {timeout_s} s",
                pending.len()
            );
        }
        let mut still = Vec::new();
        for id in pending {
            let order = call(
                http,
                reqwest::Method::GET,
                &format!("{app}/orders/{id}"),
                customer,
                Value::Null,
            )
            .await?;
            let state = order["state"].as_str().unwrap_or_default();
            if TERMINAL.contains(&state) {
                first = first.min(order["created_at_ms"].as_i64().unwrap_or(i64::MAX));
                last = last.max(order["updated_at_ms"].as_i64().unwrap_or(0));
                completed += usize::from(state == "COMPLETED");
            } else {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            // The orders' own timestamps time the run; polling less leaves the host's CPU to them.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    Ok((completed, (last - first).max(1) as f64 / 1000.0))
}

/// A saga-sized message keyed like the saga's: `MSGS_PER_ORDER` messages per order id.
fn saga_message(i: usize) -> (String, Vec<u8>) {
    let key = format!("ord_{}", i / MSGS_PER_ORDER);
    let payload = format!("{{\"type\":\"Reserved\",\"order_id\":\"{key}\"}}").into_bytes();
    (key, payload)
}

/// The raw broker for the same messages: `n` a round, 10 s in all, on 8 partitions.
async fn raw_broker(bootstrap: &str, n: usize) -> Result<f64> {
    raw_kafka::raw_kafka(bootstrap, 8, n, 10.0, saga_message).await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    std::fs::create_dir_all(&args.work)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let processes = Processes::new(args.clone())?;
    let result = run(&args, &http, &processes).await;
    processes.stop_all();
    result
}

async fn run(args: &Arc<Args>, http: &reqwest::Client, processes: &Arc<Processes>) -> Result<()> {
    processes.start_broker()?;
    wait_tcp(&args.kafka).await?;
    create_topics(&args.kafka, args.partitions).await?;
    for host in 0..args.hosts {
        processes.start_host(host)?;
    }
    for host in 0..args.hosts {
        processes.wait_ready(http, host).await?;
    }
    let owner = token(http, &args.issuer, "owner-load", "OWNER").await?;
    let customer = token(http, &args.issuer, "customer-load", "CUSTOMER").await?;
    let store = seed(http, &processes.url(0), &owner).await?;
    let run_id = args.seed * 1_000_000 + u64::from(std::process::id() % 1_000_000);
    eprintln!(
        "store {store}: {} orders, {} clients, {} host(s)",
        args.orders, args.clients, args.hosts
    );

    let chaos_task = (args.mode == Mode::Chaos).then(|| {
        // Orders take a while on two hosts; the faults land within the first 60 s.
        tokio::spawn(chaos(
            processes.clone(),
            http.clone(),
            Duration::from_secs(60),
            args.seed,
        ))
    });
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (http, processes, customer, store, next, accepted, args) = (
            http.clone(),
            processes.clone(),
            customer.clone(),
            store.clone(),
            next.clone(),
            accepted.clone(),
            args.clone(),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= args.orders {
                    return;
                }
                if let Some(placed) =
                    place(&http, &processes, &customer, &store, run_id, i, args.mode).await
                {
                    accepted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(placed);
                }
                if i % 100 == 99 {
                    eprintln!("{} orders placed", i + 1);
                }
            }
        }));
    }
    for client in clients {
        client.await?;
    }
    let placed = started.elapsed();
    eprintln!("all orders placed in {:.1} s", placed.as_secs_f64());
    if let Some(task) = chaos_task {
        for line in task.await?? {
            eprintln!("chaos: {line}");
        }
    }
    let accepted = accepted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match (args.mode, &args.mongo) {
        (Mode::Bench, None) => {
            let ids: Vec<String> = accepted.iter().filter_map(|(_, id)| id.clone()).collect();
            let (completed, seconds) = follow(
                http,
                &processes.url(0),
                &customer,
                &ids,
                args.quiet_timeout_s,
            )
            .await?;
            let orders_s = completed as f64 / seconds;
            let raw = raw_broker(&args.kafka, (args.orders * MSGS_PER_ORDER).min(100_000)).await?;
            eprintln!(
                "{completed} of {} orders completed in {seconds:.1} s",
                args.orders
            );
            where_time_goes(http, &processes.admin(0)).await;
            println!(
                "RESULT saga-bench orders_s={orders_s:.1} raw_msgs_s={raw:.0} msgs_per_order={MSGS_PER_ORDER} ratio={:.3} documents=embedded",
                orders_s * MSGS_PER_ORDER as f64 / raw
            );
        }
        (_, None) => bail!("chaos checks the stores: give --mongo"),
        (mode, Some(url)) => {
            let db = mongodb::Client::with_uri_str(url)
                .await?
                .database(&args.database);
            let quiet = wait_quiet(&db, &store, Duration::from_secs(args.quiet_timeout_s)).await?;
            let total = started.elapsed();
            let keys: Vec<String> = accepted.iter().map(|(key, _)| key.clone()).collect();
            let report = check(args, http, &db, &store, &keys).await?;
            let dead = dead_letters(&args.kafka).unwrap_or(-1);
            eprintln!(
                "quiet: {quiet}; {} accepted of {}; states {:?}; dead letters {dead}; charge mismatches {}; {:.1} s in all",
                accepted.len(),
                args.orders,
                report.states,
                report.charge_mismatch,
                total.as_secs_f64()
            );
            if mode == Mode::Chaos {
                println!(
                    "RESULT saga orders={} terminal={} lost={} double_charges={} stock_mismatch={} orders_per_s={:.1} p99_order_ms={}",
                    report.orders,
                    report.terminal,
                    report.lost + (args.orders - accepted.len()),
                    report.double_charges + report.charge_mismatch,
                    report.stock_mismatch,
                    report.orders_per_s,
                    report.p99_order_ms
                );
            } else {
                where_time_goes(http, &processes.admin(0)).await;
                let raw =
                    raw_broker(&args.kafka, (args.orders * MSGS_PER_ORDER).min(100_000)).await?;
                // The server's own pace: a saga step's transaction shape straight from the driver.
                let raw_tx = raw_mongo_transactions(&db, Duration::from_secs(10)).await?;
                println!(
                    "RESULT saga-bench orders_s={:.1} raw_msgs_s={raw:.0} msgs_per_order={MSGS_PER_ORDER} ratio={:.3} raw_driver_tx_s={raw_tx:.1} tx_ratio={:.3} documents=mongodb",
                    report.orders_per_s,
                    report.orders_per_s * MSGS_PER_ORDER as f64 / raw,
                    report.orders_per_s * MSGS_PER_ORDER as f64 / raw_tx
                );
            }
        }
    }
    Ok(())
}
