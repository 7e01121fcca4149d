//! Configuration text: the agent's fault spec (`CAIRN_TEST_FAULTS`, parsed by
//! `FaultSpec::from_str`) and its tuning settings (`AgentSettings`, deserialized from TOML
//! and validated), both as a whole document and as the `[tuning]` table of the CLI's
//! config file.
#![no_main]

use std::str::FromStr;

use cairn_agent::{AgentSettings, FaultSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = FaultSpec::from_str(text) {
        let _ = spec.is_active();
    }
    if let Ok(settings) = toml::from_str::<AgentSettings>(text) {
        let _ = settings.validate();
    }
    if let Ok(table) = toml::from_str::<toml::Table>(text) {
        if let Some(tuning) = table.get("tuning") {
            if let Ok(settings) = tuning.clone().try_into::<AgentSettings>() {
                let _ = settings.validate();
            }
        }
    }
});
