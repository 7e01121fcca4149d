//! Long-polling at the high watermark, for any number of waiting fetches and any number of
//! agents: one poller per [`Metadata`] handle reads the positions of every partition that
//! has waiters in one transaction per tick (every [`POLL_INTERVAL`], or at once after a
//! commit through this handle) and wakes the waiters whose offset became readable. A
//! waiting fetch holds a watch receiver, not a thread, a transaction or a connection, so
//! the store sees one small read per tick whatever the number of waiters, and a commit
//! made through another agent is seen within one tick.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::MetaError;
use crate::kv::{KvStore, RetryPolicy};
use crate::metadata::{Tx, read_position, transact};

/// How often the positions of partitions with waiters are read.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Most positions read in one transaction.
const KEYS_PER_READ: usize = 1000;

/// One watched partition.
struct Watched {
    next_offset: watch::Sender<i64>,
    waiters: usize,
}

/// The partitions fetches wait on, and the poller's wake-up call.
#[derive(Default)]
pub(crate) struct Hub {
    parts: Mutex<HashMap<(u64, u32), Watched>>,
    /// A partition got its first waiter: the idle poller starts reading.
    added: Notify,
    started: std::sync::OnceLock<()>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("partitions", &self.lock().len())
            .finish()
    }
}

/// A registered waiter; unregisters on drop.
pub(crate) struct Waiter {
    hub: Arc<Hub>,
    key: (u64, u32),
    pub(crate) next_offset: watch::Receiver<i64>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut parts = self.hub.lock();
        if let Some(w) = parts.get_mut(&self.key) {
            w.waiters -= 1;
            if w.waiters == 0 {
                parts.remove(&self.key);
            }
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u32), Watched>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter on `topic_id`/`partition`, whose position was `seen` when read,
    /// starting the poller on first use.
    pub(crate) fn wait(
        self: &Arc<Self>,
        kv: &Arc<dyn KvStore>,
        commits: &watch::Sender<u64>,
        topic_id: u64,
        partition: u32,
        seen: i64,
    ) -> Waiter {
        self.started.get_or_init(|| {
            tokio::spawn(poll(Arc::downgrade(self), kv.clone(), commits.subscribe()));
        });
        let key = (topic_id, partition);
        let mut parts = self.lock();
        let first = parts.is_empty();
        let w = parts.entry(key).or_insert_with(|| Watched {
            next_offset: watch::channel(seen).0,
            waiters: 0,
        });
        w.waiters += 1;
        w.next_offset.send_if_modified(|n| raise(n, seen));
        let next_offset = w.next_offset.subscribe();
        drop(parts);
        if first {
            self.added.notify_one();
        }
        Waiter {
            hub: self.clone(),
            key,
            next_offset,
        }
    }

    /// Fetches waiting right now, over all partitions.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().values().map(|w| w.waiters).sum()
    }
}

fn raise(n: &mut i64, to: i64) -> bool {
    if to > *n {
        *n = to;
        true
    } else {
        false
    }
}

/// The poller: while the hub lives, reads the watched positions every tick (or at once
/// after a local commit) and publishes the new ones.
async fn poll(hub: Weak<Hub>, kv: Arc<dyn KvStore>, mut commits: watch::Receiver<u64>) {
    let policy = RetryPolicy::default();
    let mut failing = false;
    loop {
        let Some(h) = hub.upgrade() else { return };
        let watched: Vec<(u64, u32)> = h.lock().keys().copied().collect();
        if watched.is_empty() {
            // Re-check now and then so the task ends once the hub is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), h.added.notified()).await;
            continue;
        }
        drop(h);
        commits.borrow_and_update();
        match read_positions(kv.as_ref(), &policy, &watched).await {
            Ok(positions) => {
                failing = false;
                let Some(h) = hub.upgrade() else { return };
                let parts = h.lock();
                for (key, next) in positions {
                    if let Some(w) = parts.get(&key) {
                        w.next_offset.send_if_modified(|n| raise(n, next));
                    }
                }
            }
            Err(e) => {
                // Waiters time out as usual meanwhile; say it once per outage.
                if !failing {
                    tracing::warn!(error = %e, "reading high watermarks for waiting fetches failed; retrying");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = commits.changed() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// The next offsets of `watched`, a bounded number per transaction.
async fn read_positions(
    kv: &dyn KvStore,
    policy: &RetryPolicy,
    watched: &[(u64, u32)],
) -> Result<Vec<((u64, u32), i64)>, MetaError> {
    let mut out = Vec::with_capacity(watched.len());
    for chunk in watched.chunks(KEYS_PER_READ) {
        let read = transact(kv, policy, "read_watermarks", |tx: Tx, _| async move {
            let states =
                futures::future::try_join_all(chunk.iter().map(|&(t, p)| read_position(&tx, t, p)))
                    .await?;
            Ok(chunk
                .iter()
                .zip(states)
                .map(|(&k, s)| (k, s.next_offset))
                .collect::<Vec<_>>())
        })
        .await?;
        out.extend(read);
    }
    Ok(out)
}
