//! Cairn's object-storage layer: the only crate that knows object keys and byte layouts.
//!
//! - [`keys`]: where segments and Parquet files live, and every prefix Cairn writes under;
//! - [`segment`]: the segment object (frames of many partitions, untouched, plus a footer),
//!   its builder and readers;
//! - [`parquet`]: the compacted table format (one file per run of a partition), its writer
//!   and its verified reader;
//! - [`value_schema`]: a topic's declared value schema and the typed columns it adds to the
//!   Parquet files;
//! - [`store`]: opening a store from a URL, and the wrappers that stack on any
//!   `ObjectStore` (instrumented, fault-injecting).
//!
//! Neither the agent nor the compactor spells a path or a byte layout: they call this.

// Only the FoundationDB adapter in cairn-metadata may use unsafe code.
#![forbid(unsafe_code)]

mod error;
pub mod keys;
pub mod parquet;
pub mod segment;
pub mod store;
pub mod value_schema;

pub use error::{FormatError, StorageError, StorageErrorKind, range_not_satisfiable};
pub use segment::{FooterEntry, SegmentBuilder, SegmentFooter, SegmentReader, StoredFrame};
pub use store::{
    FaultyStore, InstrumentedStore, Latency, LatencySnapshot, PrefixedStore, StoreCounters,
    StoreFaultCounts, StoreFaultRates, StoreHealth, StoreStats, install_crypto_provider,
    open_object_store,
};
