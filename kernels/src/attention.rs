//! Attention of one query position (all its heads) over a KV cache, the leaf of the CPU
//! backend's attention: scores, a softmax in f32 and the weighted sum of values, over the
//! slots an additive mask keeps.
//!
//! The cache is addressed by blocks ([`KvLayout`]): a contiguous `[B, Hkv, Tk, D]` cache is one
//! block per batch row, a paged pool `[N, S, Hkv, D]` is read through its block table. A slot's
//! keys for every KV head are visited once for all query heads, and only the slots from the
//! first to the last kept one are touched, so a row's cost follows its own context.
//!
//! One generic body is compiled per ISA level (AVX-512, AVX2, portable), its dot products
//! [`crate::dot`]'s kernels of that level inlined. Levels differ in summation order (as the dot
//! kernels do), so they agree to f32 rounding; at one level a contiguous and a paged cache
//! holding the same values give the same bits.

use crate::isa::Level;
use half::{bf16, f16};

/// Additive-mask values at or below this are "excluded": their slots are skipped, unless a
/// whole row is excluded, in which case it is computed in full like the plain definition. It
/// is f16's lowest value, the mask f16 models use (transformers' `finfo(dtype).min`; bf16/f32
/// masks are far below it): a skipped slot's weight `exp(s + m - max)` is exactly 0 in f32
/// unless its score exceeds every kept score by more than 65,400, which no finite f16
/// activation reaches.
pub const MASK_SKIP: f32 = -65504.0;

/// Keys or values in their stored dtype.
#[derive(Copy, Clone, Debug)]
pub enum KvData<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

/// Where slot `j` of KV head `h` starts, in units of a head's vector (D for keys, Dv for
/// values): `block_base[j / block_size] + (j % block_size) * slot_stride + h * head_stride`.
#[derive(Copy, Clone, Debug)]
pub struct KvLayout<'a> {
    pub block_size: usize,
    pub slot_stride: usize,
    pub head_stride: usize,
    pub block_base: &'a [usize],
}

/// The shape and scaling of one query position's attention.
#[derive(Copy, Clone, Debug)]
pub struct RowSpec {
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub dv: usize,
    pub scale: f32,
    /// Gemma 2's soft-cap c: each scaled score s becomes c·tanh(s / c) before the mask.
    pub softcap: Option<f32>,
}

/// Whether an additive-mask value leaves its slot in (NaN included: it must reach the result).
#[inline(always)]
pub fn kept(m: f32) -> bool {
    m > MASK_SKIP || m.is_nan()
}

/// `(first, last + 1, false)` over the kept slots of a mask row, or `(0, len, true)` when none
/// is kept. Scans 16 values at a time without branching inside a group, so it vectorises.
pub fn kept_range(m: &[f32]) -> (usize, usize, bool) {
    const G: usize = 16;
    let any = |c: &[f32]| c.iter().fold(false, |acc, &v| acc | kept(v));
    let Some(first) = m.chunks(G).position(any) else {
        return (0, m.len(), true);
    };
    let lo = first * G + m[first * G..].iter().position(|&v| kept(v)).unwrap_or(0);
    let last = m.rchunks(G).position(any).unwrap_or(0);
    let end = m.len() - last * G;
    let start = end.saturating_sub(G);
    let hi = start + m[start..end].iter().rposition(|&v| kept(v)).unwrap_or(0) + 1;
    (lo, hi, false)
}

/// `out[h]` (Hq rows of Dv, overwritten) = softmax over the kept slots of
/// `scale·q[h]·k[slot] (+ mask)` applied to the values, query head h reading KV head
/// h / (Hq/Hkv); `q` is Hq rows of D, `mask` one value per slot. A NaN anywhere it is read
/// reaches the result; a row whose mask keeps nothing is computed over every slot.
pub fn attend(
    q: &[f32],
    mask: &[f32],
    k: KvData<'_>,
    v: KvData<'_>,
    layout: &KvLayout<'_>,
    spec: &RowSpec,
    out: &mut [f32],
) {
    attend_at(crate::isa::level(), q, mask, k, v, layout, spec, out)
}

