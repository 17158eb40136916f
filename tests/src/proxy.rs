//! Fault-injecting TCP proxy.
//!
//! A [`FaultProxy`] listens on a loopback port and forwards every connection it accepts to
//! one upstream address (normally a throwaway [`Postgres`](crate::Postgres)), so tests can
//! break a client's connection in ways a real server cannot:
//! - silence ([`FaultProxy::silence_all`]): nothing is forwarded any more but both sockets
//!   stay open, a half-open peer like a connection across a Lambda freeze;
//! - reset ([`FaultProxy::reset_all`]): the client side is closed with a TCP RST;
//! - a cut at a precise protocol moment ([`FaultProxy::cut_after_server_sends`],
//!   [`FaultProxy::cut_when_client_sends`]): e.g. the server has committed but the client
//!   never hears the answer;
//! - a stall at a precise protocol moment ([`FaultProxy::stall_after_server_sends`],
//!   [`FaultProxy::stall_when_client_sends`]): e.g. mid-TLS-handshake or mid-SCRAM, the
//!   connection silenced from then on;
//! - a black hole ([`FaultProxy::black_hole_new`]): new connections are accepted and then
//!   hear nothing, like a server that accepts TCP and stays silent.
//!
//! It owns the listener, the accept task and, per proxied connection, two pump tasks (one
//! per direction) that share the connection's state. Faults apply to the connections open
//! when they are injected; connections made afterwards work normally. Dropping the proxy
//! stops accepting and closes every proxied connection.
//!
//! Connect through it with [`FaultProxy::url_for`] (`tokio_postgres::Config::port` adds a
//! port rather than replacing it, so a [`Config`](tokio_postgres::Config) from
//! [`Postgres::app_config`](crate::Postgres::app_config) cannot simply be re-pointed).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::watch,
    task::JoinHandle,
};

use crate::Postgres;

/// Longest pattern the cut triggers accept: the pumps keep this many bytes minus one of
/// the previous chunks to find a pattern that straddles two reads.
pub const MAX_PATTERN_LEN: usize = 1024;

const BUFFER_SIZE: usize = 16 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// What a proxied connection does; shared by its two pumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Forwarding both ways.
    Open,
    /// Forwarding nothing, both sockets kept open.
    Silenced,
    /// Closing: RST toward the client, upstream closed.
    Reset,
    /// Closing normally (FIN both ways).
    Closed,
}

