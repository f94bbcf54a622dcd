//! A channel's kept-alive connections to its gateway, over hyper's
//! connection API.
//!
//! One pool per channel, so no request needs more than this pool's lock
//! for a moment: HTTP/1.1 connections wait idle on a stack per origin
//! (most recently used first, the window's worth at most), and an HTTP/2
//! connection (where the gateway offered it through ALPN) is shared by
//! every request to its origin. hyper-util's general client did the same
//! with a task spawned per request to return its connection, the request's
//! URI taken apart and rebuilt and a pool keyed by cloned URI parts: a
//! tenth of a delivery's CPU on a channel at full rate.
//!
//! A connection is dropped when the gateway closes it, when it broke in an
//! exchange, or after `idle` without use (a task looks when the oldest
//! kept one's time runs out, while any are kept). A request that a reused connection did not take (the
//! gateway closed it while idle) goes once more on a new one; nothing else
//! is retried here, since the gateway may have acted on it.

use std::future::poll_fn;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::{Authority, Parts, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = Full<Bytes>;

/// A connection taken from the pool, or just opened.
pub(super) enum Conn {
    One(http1::SendRequest<Body>),
    Shared(http2::SendRequest<Body>),
}

/// Why an exchange failed.
pub(super) enum SendError {
    /// Opening the connection (TCP, TLS, the HTTP handshake).
    Connect(BoxError),
    /// The exchange itself; the gateway may have acted on the request.
    Request(hyper::Error),
}

struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// HTTP/1.1 connections waiting, with when each was last used; the
    /// most recent last.
    idle: Vec<(http1::SendRequest<Body>, Instant)>,
    /// The HTTP/2 connection every request to this origin shares.
    shared: Option<(http2::SendRequest<Body>, Instant)>,
}

impl Origin {
    fn is(&self, uri: &Uri) -> bool {
        uri.scheme() == Some(&self.scheme) && uri.authority() == Some(&self.authority)
    }

