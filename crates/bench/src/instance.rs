//! Which EC2 instance and which accelerators this is — without network traffic off EC2.
//!
//! Instance type, first answer wins: `--instance` flag > `SILICA_INSTANCE` env > DMI
//! (`/sys/devices/virtual/dmi/id/product_name`, the instance type on Nitro, trusted only when
//! `sys_vendor` is `Amazon EC2`) > IMDSv2 > none. IMDS (169.254.169.254) is contacted **only** when
//! DMI says this is EC2 but `product_name` is not an instance type; [`decide`] makes that choice
//! from file contents alone, so it is tested with fake DMI contents.
//!
//! Accelerators: Neuron devices are `/dev/neuron<N>`; NVIDIA GPUs are
//! `/proc/driver/nvidia/gpus/<bus>/information` (its `Model:` line). Nothing is executed.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Where the instance type came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceSource {
    /// DMI `product_name` on an `Amazon EC2` machine.
    #[serde(rename = "ec2-dmi")]
    Ec2Dmi,
    /// The instance metadata service (IMDSv2).
    #[serde(rename = "ec2-imds")]
    Ec2Imds,
    /// The `--instance` flag (or an importer's instance argument).
    #[serde(rename = "flag")]
    Flag,
    /// The `SILICA_INSTANCE` environment variable.
    #[serde(rename = "env")]
    Env,
    /// Not known.
    #[default]
    #[serde(rename = "none")]
    None,
}

impl InstanceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceSource::Ec2Dmi => "ec2-dmi",
            InstanceSource::Ec2Imds => "ec2-imds",
            InstanceSource::Flag => "flag",
            InstanceSource::Env => "env",
            InstanceSource::None => "none",
        }
    }
}

/// The environment variable naming the instance type.
pub const ENV_VAR: &str = "SILICA_INSTANCE";
/// Where DMI identity files live on Linux.
pub const DMI_DIR: &str = "/sys/devices/virtual/dmi/id";

/// The instance type and where it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectedInstance {
    pub instance_type: Option<String>,
    pub source: InstanceSource,
}

/// The DMI identity strings that matter, as read (untrimmed is fine).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dmi {
    pub sys_vendor: Option<String>,
    pub product_name: Option<String>,
}

impl Dmi {
    /// Reads `sys_vendor` and `product_name` from `/sys/devices/virtual/dmi/id`.
    pub fn read() -> Dmi {
        Dmi::read_from(Path::new(DMI_DIR))
    }

    /// Reads the two files from `dir` (missing files → `None`).
    pub fn read_from(dir: &Path) -> Dmi {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        Dmi {
            sys_vendor: read("sys_vendor"),
            product_name: read("product_name"),
        }
    }

    /// `sys_vendor` is `Amazon EC2`.
    pub fn is_ec2(&self) -> bool {
        self.sys_vendor
            .as_deref()
            .is_some_and(|v| v.trim() == "Amazon EC2")
    }
}

/// What to do next, decided from local facts only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The answer is known.
    Known(DetectedInstance),
    /// This is EC2 (DMI says so) but DMI does not name the instance type: ask IMDS.
    AskImds,
    /// Not EC2 as far as DMI tells, and nothing was given: no instance type, no network.
    Unknown,
}

/// The resolution order `flag > env > DMI > IMDS > none`, from the flag, the env value and DMI
/// contents. Empty flag/env values count as absent.
pub fn decide(flag: Option<&str>, env: Option<&str>, dmi: &Dmi) -> Decision {
    let given = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(String::from);
    if let Some(v) = given(flag) {
        return Decision::Known(DetectedInstance {
            instance_type: Some(v),
            source: InstanceSource::Flag,
        });
    }
    if let Some(v) = given(env) {
        return Decision::Known(DetectedInstance {
            instance_type: Some(v),
            source: InstanceSource::Env,
        });
    }
    if !dmi.is_ec2() {
        return Decision::Unknown;
    }
    match dmi.product_name.as_deref().map(str::trim) {
        Some(p) if looks_like_instance_type(p) => Decision::Known(DetectedInstance {
            instance_type: Some(p.to_string()),
            source: InstanceSource::Ec2Dmi,
        }),
        _ => Decision::AskImds,
    }
}

