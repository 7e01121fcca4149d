//! Parquet objects as the compactor wrote them and the agent reads them back:
//! `cairn_storage::parquet::verify` on the bytes put in an in-memory object store, which
//! runs the storage crate's two reading entry points, `open` (footer with bounded range
//! GETs, schema, offset statistics, row-group checksums) and `read_row_group` for every
//! row group (decoding, dense offsets, CRC).
//!
//! The reader catches panics of the Parquet and Arrow decoders and returns them as
//! corruption: such a panic counts as an error here (its message is printed now and then;
//! `CAIRN_FUZZ_STRICT=1` makes it a crash). A panic that escapes the reader is a crash.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const KEY: &str = "topics/fuzz/partition=0/00000000000000000000-00000000000000000009-1.parquet";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(
    init: cairn_fuzz::count_caught_panics(),
    |data: &[u8]| {
        let bytes = Bytes::copy_from_slice(data);
        cairn_fuzz::run_or_abort(|| {
            runtime().block_on(async {
                let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
                store
                    .put(&Path::from(KEY), PutPayload::from(bytes))
                    .await
                    .expect("an in-memory put");
                let _ = cairn_storage::parquet::verify(store, KEY, data.len() as u64).await;
            });
        });
    }
);
