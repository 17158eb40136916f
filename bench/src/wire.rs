//! Round trips counted at the server's door: a loopback TCP proxy in front of
//! PostgreSQL that reads the frontend protocol the client sends.
//!
//! A round trip is a *flight*: everything the client sends between two
//! answers of the server, when it expects an answer (a flight made only of
//! Terminate does not). Pipelined messages (several prepares, each with its
//! Sync, sent at once) are one flight, as they cost one wait. This sees what
//! the server's statement log and `pg_stat_statements` cannot: a bare Sync
//! (sqlx's ping), an empty query (deadpool's `Verified` check), and each
//! step of the startup and SCRAM exchange.
//!
//! The proxy adds a hop to every round trip, so the latency figures come from
//! contenders connected to the server directly; only the counting pass goes
//! through it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// `SSLRequest` and `GSSENCRequest`: answered with one byte, before the startup message.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];
const CANCEL_REQUEST: u32 = 80_877_102;
const TERMINATE: u8 = b'X';

/// What the proxy has seen so far, all connections together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WireCounts {
    /// Flights the server had to answer (see the module docs).
    pub(crate) round_trips: u64,
    /// Startup messages: sessions opened.
    pub(crate) connections: u64,
    /// Terminate messages: sessions closed cleanly.
    pub(crate) terminates: u64,
}

impl WireCounts {
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            round_trips: self.round_trips - earlier.round_trips,
            connections: self.connections - earlier.connections,
            terminates: self.terminates - earlier.terminates,
        }
    }
}

#[derive(Default)]
struct Counters {
    round_trips: AtomicU64,
    connections: AtomicU64,
    terminates: AtomicU64,
}

/// The proxy; stops (with every connection through it) when dropped.
pub(crate) struct CountingProxy {
    port: u16,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target_port`.
    pub(crate) async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the counting proxy on 127.0.0.1:0");
        let port = listener.local_addr().expect("counting proxy address").port();
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(listener, target_port, counters.clone()));
        Self { port, counters, accept }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn counts(&self) -> WireCounts {
        WireCounts {
            round_trips: self.counters.round_trips.load(Ordering::SeqCst),
            connections: self.counters.connections.load(Ordering::SeqCst),
            terminates: self.counters.terminates.load(Ordering::SeqCst),
        }
    }
}

async fn accept_loop(listener: TcpListener, target_port: u16, counters: Arc<Counters>) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(forward(client, target_port, counters.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Whose turn it is on one connection, and whether the client's current
/// flight has been counted.
#[derive(Default)]
struct Turn {
    client_sending: bool,
    counted: bool,
}

async fn forward(client: TcpStream, target_port: u16, counters: Arc<Counters>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let turn = Arc::new(Mutex::new(Turn::default()));

    let upstream = {
        let turn = turn.clone();
        async move {
            let mut parser = Parser::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                {
                    let mut turn = turn.lock().unwrap_or_else(PoisonError::into_inner);
                    if !turn.client_sending {
                        *turn = Turn { client_sending: true, counted: false };
                    }
                    parser.feed(&buf[..n], |message| {
                        match message {
                            Message::Startup => bump(&counters.connections),
                            Message::Typed(TERMINATE) => bump(&counters.terminates),
                            _ => {}
                        }
                        if message.expects_answer() && !turn.counted {
                            turn.counted = true;
                            bump(&counters.round_trips);
                        }
                    });
                }
                if server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = server_write.shutdown().await;
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            turn.lock().unwrap_or_else(PoisonError::into_inner).client_sending = false;
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// A frontend message, as far as counting needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    /// SSLRequest or GSSENCRequest.
    EncryptionRequest,
    Startup,
    Cancel,
    /// A message with a type byte (`Q`, `P`, `B`, `E`, `S`, `p`, `X`, …).
    Typed(u8),
}

impl Message {
    fn expects_answer(self) -> bool {
        // A cancel request goes on a connection of its own that the server just closes.
        !matches!(self, Message::Typed(TERMINATE) | Message::Cancel)
    }
}

/// Splits the client's byte stream into messages: untyped (length, code) until
/// the startup message, then (type byte, length, body).
#[derive(Default)]
struct Parser {
    pending: Vec<u8>,
    started: bool,
}

impl Parser {
    fn feed(&mut self, data: &[u8], mut on_message: impl FnMut(Message)) {
        self.pending.extend_from_slice(data);
        let mut at = 0;
        loop {
            let rest = &self.pending[at..];
            let (header, message) = if self.started {
                if rest.len() < 5 {
                    break;
                }
                (1, Message::Typed(rest[0]))
            } else {
                if rest.len() < 8 {
                    break;
                }
                let code = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
                let message = match code {
                    c if ENCRYPTION_REQUESTS.contains(&c) => Message::EncryptionRequest,
                    CANCEL_REQUEST => Message::Cancel,
                    _ => Message::Startup,
                };
                (0, message)
            };
            let length = u32::from_be_bytes([rest[header], rest[header + 1], rest[header + 2], rest[header + 3]]);
            let total = header + length as usize;
            if rest.len() < total {
                break;
            }
            at += total;
            if message == Message::Startup {
                self.started = true;
            }
            on_message(message);
        }
        self.pending.drain(..at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn untyped(code: u32, body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32 + 8).to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn splits_startup_then_typed_messages_across_reads() {
        let mut stream = untyped(80_877_103, b"");
        stream.extend(untyped(196_608, b"user\0app\0\0"));
        stream.extend(typed(b'p', b"SCRAM"));
        stream.extend(typed(b'P', b"\0SELECT 1\0\0\0"));
        stream.extend(typed(b'S', b""));
        stream.extend(typed(b'X', b""));
        let mut parser = Parser::default();
        let mut seen = Vec::new();
        for chunk in stream.chunks(3) {
            parser.feed(chunk, |m| seen.push(m));
        }
        assert_eq!(
            seen,
            [
                Message::EncryptionRequest,
                Message::Startup,
                Message::Typed(b'p'),
                Message::Typed(b'P'),
                Message::Typed(b'S'),
                Message::Typed(b'X')
            ]
        );
        assert!(parser.pending.is_empty());
    }
}
