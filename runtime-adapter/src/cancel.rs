//! Cancel requests that wait until the server has taken them, as libpq's do.
//!
//! A cancel request travels on a connection of its own. tokio-postgres
//! closes that connection as soon as the request is written; libpq instead
//! waits for the server to close it, which is the server's way of saying it
//! has processed the request. PgBouncer relies on that: a cancel client that
//! leaves first is dropped ("client unexpected eof") and the statement goes
//! on running on the server. So the request is written here through
//! tokio-postgres, on a socket whose shutdown sends nothing (a FIN counts as
//! leaving too) and waits for the peer's close.
//!
//! Over TLS the TLS layer still sends its close_notify before that wait;
//! PostgreSQL itself processes the request regardless, and PgBouncer may
//! not.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::CancelToken;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where a connection's cancel requests go: the address it was opened to.
#[derive(Debug, Clone)]
pub(crate) struct CancelTarget {
    /// The host name (for TLS), and the address to dial.
    host: String,
    dial: String,
    port: u16,
}

impl CancelTarget {
    /// The first TCP host of `pg`, which is where a single-host
    /// configuration connects; `None` for a Unix socket.
    pub(crate) fn of(pg: &tokio_postgres::Config) -> Option<Self> {
        let Some(Host::Tcp(host)) = pg.get_hosts().first() else { return None };
        let dial = pg.get_hostaddrs().first().map_or_else(|| host.clone(), ToString::to_string);
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        Some(Self { host: host.clone(), dial, port })
    }
}

/// Sends a cancel request for the connection `token` belongs to, and waits
/// until the server (or pooler) closed the request's connection.
pub(crate) async fn cancel(
    token: CancelToken,
    target: Option<&CancelTarget>,
    mut tls: MakeRustlsConnect,
) -> io::Result<()> {
    let Some(target) = target else { return token.cancel_query(tls).await.map_err(io::Error::other) };
    let stream = TcpStream::connect((target.dial.as_str(), target.port)).await?;
    let connector =
        MakeTlsConnect::<WaitForClose>::make_tls_connect(&mut tls, &target.host).map_err(io::Error::other)?;
    token.cancel_query_raw(WaitForClose { stream }, connector).await.map_err(io::Error::other)
}

/// A socket whose shutdown sends nothing and completes once the peer
/// closed the connection; dropped, it closes.
struct WaitForClose {
    stream: TcpStream,
}

impl AsyncRead for WaitForClose {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WaitForClose {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return Poll::Ready(Ok(())),
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}
