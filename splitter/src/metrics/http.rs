//! The metrics endpoint: `GET /metrics` (and `HEAD`) over HTTP/1.1 with keep-alive, served by
//! hyper. `Accept: application/openmetrics-text` gets OpenMetrics text, anything else the
//! Prometheus text format 0.0.4.
//!
//! Bounded: at most `max_connections` at once (at the cap the oldest is closed), a request
//! head must arrive within [`HEADER_TIMEOUT`], a connection lives at most `timeout` × 10
//! (a client that stops reading its answer cannot hold a task forever), accept errors back
//! off, and the log lines about all this are rate-limited.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{Format, Metrics};
use crate::control::{
    limits::{AcceptBackoff, ConnectionSlots},
    protocol::StatusReport,
};

/// A client that has not sent a whole request head within this is disconnected (idle
/// keep-alive connections included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the endpoint gets the snapshot it encodes (the daemon implements it); the endpoint
/// knows nothing else of the daemon.
pub trait SnapshotSource: Send + Sync + 'static {
    type Error: std::fmt::Display;

    fn snapshot(&self) -> impl Future<Output = Result<StatusReport, Self::Error>> + Send;
}

/// Binds the metrics endpoint.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(address).await
}

/// How many connections and how long a request may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub timeout: Duration,
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve<S: SnapshotSource>(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    source: Arc<S>,
    limits: Limits,
) {
    const WHAT: &str = "metrics";
    let slots = ConnectionSlots::new(WHAT, limits.max_connections);
    let mut backoff = AcceptBackoff::default();
    let lifetime = limits.timeout * 10;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.success(WHAT);
                stream
            }
            Err(error) => {
                backoff.failure(WHAT, &error).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let source = source.clone();
        slots.spawn(async move {
            let service = service_fn(move |request| {
                let metrics = metrics.clone();
                let source = source.clone();
                async move { Ok::<_, Infallible>(answer(&request, &metrics, &*source).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT.min(lifetime))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(lifetime, connection).await;
        });
    }
}

async fn answer<B, S: SnapshotSource>(
    request: &Request<B>,
    metrics: &Metrics,
    source: &S,
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "metrics are at GET /metrics\n".to_owned(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned());
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let format = negotiate(request.headers().get(ACCEPT));
    match source.snapshot().await {
        Ok(report) => {
            let mut response =
                Response::new(Full::new(Bytes::from(metrics.render_as(report, format))));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            response
        }
        Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
    }
}

/// OpenMetrics when the client lists it (Prometheus does, first, when it can read it).
fn negotiate(accept: Option<&HeaderValue>) -> Format {
    let wants_openmetrics = accept
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let refused = parts.any(|parameter| {
                    parameter
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
    if wants_openmetrics {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_negotiation() {
        for (accept, expected) in [
            (None, Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain;version=0.0.4"), Format::Prometheus),
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            (
                Some("application/openmetrics-text; q=0"),
                Format::Prometheus,
            ),
        ] {
            let header = accept.map(HeaderValue::from_static);
            assert_eq!(negotiate(header.as_ref()), expected, "{accept:?}");
        }
    }
}
