//! What this CPU can run, detected once, and which SIMD level the kernels use.
//!
//! Detection reads CPUID (through `is_x86_feature_detected!`, which also checks that the OS saves
//! the wider registers) and, for AMX, asks the kernel for the tile-data state with
//! `arch_prctl(ARCH_REQ_XCOMP_PERM)`: Linux ≥ 5.16 grants AMX only to processes that request it,
//! so "the CPU has AMX" and "this process may use AMX" are two different facts and both are
//! reported.
//!
//! `SILICA_ISA=portable|avx2|avx512|neon` caps the level the kernels dispatch to (never raises it
//! above what the CPU has): the benchmarks and tests use it to measure and check every path on
//! one machine. Any cap, `avx512` included, also turns off the AMX kernels ([`Isa::amx`]), so
//! `SILICA_ISA=avx512` measures the AVX-512 paths on an AMX host.

use std::sync::OnceLock;

/// The SIMD level a kernel runs at, from narrowest to widest.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain Rust, auto-vectorized by the compiler for the baseline target.
    Portable,
    /// AVX2 + FMA + F16C (x86-64-v3).
    Avx2,
    /// AVX-512 F/BW/VL (x86-64-v4): 16 f32 lanes.
    Avx512,
    /// AArch64 Advanced SIMD (Graviton): 4 f32 lanes.
    Neon,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Neon => "neon",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "none" => Level::Portable,
            "avx2" => Level::Avx2,
            "avx512" | "avx-512" | "avx512f" => Level::Avx512,
            "neon" => Level::Neon,
            _ => return None,
        })
    }

    /// f32 lanes of one vector register at this level.
    pub fn f32_lanes(self) -> usize {
        match self {
            Level::Portable => 1,
            Level::Avx2 => 8,
            Level::Avx512 => 16,
            Level::Neon => 4,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU's features that silica's kernels care about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2_fma_f16c: bool,
    /// AVX-512 F + BW + VL (what the Avx512 kernels are compiled for).
    pub avx512: bool,
    pub avx512_bf16: bool,
    pub avx512_vnni: bool,
    pub avx512_fp16: bool,
    pub avx_vnni: bool,
    /// The CPU reports AMX tiles (CPUID.7.0:EDX[24]) with BF16 / INT8 (EDX[22], EDX[25]).
    pub amx_tile: bool,
    pub amx_bf16: bool,
    pub amx_int8: bool,
    /// The kernel granted this process the AMX tile-data state (`arch_prctl`).
    pub amx_granted: bool,
    pub neon: bool,
}

/// What was detected and the level the kernels dispatch to.
#[derive(Clone, Debug)]
pub struct Isa {
    pub features: Features,
    /// The widest level the CPU supports.
    pub widest: Level,
    /// The level in use: `widest`, or lower when `SILICA_ISA` caps it.
    pub level: Level,
    /// Why the level differs from `widest`, or why `SILICA_ISA` was not applied.
    pub note: Option<String>,
    /// Whether the AMX-BF16 kernels run ([`crate::amx`]): the CPU has AMX-BF16, the kernel
    /// granted the tile state, the level is AVX-512 and `SILICA_ISA` caps nothing.
    pub amx: bool,
}

impl Isa {
    /// The comma-separated feature list, e.g. `avx2,avx512,avx512-bf16,amx-bf16 (granted)`.
    pub fn feature_list(&self) -> String {
        let f = &self.features;
        let mut v: Vec<&str> = Vec::new();
        let mut push = |on: bool, name: &'static str| {
            if on {
                v.push(name)
            }
        };
        push(f.avx2_fma_f16c, "avx2+fma+f16c");
        push(f.avx512, "avx512f/bw/vl");
        push(f.avx512_bf16, "avx512-bf16");
        push(f.avx512_vnni, "avx512-vnni");
        push(f.avx512_fp16, "avx512-fp16");
        push(f.avx_vnni, "avx-vnni");
        push(f.amx_bf16, "amx-bf16");
        push(f.amx_int8, "amx-int8");
        push(f.neon, "neon");
        let mut s = if v.is_empty() {
            "baseline only".to_string()
        } else {
            v.join(",")
        };
        if f.amx_tile {
            s.push_str(if f.amx_granted {
                " (AMX granted by the kernel)"
            } else {
                " (AMX not granted by the kernel)"
            });
        }
        s
    }

    /// Whether kernels may run at `level` on this machine (at or below the widest level of the
    /// same family).
    pub fn supports(&self, level: Level) -> bool {
        match level {
            Level::Portable => true,
            Level::Avx2 => self.features.avx2_fma_f16c,
            Level::Avx512 => self.features.avx512 && self.features.avx2_fma_f16c,
            Level::Neon => self.features.neon,
        }
    }

    /// Every level this machine supports, narrowest first (what the tests iterate over).
    pub fn supported_levels(&self) -> Vec<Level> {
        [Level::Portable, Level::Avx2, Level::Avx512, Level::Neon]
            .into_iter()
            .filter(|&l| self.supports(l))
            .collect()
    }
}

