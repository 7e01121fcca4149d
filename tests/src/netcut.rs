//! A TCP proxy whose connections can be cut: put one in front of every peer a process
//! talks to (and one in front of the process for its clients) and cutting them takes the
//! process off the network while it keeps running — its leases run out, its calls hang
//! until their timeouts, and its clients' calls hang until theirs.
//!
//! A cut is a black hole, not a reset: no byte moves in either direction on any
//! connection, and new connections are accepted but carried nowhere. When the cut heals,
//! every connection carries on where it stopped (as TCP does after a short partition).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy from a local address to `upstream`; dropping it closes every connection.
#[derive(Debug)]
pub struct CuttableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
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
        let (cut, _) = watch::channel(false);
        let state = cut.clone();
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
            cut,
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
        self.cut.send_replace(true);
    }

    /// Lets bytes flow again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Waits while the network is cut; false if the proxy is gone.
async fn open(cut: &mut watch::Receiver<bool>) -> bool {
    cut.wait_for(|c| !*c).await.is_ok()
}

async fn carry(client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    if !open(&mut cut).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, cut.clone());
    let down = pump(server_read, client_write, cut);
    // Either side closing ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Copies `from` to `to`, moving nothing while the network is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if !open(&mut cut).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A cut while waiting for bytes: stop reading.
            _ = cut.wait_for(|c| *c) => continue,
        };
        // Bytes read just before a cut are held until it heals.
        if !open(&mut cut).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cut_holds_every_byte_until_it_heals() -> anyhow::Result<()> {
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
        let proxy = CuttableProxy::start("127.0.0.1:0", upstream).await?;
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
}
