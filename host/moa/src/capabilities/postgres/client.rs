//! PostgreSQL connections for components: a pool per address (and CA) per component, a pooled
//! session per `connection` resource, statements bounded by the request's deadline.
//!
//! A session goes back to its pool rolled back (a transaction a component left open never reaches
//! the next user) and is reset by deadpool's `Clean` recycling; one cancelled at the deadline or
//! broken is closed instead.

use super::bindings::spin::postgres4_2_0::postgres::{
    Column, DbError, DbValue, Error, QueryError, RowSet,
};
use super::types::{self, Param};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::StreamExt as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::config::{Config, SslMode};
use tokio_postgres::{CancelToken, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Pools one component keeps (Spin's figure); the least recently used goes first.
const POOLS_PER_COMPONENT: usize = 16;
/// Sessions one pool opens at most (Spin's figure).
const POOL_SIZE: usize = 64;
/// How long connecting (TCP, TLS, authentication) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long returning a session to its pool (rollback, reset) may take before it is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of rows `query` (the non-streaming call) holds for a component (Spin's limit).
pub const MAX_RESULT_BYTES: usize = 128 << 20;
/// Rows the streaming query reads ahead of the component.
const ROWS_AHEAD: usize = 4;

/// A root certificate a component added with `connection-builder.set-ca-root`.
#[derive(Clone)]
pub struct CaRoot {
    der: CertificateDer<'static>,
    digest: [u8; 32],
}

impl CaRoot {
    /// Parses one PEM certificate.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|err| format!("invalid root certificate: {err}"))?;
        Ok(CaRoot {
            digest: Sha256::digest(&der).into(),
            der,
        })
    }
}

/// The system's trust store, read once.
static NATIVE_ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "could not read a system root certificate");
    }
    found.certs
});

/// What a session's TLS is: none (`sslmode=disable`), or rustls.
///
/// `sslmode=require` verifies the server against the system roots (plus the component's CA), as
/// Spin does. `prefer` (the default) encrypts when the server offers TLS without verifying it, as
/// libpq does: a client that would fall back to plaintext gains nothing by refusing an unverified
/// certificate, and Debian's default self-signed one would fail every connection. A component that
/// sets a CA root gets verification in either mode.
#[derive(Clone)]
enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