impl State {
    fn is_closing(self) -> bool {
        matches!(self, State::Reset | State::Closed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

/// The armed one-shot cut or stall.
#[derive(Debug)]
struct Trigger {
    direction: Direction,
    pattern: Vec<u8>,
    action: Action,
}

/// What an armed trigger does to the connection it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Reset it.
    Cut,
    /// Silence it, sockets kept open.
    Stall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutStatus {
    Idle,
    Armed,
    Fired,
}

/// State shared by the proxy handle, the accept task and the pumps.
#[derive(Debug)]
struct Shared {
    /// Where new connections go; [`FaultProxy::set_upstream`] moves it.
    upstream: Mutex<SocketAddr>,
    next_id: AtomicU64,
    accepted: AtomicUsize,
    /// Open proxied connections by id.
    connections: Mutex<HashMap<u64, (Instant, watch::Sender<State>)>>,
    /// Number of entries in `connections`, to wait on.
    open: watch::Sender<usize>,
    trigger: Mutex<Option<Trigger>>,
    cut: watch::Sender<CutStatus>,
    /// New connections start silenced.
    black_hole: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<u64, (Instant, watch::Sender<State>)>> {
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn trigger(&self) -> MutexGuard<'_, Option<Trigger>> {
        self.trigger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn register(self: &Arc<Self>) -> Arc<Link> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let initial = if self.black_hole.load(Ordering::SeqCst) { State::Silenced } else { State::Open };
        let (state, _) = watch::channel(initial);
        let mut connections = self.connections();
        connections.insert(id, (Instant::now(), state.clone()));
        self.open.send_replace(connections.len());
        Arc::new(Link { id, state, shared: Arc::clone(self) })
    }

    /// Move every open connection whose state is in `from` to `to`; returns how many moved.
    fn transition_all(&self, from: &[State], to: State) -> usize {
        self.transition_older(Duration::ZERO, from, to)
    }

    fn transition_older(&self, age: Duration, from: &[State], to: State) -> usize {
        self.connections()
            .values()
            .filter(|(opened, state)| opened.elapsed() >= age && transition(state, from, to))
            .count()
    }

    fn arm(&self, direction: Direction, pattern: &[u8], action: Action) {
        assert!(!pattern.is_empty(), "cut pattern must not be empty");
        assert!(pattern.len() <= MAX_PATTERN_LEN, "cut pattern longer than {MAX_PATTERN_LEN} bytes");
        *self.trigger() = Some(Trigger { direction, pattern: pattern.to_vec(), action });
        self.cut.send_replace(CutStatus::Armed);
    }

    /// Whether the armed trigger matches `chunk` (read in `direction`, after `tail`); a
    /// match disarms it. The match must include at least one byte of `chunk`.
    fn take_trigger(&self, direction: Direction, tail: &[u8], chunk: &[u8]) -> Option<Action> {
        let mut armed = self.trigger();
        let trigger = armed.as_ref().filter(|t| t.direction == direction)?;
        let action = trigger.action;
        let pattern = trigger.pattern.as_slice();
        let carried = &tail[tail.len() - tail.len().min(pattern.len() - 1)..];
        let found =
            if carried.is_empty() { contains(chunk, pattern) } else { contains(&[carried, chunk].concat(), pattern) };
        if found {
            *armed = None;
        }
        found.then_some(action)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Set `state` to `to` if it currently is one of `from`.
fn transition(state: &watch::Sender<State>, from: &[State], to: State) -> bool {
    state.send_if_modified(|current| {
        let moves = *current != to && from.contains(current);
        if moves {
            *current = to;
        }
        moves
    })
}

/// One proxied connection, held by both of its pumps; unregisters when both are done.
#[derive(Debug)]
struct Link {
    id: u64,
    state: watch::Sender<State>,
    shared: Arc<Shared>,
}

impl Link {
    /// Start closing (unless already closing).
    fn close(&self, how: State) {
        transition(&self.state, &[State::Open, State::Silenced], how);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let mut connections = self.shared.connections();
        connections.remove(&self.id);
        self.shared.open.send_replace(connections.len());
    }
}

/// A loopback TCP proxy in front of one upstream server; see the [module docs](self).
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream())
            .field("connections", &self.connections())
            .field("accepted", &self.accepted())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Listen on `127.0.0.1:0` and forward every accepted connection to `upstream` (a new
    /// upstream connection per client). The accept task runs until the proxy is dropped.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind fault proxy listener on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr of fault proxy listener");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            next_id: AtomicU64::new(0),
            accepted: AtomicUsize::new(0),
            connections: Mutex::new(HashMap::new()),
            open: watch::Sender::new(0),
            trigger: Mutex::new(None),
            cut: watch::Sender::new(CutStatus::Idle),
            black_hole: std::sync::atomic::AtomicBool::new(false),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultProxy { addr, shared, accept_task }
    }

    /// A proxy in front of `pg`'s TCP port.
    pub async fn for_postgres(pg: &Postgres) -> FaultProxy {
        Self::start(SocketAddr::from((Ipv4Addr::LOCALHOST, pg.port()))).await
    }

    /// Port the proxy listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Address new connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        *self.shared.upstream.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forward connections made from now on to `upstream`; open ones stay
    /// where they are (as DNS moving to a new writer after a failover).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = upstream;
    }

    /// `database_url` with its port replaced by (or, without one, set to) the proxy's
    /// port: `postgres://app:pw@127.0.0.1:5432/app` → `postgres://app:pw@127.0.0.1:<port>/app`.
    /// Single-host URLs only.
    pub fn url_for(&self, database_url: &str) -> String {
        let scheme_end = database_url.find("://").expect("database URL has a scheme, like `postgres://`") + 3;
        let rest = &database_url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let host_start = authority.rfind('@').map_or(0, |at| at + 1);
        let host_port = &authority[host_start..];
        // The port follows the last ':' unless that is inside an IPv6 literal (`[::1]`).
        let host = match host_port.rfind(':') {
            Some(colon) if !host_port[colon..].contains(']') => &host_port[..colon],
            _ => host_port,
        };
        format!(
            "{}{}{host}:{}{}",
            &database_url[..scheme_end],
            &authority[..host_start],
            self.port(),
            &rest[authority_end..]
        )
    }

    /// Proxied connections currently open (including silenced ones).
    pub fn connections(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Wait until exactly `n` proxied connections are open; false on timeout.
    pub async fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        let mut open = self.shared.open.subscribe();
        let reached = tokio::time::timeout(timeout, open.wait_for(|&open| open == n)).await.is_ok_and(|r| r.is_ok());
        reached
    }

    /// Stop forwarding, in both directions, on every connection open now, keeping both of
    /// its sockets open: the client's requests reach nobody and nothing comes back (a
    /// half-open peer). Connections made afterwards work normally. Returns how many
    /// connections were silenced. Undo with [`FaultProxy::resume_silenced`] or
    /// [`FaultProxy::release_silenced`].
    pub fn silence_all(&self) -> usize {
        self.shared.transition_all(&[State::Open], State::Silenced)
    }

    /// Resume forwarding on the silenced connections (bytes sent meanwhile are delivered
    /// then); returns how many.
    pub fn resume_silenced(&self) -> usize {
        self.shared.transition_all(&[State::Silenced], State::Open)
    }

    /// Close the silenced connections like [`FaultProxy::reset_all`] (RST toward the
    /// client, upstream closed); returns how many.
    pub fn release_silenced(&self) -> usize {
        self.shared.transition_all(&[State::Silenced], State::Reset)
    }

    /// Close every connection open now abruptly: a TCP RST toward the client (`SO_LINGER`
    /// 0), and the upstream side closed. Returns how many connections were reset.
    pub fn reset_all(&self) -> usize {
        self.shared.transition_all(&[State::Open, State::Silenced], State::Reset)
    }

    /// As [`FaultProxy::reset_all`], for the connections open for at least
    /// `age`: the pooled ones, not a short-lived cancel request in flight
    /// (whose loss PgBouncer 1.18 does not survive, pgbouncer#801).
    pub fn reset_older_than(&self, age: Duration) -> usize {
        self.shared.transition_older(age, &[State::Open, State::Silenced], State::Reset)
    }

    /// Arm a one-shot cut (replacing any armed one): the first chunk coming from the
    /// server, on any connection, that contains `pattern` (also across two reads) is not
    /// forwarded, nor anything after it; the client side is reset (RST) and the upstream
    /// side closed. So the server has done the work (e.g. committed) but the client never
    /// hears the answer. Typical patterns are CommandComplete tags: `b"INSERT 0 1"`,
    /// `b"COMMIT"`. See [`FaultProxy::wait_cut`].
    pub fn cut_after_server_sends(&self, pattern: &[u8]) {
        self.shared.arm(Direction::ServerToClient, pattern, Action::Cut);
    }

    /// Arm a one-shot cut (replacing any armed one): the first chunk coming from the
    /// client that contains `pattern` (also across two reads) is forwarded to the server,
    /// then the client side is reset (RST) and the upstream side closed, so nothing the
    /// server answers reaches the client. See [`FaultProxy::wait_cut`].
    pub fn cut_when_client_sends(&self, pattern: &[u8]) {
        self.shared.arm(Direction::ClientToServer, pattern, Action::Cut);
    }

    /// Arm a one-shot stall (replacing any armed trigger): the first chunk coming from the
    /// server that contains `pattern` (also across two reads) is not forwarded, and the
    /// connection is silenced from then on, both sockets kept open: the client waits for
    /// an answer that never comes. E.g. the ServerHello of a TLS handshake, or the
    /// server's SCRAM challenge. See [`FaultProxy::wait_cut`]; end it with
    /// [`FaultProxy::release_silenced`] (resuming would lose the withheld chunk).
    pub fn stall_after_server_sends(&self, pattern: &[u8]) {
        self.shared.arm(Direction::ServerToClient, pattern, Action::Stall);
    }

    /// Arm a one-shot stall (replacing any armed trigger): the first chunk coming from the
    /// client that contains `pattern` is forwarded to the server, then the connection is
    /// silenced, both sockets kept open, so nothing the server answers reaches the client.
    /// See [`FaultProxy::wait_cut`].
    pub fn stall_when_client_sends(&self, pattern: &[u8]) {
        self.shared.arm(Direction::ClientToServer, pattern, Action::Stall);
    }

    /// While `on`, connections accepted are silenced from the start: the client's TCP
    /// connect succeeds, and then nothing is forwarded either way (a server that accepts
    /// and stays silent, or a black-holed route behind a load balancer). Connections open
    /// before are not affected. End it with `black_hole_new(false)` and
    /// [`FaultProxy::release_silenced`].
    pub fn black_hole_new(&self, on: bool) {
        self.shared.black_hole.store(on, Ordering::SeqCst);
    }

    /// Wait until the trigger armed last fired; false on timeout (or if none was armed).
    pub async fn wait_cut(&self, timeout: Duration) -> bool {
        let mut cut = self.shared.cut.subscribe();
        let fired =
            tokio::time::timeout(timeout, cut.wait_for(|&s| s == CutStatus::Fired)).await.is_ok_and(|r| r.is_ok());
        fired
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.shared.transition_all(&[State::Open, State::Silenced], State::Closed);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let link = shared.register();
                tokio::spawn(connect_and_pump(client, link));
            }
            Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
        }
    }
}

