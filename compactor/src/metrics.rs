//! The compactor's Prometheus counters (one `prometheus-client` registry per compactor).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::CycleReport;

/// Everything a compactor counts, summed over its cycles.
#[derive(Debug)]
pub struct CompactorMetrics {
    registry: Registry,
    cycles: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    files_written: Counter,
    records: Counter,
    conflicts: Counter,
    failed_runs: Counter,
    objects_deleted: Counter,
    retention_bytes: Counter,
    table_commits: Counter,
    failed_table_commits: Counter,
    backlog: Family<Vec<(String, String)>, Gauge>,
    lag: Family<Vec<(String, String)>, Gauge>,
}

impl CompactorMetrics {
    pub(crate) fn new() -> Self {
        let mut m = CompactorMetrics {
            registry: Registry::with_prefix("cairn_compactor"),
            cycles: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            files_written: Counter::default(),
            records: Counter::default(),
            conflicts: Counter::default(),
            failed_runs: Counter::default(),
            objects_deleted: Counter::default(),
            retention_bytes: Counter::default(),
            table_commits: Counter::default(),
            failed_table_commits: Counter::default(),
            backlog: Family::default(),
            lag: Family::default(),
        };
        let r = &mut m.registry;
        r.register("cycles", "Compactor cycles completed", m.cycles.clone());
        r.register_with_unit(
            "read",
            "Bytes read by compaction runs (segment frames, Parquet files)",
            Unit::Bytes,
            m.bytes_in.clone(),
        );
        r.register_with_unit(
            "written",
            "Parquet bytes written by compaction runs",
            Unit::Bytes,
            m.bytes_out.clone(),
        );
        r.register(
            "files_written",
            "Parquet files swapped in",
            m.files_written.clone(),
        );
        r.register("records", "Records written to Parquet", m.records.clone());
        r.register(
            "conflicts",
            "Runs whose swap lost a race (their file is collected later)",
            m.conflicts.clone(),
        );
        r.register(
            "failed_runs",
            "Runs that failed and wait for the next cycle",
            m.failed_runs.clone(),
        );
        r.register(
            "objects_deleted",
            "Unreferenced and orphan objects deleted",
            m.objects_deleted.clone(),
        );
        r.register_with_unit(
            "retention_removed",
            "Stored bytes removed by retention",
            Unit::Bytes,
            m.retention_bytes.clone(),
        );
        r.register(
            "table_commits",
            "Versions committed to topics' Delta Lake tables",
            m.table_commits.clone(),
        );
        r.register(
            "failed_table_commits",
            "Table commits that failed and wait for the next cycle",
            m.failed_table_commits.clone(),
        );
        r.register_with_unit(
            "backlog",
            "Bytes of each topic not compacted yet (segment entries after each partition's last \
             Parquet file), as the last cycle planned it",
            Unit::Bytes,
            m.backlog.clone(),
        );
        r.register(
            "consumer_lag_records",
            "Records between each consumer group's committed offsets and the high watermarks, \
             per topic, as of the last cycle",
            m.lag.clone(),
        );
        m
    }

    /// Replaces the backlog gauge with `(topic, bytes)` of the last plan.
    pub(crate) fn set_backlogs(&self, backlogs: Vec<(String, u64)>) {
        self.backlog.clear();
        for (topic, bytes) in backlogs {
            self.backlog
                .get_or_create(&vec![("topic".to_string(), topic)])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Replaces the lag gauge with `(group, topic, records)`.
    pub(crate) fn set_lags(&self, lags: Vec<(String, String, i64)>) {
        self.lag.clear();
        for (group, topic, records) in lags {
            self.lag
                .get_or_create(&vec![
                    ("group".to_string(), group),
                    ("topic".to_string(), topic),
                ])
                .set(records);
        }
    }

    pub(crate) fn record(&self, r: &CycleReport) {
        self.cycles.inc();
        self.bytes_in.inc_by(r.bytes_in);
        self.bytes_out.inc_by(r.bytes_out);
        self.files_written.inc_by(r.runs);
        self.records.inc_by(r.records_compacted);
        self.conflicts.inc_by(r.conflicts);
        self.failed_runs.inc_by(r.failed_runs);
        self.objects_deleted
            .inc_by(r.objects_deleted + r.orphans_deleted);
        self.retention_bytes.inc_by(r.retention_bytes_removed);
        self.table_commits.inc_by(r.table_commits);
        self.failed_table_commits.inc_by(r.failed_table_commits);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
