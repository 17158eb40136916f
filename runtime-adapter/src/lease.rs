//! A checked-out connection, and the state of its session: a connection goes
//! back to the pool only idle.
//!
//! tokio-postgres does not expose the transaction status that PostgreSQL
//! reports with each ReadyForQuery, so the adapter keeps it from what it
//! sends itself:
//! - **a statement in flight**, from the moment its future is first polled
//!   (when it is sent) until its answer arrived. A future dropped before
//!   then (a `timeout` or `select!` around the call, a panic, an early
//!   return) leaves the session in an unknown state: the statement may still
//!   run, and a transaction may be open or aborted.
//! - **an open transaction**, from `BEGIN` until `COMMIT` or `ROLLBACK` was
//!   answered. One abandoned by its [`Db::transaction`](crate::Db::transaction)
//!   leaves the session in an unknown state too.
//! - **raw use**: what a [`RawClient`](crate::RawClient) sends is not seen;
//!   the connection's next checkout sends `ROLLBACK` before handing it out.
//!
//! When the last handle on a checkout is dropped, a connection whose session
//! is not known to be idle stays out of the pool while a task cancels what
//! still runs on it and sends `ROLLBACK`; only then does it go back, and if
//! that fails it is closed (the server rolls back what a session had open
//! when it ends). It is never handed to another invocation as it was, where
//! an autocommit write would join the leftover transaction and be lost with
//! it.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll, Waker};

use deadpool::managed;
use deadpool_postgres::ClientWrapper;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::cancel::CancelTarget;
use crate::lru::Lru;

/// A connection's prepared statements, by SQL text: the declared ones
/// pinned, the rest least recently used first out.
pub(crate) type Cache = Mutex<Lru<tokio_postgres::Statement>>;

/// What a checkout needs of the pool's manager: counting an abandoned
/// session, and running its rollback where shutdown waits for it. The
/// manager (the pool's `WarmingManager`) depends on this module, not the
/// other way round.
pub(crate) trait Keeper: managed::Manager<Type = Connection> + 'static {
    /// Counts a connection released mid-request or mid-transaction.
    fn abandoned(&self);
    /// Runs `work` (the rollback of an abandoned session) in the pool's
    /// tasks, which shutdown waits for.
    fn track(&self, work: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()>;
}

/// The pool's object: a client and what is known of its session.
pub(crate) struct Connection {
    client: ClientWrapper,
    state: SessionState,
    cancel_target: Option<CancelTarget>,
    /// The statements prepared on it (`none` mode).
    statements: Cache,
    /// The connector this connection was opened with, which its cancel
    /// requests use too: kept here, not looked up in the pool, which may be
    /// gone by the time a cancel is sent.
    tls: MakeRustlsConnect,
    /// The timer that bounds its statements, kept between them.
    timer: KeptTimer,
    /// Not yet released by a checkout: opened and warmed for this one.
    fresh: bool,
}

impl Connection {
    pub(crate) fn new(
        client: ClientWrapper,
        cancel_target: Option<CancelTarget>,
        statements: Cache,
        tls: MakeRustlsConnect,
    ) -> Self {
        Self {
            client,
            state: SessionState::default(),
            cancel_target,
            statements,
            tls,
            timer: KeptTimer::default(),
            fresh: true,
        }
    }

    /// Whether the connection was opened and warmed for the checkout that
    /// holds it (no checkout has released it yet).
    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Whether the next checkout may take it as it is: open, its session
    /// idle, and no raw client used on it (whose leftovers deadpool's
    /// recycle rolls back first).
    pub(crate) fn reusable_as_is(&self) -> bool {
        !self.client.is_closed() && self.state.is_idle() && !self.state.is_raw()
    }

    pub(crate) fn statements(&self) -> &Cache {
        &self.statements
    }

    /// The TLS connector of this connection, for its cancel requests.
    pub(crate) fn cancel_tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// Asks the server to cancel what this connection is running, and waits
    /// until it has taken the request; `tls` as the connection's own.
    pub(crate) async fn cancel(&self, tls: MakeRustlsConnect) -> std::io::Result<()> {
        // Boxed: the TLS handshake's future type is deep enough to overflow
        // the compiler's query depth in handlers that await a statement.
        Box::pin(crate::cancel::cancel(self.cancel_token(), self.cancel_target.as_ref(), tls)).await
    }

    pub(crate) fn client_mut(&mut self) -> &mut ClientWrapper {
        &mut self.client
    }

