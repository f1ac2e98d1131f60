//! Machine limits measured *in the same run* as a benchmark, so that results are quoted as a ratio
//! to what this machine can do right now (shared 2-core machines drift by tens of percent).
//!
//! - [`memory_bandwidth`]: multi-threaded streaming read of a buffer far larger than the caches —
//!   the ceiling for decode, which reads every weight once per token.
//! - [`fma_peak`]: independent FMA chains held in registers on every thread — the f32 compute
//!   ceiling for prefill and training.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use silica_kernels::Level;
use std::time::Instant;

/// Limits measured on this machine.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MachineLimits {
    /// Streaming read bandwidth, GB/s (1e9 bytes).
    pub mem_read_gbps: f64,
    /// f32 FMA peak over all threads, GFLOP/s (an FMA counts 2).
    pub fma_peak_gflops: f64,
    pub threads: usize,
    /// SIMD path the peak was measured with (`avx512f`, `avx2+fma`, `portable`).
    /// It is what the kernels dispatch to on this CPU (`silica_kernels::isa`).
    pub simd: String,
    /// AMX-BF16 peak over all threads, GFLOP/s, where the AMX kernels run: the compute limit
    /// of a bf16 prefill whose products run on AMX tiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amx_bf16_peak_gflops: Option<f64>,
}

/// Measures both limits (about a second in total).
pub fn measure(quick: bool) -> MachineLimits {
    let bytes = if quick { 256 << 20 } else { 512 << 20 };
    MachineLimits {
        mem_read_gbps: memory_bandwidth(bytes, if quick { 3 } else { 5 }),
        fma_peak_gflops: fma_peak(if quick { 0.15 } else { 0.4 }),
        amx_bf16_peak_gflops: amx_bf16_peak(if quick { 0.15 } else { 0.4 }),
        threads: rayon::current_num_threads(),
        simd: simd_name().to_string(),
    }
}

/// The SIMD path the FMA peak is measured with: the widest the kernels dispatch to
/// (`silica_kernels::isa`, so `SILICA_ISA` caps both), since a peak the kernels cannot reach
/// would make "% of peak" meaningless, and a narrower one flattering.
fn simd_name() -> &'static str {
    match fma_level() {
        Level::Avx512 => "avx512f",
        Level::Avx2 => "avx2+fma",
        _ => "portable",
    }
}

fn fma_level() -> Level {
    match silica_kernels::level() {
        l @ (Level::Avx512 | Level::Avx2) => l,
        _ => Level::Portable,
    }
}

/// Best of `reps` multi-threaded reads of a `bytes`-sized buffer, in GB/s.
pub fn memory_bandwidth(bytes: usize, reps: usize) -> f64 {
    let n = bytes / 4;
    // Touch every page (and make the values non-trivial) before timing.
    let buf: Vec<f32> = (0..n).into_par_iter().map(|i| (i & 1023) as f32).collect();
    let chunk = (n / (rayon::current_num_threads() * 8)).max(1 << 16);
    let mut best = 0f64;
    let mut sink = 0f32;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let s: f32 = buf.par_chunks(chunk).map(sum_f32).sum();
        let dt = t.elapsed().as_secs_f64();
        sink += s;
        best = best.max(bytes as f64 / dt / 1e9);
    }
    std::hint::black_box(sink);
    best
}

fn sum_f32(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: avx2 is present.
        return unsafe { x86::sum(x) };
    }
    let mut acc = [0f32; 16];
    for c in x.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + x.chunks_exact(16).remainder().iter().sum::<f32>()
}

/// f32 GFLOP/s of register-resident FMA chains on all threads for about `seconds`.
pub fn fma_peak(seconds: f64) -> f64 {
    rate_on_all_threads(seconds, |iters| std::hint::black_box(fma_kernel(iters)).1)
}

/// AMX-BF16 GFLOP/s of register-resident tile products on all threads for about `seconds`,
/// where the AMX kernels run (`silica_kernels::isa().amx`); `None` elsewhere.
pub fn amx_bf16_peak(seconds: f64) -> Option<f64> {
    silica_kernels::amx::peak_rounds(1)?;
    Some(rate_on_all_threads(seconds, |iters| {
        silica_kernels::amx::peak_rounds(iters).unwrap_or(0.0)
    }))
}

/// GFLOP/s of `kernel(iters) -> flops` on every rayon thread at once, calibrated on one
/// thread to run for about `seconds`.
fn rate_on_all_threads(seconds: f64, kernel: impl Fn(usize) -> f64 + Sync) -> f64 {
    let threads = rayon::current_num_threads();
    let iters_per_call = 1usize << 16;
    let t = Instant::now();
    let mut calls = 0usize;
    while t.elapsed().as_secs_f64() < seconds / 4.0 {
        kernel(iters_per_call);
        calls += 1;
    }
    let calls = (calls * 4).max(4);
    let t = Instant::now();
    let flops: f64 = (0..threads)
        .into_par_iter()
        .map(|_| (0..calls).map(|_| kernel(iters_per_call)).sum::<f64>())
        .sum();
    flops / t.elapsed().as_secs_f64() / 1e9
}

