//! Conversions between the wire types (`cairn.v2`) and the metadata layer's, and the
//! paging every List call shares.

use cairn_metadata::{Codec, Topic};
use cairn_proto::v2;

use crate::AgentError;

/// A topic's codec as the wire enum.
pub(crate) fn codec_to_proto(c: Codec) -> v2::Codec {
    match c {
        Codec::None => v2::Codec::None,
        Codec::Zstd => v2::Codec::Zstd,
        Codec::Lz4 => v2::Codec::Lz4Frame,
    }
}

/// A wire codec as a topic's codec (`UNSPECIFIED` selects zstd).
pub(crate) fn codec_from_proto(code: i32) -> Result<Codec, AgentError> {
    match v2::Codec::try_from(code) {
        Ok(v2::Codec::Unspecified | v2::Codec::Zstd) => Ok(Codec::Zstd),
        Ok(v2::Codec::None) => Ok(Codec::None),
        Ok(v2::Codec::Lz4Frame) => Ok(Codec::Lz4),
        Err(_) => Err(AgentError::Invalid(format!(
            "unknown codec {code}: use NONE (1), ZSTD (2) or LZ4_FRAME (3)"
        ))),
    }
}

/// A topic as the wire `TopicInfo`.
pub(crate) fn topic_info(t: &Topic) -> v2::TopicInfo {
    v2::TopicInfo {
        name: t.name.clone(),
        topic_id: t.id,
        partitions: t.partitions,
        codec: codec_to_proto(t.codec) as i32,
        retention_ms: (t.retention_ms >= 0).then_some(t.retention_ms),
        retention_bytes: (t.retention_bytes >= 0).then_some(t.retention_bytes),
        created_at_ms: t.created_at_ms,
        value_schema: t.value_schema.clone(),
        value_columns: t
            .value_columns
            .iter()
            .map(|c| v2::ValueColumn {
                name: c.name.clone(),
                r#type: c.kind.clone(),
            })
            .collect(),
    }
}

/// A page of `items` (sorted by `key`) after `token`, at most `size` long (1..=1,000,
/// default 1,000), and the next page's token.
pub(crate) fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    size: Option<u32>,
    token: &str,
) -> Result<(Vec<T>, String), AgentError> {
    let size = match size {
        None => 1_000,
        Some(n @ 1..=1_000) => n as usize,
        Some(n) => {
            return Err(AgentError::Invalid(format!(
                "page_size must be between 1 and 1000, got {n}"
            )));
        }
    };
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|i| token.is_empty() || key(i).as_str() > token)
        .collect();
    let more = rest.len() > size;
    rest.truncate(size);
    let next = match (more, rest.last()) {
        (true, Some(last)) => key(last),
        _ => String::new(),
    };
    Ok((rest, next))
}