impl Tls {
    fn for_config(config: &Config, ca: Option<&CaRoot>) -> Result<Self, String> {
        let mode = config.get_ssl_mode();
        if mode == SslMode::Disable {
            return Ok(Tls::None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?;
        let tls = if mode == SslMode::Prefer && ca.is_none() {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(NATIVE_ROOTS.iter().cloned());
            if let Some(ca) = ca {
                roots
                    .add(ca.der.clone())
                    .map_err(|err| format!("invalid root certificate: {err}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Tls::Rustls(MakeRustlsConnect::new(tls)))
    }
}

/// `sslmode=prefer`'s verifier: any certificate, but the handshake's signatures must be its key's.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Which pool a session comes from: the exact address and the CA it trusts.
#[derive(Clone, PartialEq, Eq)]
struct PoolKey {
    address: String,
    ca: Option<[u8; 32]>,
}

struct CachedPool {
    key: PoolKey,
    pool: Pool,
    tls: Tls,
    used: Instant,
}

/// One component's pools.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<Vec<CachedPool>>,
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

impl Pools {
    /// The pool for `address` (creating it, and dropping the least recently used beyond 16).
    fn pool(
        &self,
        address: &str,
        mut config: Config,
        ca: Option<&CaRoot>,
        application: &str,
    ) -> Result<(Pool, Tls), Error> {
        let key = PoolKey {
            address: address.to_string(),
            ca: ca.map(|ca| ca.digest),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = pools.iter_mut().find(|p| p.key == key) {
            cached.used = Instant::now();
            return Ok((cached.pool.clone(), cached.tls.clone()));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name(application);
        }
        let tls = Tls::for_config(&config, ca).map_err(Error::Other)?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Clean,
        };
        let manager = match &tls {
            Tls::None => Manager::from_config(config, NoTls, manager_config),
            Tls::Rustls(tls) => Manager::from_config(config, tls.clone(), manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(1)))
            .recycle_timeout(Some(RESET_TIMEOUT))
            .build()
            .map_err(|err| Error::Other(err.to_string()))?;
        if pools.len() >= POOLS_PER_COMPONENT
            && let Some(oldest) = pools
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.used)
                .map(|(i, _)| i)
        {
            pools.swap_remove(oldest);
        }
        pools.push(CachedPool {
            key,
            pool: pool.clone(),
            tls: tls.clone(),
            used: Instant::now(),
        });
        Ok((pool, tls))
    }

    /// A session on `address` (already checked against the allow-list), waiting at most until
    /// `deadline` for a free one.
    pub async fn connect(
        &self,
        address: &str,
        config: Config,
        ca: Option<&CaRoot>,
        application: &str,
        deadline: Instant,
    ) -> Result<PgConnection, Error> {
        let (pool, tls) = self.pool(address, config, ca, application)?;
        let object = match tokio::time::timeout_at(deadline.into(), pool.get()).await {
            Ok(Ok(object)) => object,
            Ok(Err(err)) => return Err(Error::ConnectionFailed(chain(&err))),
            Err(_) => {
                return Err(Error::ConnectionFailed(
                    "no session free in the pool before the request's deadline".into(),
                ));
            }
        };
        Ok(PgConnection {
            cancel: object.cancel_token(),
            object: Some(object),
            tls,
            busy: Arc::new(tokio::sync::Mutex::new(())),
            broken: AtomicBool::new(false),
        })
    }
}

/// One pooled session, behind a component's `connection` resource.
pub struct PgConnection {
    object: Option<Object>,
    cancel: CancelToken,
    tls: Tls,
    /// One statement at a time (a streaming query holds it until its rows are read or dropped).
    busy: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled mid-statement or failed: closed on drop instead of going back to the pool.
    broken: AtomicBool,
}

/// A server error as Spin's `db-error`, any other as text.
fn query_failed(err: &tokio_postgres::Error) -> Error {
    let Some(db) = err.as_db_error() else {
        return Error::QueryFailed(QueryError::Text(chain(err)));
    };
    let mut extras = Vec::new();
    let mut extra = |name: &str, value: Option<&str>| {
        if let Some(value) = value {
            extras.push((name.to_string(), value.to_string()));
        }
    };
    extra("column", db.column());
    extra("constraint", db.constraint());
    extra("routine", db.routine());
    extra("hint", db.hint());
    extra("table", db.table());
    extra("datatype", db.datatype());
    extra("schema", db.schema());
    extra("file", db.file());
    extra("line", db.line().map(|l| l.to_string()).as_deref());
    extra("where_", db.where_());
    Error::QueryFailed(QueryError::DbError(DbError {
        as_text: format!("{err:?}"),
        severity: db.severity().to_string(),
        code: db.code().code().to_string(),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        extras,
    }))
}

fn deadline_passed() -> Error {
    Error::QueryFailed(QueryError::Text(
        "the statement was cancelled: the request's deadline is near".into(),
    ))
}

fn columns_of(statement: &tokio_postgres::Statement) -> Vec<Column> {
    statement
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_string(),
            data_type: types::data_type(c.type_()),
        })
        .collect()
}

fn decode_row(row: &tokio_postgres::Row) -> Result<Vec<DbValue>, Error> {
    (0..row.len())
        .map(|i| types::decode(row, i).map_err(|why| Error::QueryFailed(QueryError::Text(why))))
        .collect()
}

/// A running query's rows and how it ended.
pub struct RowFeed {
    pub columns: Vec<Column>,
    pub rows: mpsc::Receiver<Vec<DbValue>>,
    pub done: oneshot::Receiver<Result<(), Error>>,
}

impl PgConnection {
    fn client(&self) -> Result<&tokio_postgres::Client, Error> {
        match &self.object {
            Some(object) if !self.broken.load(Ordering::Relaxed) => Ok(object),
            _ => Err(Error::ConnectionFailed(
                "the connection was closed after a statement was cancelled or failed".into(),
            )),
        }
    }

    /// Asks the server to cancel the statement running on this session; returns once the
    /// server has the request (a backend that is idle by then ignores it).
    async fn cancel(&self) {
        let cancelled = match &self.tls {
            Tls::None => self.cancel.cancel_query(NoTls).await,
            Tls::Rustls(tls) => self.cancel.cancel_query(tls.clone()).await,
        };
        if let Err(err) = cancelled {
            tracing::debug!(error = %err, "PostgreSQL cancel request failed");
        }
    }

    /// Marks the session broken (it is closed on drop) and cancels what runs on it.
    fn abandon(self: &Arc<Self>) {
        self.broken.store(true, Ordering::Relaxed);
        let connection = self.clone();
        tokio::spawn(async move { connection.cancel().await });
    }

    /// Runs `work` when the session is free, until `deadline` (then cancels it).
    async fn run<T>(
        self: &Arc<Self>,
        deadline: Instant,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let bounded = async {
            let _turn = self.busy.lock().await;
            work.await
        };
        match tokio::time::timeout_at(deadline.into(), bounded).await {
            Ok(result) => result,
            Err(_) => {
                self.abandon();
                Err(deadline_passed())
            }
        }
    }

    /// `execute`: rows affected.
    pub async fn execute(
        self: &Arc<Self>,
        statement: &str,
        params: &[Param],
        deadline: Instant,
    ) -> Result<u64, Error> {
        let client = self.client()?;
        self.run(deadline, async {
            client
                .execute_raw(statement, params.iter())
                .await
                .map_err(|err| query_failed(&err))
        })
        .await
    }

    /// `query`: every row at once, at most [`MAX_RESULT_BYTES`].
    pub async fn query(
        self: &Arc<Self>,
        statement: &str,
        params: &[Param],
        deadline: Instant,
    ) -> Result<RowSet, Error> {
        let client = self.client()?;
        self.run(deadline, async {
            let prepared = client
                .prepare(statement)
                .await
                .map_err(|err| query_failed(&err))?;
            let columns = columns_of(&prepared);
            let stream = client
                .query_raw(&prepared, params.iter())
                .await
                .map_err(|err| query_failed(&err))?;
            let mut stream = std::pin::pin!(stream);
            let mut rows = Vec::new();
            let mut size = 0;
            while let Some(row) = stream.next().await {
                let row = decode_row(&row.map_err(|err| query_failed(&err))?)?;
                size += row.iter().map(types::size_of).sum::<usize>();
                if size > MAX_RESULT_BYTES {
                    return Err(Error::QueryFailed(QueryError::Text(format!(
                        "query result exceeds limit of {MAX_RESULT_BYTES} bytes"
                    ))));
                }
                rows.push(row);
            }
            Ok(RowSet { columns, rows })
        })
        .await
    }

    /// `query-async`: the columns now, the rows as the component reads them (a few ahead), the
    /// outcome at the end. Dropping the rows early cancels the statement.
    pub async fn query_stream(
        self: &Arc<Self>,
        statement: &str,
        params: Vec<Param>,
        deadline: Instant,
    ) -> Result<RowFeed, Error> {
        let client = self.client()?;
        let start = async {
            let turn = self.busy.clone().lock_owned().await;
            let prepared = client
                .prepare(statement)
                .await
                .map_err(|err| query_failed(&err))?;
            let stream = client
                .query_raw(&prepared, params.iter())
                .await
                .map_err(|err| query_failed(&err))?;
            Ok::<_, Error>((turn, columns_of(&prepared), stream))
        };
        let (turn, columns, stream) = match tokio::time::timeout_at(deadline.into(), start).await {
            Ok(started) => started?,
            Err(_) => {
                self.abandon();
                return Err(deadline_passed());
            }
        };
        let (rows_tx, rows) = mpsc::channel(ROWS_AHEAD);
        let (done_tx, done) = oneshot::channel();
        let connection = self.clone();
        tokio::spawn(async move {
            let _turn = turn;
            let mut stream = std::pin::pin!(stream);
            let outcome = loop {
                let next = tokio::select! {
                    biased;
                    _ = rows_tx.closed() => {
                        // The component stopped reading: stop the statement, and keep the
                        // session usable for its next one.
                        connection.stop_early(stream.as_mut(), deadline).await;
                        break Ok(());
                    }
                    next = tokio::time::timeout_at(deadline.into(), stream.next()) => next,
                };
                let row = match next {
                    Err(_) => {
                        connection.abandon();
                        break Err(deadline_passed());
                    }
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(err))) => break Err(query_failed(&err)),
                    Ok(Some(Ok(row))) => row,
                };
                let values = match decode_row(&row) {
                    Ok(values) => values,
                    Err(err) => break Err(err),
                };
                if rows_tx.send(values).await.is_err() {
                    connection.stop_early(stream.as_mut(), deadline).await;
                    break Ok(());
                }
            };
            let _ = done_tx.send(outcome);
        });
        Ok(RowFeed {
            columns,
            rows,
            done,
        })
    }
}

impl PgConnection {
    /// Cancels a statement whose rows the component no longer reads, then reads what the server
    /// still sends up to its end, so the next statement starts on a quiet session. A session
    /// that does not quiet down in time is closed instead.
    async fn stop_early(
        &self,
        mut stream: std::pin::Pin<&mut tokio_postgres::RowStream>,
        deadline: Instant,
    ) {
        self.cancel().await;
        let until = deadline.min(Instant::now() + RESET_TIMEOUT);
        let drained = tokio::time::timeout_at(until.into(), async {
            while let Some(row) = stream.next().await {
                if row.is_err() {
                    // The cancellation (or any error) ends the statement.
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        let Some(object) = self.object.take() else {
            return;
        };
        if self.broken.load(Ordering::Relaxed) {
            // Out of the pool, so the session closes instead of serving someone else.
            drop(Object::take(object));
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(Object::take(object));
            return;
        };
        runtime.spawn(async move {
            // A transaction the component left open ends here, not in the next user's request.
            let rollback = tokio::time::timeout(RESET_TIMEOUT, object.batch_execute("ROLLBACK"));
            if !matches!(rollback.await, Ok(Ok(()))) {
                drop(Object::take(object));
            }
        });
    }
}
