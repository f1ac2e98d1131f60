//! `silica doctor`: for each backend, whether it can run here and exactly why not.
//!
//! The report is a list of [`Section`]s, one per backend, each with named checks. A backend adds
//! itself by writing a `fn …_section() -> Section` and listing it in [`sections`].

use anyhow::Result;
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One fact checked for a backend.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    /// `true`: fine; `false`: a problem; `null`: informational.
    pub ok: Option<bool>,
    pub detail: String,
}

impl Check {
    fn new(name: &str, ok: Option<bool>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }
}

/// A backend's verdict and the checks behind it.
#[derive(Clone, Debug, Serialize)]
pub struct Section {
    /// The `--backend` name.
    pub backend: &'static str,
    pub available: bool,
    /// Why not, when unavailable (the first blocking problem, in full).
    pub reason: Option<String>,
    pub checks: Vec<Check>,
}

/// Every backend's section, in `--backend` order.
pub fn sections() -> Vec<Section> {
    vec![cpu_section(), neuron_section(), pjrt_section()]
}

fn cpu_section() -> Section {
    let h = silica_probe::host_info();
    Section {
        backend: "cpu",
        available: true,
        reason: None,
        checks: vec![Check::new(
            "host",
            Some(true),
            format!(
                "{} ({} logical cores, {} {})",
                h.cpu_model, h.logical_cores, h.os, h.arch
            ),
        )],
    }
}

fn neuron_section() -> Section {
    let p = silica_neuron::probe();
    let mut checks = Vec::new();
    let mut reason: Option<String> = None;
    let mut block = |r: &str| {
        if reason.is_none() {
            reason = Some(r.to_string());
        }
    };
    match &p.library {
        Ok((path, version)) => checks.push(Check::new(
            "libnrt",
            Some(true),
            format!("{path}, version {version}"),
        )),
        Err(e) => {
            checks.push(Check::new("libnrt", Some(false), e.clone()));
            block(e);
        }
    }
    match &p.init {
        Some(Ok(())) => checks.push(Check::new("nrt_init", Some(true), "runtime initialized")),
        Some(Err(e)) => {
            checks.push(Check::new("nrt_init", Some(false), e.clone()));
            block(e);
        }
        None => checks.push(Check::new(
            "nrt_init",
            Some(false),
            "not attempted: no libnrt",
        )),
    }
    match &p.cores {
        Some(Ok(Some(0))) => {
            let m = "no NeuronCores visible (NEURON_RT_VISIBLE_CORES, or other processes hold them: see neuron-top)";
            checks.push(Check::new("NeuronCores", Some(false), m));
            block(m);
        }
        Some(Ok(Some(n))) => checks.push(Check::new(
            "NeuronCores",
            Some(true),
            format!("{n} visible"),
        )),
        Some(Ok(None)) => checks.push(Check::new(
            "NeuronCores",
            None,
            "this libnrt cannot report the visible count",
        )),
        Some(Err(e)) => {
            checks.push(Check::new("NeuronCores", Some(false), e.clone()));
            block(e);
        }
        None => checks.push(Check::new(
            "NeuronCores",
            Some(false),
            "not checked: no libnrt",
        )),
    }
    if let Some(id) = &p.root_comm_id {
        checks.push(Check::new("collectives root", None, id.to_string()));
    }
    checks.push(Check::new(
        "devices",
        None,
        if p.devices.is_empty() {
            "no /dev/neuron* (the Neuron driver, aws-neuronx-dkms, is not loaded)".to_string()
        } else {
            p.devices
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    ));
    match &p.target {
        Ok(t) => checks.push(Check::new("target", Some(true), t.to_string())),
        Err(e) => {
            checks.push(Check::new("target", Some(false), e.clone()));
            if p.library.is_ok() {
                block(e);
            }
        }
    }
    match &p.compiler {
        Ok((path, v)) => checks.push(Check::new(
            "neuronx-cc",
            Some(true),
            format!("{} ({v})", path.display()),
        )),
        // Not blocking: NEFFs already in the cache run without the compiler.
        Err(e) => checks.push(Check::new(
            "neuronx-cc",
            Some(false),
            format!("{e}; only NEFFs already in the cache can run"),
        )),
    }
    checks.push(Check::new(
        "NEFF cache",
        None,
        silica_neuron::compile::default_cache_dir()
            .display()
            .to_string(),
    ));
    Section {
        backend: "neuron",
        available: reason.is_none(),
        reason,
        checks,
    }
}

fn pjrt_section() -> Section {
    let p = silica_pjrt::probe();
    let mut checks = Vec::new();
    match &p.plugin {
        Some(path) => checks.push(Check::new("plugin", Some(true), path.clone())),
        None => checks.push(Check::new(
            "plugin",
            Some(false),
            format!(
                "no PJRT plugin found (bash scripts/pjrt_plugin.sh installs jax's CUDA plugin, or set SILICA_PJRT_PLUGIN); looked in:\n{}",
                p.searched.join("\n")
            ),
        )),
    }
    if let Some(v) = &p.plugin_api_version {
        checks.push(Check::new(
            "PJRT API",
            None,
            format!(
                "plugin {v}; silica's header {}, oldest accepted {}",
                p.header_api_version, p.min_plugin_api_version
            ),
        ));
    }
    if let Some(platform) = &p.platform {
        checks.push(Check::new(
            "platform",
            Some(true),
            format!(
                "{platform} {}",
                p.platform_version.as_deref().unwrap_or_default()
            ),
        ));
    }
    if !p.devices.is_empty() {
        checks.push(Check::new("devices", Some(true), p.devices.join(", ")));
    }
    for n in &p.notes {
        checks.push(Check::new("note", None, n.clone()));
    }
    Section {
        backend: "pjrt",
        available: p.ready,
        reason: if p.ready {
            None
        } else {
            Some(
                p.reason
                    .clone()
                    .unwrap_or_else(|| "the PJRT plugin cannot run here".into()),
            )
        },
        checks,
    }
}

fn render(sections: &[Section]) -> String {
    let mut s = String::new();
    for sec in sections {
        match &sec.reason {
            None => s.push_str(&format!("{}: available\n", sec.backend)),
            Some(r) => s.push_str(&format!(
                "{}: unavailable — {}\n",
                sec.backend,
                r.lines().next().unwrap_or("")
            )),
        }
        for c in &sec.checks {
            let mark = match c.ok {
                Some(true) => "ok",
                Some(false) => "NO",
                None => "--",
            };
            let mut lines = c.detail.lines();
            s.push_str(&format!(
                "  [{mark}] {}: {}\n",
                c.name,
                lines.next().unwrap_or("")
            ));
            for l in lines {
                s.push_str(&format!("         {l}\n"));
            }
        }
    }
    s
}

pub fn doctor(a: DoctorArgs) -> Result<()> {
    let secs = sections();
    if a.json {
        println!("{}", serde_json::json!({ "backends": secs }));
    } else {
        print!("{}", render(&secs));
    }
    Ok(())
}
