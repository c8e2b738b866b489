//! The ingestion listener's connection layer: every state a connection can
//! be in has a bound, whatever the client does, with or without a token.
//!
//! - **How many**: at most [`ConnLimits::max_connections`] at once, and
//!   [`ConnLimits::max_per_client`] from one address (workloads connect
//!   from their own pod addresses). A connection over either is answered
//!   503 with `Retry-After` and closed; the probe and metrics listeners are
//!   other servers with their own workers and are not counted.
//! - **The request head**: at most [`ConnLimits::head_bytes`] as a whole
//!   (answered 431 and closed beyond), complete within
//!   [`ConnLimits::head_timeout`] of its first byte.
//! - **Reading ahead**: nothing more is read from a client whose answers
//!   cannot be written, and at most [`PIPELINE`] requests or [`READ_AHEAD`]
//!   bytes are read ahead of the answers written.
//! - **Writing**: a client that stops reading its answers is closed after
//!   [`ConnLimits::write_timeout`]. actix-http 3.20 spins on a connection
//!   whose read buffer is full (128 KiB of pipelined requests) while its
//!   answers cannot be written (it wakes itself on every poll, see
//!   `read_available` in its `h1/dispatcher.rs`); such a connection is
//!   polled thousands of times without a byte written, and is closed after
//!   [`SPIN_POLLS`].
//! - Idle keep-alive connections are closed by actix after
//!   [`ConnLimits::keep_alive`].
//!
//! A body's size and time are bounded by the handlers (`body.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::framing::{Framing, FramingError};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::settings::ConnLimits;

/// Requests read ahead of the answers written on one connection.
pub const PIPELINE: usize = 8;
/// Bytes read ahead of the answers written, outside a body.
pub const READ_AHEAD: usize = 64 * 1024;
/// Polls of a connection whose answers cannot be written, without a byte
/// written, after which it is taken for spinning and closed. A connection
/// that waits is polled once per event (a timer, a handler finishing):
/// a few dozen times at most.
pub const SPIN_POLLS: u32 = 4096;
/// Refused connections answered at once; beyond this a refused connection
/// is closed without an answer.
const REFUSALS_ANSWERED: usize = 64;

/// Why a connection was refused or closed (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    TooManyConnections,
    TooManyFromClient,
    /// Counted when a request names the environment, not at accept.
    TooManyFromEnvironment,
    HeadTooLarge,
    HeadTimeout,
    WriteTimeout,
    Spinning,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::TooManyConnections => "max_connections",
            Reason::TooManyFromClient => "max_per_client",
            Reason::TooManyFromEnvironment => "max_per_environment",
            Reason::HeadTooLarge => "head_too_large",
            Reason::HeadTimeout => "head_timeout",
            Reason::WriteTimeout => "write_timeout",
            Reason::Spinning => "spinning",
        }
    }
}

