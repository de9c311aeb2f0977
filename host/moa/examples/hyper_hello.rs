//! A bare hyper hello server (no wasm), the upper bound in `scripts/bench-http.sh`.
//! Same hyper/tokio set-up as moa's HTTP trigger: `hyper_hello 127.0.0.1:PORT`.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("Serving http://{}", listener.local_addr()?);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn(|_request| async {
            let mut response =
                http::Response::new(Full::new(Bytes::from_static(b"Hello from hyper\n")));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            Ok::<_, std::convert::Infallible>(response)
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(connection);
    }
}