/// Connect upstream, then run the client-to-server pump on a new task and the
/// server-to-client pump on this one.
async fn connect_and_pump(client: TcpStream, link: Arc<Link>) {
    let target = *link.shared.upstream.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let upstream = match TcpStream::connect(target).await {
        Ok(upstream) => upstream,
        Err(_) => {
            // Refuse the client the way an unreachable server would.
            let _ = client.set_zero_linger();
            drop(client);
            return;
        }
    };
    // Small protocol messages: forward them without Nagle delays.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::spawn(pump(client_read, upstream_write, Direction::ClientToServer, Arc::clone(&link)));
    pump(upstream_read, client_write, Direction::ServerToClient, link).await;
}

/// How a pump ended.
enum End {
    /// Its source closed (FIN): pass the close on, leave the other direction running.
    Eof,
    /// The connection is being reset.
    Reset,
    /// The connection is being closed, or a read/write failed.
    Closed,
}

/// Forward `from` to `to` until the source closes or the connection's state says stop.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, direction: Direction, link: Arc<Link>) {
    let mut state = link.state.subscribe();
    let mut buf = vec![0; BUFFER_SIZE];
    // Bytes read into `buf` and not yet forwarded.
    let mut pending = 0;
    // The end of what was read before, to match cut patterns across reads.
    let mut tail = Vec::with_capacity(MAX_PATTERN_LEN);
    let mut cut = false;

    let end = loop {
        let current = *state.borrow_and_update();
        match current {
            State::Reset => break End::Reset,
            State::Closed => break End::Closed,
            State::Silenced => {
                // Read nothing and forward nothing until resumed or closed.
                if state.changed().await.is_err() {
                    break End::Closed;
                }
                continue;
            }
            State::Open => {}
        }

        if pending > 0 {
            let n = std::mem::take(&mut pending);
            let written = tokio::select! {
                biased;
                // A peer that does not read must not keep a reset connection alive.
                _ = state.wait_for(|s| s.is_closing()) => continue,
                written = to.write_all(&buf[..n]) => written,
            };
            if written.is_err() {
                link.close(State::Closed);
                break End::Closed;
            }
            continue;
        }

        let n = tokio::select! {
            biased;
            _ = state.changed() => continue,
            read = from.read(&mut buf) => match read {
                Ok(0) => break End::Eof,
                Ok(n) => n,
                Err(_) => {
                    link.close(State::Closed);
                    break End::Closed;
                }
            },
        };

        let action = link.shared.take_trigger(direction, &tail, &buf[..n]);
        if action == Some(Action::Stall) {
            if direction == Direction::ClientToServer {
                // The server must receive what triggered the stall.
                let _ = to.write_all(&buf[..n]).await;
                let _ = to.flush().await;
            }
            transition(&link.state, &[State::Open], State::Silenced);
            link.shared.cut.send_replace(CutStatus::Fired);
            continue;
        }
        if action == Some(Action::Cut) {
            // Stop the other pump before the server can answer anything more.
            link.close(State::Reset);
            if direction == Direction::ClientToServer {
                // The server must receive what triggered the cut.
                let _ = to.write_all(&buf[..n]).await;
                let _ = to.flush().await;
            }
            cut = true;
            break End::Reset;
        }
        remember_tail(&mut tail, &buf[..n]);
        pending = n;
    };

    match end {
        End::Eof => {
            let _ = to.shutdown().await;
            drop(to);
            drop(from);
        }
        End::Closed => {
            drop(to);
            drop(from);
        }
        End::Reset => match direction {
            Direction::ClientToServer => {
                let _ = from.as_ref().set_zero_linger();
                drop(from);
                drop(to);
            }
            Direction::ServerToClient => {
                let _ = to.as_ref().set_zero_linger();
                // No FIN (shutdown on drop) before the RST: the socket closes with the RST
                // once the other pump drops the read half too.
                to.forget();
                drop(from);
            }
        },
    }
    if cut {
        link.shared.cut.send_replace(CutStatus::Fired);
    }
    drop(link);
}

fn remember_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    let keep = MAX_PATTERN_LEN - 1;
    if chunk.len() >= keep {
        tail.clear();
        tail.extend_from_slice(&chunk[chunk.len() - keep..]);
    } else {
        tail.extend_from_slice(chunk);
        let excess = tail.len().saturating_sub(keep);
        tail.drain(..excess);
    }
}
