//! Codec names on the command line (`zstd`, `lz4`, `none`) and in output.

use cairn_client::Codec;

/// A codec as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CodecArg {
    /// Zstandard: the smallest frames.
    Zstd,
    /// The LZ4 frame format: faster, larger.
    Lz4,
    /// No compression.
    None,
}

impl From<CodecArg> for Codec {
    fn from(c: CodecArg) -> Self {
        match c {
            CodecArg::Zstd => Codec::Zstd,
            CodecArg::Lz4 => Codec::Lz4Frame,
            CodecArg::None => Codec::None,
        }
    }
}

/// The command-line name of a codec as the wire carries it (`unknown` for a value this build
/// does not know, `unspecified` for 0).
pub(crate) fn codec_name(code: i32) -> &'static str {
    match Codec::try_from(code) {
        Ok(Codec::Zstd) => "zstd",
        Ok(Codec::Lz4Frame) => "lz4",
        Ok(Codec::None) => "none",
        Ok(Codec::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_value_prints_as_its_own_name() {
        use clap::ValueEnum;
        for arg in CodecArg::value_variants() {
            let name = arg.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(name.as_deref(), Some(codec_name(Codec::from(*arg) as i32)));
        }
        assert_eq!(codec_name(99), "unknown");
    }
}