    pub(crate) fn state(&self) -> &SessionState {
        &self.state
    }

    /// Polls `work` until it completes (`Some` of its output) or `stop`
    /// comes (`None`), on this connection's kept timer; see [`KeptTimer`].
    pub(crate) fn within<'a, F: Future>(
        &'a self,
        stop: Instant,
        work: Pin<&'a mut F>,
    ) -> impl Future<Output = Option<F::Output>> + 'a {
        self.timer.within(stop, work)
    }

    /// Runs `work`, which sends to the server, counted as in flight from
    /// its first poll until it completes; dropped in between, it leaves the
    /// session unknown.
    pub(crate) fn sent<F: Future>(&self, work: F) -> Sent<'_, F> {
        Sent { work, state: &self.state, flight: None }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Connection::sent`]: `work` polled in place. An
    /// `async fn` would hold it twice (as its argument, and as what it
    /// awaits), and a statement's future is kilobytes, copied whole.
    pub(crate) struct Sent<'a, F> {
        // First, so that it is dropped before the flight marks the session.
        #[pin]
        work: F,
        state: &'a SessionState,
        flight: Option<InFlight<'a>>,
    }
}

impl<F: Future> Future for Sent<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.flight.is_none() {
            *this.flight = Some(InFlight::start(this.state));
        }
        let out = std::task::ready!(this.work.poll(cx));
        if let Some(flight) = this.flight.take() {
            flight.landed();
        }
        Poll::Ready(out)
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("client", &self.client)
            .field("state", &self.state)
            .field("cancel_target", &self.cancel_target)
            .finish_non_exhaustive()
    }
}

impl Deref for Connection {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.client
    }
}

/// A timer kept between the statements of one connection and reset to each
/// one's stop.
///
/// A new tokio timer per statement costs a thread wake-up whenever no other
/// timer is due earlier, which on a warm invocation is always: the
/// runtime's driver, parked without a timeout, must be woken to take the new
/// one (an eventfd write and futex calls, on every invocation). A kept timer
/// moved to a later instant, as each invocation's deadline is, is only an
/// atomic update; the driver wakes once at the earlier instant and files it
/// again. An earlier instant registers it anew, as a new timer would be.
/// Statements run concurrently on one connection (pipelined) find the timer
/// taken and make their own.
#[derive(Debug, Default)]
pub(crate) struct KeptTimer(Mutex<Option<Pin<Box<Sleep>>>>);

impl KeptTimer {
    /// Polls `work` until it completes (`Some` of its output) or `stop`
    /// comes (`None`; `work` is left as it is, for the caller to cancel).
    pub(crate) async fn within<F: Future>(&self, stop: Instant, mut work: Pin<&mut F>) -> Option<F::Output> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        let mut timer = match kept {
            Some(mut timer) => {
                timer.as_mut().reset(stop);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(stop)),
        };
        let out = std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await;
        // The timer keeps the last waker it was polled with until it fires:
        // give it one that holds no task, so that a finished invocation's
        // task is not kept alive by it.
        let _ = timer.as_mut().poll(&mut TaskContext::from_waker(Waker::noop()));
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(timer);
        out
    }
}

/// What the adapter knows of a session, from what it sent on it.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// Requests sent and not yet answered.
    in_flight: AtomicU32,
    /// The sequence number of the open transaction, 0 when none is.
    transaction: AtomicU32,
    flags: AtomicU8,
}

/// A request was abandoned, or a transaction left open: the session's state
/// is unknown.
const UNKNOWN: u8 = 1;
/// A statement in the open transaction failed, so the transaction may be
/// aborted: its `COMMIT` must be checked.
const FAILED_IN_TRANSACTION: u8 = 2;
/// A [`RawClient`](crate::RawClient) was handed out on this connection.
const RAW: u8 = 4;

/// Numbers transactions, so that a [`Tx`](crate::Tx) recognises its own.
static TRANSACTIONS: AtomicU32 = AtomicU32::new(1);

impl SessionState {
    /// Whether the session may serve another invocation: nothing in flight,
    /// no transaction open, nothing abandoned.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.transaction.load(Ordering::Acquire) == 0
            && self.flags.load(Ordering::Acquire) & UNKNOWN == 0
    }

    /// Whether something was abandoned on the session.
    pub(crate) fn is_unknown(&self) -> bool {
        self.flags.load(Ordering::Acquire) & UNKNOWN != 0
    }

    /// Whether a request may still be running on the server.
    pub(crate) fn has_in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) != 0
    }

    /// The open transaction's number, if one is open.
    pub(crate) fn open_transaction(&self) -> Option<u32> {
        Some(self.transaction.load(Ordering::Acquire)).filter(|&n| n != 0)
    }

    /// Marks a transaction open, before its `BEGIN` is sent.
    pub(crate) fn begin(&self) -> OpenTransaction<'_> {
        let number = TRANSACTIONS.fetch_add(1, Ordering::Relaxed).max(1);
        self.flags.fetch_and(!FAILED_IN_TRANSACTION, Ordering::AcqRel);
        self.transaction.store(number, Ordering::Release);
        OpenTransaction { state: self, number }
    }

    /// Notes that a statement of the open transaction failed.
    pub(crate) fn failed_in_transaction(&self) {
        self.flags.fetch_or(FAILED_IN_TRANSACTION, Ordering::AcqRel);
    }

    /// Whether the transaction's `COMMIT` must first learn whether the
    /// transaction is still good: a statement in it failed, one was
    /// abandoned, or raw calls may have run in it.
    pub(crate) fn commit_needs_check(&self) -> bool {
        self.flags.load(Ordering::Acquire) & (UNKNOWN | FAILED_IN_TRANSACTION | RAW) != 0
    }

    /// Notes that a [`RawClient`](crate::RawClient) was handed out.
    pub(crate) fn raw_used(&self) {
        self.flags.fetch_or(RAW, Ordering::AcqRel);
    }

    /// Whether a [`RawClient`](crate::RawClient) was handed out since the
    /// connection was last rolled back.
    pub(crate) fn is_raw(&self) -> bool {
        self.flags.load(Ordering::Acquire) & RAW != 0
    }

    /// Takes the raw-use mark: whether the connection must be rolled back
    /// before its next use.
    pub(crate) fn take_raw(&self) -> bool {
        self.flags.fetch_and(!RAW, Ordering::AcqRel) & RAW != 0
    }

    fn abandoned(&self) {
        self.flags.fetch_or(UNKNOWN, Ordering::AcqRel);
    }

    /// The session was rolled back and its requests answered: idle.
    fn reset(&self) {
        self.in_flight.store(0, Ordering::Release);
        self.transaction.store(0, Ordering::Release);
        self.flags.store(0, Ordering::Release);
    }
}

/// A request counted as in flight; see [`Connection::sent`].
pub(crate) struct InFlight<'a> {
    state: &'a SessionState,
    landed: bool,
}

impl<'a> InFlight<'a> {
    fn start(state: &'a SessionState) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { state, landed: false }
    }

    fn landed(mut self) {
        self.landed = true;
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Left counted: the request may still be running on the server.
        if !self.landed {
            self.state.abandoned();
        }
    }
}

/// A transaction marked open on a session, from before its `BEGIN` until
/// [`ended`](Self::ended) is called once the server answered its `COMMIT`
/// or `ROLLBACK`. Dropped open (its [`Db::transaction`](crate::Db::transaction)
/// future was dropped, or it panicked), it leaves the session unknown.
pub(crate) struct OpenTransaction<'a> {
    state: &'a SessionState,
    number: u32,
}

impl OpenTransaction<'_> {
    pub(crate) fn number(&self) -> u32 {
        self.number
    }

    /// The server ended the transaction: the session is idle again.
    pub(crate) fn ended(self) {
        let _ = self.state.transaction.compare_exchange(self.number, 0, Ordering::AcqRel, Ordering::Acquire);
        self.state.flags.fetch_and(!FAILED_IN_TRANSACTION, Ordering::AcqRel);
        std::mem::forget(self);
    }
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        if self.state.transaction.load(Ordering::Acquire) == self.number {
            self.state.abandoned();
        }
    }
}

/// A connection checked out of a pool, for one invocation. Dropped, it goes
/// back to the pool if its session is idle, and is closed otherwise.
pub(crate) struct Lease<M: Keeper> {
    object: Option<managed::Object<M>>,
    lane: Arc<Lane<M>>,
}

impl<M: Keeper> Lease<M> {
    pub(crate) fn object(&self) -> &managed::Object<M> {
        // Present until drop.
        self.object.as_ref().unwrap_or_else(|| unreachable!("a checkout is emptied only when dropped"))
    }
}

impl<M: Keeper> Deref for Lease<M> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.object()
    }
}

impl<M: Keeper> Drop for Lease<M> {
    fn drop(&mut self) {
        let Some(mut object) = self.object.take() else { return };
        object.fresh = false;
        if object.reusable_as_is() {
            return self.lane.release(object);
        }
        self.lane.left();
        if object.state.is_idle() || object.client.is_closed() {
            // Back to the pool, whose recycle rolls back what raw calls may
            // have left open; a closed one is discarded at the next checkout.
            return drop(object);
        }
        let running = object.state.has_in_flight();
        tracing::warn!(
            statement_in_flight = running,
            transaction_open = object.state.open_transaction().is_some(),
            "a connection was released mid-request or mid-transaction; rolling it back before reuse"
        );
        let pool = managed::Object::pool(&object);
        if let Some(pool) = &pool {
            pool.manager().abandoned();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return close(object);
        };
        let cleanup = roll_back(object, running);
        match pool {
            Some(pool) => drop(pool.manager().track(cleanup)),
            None => drop(runtime.spawn(cleanup)),
        }
    }
}

/// A pool's fast lane: the connection of the last checkout released while
/// no other was taken or waited for, kept out of the pool and handed to the
/// next checkout as it is (a lock and an atomic), without deadpool's get and
/// return (its semaphore, its slots' lock, its hooks and metrics). It is
/// what sequential invocations, Lambda's usual case, take.
///
/// A connection is kept only while no other checkout is under way, so that
/// none can wait in deadpool for a connection parked here: a release that
/// finds another checkout active returns its connection to deadpool (where
/// that checkout may be waiting), and one that kept its connection looks
/// again after parking it, and returns it if a checkout started meanwhile
/// (which may have missed it). Both looks are under the lock, which orders
/// them with the checkout's count. Only a connection idle, not used raw
/// (whose next checkout must roll back first, in deadpool's recycle) and
/// open is kept; one found closed when taken is returned to deadpool, which
/// replaces it.
///
/// Only a pool of one connection (the default, for sequential invocations)
/// has a lane: in a larger one the connection kept would always be the
/// same, and the others would sit in deadpool unused, never checked, until
/// a burst of concurrent invocations found them dropped by the server or
/// the network. deadpool hands them out in turn.
pub(crate) struct Lane<M: Keeper> {
    /// Checkouts started and not yet released, waiting ones included.
    active: AtomicUsize,
    kept: Mutex<Option<managed::Object<M>>>,
    /// Nothing is kept: the pool has more than one connection, or was closed.
    closed: AtomicBool,
}

impl<M: Keeper> Lane<M> {
    /// The lane of a pool of `pool_size` connections.
    pub(crate) fn new(pool_size: usize) -> Self {
        Self { active: AtomicUsize::new(0), kept: Mutex::new(None), closed: AtomicBool::new(pool_size != 1) }
    }

    /// Counts a checkout as started, until its lease is released or the
    /// returned entry dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> Entry<M> {
        self.active.fetch_add(1, Ordering::AcqRel);
        Entry(Some(self.clone()))
    }

    /// Whether nothing is ever kept: the pool has more than one connection,
    /// or was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Empties the lane for good: the kept connection goes back to its
    /// (closed) pool, which closes it.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        drop(self.kept().take());
    }

    fn kept(&self) -> MutexGuard<'_, Option<managed::Object<M>>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn left(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Parks `object`, released idle, if no other checkout is under way;
    /// returns it to the pool otherwise.
    fn release(&self, object: managed::Object<M>) {
        if self.active.fetch_sub(1, Ordering::AcqRel) != 1 || self.closed.load(Ordering::Acquire) {
            return drop(object);
        }
        let earlier = self.kept().replace(object);
        // A checkout that started after the count above and looked before
        // the connection was parked waits in deadpool: give it back there.
        // (The lock orders that look before this one.)
        let missed = self.active.load(Ordering::Acquire) != 0 || self.closed.load(Ordering::Acquire);
        let back = if missed { self.kept().take() } else { None };
        drop((earlier, back));
    }
}

/// A checkout under way on a [`Lane`]; dropped before it became a lease
/// (failed, or its future dropped), it is counted out again.
pub(crate) struct Entry<M: Keeper>(Option<Arc<Lane<M>>>);

impl<M: Keeper> Entry<M> {
    /// The parked connection, if there is one and it is still open.
    pub(crate) fn kept(&self) -> Option<managed::Object<M>> {
        let lane = self.0.as_ref()?;
        let object = lane.kept().take()?;
        if !object.reusable_as_is() {
            // deadpool's recycle discards it and opens another.
            drop(object);
            return None;
        }
        Some(object)
    }

    /// The checkout's lease on `object`.
    pub(crate) fn lease(mut self, object: managed::Object<M>) -> Lease<M> {
        let lane = self.0.take().unwrap_or_else(|| unreachable!("an entry is emptied only here"));
        Lease { object: Some(object), lane }
    }
}

impl<M: Keeper> Drop for Entry<M> {
    fn drop(&mut self) {
        if let Some(lane) = &self.0 {
            lane.left();
        }
    }
}

/// Ends what an abandoned session had open, then hands the connection back
/// to the pool; closes it if that fails. Until then the pool counts it as in
/// use, so no checkout can get it half-cleaned.
///
/// The connection is not simply closed: behind PgBouncer a client that
/// leaves while its cancel request is being forwarded leaves the statement
/// running on the server (and 1.18 can crash on it), and a new connection
/// costs the next invocation a connect and both warmup phases.
async fn roll_back<M: Keeper>(object: managed::Object<M>, running: bool) {
    if running {
        let request = object.cancel(object.cancel_tls());
        if let Ok(Err(error)) = tokio::time::timeout(CLEANUP_STEP_TIMEOUT, request).await {
            tracing::debug!(%error, "cancelling the abandoned request failed");
        }
    }
    // Queued behind whatever is still running. The cancel may land on the
    // first ROLLBACK instead (57014): the second then does the work.
    for _ in 0..2 {
        match tokio::time::timeout(CLEANUP_STEP_TIMEOUT, object.simple_query("ROLLBACK")).await {
            Ok(Ok(_)) => {
                object.state.reset();
                tracing::debug!("abandoned session rolled back; the connection is reusable");
                return drop(object);
            }
            Ok(Err(error)) if error.code().is_some() => continue,
            _ => break,
        }
    }
    tracing::warn!("could not roll back the abandoned session; closing its connection");
    close(object);
}

/// Takes `object` out of its pool for good and drops it: its connection task
/// sends Terminate, and the server rolls back what the session had open.
fn close<M: Keeper>(object: managed::Object<M>) {
    drop(managed::Object::take(object));
}

/// Bounds each step of rolling back an abandoned session.
const CLEANUP_STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Runs `work` within `stop` on `timer`; returns whether it completed,
    /// and when it returned.
    async fn run(timer: &KeptTimer, stop: Instant, work: impl Future<Output = ()>) -> (bool, Instant) {
        let work = std::pin::pin!(work);
        let done = timer.within(stop, work).await.is_some();
        (done, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_stops_each_statement_at_its_own_stop() {
        let timer = KeptTimer::default();
        let ms = Duration::from_millis;
        let never = std::future::pending::<()>;

        // A first statement: a new timer, fired at its stop.
        let stop = Instant::now() + ms(100);
        assert_eq!(run(&timer, stop, never()).await, (false, stop));

        // The fired timer, reset to an earlier remaining time.
        let stop = Instant::now() + ms(50);
        assert_eq!(run(&timer, stop, never()).await, (false, stop));

        // A statement that answers first leaves the timer armed and unfired.
        let stop = Instant::now() + ms(1_000);
        let answered = tokio::time::sleep(ms(10));
        assert!(run(&timer, stop, answered).await.0);

        // Moved later (the next invocation's deadline): no firing at the
        // earlier instant, only at the new one.
        let later = Instant::now() + ms(5_000);
        assert_eq!(run(&timer, later, never()).await, (false, later));

        // Armed far ahead, then moved earlier: fires at the earlier one.
        let far = Instant::now() + ms(60_000);
        assert!(run(&timer, far, tokio::time::sleep(ms(1))).await.0);
        let soon = Instant::now() + ms(20);
        assert_eq!(run(&timer, soon, never()).await, (false, soon));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_statements_each_get_a_timer() {
        let timer = KeptTimer::default();
        let now = Instant::now();
        let (first, second) = tokio::join!(
            run(&timer, now + Duration::from_millis(30), std::future::pending()),
            run(&timer, now + Duration::from_millis(70), std::future::pending()),
        );
        assert_eq!(first, (false, now + Duration::from_millis(30)));
        assert_eq!(second, (false, now + Duration::from_millis(70)));
    }
}
