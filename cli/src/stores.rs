//! The `--object-store` / `--metadata` flags of the commands that open the stores directly
//! (`compactor`, `sql`) rather than talking to an agent.

use std::sync::Arc;

use anyhow::Context;
use cairn_metadata::Metadata;
use object_store::ObjectStore;

/// Where the data is: the same stores the agents use.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoreArgs {
    /// Where objects are stored (as for `cairn agent`).
    #[arg(
        long,
        env = "CAIRN_OBJECT_STORE",
        value_name = "URL",
        default_value = "./cairn-data/objects"
    )]
    object_store: String,
    /// Metadata store (as for `cairn agent`).
    #[arg(
        long,
        env = "CAIRN_METADATA",
        value_name = "SPEC",
        default_value = "sqlite:./cairn-data/meta.sqlite"
    )]
    metadata: String,
}

impl StoreArgs {
    /// Opens both stores; time comes from the system clock.
    pub(crate) async fn open(&self) -> anyhow::Result<(Arc<dyn ObjectStore>, Metadata)> {
        let store = cairn_storage::open_object_store(&self.object_store, &[])?;
        let kv = cairn_metadata::open_kv(&self.metadata)
            .await
            .with_context(|| {
                format!(
                    "cannot open metadata store {}",
                    cairn_metadata::redact_spec(&self.metadata)
                )
            })?;
        Ok((
            store,
            Metadata::new(kv, Arc::new(cairn_metadata::SystemClock)),
        ))
    }
}