    /// Drops connections idle since before `cutoff` or closed.
    fn prune(&mut self, cutoff: Instant) {
        self.idle
            .retain(|(conn, used)| *used >= cutoff && !conn.is_closed());
        if self
            .shared
            .as_ref()
            .is_some_and(|(conn, used)| *used < cutoff || conn.is_closed())
        {
            self.shared = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.shared.is_none()
    }

    /// When the longest-unused connection kept here was last used.
    fn oldest(&self) -> Option<Instant> {
        // The stack holds the most recently used last.
        let waiting = self.idle.first().map(|(_, used)| *used);
        let shared = self.shared.as_ref().map(|(_, used)| *used);
        waiting.into_iter().chain(shared).min()
    }
}

/// How long the idle task waits before its next look: until the oldest
/// kept connection's `idle` runs out (so none stays open much past it),
/// at least an eighth of `idle` (so a pool in use is not looked at
/// over and over).
fn next_look(oldest: Option<Instant>, now: Instant, idle: Duration) -> Duration {
    match oldest {
        Some(used) => (used + idle).saturating_duration_since(now).max(idle / 8),
        None => idle,
    }
}

#[derive(Default)]
struct State {
    /// A channel's connector usually reaches one origin (sometimes a
    /// second for status queries): a short list.
    origins: Vec<Origin>,
    /// Whether the task that drops idle connections runs.
    reaping: bool,
}

impl State {
    /// `uri`'s origin, added if new (None: the URI names no origin).
    fn origin(&mut self, uri: &Uri) -> Option<&mut Origin> {
        let i = match self.origins.iter().position(|o| o.is(uri)) {
            Some(i) => i,
            None => {
                self.origins.push(Origin {
                    scheme: uri.scheme()?.clone(),
                    authority: uri.authority()?.clone(),
                    idle: Vec::new(),
                    shared: None,
                });
                self.origins.len() - 1
            }
        };
        Some(&mut self.origins[i])
    }
}

pub(super) struct Pool<C> {
    connector: C,
    /// HTTP/1.1 connections kept idle per origin at most.
    max_idle: usize,
    idle: Duration,
    state: Mutex<State>,
}

impl<C, S> Pool<C>
where
    C: Service<Uri, Response = S, Error = BoxError> + Clone + Send + Sync + 'static,
    C::Future: Send,
    S: hyper::rt::Read
        + hyper::rt::Write
        + hyper_util::client::legacy::connect::Connection
        + Send
        + Unpin
        + 'static,
{
    pub fn new(connector: C, max_idle: usize, idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            connector,
            max_idle: max_idle.max(1),
            idle,
            state: Mutex::default(),
        })
    }

    /// Sends `request` (absolute URI, no user information) on a kept
    /// connection to its origin, or on a new one, and answers the
    /// response's head; the caller reads its body, then gives an HTTP/1.1
    /// connection back with [`Pool::put`].
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        let uri = request.uri().clone();
        let mut conn = self.take(&uri).await;
        loop {
            let reused = conn.is_some();
            let mut c = match conn.take() {
                Some(c) => c,
                None => self.connect(&uri).await.map_err(SendError::Connect)?,
            };
            match c.try_send(request, &uri).await {
                Ok(response) => return Ok((response, c)),
                Err(mut e) => match e.take_message() {
                    // Not taken by a connection the gateway closed while
                    // it waited: once more, on a new one.
                    Some(mut unsent) if reused => {
                        *unsent.uri_mut() = uri.clone();
                        request = unsent;
                    }
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// A kept connection to `uri`'s origin, ready for a request.
    async fn take(self: &Arc<Self>, uri: &Uri) -> Option<Conn> {
        loop {
            let taken = {
                let mut state = self.state.lock();
                let origin = state.origins.iter_mut().find(|o| o.is(uri))?;
                let now = Instant::now();
                if let Some((shared, used)) = &mut origin.shared {
                    if !shared.is_closed() {
                        *used = now;
                        return Some(Conn::Shared(shared.clone()));
                    }
                    origin.shared = None;
                }
                let (conn, used) = origin.idle.pop()?;
                if now.duration_since(used) >= self.idle {
                    // The rest are older still.
                    origin.idle.clear();
                    return None;
                }
                conn
            };
            let mut conn = taken;
            // Ready once its last exchange is wholly done; an error means
            // the gateway closed it.
            if conn.ready().await.is_ok() {
                return Some(Conn::One(conn));
            }
        }
    }

    /// An HTTP/1.1 connection whose exchange is over (its response read to
    /// the end) waits for the next request.
    pub fn put(self: &Arc<Self>, uri: &Uri, conn: Conn) {
        let Conn::One(conn) = conn else { return };
        if conn.is_closed() {
            return;
        }
        let mut state = self.state.lock();
        match state.origin(uri) {
            Some(origin) if origin.idle.len() < self.max_idle => {
                origin.idle.push((conn, Instant::now()));
            }
            _ => return,
        }
        self.reap(&mut state);
    }

    /// Opens a connection to `uri`'s origin: HTTP/2 if the gateway chose it
    /// through ALPN (then kept for every request to share), else HTTP/1.1.
    async fn connect(self: &Arc<Self>, uri: &Uri) -> Result<Conn, BoxError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(uri.clone()).await?;
        if io.connected().is_negotiated_h2() {
            let (send, connection) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut state = self.state.lock();
            if let Some(origin) = state.origin(uri) {
                origin.shared = Some((send.clone(), Instant::now()));
                self.reap(&mut state);
            }
            Ok(Conn::Shared(send))
        } else {
            let (send, connection) = http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Conn::One(send))
        }
    }

    /// Starts the task that drops idle connections, unless it runs.
    fn reap(self: &Arc<Self>, state: &mut State) {
        if state.reaping {
            return;
        }
        state.reaping = true;
        let pool: Weak<Self> = Arc::downgrade(self);
        let mut wait = self.idle;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(wait).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut state = pool.state.lock();
                let cutoff = Instant::now().checked_sub(pool.idle);
                for origin in &mut state.origins {
                    match cutoff {
                        Some(cutoff) => origin.prune(cutoff),
                        None => origin.idle.retain(|(conn, _)| !conn.is_closed()),
                    }
                }
                state.origins.retain(|o| !o.is_empty());
                if state.origins.is_empty() {
                    state.reaping = false;
                    return;
                }
                let oldest = state.origins.iter().filter_map(Origin::oldest).min();
                wait = next_look(oldest, Instant::now(), pool.idle);
            }
        });
    }
}

impl Conn {
    /// Sends on this connection, in the form its protocol wants: over
    /// HTTP/1.1 the path alone and a `Host` header (unless the connector
    /// set one), over HTTP/2 the absolute URI.
    async fn try_send(
        &mut self,
        mut request: Request<Body>,
        uri: &Uri,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        match self {
            Conn::One(send) => {
                if !request.headers().contains_key(HOST)
                    && let Some(host) = host_header(uri)
                {
                    request.headers_mut().insert(HOST, host);
                }
                *request.uri_mut() = origin_form(uri);
                send.try_send_request(request).await
            }
            // Always ready while open; a closed one refuses the request
            // unsent.
            Conn::Shared(send) => send.try_send_request(request).await,
        }
    }
}

/// `host[:port]`, the port only when not the scheme's default.
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match uri.port_u16() {
        Some(port) if port != default => HeaderValue::try_from(format!("{host}:{port}")).ok(),
        _ => HeaderValue::from_str(host).ok(),
    }
}

/// The path and query alone, as HTTP/1.1 sends them to an origin server.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idle task looks again when the oldest kept connection's time
    /// runs out: a connection used just after a look is dropped `idle`
    /// after that use, not nearly two `idle`s later.
    #[test]
    fn the_next_look_comes_when_the_oldest_connection_runs_out() {
        let idle = Duration::from_millis(800);
        let now = Instant::now();
        let ago = |ms: u64| now - Duration::from_millis(ms);
        assert_eq!(
            next_look(Some(ago(100)), now, idle),
            Duration::from_millis(700)
        );
        assert_eq!(next_look(Some(ago(790)), now, idle), idle / 8);
        assert_eq!(next_look(Some(ago(5000)), now, idle), idle / 8);
        assert_eq!(next_look(None, now, idle), idle);
    }
}