/// `family.size` as EC2 names instances: `inf2.xlarge`, `trn1n.32xlarge`, `p4d.24xlarge`,
/// `u-6tb1.metal`. Rejects strings like `HVM domU` or `Standard PC (Q35 + ICH9, 2009)`.
pub fn looks_like_instance_type(s: &str) -> bool {
    let Some((family, size)) = s.split_once('.') else {
        return false;
    };
    let family_ok = family.len() >= 2
        && family.starts_with(|c: char| c.is_ascii_lowercase())
        && family.chars().any(|c| c.is_ascii_digit())
        && family
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let size_ok = !size.is_empty()
        && size
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    family_ok && size_ok
}

/// Resolves the instance type with injected facts: `imds` is called only on
/// [`Decision::AskImds`] and returns the instance type if the service answered.
pub fn detect_with(
    flag: Option<&str>,
    env: Option<&str>,
    dmi: &Dmi,
    imds: impl FnOnce() -> Option<String>,
) -> DetectedInstance {
    match decide(flag, env, dmi) {
        Decision::Known(d) => d,
        Decision::AskImds => match imds().filter(|t| looks_like_instance_type(t)) {
            Some(t) => DetectedInstance {
                instance_type: Some(t),
                source: InstanceSource::Ec2Imds,
            },
            None => DetectedInstance::default(),
        },
        Decision::Unknown => DetectedInstance::default(),
    }
}

/// Resolves the instance type on this machine: `flag`, then `$SILICA_INSTANCE`, then DMI, then
/// IMDSv2 (only on EC2, 1 s timeouts), else none.
pub fn detect_instance(flag: Option<&str>) -> DetectedInstance {
    let env = std::env::var(ENV_VAR).ok();
    detect_with(flag, env.as_deref(), &Dmi::read(), || {
        imds_instance_type(Duration::from_secs(1))
    })
}

/// The link-local instance metadata service. Only [`detect_instance`] reaches it, and only after
/// [`decide`] returned [`Decision::AskImds`].
const IMDS_ADDR: ([u8; 4], u16) = ([169, 254, 169, 254], 80);

/// IMDSv2: PUT a session token, then GET the instance type. `None` on any failure.
fn imds_instance_type(timeout: Duration) -> Option<String> {
    let token = http_request(
        "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
         X-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        timeout,
    )?;
    let token = token.trim();
    if token.is_empty() || token.contains(['\r', '\n']) {
        return None;
    }
    let body = http_request(
        &format!(
            "GET /latest/meta-data/instance-type HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             X-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
        ),
        timeout,
    )?;
    Some(body.trim().to_string())
}

/// One HTTP/1.1 exchange with IMDS; the body of a 200 response.
fn http_request(request: &str, timeout: Duration) -> Option<String> {
    let addr = SocketAddr::from(IMDS_ADDR);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = Vec::new();
    // Bounded read: the answers are a few dozen bytes.
    s.take(64 * 1024).read_to_end(&mut buf).ok()?;
    parse_http_ok_body(&String::from_utf8(buf).ok()?)
}