/// Runs `iters` rounds of independent FMAs; returns (checksum, flops performed).
fn fma_kernel(iters: usize) -> (f32, f64) {
    #[cfg(target_arch = "x86_64")]
    match fma_level() {
        // SAFETY: the kernels' ISA detection found these features.
        Level::Avx512 => return unsafe { x86::fma512(iters) },
        // SAFETY: as above.
        Level::Avx2 => return unsafe { x86::fma(iters) },
        _ => {}
    }
    let mut a = [1.0f32; 8];
    for _ in 0..iters {
        for x in a.iter_mut() {
            *x = *x * 0.999_999 + 1e-7;
        }
    }
    (a.iter().sum(), (iters * 8 * 2) as f64)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub unsafe fn sum(x: &[f32]) -> f32 {
        let mut a = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        let p = x.as_ptr();
        while i + 32 <= x.len() {
            a[0] = _mm256_add_ps(a[0], _mm256_loadu_ps(p.add(i)));
            a[1] = _mm256_add_ps(a[1], _mm256_loadu_ps(p.add(i + 8)));
            a[2] = _mm256_add_ps(a[2], _mm256_loadu_ps(p.add(i + 16)));
            a[3] = _mm256_add_ps(a[3], _mm256_loadu_ps(p.add(i + 24)));
            i += 32;
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(
            out.as_mut_ptr(),
            _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])),
        );
        out.iter().sum::<f32>() + x[i..].iter().sum::<f32>()
    }

    /// 12 independent 16-wide FMA chains (AVX-512 has 32 registers; 12 chains cover two FMA
    /// ports × 4-cycle latency with room to spare).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn fma512(iters: usize) -> (f32, f64) {
        let m = _mm512_set1_ps(0.999_999);
        let c = _mm512_set1_ps(1e-7);
        let mut r = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iters {
            for v in r.iter_mut() {
                *v = _mm512_fmadd_ps(*v, m, c);
            }
        }
        let mut acc = r[0];
        for v in &r[1..] {
            acc = _mm512_add_ps(acc, *v);
        }
        (_mm512_reduce_add_ps(acc), (iters * 12 * 16 * 2) as f64)
    }

    /// 12 independent 8-wide FMA chains: enough to cover FMA latency × throughput on current cores.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma(iters: usize) -> (f32, f64) {
        let m = _mm256_set1_ps(0.999_999);
        let c = _mm256_set1_ps(1e-7);
        let mut r = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            r[0] = _mm256_fmadd_ps(r[0], m, c);
            r[1] = _mm256_fmadd_ps(r[1], m, c);
            r[2] = _mm256_fmadd_ps(r[2], m, c);
            r[3] = _mm256_fmadd_ps(r[3], m, c);
            r[4] = _mm256_fmadd_ps(r[4], m, c);
            r[5] = _mm256_fmadd_ps(r[5], m, c);
            r[6] = _mm256_fmadd_ps(r[6], m, c);
            r[7] = _mm256_fmadd_ps(r[7], m, c);
            r[8] = _mm256_fmadd_ps(r[8], m, c);
            r[9] = _mm256_fmadd_ps(r[9], m, c);
            r[10] = _mm256_fmadd_ps(r[10], m, c);
            r[11] = _mm256_fmadd_ps(r[11], m, c);
        }
        let mut acc = r[0];
        for v in &r[1..] {
            acc = _mm256_add_ps(acc, *v);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        (out.iter().sum(), (iters * 12 * 8 * 2) as f64)
    }
}

/// Facts about the host for reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostInfo {
    pub cpu_model: String,
    pub logical_cores: usize,
    pub memory_bytes: u64,
    pub os: String,
    pub arch: String,
}

/// The CPU model name from /proc/cpuinfo ("unknown" where there is none).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn host_info() -> HostInfo {
    HostInfo {
        cpu_model: cpu_model(),
        logical_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_bytes: meminfo_kib("MemTotal:").unwrap_or(0) * 1024,
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
    }
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Peak resident set size of this process so far, in bytes (Linux VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_positive_and_finite() {
        let bw = memory_bandwidth(16 << 20, 1);
        assert!(bw.is_finite() && bw > 0.0);
        let p = fma_peak(0.02);
        assert!(p.is_finite() && p > 0.0);
        // Measured exactly where the AMX kernels run.
        let amx = amx_bf16_peak(0.02);
        assert_eq!(amx.is_some(), silica_kernels::isa().amx);
        assert!(
            amx.is_none_or(|a| a.is_finite() && a > p),
            "{amx:?} vs FMA {p}"
        );
    }

    #[test]
    fn sum_matches_scalar() {
        let x: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        assert_eq!(sum_f32(&x), x.iter().sum::<f32>());
    }

    #[test]
    fn host_info_reads_proc() {
        let h = host_info();
        assert!(h.logical_cores >= 1);
        if cfg!(target_os = "linux") {
            assert!(h.memory_bytes > 0);
            assert!(peak_rss_bytes().unwrap() > 0);
        }
    }
}
