//! `moa-model-runtime serve`: the embedding model over gRPC (moa.embedding.v1 + grpc.health.v1),
//! with Prometheus metrics and a readiness probe on a separate admin port, JSON logs on stderr.

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use moa_model_runtime::proto::embedding_server::EmbeddingServer;
use moa_model_runtime::{
    BatcherSettings, EmbedderSettings, EmbeddingService, ModelRuntime, RuntimeMetrics,
    RuntimeSettings,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic_health::ServingStatus;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "moa-model-runtime",
    version,
    about = "moa's native embedding runtime: ONNX Runtime on CPU behind a dynamic batcher, over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the model and serve moa.embedding.v1.Embedding and grpc.health.v1.Health.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// gRPC address (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "MOA_MODEL_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Admin address: Prometheus /metrics and /readyz (200 once the model is loaded).
    #[arg(long, env = "MOA_MODEL_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Model directory (model.onnx, tokenizer.json, moa.json) [default: ~/.cache/moa/models/multilingual-e5-small].
    #[arg(long, env = "MOA_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// libonnxruntime.so from PyPI onnxruntime [default: ~/.cache/moa/onnxruntime/libonnxruntime.so].
    #[arg(long, env = "MOA_ORT_LIB")]
    ort_lib: Option<PathBuf>,
    /// Intra-op threads of the one inference session [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// ONNX Runtime graph optimisation level, 0 (none) to 3 (all fusions).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
    optimization_level: u8,
    /// Stop idle inference threads from spinning (saves CPU when sharing cores, costs a little latency).
    #[arg(long)]
    no_spinning: bool,
    /// Most texts per inference batch.
    #[arg(long, default_value_t = 32)]
    max_batch_size: usize,
    /// Most padded tokens (texts x longest text) per batch.
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// How long a batch waits for more texts after its first one, in milliseconds.
    #[arg(long, default_value_t = 2)]
    max_wait_ms: u64,
    /// Most texts waiting; beyond it requests get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4096)]
    queue_capacity: usize,
    /// Most texts in one request.
    #[arg(long, default_value_t = 512)]
    max_client_batch_size: usize,
    /// After SIGTERM, how long health reports NOT_SERVING before the listener closes (ms), so
    /// load balancers stop sending first.
    #[arg(long, default_value_t = 5000)]
    shutdown_grace_ms: u64,
    /// Then, how long in-flight calls and open streams (health watches, EmbedStream) may take to
    /// finish before they are cut (ms).
    #[arg(long, default_value_t = 10000)]
    drain_timeout_ms: u64,
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let traces = init_logging(args.log_format)?;
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(serve(args));
            // Pending spans go out before the process ends.
            if let Some(provider) = traces {
                let _ = provider.shutdown();
            }
            result
        }
    }
}

/// JSON (or text) logs on stderr, and OTLP span export when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; `OTEL_SERVICE_NAME` defaults to moa-model-runtime.
fn init_logging(format: LogFormat) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = std::env::var("MOA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&filter)
        .map_err(|e| anyhow::anyhow!("invalid MOA_LOG filter `{filter}`: {e}"))?;
    let fmt_layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = moa_otel::tracer_provider_from_env("moa-model-runtime")?;
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("moa-model-runtime")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(provider)
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut settings = RuntimeSettings::from_environment();
    if let Some(dir) = args.model_dir.clone() {
        settings.model_dir = dir;
    }
    if let Some(lib) = args.ort_lib.clone() {
        settings.onnxruntime_library = lib;
    }
    settings.embedder = EmbedderSettings {
        intra_threads: args
            .threads
            .unwrap_or(EmbedderSettings::default().intra_threads),
        optimization_level: args.optimization_level,
        allow_spinning: !args.no_spinning,
    };
    settings.batcher = BatcherSettings {
        max_batch_size: args.max_batch_size,
        max_batch_tokens: args.max_batch_tokens,
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue_capacity: args.queue_capacity,
        max_client_batch_size: args.max_client_batch_size,
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let metrics = Arc::new(RuntimeMetrics::new());
    let service = EmbeddingService::default();
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    if let Some(admin) = args.admin_listen {
        let admin = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen on {admin} (admin)"))?;
        println!("moa-model-runtime admin on http://{}", admin.local_addr()?);
        tokio::spawn(serve_admin(admin, metrics.clone(), service.clone()));
    }
    println!("moa-model-runtime listening on {address}");

    // Load in the background: the port answers (UNAVAILABLE, NOT_SERVING) while the model loads.
    let loading = {
        let (service, health, metrics) = (service.clone(), health.clone(), metrics.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let settings_for_load = settings.clone();
            let runtime = tokio::task::spawn_blocking(move || {
                ModelRuntime::load(&settings_for_load, metrics)
            })
            .await
            .context("the model loader panicked")??;
            tracing::info!(
                model = runtime.model_name(),
                weights = runtime.embedder().config().weights.as_deref().unwrap_or("fp32"),
                dir = %settings.model_dir.display(),
                threads = settings.embedder.intra_threads,
                load_ms = started.elapsed().as_millis() as u64,
                "model loaded; serving"
            );
            service.ready(Arc::new(runtime));
            set_health(&health, ServingStatus::Serving).await;
            anyhow::Ok(())
        })
    };

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            EmbeddingServer::new(service.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, Nagle + delayed ACKs add ~40 ms to small responses.
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            async {
                let _ = stop_rx.await;
            },
        );
    let server = tokio::spawn(server);

    tokio::select! {
        loaded = loading => {
            // A model that cannot load is fatal: say why and exit non-zero.
            loaded.context("the model loader panicked")??;
            shutdown_signal().await;
        }
        _ = shutdown_signal() => {}
    }
    tracing::info!(
        grace_ms = args.shutdown_grace_ms,
        "shutting down: health NOT_SERVING"
    );
    set_health(&health, ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_millis(args.shutdown_grace_ms)).await;
    let _ = stop_tx.send(());
    // Graceful: in-flight calls finish (within the drain timeout), then the batcher drains.
    match tokio::time::timeout(Duration::from_millis(args.drain_timeout_ms), server).await {
        Ok(finished) => finished
            .context("the gRPC server panicked")?
            .context("the gRPC server failed")?,
        Err(_) => tracing::warn!(
            drain_timeout_ms = args.drain_timeout_ms,
            "calls or streams still open after the drain timeout; closing them"
        ),
    }
    if let Some(runtime) = service.runtime() {
        runtime.close();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Sets the embedding service's status and the server's overall ("") status.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health
        .set_service_status(
            <EmbeddingServer<EmbeddingService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// `/metrics` (Prometheus text format), `/readyz` (503 until the model is loaded), `/healthz`.
async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Arc<RuntimeMetrics>,
    service: EmbeddingService,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, service) = (metrics.clone(), service.clone());
        let handler = hyper::service::service_fn(move |request: http::Request<_>| {
            let (status, body) = match request.uri().path() {
                "/metrics" => (http::StatusCode::OK, metrics.render()),
                "/healthz" => (http::StatusCode::OK, "ok\n".into()),
                "/readyz" if service.runtime().is_some() => {
                    (http::StatusCode::OK, "ready\n".into())
                }
                "/readyz" => (http::StatusCode::SERVICE_UNAVAILABLE, "loading\n".into()),
                _ => (
                    http::StatusCode::NOT_FOUND,
                    "admin endpoints: /metrics, /healthz, /readyz\n".into(),
                ),
            };
            let mut response = http::Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), handler)
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