/// [`attend`] at an explicit level (a level this CPU lacks runs the portable code).
#[allow(clippy::too_many_arguments)]
pub fn attend_at(
    level: Level,
    q: &[f32],
    mask: &[f32],
    k: KvData<'_>,
    v: KvData<'_>,
    layout: &KvLayout<'_>,
    spec: &RowSpec,
    out: &mut [f32],
) {
    assert!(
        q.len() >= spec.hq * spec.d && out.len() >= spec.hq * spec.dv && spec.hkv > 0,
        "attend: q {} / out {} too short for {spec:?}",
        q.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        let isa = crate::isa::isa();
        if level == Level::Avx512 && isa.supports(Level::Avx512) {
            // SAFETY: AVX-512 F/BW/VL, AVX2 and FMA are present (checked just above).
            return unsafe { x86::avx512(q, mask, k, v, layout, spec, out) };
        }
        if level >= Level::Avx2 && level != Level::Neon && isa.supports(Level::Avx2) {
            // SAFETY: AVX2 and FMA are present.
            return unsafe { x86::avx2(q, mask, k, v, layout, spec, out) };
        }
    }
    let _ = level;
    generic::<Portable>(q, mask, k, v, layout, spec, out)
}

/// The dot products of one ISA level, inlined into [`generic`]'s instance for it.
trait Dots {
    /// # Safety
    /// The level's instructions must be present.
    unsafe fn dot(q: &[f32], k: KvData<'_>, at: usize) -> f32;
}

struct Portable;
impl Dots for Portable {
    #[inline(always)]
    unsafe fn dot(q: &[f32], k: KvData<'_>, at: usize) -> f32 {
        let n = q.len();
        let row = match k {
            KvData::F32(k) => crate::Row::F32(&k[at..at + n]),
            KvData::BF16(k) => crate::Row::BF16(&k[at..at + n]),
            KvData::F16(k) => crate::Row::F16(&k[at..at + n]),
        };
        crate::dot::portable(q, row)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::dot::x86::{avx2 as d2, avx512 as d512};

    macro_rules! level {
        ($name:ident, $dots:ident, $m:ident, $feat:literal) => {
            struct $dots;
            impl Dots for $dots {
                #[inline(always)]
                unsafe fn dot(q: &[f32], k: KvData<'_>, at: usize) -> f32 {
                    let n = q.len();
                    match k {
                        KvData::F32(k) => $m::dot_f32(q, &k[at..at + n]),
                        KvData::BF16(k) => $m::dot_bf16(q, &k[at..at + n]),
                        KvData::F16(k) => $m::dot_f16(q, &k[at..at + n]),
                    }
                }
            }

            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(
                q: &[f32],
                mask: &[f32],
                k: KvData<'_>,
                v: KvData<'_>,
                layout: &KvLayout<'_>,
                spec: &RowSpec,
                out: &mut [f32],
            ) {
                generic::<$dots>(q, mask, k, v, layout, spec, out)
            }
        };
    }
    level!(
        avx512,
        Avx512,
        d512,
        "avx512f,avx512bw,avx512vl,avx2,fma,f16c"
    );
    level!(avx2, Avx2, d2, "avx2,fma,f16c");
}

#[inline(always)]
fn vaxpy(v: KvData<'_>, p: f32, at: usize, o: &mut [f32]) {
    let n = o.len();
    match v {
        KvData::F32(v) => o
            .iter_mut()
            .zip(&v[at..at + n])
            .for_each(|(o, &x)| *o += p * x),
        KvData::BF16(v) => o
            .iter_mut()
            .zip(&v[at..at + n])
            .for_each(|(o, &x)| *o += p * x.to_f32()),
        KvData::F16(v) => o
            .iter_mut()
            .zip(&v[at..at + n])
            .for_each(|(o, &x)| *o += p * x.to_f32()),
    }
}

/// Σ v with 16 partial sums (lane i % 16), added pairwise at the end.
#[inline(always)]
fn sum16(v: &[f32]) -> f32 {
    dot16_ones(v)
}

#[inline(always)]
fn dot16_ones(a: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = a.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    for (l, &x) in chunks.remainder().iter().enumerate() {
        acc[l] += x;
    }
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0]
}

// The body is written without closures: a closure is compiled as a function of its own, without
// the ISA wrapper's target features, unless it is inlined.
#[inline(always)]
fn generic<D: Dots>(
    q: &[f32],
    mask: &[f32],
    k: KvData<'_>,
    v: KvData<'_>,
    l: &KvLayout<'_>,
    spec: &RowSpec,
    out: &mut [f32],
) {
    let RowSpec {
        hq,
        hkv,
        d,
        dv,
        scale,
        softcap,
    } = *spec;
    let grp = hq / hkv;
    let out = &mut out[..hq * dv];
    out.fill(0.0);
    let (lo, hi, all_skipped) = kept_range(mask);
    let w = hi - lo;
    if w == 0 {
        return;
    }
    let bs = l.block_size;
    let mut s = vec![f32::NEG_INFINITY; hq * w];
    let mut mx = vec![f32::NEG_INFINITY; hq];
    for bb in lo / bs..=(hi - 1) / bs {
        let base = l.block_base[bb];
        for j in lo.max(bb * bs)..hi.min((bb + 1) * bs) {
            let m = mask[j];
            if !all_skipped && !kept(m) {
                continue;
            }
            let slot = base + (j - bb * bs) * l.slot_stride;
            for h in 0..hq {
                let at = (slot + (h / grp) * l.head_stride) * d;
                // SAFETY: `D`'s level was checked by `attend_at` before calling this instance.
                let raw = unsafe { D::dot(&q[h * d..(h + 1) * d], k, at) } * scale;
                let sj = match softcap {
                    Some(c) => c * (raw / c).tanh(),
                    None => raw,
                } + m;
                s[h * w + j - lo] = sj;
                mx[h] = if sj.is_nan() || mx[h].is_nan() {
                    f32::NAN
                } else {
                    mx[h].max(sj)
                };
            }
        }
    }
    // Unnormalized weights exp(s - max) (a skipped slot's -inf → 0 unless every score is
    // -inf), then 1 / their sum.
    let mut inv = vec![0f32; hq];
    for h in 0..hq {
        let (row, m) = (&mut s[h * w..(h + 1) * w], mx[h]);
        let finite = m != f32::NEG_INFINITY;
        for sj in row.iter_mut() {
            let e = crate::vector::exp(*sj - m);
            *sj = if *sj == f32::NEG_INFINITY && finite {
                0.0
            } else {
                e
            };
        }
        inv[h] = 1.0 / sum16(row);
    }
    for bb in lo / bs..=(hi - 1) / bs {
        let base = l.block_base[bb];
        for j in lo.max(bb * bs)..hi.min((bb + 1) * bs) {
            let slot = base + (j - bb * bs) * l.slot_stride;
            for h in 0..hq {
                let p = s[h * w + j - lo];
                if p != 0.0 || p.is_nan() {
                    let at = (slot + (h / grp) * l.head_stride) * dv;
                    vaxpy(v, p * inv[h], at, &mut out[h * dv..(h + 1) * dv]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kept_range` against the plain definition: first and last kept slot, for every length
    /// up to three scan groups and kept sets at the edges, in the middle, split, NaN, none.
    #[test]
    fn kept_range_is_first_to_last_kept_slot() {
        let naive = |m: &[f32]| match m.iter().position(|&v| kept(v)) {
            None => (0, m.len(), true),
            Some(lo) => (lo, m.iter().rposition(|&v| kept(v)).unwrap() + 1, false),
        };
        for len in 0usize..50 {
            let sets: Vec<Vec<usize>> = vec![
                vec![],
                vec![0],
                vec![len.saturating_sub(1)],
                (0..len / 2).collect(),
                vec![len / 3, (2 * len) / 3],
                (len / 4..len / 2).collect(),
            ];
            for set in sets {
                for fill in [f32::NEG_INFINITY, -1e30, -3e38] {
                    let mut m = vec![fill; len];
                    for &i in set.iter().filter(|&&i| i < len) {
                        m[i] = if i % 5 == 4 { f32::NAN } else { 0.0 };
                    }
                    assert_eq!(
                        kept_range(&m),
                        naive(&m),
                        "len {len} set {set:?} fill {fill}"
                    );
                }
            }
        }
        // MASK_SKIP itself is skipped (inclusive); anything above is kept.
        assert_eq!(kept_range(&[-1e30, -9e29, -1e30]), (0, 3, true));
        assert_eq!(kept_range(&[-65504.0, -65000.0, -65504.0]), (1, 2, false));
    }
}