/// Admits connections within the limits and counts them.
pub struct Gate {
    limits: ConnLimits,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// Connections by the environment whose token they carried first.
    per_environment: Mutex<HashMap<String, usize>>,
    answering: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Gate {
    pub fn new(limits: ConnLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            per_environment: Mutex::new(HashMap::new()),
            answering: AtomicUsize::new(0),
            metrics,
        })
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A ticket for a connection from `peer`, or why not.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Ticket, Reason> {
        let peer = peer.map(|ip| ip.to_canonical());
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Reason::TooManyConnections);
        }
        if let Some(ip) = peer {
            let mut clients = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let n = clients.entry(ip).or_insert(0);
            if *n >= self.limits.max_per_client {
                drop(clients);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Reason::TooManyFromClient);
            }
            *n += 1;
        }
        self.metrics.http_connections.inc();
        Ok(Ticket {
            gate: self.clone(),
            peer,
            tenant: Arc::new(Tenant {
                gate: self.clone(),
                environment: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Connections one environment may hold at once: a quarter of the
    /// total (at least one), whatever addresses they come from, so one
    /// tenant's pods cannot take every place.
    pub fn per_environment(&self) -> usize {
        (self.limits.max_connections / 4).max(1)
    }

    fn count(
        &self,
        family: &prometheus_client::metrics::family::Family<
            OutcomeLabels,
            prometheus_client::metrics::counter::Counter,
        >,
        reason: Reason,
    ) {
        family
            .get_or_create(&OutcomeLabels {
                outcome: reason.label().into(),
            })
            .inc();
    }

    /// Answers a refused connection 503 with `Retry-After` (after reading
    /// its request head, so the client reads the answer rather than a
    /// reset), then closes it; beyond [`REFUSALS_ANSWERED`] at once it is
    /// closed at once.
    pub fn refuse(self: &Arc<Self>, mut io: TcpStream, reason: Reason) {
        self.count(&self.metrics.http_connections_refused, reason);
        if self.answering.fetch_add(1, Ordering::AcqRel) >= REFUSALS_ANSWERED {
            self.answering.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let gate = self.clone();
        tokio::spawn(async move {
            let answer = async {
                let mut buf = [0u8; 4096];
                let mut seen = 0usize;
                let mut tail = [0u8; 4];
                // Up to the end of the head, 16 KiB or a second.
                while seen < 16 * 1024 {
                    let n = io.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    seen += n;
                    let joined: Vec<u8> = tail.iter().chain(&buf[..n]).copied().collect();
                    if joined.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                    let keep = joined.len().min(4);
                    tail = [0; 4];
                    tail[4 - keep..].copy_from_slice(&joined[joined.len() - keep..]);
                }
                io.write_all(&refusal(reason)).await?;
                io.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
            gate.answering.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// The 503 answer to a refused connection.
fn refusal(reason: Reason) -> Vec<u8> {
    let message = match reason {
        Reason::TooManyFromClient => "too many connections from this address; retry later",
        _ => "too many connections; retry later",
    };
    let body = serde_json::json!({"status": "unavailable", "message": message}).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The 431 answer to a head over the limit.
fn head_refusal(limit: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "status": "request header fields too large",
        "message": format!("the request head is larger than the limit of {limit} bytes"),
    })
    .to_string();
    format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One admitted connection; gives its place back when dropped.
pub struct Ticket {
    gate: Arc<Gate>,
    peer: Option<IpAddr>,
    tenant: Arc<Tenant>,
}

/// Which environment a connection belongs to: the first whose token it
/// carried. Each request can reach it (`HttpRequest::conn_data`).
pub struct Tenant {
    gate: Arc<Gate>,
    environment: std::sync::OnceLock<String>,
}

impl Tenant {
    /// Counts this connection for `environment` (once: the first token it
    /// carried decides); false when that environment already holds its
    /// share of connections, and this one should be closed.
    pub fn attribute(&self, environment: &str) -> bool {
        if self.environment.get().is_some() {
            return true;
        }
        let mut by_env = self
            .gate
            .per_environment
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = by_env.entry(environment.to_string()).or_insert(0);
        if *n >= self.gate.per_environment() {
            if *n == 0 {
                by_env.remove(environment);
            }
            drop(by_env);
            self.gate.count(
                &self.gate.metrics.http_connections_refused,
                Reason::TooManyFromEnvironment,
            );
            return false;
        }
        *n += 1;
        let _ = self.environment.set(environment.to_string());
        true
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        if let Some(env) = self.environment.get() {
            let mut by_env = self
                .gate
                .per_environment
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = by_env.get_mut(env) {
                *n -= 1;
                if *n == 0 {
                    by_env.remove(env);
                }
            }
        }
    }
}

impl Ticket {
    pub fn tenant(&self) -> Arc<Tenant> {
        self.tenant.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(ip) = self.peer {
            let mut clients = self
                .gate
                .per_client
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = clients.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    clients.remove(&ip);
                }
            }
        }
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        self.gate.metrics.http_connections.dec();
    }
}

/// A connection within its bounds: what actix-http reads from and writes to.
pub struct Guarded {
    io: TcpStream,
    ticket: Ticket,
    framing: Framing,
    /// Whether the last write found the socket full.
    write_blocked: bool,
    /// Polls of a write since the last byte written.
    stalled_polls: u32,
    stall_timer: Option<Pin<Box<Sleep>>>,
    head_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes and request heads read since the last byte written.
    ahead_bytes: usize,
    ahead_heads: usize,
    /// The reader paused for reading ahead, woken when a byte is written.
    paused: Option<Waker>,
    written_any: bool,
}

impl Guarded {
    /// The connection's environment, for its requests.
    pub fn tenant(&self) -> Arc<Tenant> {
        self.ticket.tenant()
    }

    pub fn new(io: TcpStream, ticket: Ticket) -> Self {
        let head_bytes = ticket.gate.limits.head_bytes;
        Self {
            io,
            ticket,
            framing: Framing::new(head_bytes),
            write_blocked: false,
            stalled_polls: 0,
            stall_timer: None,
            head_timer: None,
            ahead_bytes: 0,
            ahead_heads: 0,
            paused: None,
            written_any: false,
        }
    }

    fn close(&self, reason: Reason) -> io::Error {
        let gate = &self.ticket.gate;
        gate.count(&gate.metrics.http_connections_closed, reason);
        let kind = match reason {
            Reason::HeadTooLarge => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, reason.label())
    }

    fn wrote(&mut self) {
        self.written_any = true;
        self.write_blocked = false;
        self.stalled_polls = 0;
        self.stall_timer = None;
        self.ahead_bytes = 0;
        self.ahead_heads = 0;
        if let Some(w) = self.paused.take() {
            w.wake();
        }
    }

    fn read_ahead_full(&self) -> bool {
        self.framing.in_head()
            && (self.ahead_heads >= PIPELINE
                || self.ahead_bytes >= READ_AHEAD.max(2 * self.ticket.gate.limits.head_bytes))
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_blocked {
            // Read nothing more until the client takes its answers.
            match this.io.poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => this.write_blocked = false,
            }
        }
        if this.read_ahead_full() {
            this.paused = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(timer) = this.head_timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(this.close(Reason::HeadTimeout)));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let new = &buf.filled()[before..];
        if new.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let n = new.len();
        match this.framing.feed(new) {
            Err(FramingError::HeadTooLarge) => {
                if !this.written_any {
                    // Best effort: the first request's answer, if the
                    // socket takes it now; the connection closes either way.
                    let _ = this
                        .io
                        .try_write(&head_refusal(this.ticket.gate.limits.head_bytes));
                }
                Poll::Ready(Err(this.close(Reason::HeadTooLarge)))
            }
            Ok(fed) => {
                this.ahead_bytes += n;
                this.ahead_heads += fed.heads;
                if !this.framing.head_begun() {
                    this.head_timer = None;
                } else if fed.heads > 0 || this.head_timer.is_none() {
                    let deadline = this.ticket.gate.limits.head_timeout;
                    this.head_timer = Some(Box::pin(tokio::time::sleep(deadline)));
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.wrote();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.write_blocked = true;
                this.stalled_polls += 1;
                if this.stalled_polls > SPIN_POLLS {
                    return Poll::Ready(Err(this.close(Reason::Spinning)));
                }
                let timeout = this.ticket.gate.limits.write_timeout;
                let timer = this
                    .stall_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(this.close(Reason::WriteTimeout)));
                }
                Poll::Pending
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
