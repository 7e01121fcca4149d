//! The in-memory backend, for fast unit tests. Transactions run one at a time (each holds
//! the map's lock from begin to commit or drop), which is trivially serializable; writes
//! go straight to the map with an undo log that a dropped transaction replays.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::OwnedMutexGuard;

use crate::kv::{KeyValue, KvStore, KvTransaction};
use crate::limits::LimitTracker;
use crate::{KvError, Limits};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory [`KvStore`].
#[derive(Debug, Clone)]
pub struct MemoryKv {
    map: Arc<tokio::sync::Mutex<Map>>,
    limits: Limits,
}

impl MemoryKv {
    /// An empty store with the given limits.
    pub fn new(limits: Limits) -> Self {
        MemoryKv {
            map: Arc::new(tokio::sync::Mutex::new(Map::new())),
            limits,
        }
    }
}

#[async_trait]
impl KvStore for MemoryKv {
    async fn begin(&self) -> Result<Box<dyn KvTransaction>, KvError> {
        let guard = self.map.clone().lock_owned().await;
        Ok(Box::new(MemoryTxn {
            state: Mutex::new(Some(State {
                map: guard,
                undo: Vec::new(),
            })),
            tracker: LimitTracker::new(self.limits),
        }))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

struct State {
    map: OwnedMutexGuard<Map>,
    undo: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl State {
    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let old = match value {
            Some(v) => self.map.insert(key.clone(), v),
            None => self.map.remove(&key),
        };
        self.undo.push((key, old));
    }
}

struct MemoryTxn {
    state: Mutex<Option<State>>,
    tracker: LimitTracker,
}

impl MemoryTxn {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, KvError> {
        self.tracker.check_time()?;
        let mut guard = self
            .state
            .lock()
            .map_err(|_| KvError::Poisoned { backend: "memory" })?;
        match guard.as_mut() {
            Some(state) => Ok(f(state)),
            None => Err(KvError::Finished { backend: "memory" }),
        }
    }
}

#[async_trait]
impl KvTransaction for MemoryTxn {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.tracker.check_key(key)?;
        self.with(|s| s.map.get(key).cloned())
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        self.with(|s| {
            let range = s
                .map
                .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
            let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
            if reverse {
                range.rev().take(limit).map(clone).collect()
            } else {
                range.take(limit).map(clone).collect()
            }
        })
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.tracker.write(key, Some(value))?;
        self.with(|s| s.put(key.to_vec(), Some(value.to_vec())))
    }

    async fn clear(&self, key: &[u8]) -> Result<(), KvError> {
        self.tracker.write(key, None)?;
        self.with(|s| s.put(key.to_vec(), None))
    }

    async fn clear_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        self.tracker.write(begin, Some(end))?;
        if begin >= end {
            return Ok(());
        }
        self.with(|s| {
            let keys: Vec<Vec<u8>> = s
                .map
                .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                s.put(k, None);
            }
        })
    }

    async fn atomic_add(&self, key: &[u8], delta: i64) -> Result<(), KvError> {
        self.tracker.write(key, Some(&[0; 8]))?;
        self.with(|s| {
            let now = s.map.get(key).map_or(0, |v| crate::keys::decode_i64_le(v));
            s.put(
                key.to_vec(),
                Some(now.wrapping_add(delta).to_le_bytes().to_vec()),
            );
        })
    }

    async fn commit(&self) -> Result<(), KvError> {
        self.tracker.check_time()?;
        let mut guard = self
            .state
            .lock()
            .map_err(|_| KvError::Poisoned { backend: "memory" })?;
        match guard.take() {
            Some(mut state) => {
                state.undo.clear();
                Ok(())
            }
            None => Err(KvError::Finished { backend: "memory" }),
        }
    }
}

impl Drop for MemoryTxn {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.state.lock()
            && let Some(mut state) = guard.take()
        {
            while let Some((k, old)) = state.undo.pop() {
                match old {
                    Some(v) => state.map.insert(k, v),
                    None => state.map.remove(&k),
                };
            }
        }
    }
}
