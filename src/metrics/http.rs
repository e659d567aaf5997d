//! The metrics HTTP endpoint (`--metrics-listen IP:PORT`): `GET /metrics`
//! (OpenMetrics text, what prometheus-client encodes; Prometheus scrapes it), `GET /health` (200 while no shard thread
//! has ended, else 503) and `GET /ready` (200 once start-up is over, 503
//! before and during shutdown).
//!
//! A blocking server on one thread of its own, never a shard's: one
//! connection at a time (scrapers are few), `Connection: close`, the request
//! head bounded to [`MAX_HEAD`] bytes and [`IO_TIMEOUT`] per read and write,
//! so a client that sends slowly or never reads holds it for at most a few
//! seconds. The request line and headers are parsed by `httparse`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Health, Reports};

/// The largest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Per read or write, and the whole request head.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `listener` until `stop` is set (checked at least every 200 ms).
pub fn serve(listener: TcpListener, reports: Reports, health: Arc<Health>, stop: Arc<AtomicBool>) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!("metrics endpoint: {e}; not serving");
        return;
    }
    crate::shard::control::accept_loop(
        "metrics endpoint",
        &stop,
        || listener.accept().map(|(s, _)| s),
        |s| answer(s, &reports, &health),
    );
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// `GET /health`.
    Health,
    /// `GET /ready`.
    Ready,
    /// Another path.
    NotFound,
    /// Another method.
    BadMethod,
    /// Not HTTP/1.x.
    Bad,
}

/// Parses a complete request head; `None` while it is incomplete.
pub fn route(head: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Route::Bad),
        Ok(httparse::Status::Complete(_)) => {
            if req.method != Some("GET") && req.method != Some("HEAD") {
                return Some(Route::BadMethod);
            }
            let path = req.path.unwrap_or("");
            let path = path.split('?').next().unwrap_or(path);
            Some(match path {
                "/metrics" => Route::Metrics,
                "/health" | "/healthz" => Route::Health,
                "/ready" | "/readyz" => Route::Ready,
                _ => Route::NotFound,
            })
        }
    }
}

fn answer(mut s: TcpStream, reports: &Reports, health: &Health) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let start = Instant::now();
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let r = loop {
        if let Some(r) = route(&head) {
            break r;
        }
        if head.len() >= MAX_HEAD {
            break Route::Bad;
        }
        if start.elapsed() > IO_TIMEOUT {
            return Ok(());
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    };
    let (status, ctype, body) = match r {
        Route::Metrics => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            reports.render(),
        ),
        Route::Health if health.healthy() => ("200 OK", "text/plain", "ok\n".to_owned()),
        Route::Health => (
            "503 Service Unavailable",
            "text/plain",
            "a shard stopped\n".to_owned(),
        ),
        Route::Ready if health.is_ready() => ("200 OK", "text/plain", "ready\n".to_owned()),
        Route::Ready => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_owned(),
        ),
        Route::NotFound => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /health or /ready\n".to_owned(),
        ),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
        Route::Bad => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
    };
    let allow = if r == Route::BadMethod {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let is_head = head.starts_with(b"HEAD ");
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !is_head {
        out.extend_from_slice(body.as_bytes());
    }
    s.write_all(&out)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(route(b"HEAD /health HTTP/1.1\r\n\r\n"), Some(Route::Health));
        assert_eq!(route(b"GET /ready HTTP/1.1\r\n\r\n"), Some(Route::Ready));
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::BadMethod)
        );
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost"), None);
        assert_eq!(
            route(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Some(Route::Bad)
        );
    }
}
