//! What `silica doctor` reports about PJRT: which plugin (or where it looked), its API version,
//! the platform and devices, or the exact reason it cannot run here.

use crate::client::Client;
use crate::ffi;
use crate::plugin::{not_found, search, Plugin, SearchConfig, MIN_API_MINOR};
use serde::Serialize;
use std::fmt;

/// The state of the PJRT backend on this machine.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProbeReport {
    /// True when a client was created on at least one device: `--backend pjrt` will run.
    pub ready: bool,
    /// The plugin found, if any.
    pub plugin: Option<String>,
    /// Every place looked at, in order.
    pub searched: Vec<String>,
    /// `PJRT_Api.pjrt_api_version` of the plugin, "major.minor".
    pub plugin_api_version: Option<String>,
    /// The header silica's structs come from, and the oldest plugin API accepted.
    pub header_api_version: String,
    pub min_plugin_api_version: String,
    /// `PJRT_Plugin_Attributes` (e.g. xla_version, stablehlo versions).
    pub attributes: Vec<(String, String)>,
    /// `PJRT_Client_PlatformName` / `PlatformVersion`.
    pub platform: Option<String>,
    pub platform_version: Option<String>,
    /// Addressable devices (kind and description); silica runs on the first.
    pub devices: Vec<String>,
    /// Why it cannot run, when `ready` is false.
    pub reason: Option<String>,
    /// Caveats that do not stop it (e.g. a plugin newer than silica's header).
    pub notes: Vec<String>,
}

/// Looks for the plugin, loads it and tries to create a client. Never fails: problems become
/// `reason`.
pub fn probe() -> ProbeReport {
    probe_with(&SearchConfig::from_env())
}

/// [`probe`] with an explicit search configuration.
pub fn probe_with(cfg: &SearchConfig) -> ProbeReport {
    let s = search(cfg);
    let mut r = ProbeReport {
        ready: false,
        plugin: s.found.as_ref().map(|p| p.display().to_string()),
        searched: s.searched.clone(),
        plugin_api_version: None,
        header_api_version: format!("{}.{}", ffi::PJRT_API_MAJOR, ffi::PJRT_API_MINOR),
        min_plugin_api_version: format!("{}.{}", ffi::PJRT_API_MAJOR, MIN_API_MINOR),
        attributes: Vec::new(),
        platform: None,
        platform_version: None,
        devices: Vec::new(),
        reason: None,
        notes: Vec::new(),
    };
    let Some(path) = s.found.clone() else {
        r.reason = Some(not_found(cfg, s).to_string());
        return r;
    };
    let plugin = match Plugin::load(&path) {
        Ok(p) => p,
        Err(e) => {
            r.reason = Some(e.to_string());
            return r;
        }
    };
    let (maj, min) = plugin.api_version();
    r.plugin_api_version = Some(format!("{maj}.{min}"));
    r.attributes = plugin.attributes().to_vec();
    if min > ffi::PJRT_API_MINOR {
        r.notes.push(format!(
            "the plugin (API {maj}.{min}) is newer than silica's header ({}.{}): a call whose \
             argument struct grew since would be rejected with \"Unexpected … size\" \
             (the structs silica uses were checked unchanged up to 0.116)",
            ffi::PJRT_API_MAJOR,
            ffi::PJRT_API_MINOR
        ));
    }
    match Client::new(plugin) {
        Ok(c) => {
            r.platform = Some(c.platform().to_string());
            r.platform_version = Some(c.platform_version().to_string());
            r.devices = c.devices().to_vec();
            r.ready = true;
        }
        Err(e) => r.reason = Some(e.to_string()),
    }
    r
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ready {
            writeln!(f, "pjrt: ready")?;
        } else {
            writeln!(f, "pjrt: unavailable")?;
        }
        match &self.plugin {
            Some(p) => writeln!(f, "  plugin: {p}")?,
            None => writeln!(f, "  plugin: not found")?,
        }
        if let Some(v) = &self.plugin_api_version {
            writeln!(
                f,
                "  plugin API {v} (silica's header {}, accepts {} or newer)",
                self.header_api_version, self.min_plugin_api_version
            )?;
        }
        for (k, v) in &self.attributes {
            writeln!(f, "  {k}: {v}")?;
        }
        if let Some(p) = &self.platform {
            writeln!(
                f,
                "  platform: {p} {}",
                self.platform_version.as_deref().unwrap_or("")
            )?;
        }
        for d in &self.devices {
            writeln!(f, "  device: {d}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        if let Some(why) = &self.reason {
            for (i, line) in why.lines().enumerate() {
                if i == 0 {
                    writeln!(f, "  reason: {line}")?;
                } else {
                    writeln!(f, "    {line}")?;
                }
            }
        }
        if self.plugin.is_some() {
            return Ok(());
        }
        writeln!(f, "  searched:")?;
        for s in &self.searched {
            writeln!(f, "    - {s}")?;
        }
        Ok(())
    }
}
