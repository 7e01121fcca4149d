//! A TCP proxy whose connections can be cut: put one in front of every peer a process
//! talks to (and one in front of the process for its clients) and cutting them takes the
//! process off the network while it keeps running — its leases run out, its calls hang
//! until their timeouts, and its clients' calls hang until theirs.
//!
//! A cut is a black hole, not a reset: no byte moves in either direction on any
//! connection, and new connections are accepted but carried nowhere. When the cut heals,
//! every connection carries on where it stopped (as TCP does after a short partition).
//!
//! In front of an HTTP service (S3) the proxy can also play an overloaded server: every
//! open connection is closed, and every request on a new one is answered `503 Slow Down`
//! (S3's throttling answer) without reaching the service.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with the bytes it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Carries them.
    Pass,
    /// Holds them (a network partition).
    Cut,
    /// Closes open connections and answers each HTTP request `503 Slow Down`.
    SlowDown,
}

/// A proxy from a local address to `upstream`; dropping it closes every connection.
#[derive(Debug)]
pub struct CuttableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    upstream: Arc<Mutex<SocketAddr>>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    /// Listens on `listen` (e.g. `127.0.0.2:0`) and carries each connection to
    /// `upstream`.
    pub async fn start(listen: &str, upstream: SocketAddr) -> anyhow::Result<CuttableProxy> {
        let upstream = Arc::new(Mutex::new(upstream));
        let target = upstream.clone();
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("proxy cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let state = mode.clone();
        let accept = tokio::spawn(async move {
            // Connections end with the accept task: it owns their tasks.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let to = *target.lock().unwrap_or_else(|p| p.into_inner());
                connections.spawn(carry(client, to, state.subscribe()));
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(CuttableProxy {
            addr,
            mode,
            upstream,
            accept,
        })
    }

    /// Carries new connections to `upstream` from now on (a process that came back on
    /// another port); open ones keep their peer.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
    }

    /// Cuts every connection, present and future, until [`CuttableProxy::heal`].
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Closes every open connection and answers every HTTP request on a new one with
    /// `503 Slow Down`, until [`CuttableProxy::heal`].
    pub fn slow_down(&self) {
        self.mode.send_replace(Mode::SlowDown);
    }

    /// Lets bytes flow again.
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Pass);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Waits while the network is cut: true once bytes may be carried, false if the proxy is
/// gone or throttling (the connection must close).
async fn open(mode: &mut watch::Receiver<Mode>) -> bool {
    match mode.wait_for(|m| *m != Mode::Cut).await {
        Ok(m) => *m == Mode::Pass,
        Err(_) => false,
    }
}

async fn carry(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow_and_update() == Mode::SlowDown {
        return slow_down(client).await;
    }
    if !open(&mut mode).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone());
    let down = pump(server_read, client_write, mode);
    // Either side closing ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies `from` to `to`, moving nothing while the network is cut, and stops when the
/// proxy starts throttling.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if !open(&mut mode).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A cut (or throttling) while waiting for bytes: look again.
            _ = mode.wait_for(|m| *m != Mode::Pass) => continue,
        };
        // Bytes read just before a cut are held until it heals.
        if !open(&mut mode).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Answers each HTTP/1.1 request on `client` with S3's `503 Slow Down` (reading and
/// dropping its body), then closes the connection.
async fn slow_down(mut client: TcpStream) {
    const BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
        <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    // The request head, then as much of the body as it declares.
    let body_len = loop {
        let Ok(n) = client.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            let declared = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break declared.saturating_sub(head.len() - end - 4);
        }
        if head.len() > 64 << 10 {
            return;
        }
    };
    let mut left = body_len;
    while left > 0 {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    let answer = format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte.
    async fn echo() -> anyhow::Result<SocketAddr> {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let upstream = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(upstream)
    }

    #[tokio::test]
    async fn a_cut_holds_every_byte_until_it_heals() -> anyhow::Result<()> {
        let proxy = CuttableProxy::start("127.0.0.1:0", echo().await?).await?;
        let mut c = TcpStream::connect(proxy.addr).await?;
        let mut buf = [0u8; 5];
        c.write_all(b"hello").await?;
        c.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hello");

        proxy.cut();
        c.write_all(b"again").await?;
        let stalled = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            c.read_exact(&mut buf),
        )
        .await;
        assert!(stalled.is_err(), "bytes crossed a cut");
        // A connection opened during the cut is held too.
        let mut late = TcpStream::connect(proxy.addr).await?;
        late.write_all(b"later").await?;
        proxy.heal();
        c.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"again");
        late.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"later");
        Ok(())
    }

    #[tokio::test]
    async fn throttling_closes_connections_and_answers_503_slow_down() -> anyhow::Result<()> {
        let proxy = CuttableProxy::start("127.0.0.1:0", echo().await?).await?;
        let mut open_one = TcpStream::connect(proxy.addr).await?;
        open_one.write_all(b"x").await?;
        let mut one = [0u8; 1];
        open_one.read_exact(&mut one).await?;

        proxy.slow_down();
        // The open connection is closed.
        let mut rest = Vec::new();
        open_one.read_to_end(&mut rest).await?;
        assert!(rest.is_empty(), "{rest:?}");
        // A new one gets S3's throttling answer, after its body was read.
        let mut c = TcpStream::connect(proxy.addr).await?;
        c.write_all(b"PUT /b/k HTTP/1.1\r\nHost: s3\r\nContent-Length: 5\r\n\r\nhello")
            .await?;
        let mut answer = String::new();
        c.read_to_string(&mut answer).await?;
        assert!(answer.starts_with("HTTP/1.1 503 Slow Down\r\n"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(body.contains("<Code>SlowDown</Code>"), "{answer}");
        let declared: usize = answer
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert_eq!(declared, body.len(), "{answer}");

        proxy.heal();
        let mut again = TcpStream::connect(proxy.addr).await?;
        again.write_all(b"y").await?;
        again.read_exact(&mut one).await?;
        assert_eq!(&one, b"y");
        Ok(())
    }
}