/// The body of an HTTP response if its status is 200 (identity or chunked encoding).
fn parse_http_ok_body(resp: &str) -> Option<String> {
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    if status.split_whitespace().nth(1)? != "200" {
        return None;
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Some(body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Accelerators visible on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accelerators {
    /// Number of `/dev/neuron<N>` devices (one per Inferentia2/Trainium chip).
    pub neuron_devices: usize,
    /// NVIDIA GPU model names, one per GPU.
    pub nvidia_gpus: Vec<String>,
}

impl Accelerators {
    /// e.g. `2 × AWS Neuron device`, `1 × NVIDIA H100 80GB HBM3`; `None` when there are none.
    pub fn description(&self) -> Option<String> {
        let mut parts = vec![];
        if self.neuron_devices > 0 {
            parts.push(format!("{} × AWS Neuron device", self.neuron_devices));
        }
        let mut models: Vec<(String, usize)> = vec![];
        for m in &self.nvidia_gpus {
            match models.iter_mut().find(|(n, _)| n == m) {
                Some((_, c)) => *c += 1,
                None => models.push((m.clone(), 1)),
            }
        }
        parts.extend(models.into_iter().map(|(m, c)| format!("{c} × {m}")));
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Accelerators of this machine, from `/dev` and `/proc/driver/nvidia/gpus`.
pub fn detect_accelerators() -> Accelerators {
    detect_accelerators_in(Path::new("/dev"), Path::new("/proc/driver/nvidia/gpus"))
}

/// Accelerators from a device directory and an NVIDIA `gpus` directory (for tests).
pub fn detect_accelerators_in(dev_dir: &Path, nvidia_gpus_dir: &Path) -> Accelerators {
    let neuron_devices = std::fs::read_dir(dev_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.strip_prefix("neuron")
                            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    })
                })
                .count()
        })
        .unwrap_or(0);
    let mut gpus: Vec<(String, String)> = std::fs::read_dir(nvidia_gpus_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let info = std::fs::read_to_string(e.path().join("information")).ok()?;
                    let model = info
                        .lines()
                        .find_map(|l| l.strip_prefix("Model:"))
                        .map(|m| m.trim().to_string())
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| "NVIDIA GPU".into());
                    Some((e.file_name().to_string_lossy().into_owned(), model))
                })
                .collect()
        })
        .unwrap_or_default();
    gpus.sort();
    Accelerators {
        neuron_devices,
        nvidia_gpus: gpus.into_iter().map(|(_, m)| m).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(vendor: &str, product: &str) -> Dmi {
        Dmi {
            sys_vendor: Some(format!("{vendor}\n")),
            product_name: Some(format!("{product}\n")),
        }
    }

    fn never() -> Option<String> {
        panic!("IMDS must not be contacted here")
    }

    #[test]
    fn resolution_order() {
        let ec2 = dmi("Amazon EC2", "inf2.xlarge");
        let d = detect_with(Some("trn1.2xlarge"), Some("g5.xlarge"), &ec2, never);
        assert_eq!(d.instance_type.as_deref(), Some("trn1.2xlarge"));
        assert_eq!(d.source, InstanceSource::Flag);
        let d = detect_with(None, Some("g5.xlarge"), &ec2, never);
        assert_eq!(
            (d.instance_type.as_deref(), d.source),
            (Some("g5.xlarge"), InstanceSource::Env)
        );
        let d = detect_with(Some("  "), Some(""), &ec2, never);
        assert_eq!(
            (d.instance_type.as_deref(), d.source),
            (Some("inf2.xlarge"), InstanceSource::Ec2Dmi)
        );
    }

    #[test]
    fn non_ec2_machines_never_reach_imds() {
        for d in [
            Dmi::default(),
            dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)"),
            dmi("Google", "Google Compute Engine"),
            // An instance-type-looking product name is not trusted off EC2.
            dmi("innotek GmbH", "inf2.xlarge"),
            dmi("Xen", "HVM domU"),
        ] {
            assert_eq!(decide(None, None, &d), Decision::Unknown, "{d:?}");
            assert_eq!(
                detect_with(None, None, &d, never),
                DetectedInstance::default()
            );
        }
    }

    #[test]
    fn ec2_without_a_type_in_dmi_asks_imds() {
        let d = dmi("Amazon EC2", "Not Specified");
        assert_eq!(decide(None, None, &d), Decision::AskImds);
        let got = detect_with(None, None, &d, || Some("trn1.32xlarge".into()));
        assert_eq!(got.instance_type.as_deref(), Some("trn1.32xlarge"));
        assert_eq!(got.source, InstanceSource::Ec2Imds);
        // IMDS unreachable or nonsense → none.
        assert_eq!(
            detect_with(None, None, &d, || None),
            DetectedInstance::default()
        );
        assert_eq!(
            detect_with(None, None, &d, || Some("<html>".into())),
            DetectedInstance::default()
        );
        let no_product = Dmi {
            sys_vendor: Some("Amazon EC2".into()),
            product_name: None,
        };
        assert_eq!(decide(None, None, &no_product), Decision::AskImds);
    }

    #[test]
    fn instance_type_shapes() {
        for ok in [
            "inf2.xlarge",
            "inf2.48xlarge",
            "trn1n.32xlarge",
            "p4d.24xlarge",
            "g6e.xlarge",
            "m7i-flex.large",
            "u-6tb1.metal",
        ] {
            assert!(looks_like_instance_type(ok), "{ok}");
        }
        for bad in [
            "HVM domU",
            "Not Specified",
            "",
            "inf2",
            ".xlarge",
            "Inf2.xlarge",
            "a.b",
        ] {
            assert!(!looks_like_instance_type(bad), "{bad}");
        }
    }

    #[test]
    fn dmi_files_are_read_from_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sys_vendor"), "Amazon EC2\n").unwrap();
        std::fs::write(dir.path().join("product_name"), "inf2.8xlarge\n").unwrap();
        let d = Dmi::read_from(dir.path());
        assert!(d.is_ec2());
        let got = detect_with(None, None, &d, never);
        assert_eq!(got.instance_type.as_deref(), Some("inf2.8xlarge"));
        assert_eq!(got.source, InstanceSource::Ec2Dmi);
        assert_eq!(Dmi::read_from(&dir.path().join("missing")), Dmi::default());
    }

    #[test]
    fn http_bodies() {
        assert_eq!(
            parse_http_ok_body("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\ninf2.xlarge"),
            Some("inf2.xlarge".into())
        );
        assert_eq!(
            parse_http_ok_body(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ninf2\r\n7\r\n.xlarge\r\n0\r\n\r\n"
            ),
            Some("inf2.xlarge".into())
        );
        assert_eq!(
            parse_http_ok_body("HTTP/1.1 401 Unauthorized\r\n\r\nno"),
            None
        );
        assert_eq!(parse_http_ok_body("garbage"), None);
    }

    #[test]
    fn accelerators_from_fake_dirs() {
        let dev = tempfile::tempdir().unwrap();
        for f in ["neuron0", "neuron1", "neuron_x", "null", "nvidia0"] {
            std::fs::write(dev.path().join(f), "").unwrap();
        }
        let gpus = tempfile::tempdir().unwrap();
        for (bus, model) in [
            ("0000:01:00.0", "NVIDIA H100 80GB HBM3"),
            ("0000:02:00.0", "NVIDIA H100 80GB HBM3"),
        ] {
            std::fs::create_dir(gpus.path().join(bus)).unwrap();
            std::fs::write(
                gpus.path().join(bus).join("information"),
                format!("Model: \t\t {model}\nIRQ:   34\nGPU UUID: GPU-x\n"),
            )
            .unwrap();
        }
        let a = detect_accelerators_in(dev.path(), gpus.path());
        assert_eq!(a.neuron_devices, 2);
        assert_eq!(a.nvidia_gpus.len(), 2);
        assert_eq!(
            a.description().unwrap(),
            "2 × AWS Neuron device, 2 × NVIDIA H100 80GB HBM3"
        );
        let none = detect_accelerators_in(&dev.path().join("x"), &gpus.path().join("y"));
        assert_eq!(none, Accelerators::default());
        assert_eq!(none.description(), None);
        // The real machine: must not panic.
        let _ = detect_accelerators();
    }
}