/// The process-wide detection result (computed on first use).
pub fn isa() -> &'static Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    ISA.get_or_init(|| detect(std::env::var("SILICA_ISA").ok().as_deref()))
}

/// The level the kernels dispatch to.
#[inline]
pub fn level() -> Level {
    isa().level
}

fn detect(cap: Option<&str>) -> Isa {
    let features = features();
    let widest = if features.neon {
        Level::Neon
    } else if features.avx512 && features.avx2_fma_f16c {
        Level::Avx512
    } else if features.avx2_fma_f16c {
        Level::Avx2
    } else {
        Level::Portable
    };
    let amx = widest == Level::Avx512 && features.amx_bf16 && features.amx_granted;
    let mut isa = Isa {
        features,
        widest,
        level: widest,
        note: None,
        amx,
    };
    if let Some(c) = cap.filter(|c| !c.trim().is_empty()) {
        isa.amx = false;
        match Level::parse(c) {
            Some(l) if isa.supports(l) => {
                if l != widest {
                    isa.note = Some(format!("SILICA_ISA={c} caps the kernels at {l}"));
                }
                isa.level = l;
            }
            Some(l) => {
                isa.note = Some(format!(
                    "SILICA_ISA={c} ignored: this CPU has no {l}; using {widest}"
                ))
            }
            None => {
                isa.note = Some(format!(
                "SILICA_ISA={c} ignored: expected portable, avx2, avx512 or neon; using {widest}"
            ))
            }
        }
    }
    isa
}

#[cfg(target_arch = "x86_64")]
fn features() -> Features {
    use std::arch::is_x86_feature_detected as has;
    let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
    // CPUID leaf 7 subleaf 0, EDX: AMX-BF16 bit 22, AMX-TILE bit 24, AMX-INT8 bit 25.
    // Leaf 7 is read only when the CPU reports it (max leaf ≥ 7).
    let edx7 = if std::arch::x86_64::__cpuid(0).eax >= 7 {
        std::arch::x86_64::__cpuid_count(7, 0).edx
    } else {
        0
    };
    let amx_tile = edx7 & (1 << 24) != 0;
    Features {
        avx2_fma_f16c: has!("avx2") && has!("fma") && has!("f16c"),
        avx512,
        avx512_bf16: avx512 && has!("avx512bf16"),
        avx512_vnni: avx512 && has!("avx512vnni"),
        avx512_fp16: avx512 && has!("avx512fp16"),
        avx_vnni: has!("avxvnni"),
        amx_tile,
        amx_bf16: amx_tile && edx7 & (1 << 22) != 0,
        amx_int8: amx_tile && edx7 & (1 << 25) != 0,
        amx_granted: amx_tile && request_amx(),
        neon: false,
    }
}

/// Asks Linux for the AMX tile-data state (XFEATURE_XTILEDATA = 18) for this process.
#[cfg(target_arch = "x86_64")]
fn request_amx() -> bool {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes an integer feature number and only
        // changes this process's permitted xsave state; it touches no memory of ours.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(target_arch = "aarch64")]
fn features() -> Features {
    Features {
        neon: std::arch::is_aarch64_feature_detected!("neon"),
        ..Features::default()
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn features() -> Features {
    Features::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_lowers_the_level_and_never_raises_it() {
        let full = detect(None);
        assert_eq!(full.level, full.widest);
        let p = detect(Some("portable"));
        assert_eq!(p.level, Level::Portable);
        if full.widest != Level::Portable {
            assert!(p.note.as_deref().unwrap().contains("caps"));
        }
        assert!(!p.amx && !detect(Some("avx512")).amx, "a cap turns AMX off");
        let bad = detect(Some("avx9000"));
        assert_eq!(bad.level, full.widest);
        assert!(bad.note.unwrap().contains("expected portable"));
        // A level the CPU lacks is ignored with a note.
        for l in [Level::Avx2, Level::Avx512, Level::Neon] {
            let d = detect(Some(l.name()));
            if full.supports(l) {
                assert_eq!(d.level, l);
            } else {
                assert_eq!(d.level, full.widest);
                assert!(d.note.unwrap().contains("has no"));
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for l in [Level::Portable, Level::Avx2, Level::Avx512, Level::Neon] {
            assert_eq!(Level::parse(l.name()), Some(l));
        }
    }
}
