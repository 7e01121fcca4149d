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
    /// The stores at `object_store` and `metadata`, as the flags would name them.
    pub(crate) fn new(object_store: String, metadata: String) -> Self {
        StoreArgs {
            object_store,
            metadata,
        }
    }

    /// Opens both stores; time comes from the system clock.
    pub(crate) async fn open(&self) -> anyhow::Result<(Arc<dyn ObjectStore>, Metadata)> {
        let (store, kv) = self.open_raw().await?;
        Ok((
            store,
            Metadata::new(kv, Arc::new(cairn_metadata::SystemClock)),
        ))
    }

    /// [`StoreArgs::open`] with the faults `CAIRN_TEST_FAULTS` names injected into both
    /// stores (tests of the failure paths; never set in production). The control must be
    /// kept while the stores are used: it writes the fault report.
    pub(crate) async fn open_with_test_faults(
        &self,
    ) -> anyhow::Result<(
        Arc<dyn ObjectStore>,
        Metadata,
        Option<cairn_agent::FaultControl>,
    )> {
        let (mut store, mut kv) = self.open_raw().await?;
        let mut control = None;
        if let Ok(spec) = std::env::var("CAIRN_TEST_FAULTS") {
            let spec: cairn_agent::FaultSpec = spec.parse().context("invalid CAIRN_TEST_FAULTS")?;
            if spec.is_active() || spec.report_file.is_some() {
                tracing::warn!(faults = ?spec, "CAIRN_TEST_FAULTS is set: injecting faults");
                let (s, k, c) = cairn_agent::inject_faults(&spec, store, kv);
                (store, kv, control) = (s, k, Some(c));
            }
        }
        Ok((
            store,
            Metadata::new(kv, Arc::new(cairn_metadata::SystemClock)),
            control,
        ))
    }

    async fn open_raw(
        &self,
    ) -> anyhow::Result<(Arc<dyn ObjectStore>, Arc<dyn cairn_metadata::KvStore>)> {
        let store = cairn_storage::open_object_store(&self.object_store, &[])?;
        let kv = cairn_metadata::open_kv(&self.metadata)
            .await
            .with_context(|| {
                format!(
                    "cannot open metadata store {}",
                    cairn_metadata::redact_spec(&self.metadata)
                )
            })?;
        Ok((store, kv))
    }
}
