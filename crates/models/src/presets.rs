//! Architecture presets: the Hugging Face `config.json` of well-known models (from
//! `models/presets/`, embedded at build time), for building a model of the real shape with
//! random weights when no checkpoint is at hand.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use std::path::Path;

include!(concat!(env!("OUT_DIR"), "/presets.rs"));

/// The preset `bench` uses by default: small enough for about a minute on 2 CPU cores.
pub const DEFAULT_PRESET: &str = "silica-tiny";

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// Looks a preset up by name (case-insensitive).
pub fn preset(name: &str) -> Result<ModelConfig> {
    let (n, text) = PRESETS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .ok_or_else(|| ModelError::UnknownPreset {
            name: name.to_string(),
            available: names().join(", "),
        })?;
    ModelConfig::from_json_str(text, Path::new(&format!("preset {n}")))
}

/// The canonical spelling of a preset name.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    PRESETS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(n, _)| *n)
}
