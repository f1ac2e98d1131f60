//! Dot products of an f32 activation row with a weight row in its stored format, the leaf of
//! every decode GEMV and of attention over the KV cache.
//!
//! Each format has a portable version (the reference the SIMD ones are tested against) and
//! AVX2 / AVX-512 versions chosen at run time ([`crate::isa::level`]). Weights are widened to
//! f32 in registers and accumulated with FMA in f32, so a bf16, f16, int8 or fp8 row is read from
//! memory at its own width: decode is bound by bytes read, not by the conversion.
//!
//! Summation order differs between levels (lanes are summed at the end), so results agree to
//! f32 rounding, not bit for bit; every path is checked against an f64 reference.

use crate::isa::Level;
use half::{bf16, f16};

/// A weight row in one of the stored formats.
#[derive(Copy, Clone, Debug)]
pub enum Row<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    /// Symmetric int8, to be multiplied by the row's scale by the caller.
    I8(&'a [i8]),
    /// fp8 e4m3 (OCP "E4M3FN": bias 7, no infinities, ±448 max), as raw bytes; times the
    /// row's scale by the caller. The NaN codes (0x7F, 0xFF) decode to NaN on every path.
    E4M3(&'a [u8]),
}

impl Row<'_> {
    pub fn len(&self) -> usize {
        match self {
            Row::F32(v) => v.len(),
            Row::BF16(v) => v.len(),
            Row::F16(v) => v.len(),
            Row::I8(v) => v.len(),
            Row::E4M3(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Returns `$body` evaluated with `$m` naming the x86 kernel module of `level` — `x86::avx512`
/// or `x86::avx2` of the calling module (dot's and blocks' each have both) — when this CPU
/// supports it; falls through otherwise (a level the CPU lacks
/// never reaches an unsupported instruction).
macro_rules! x86_simd {
    ($level:expr, $m:ident => $body:expr) => {
        #[cfg(target_arch = "x86_64")]
        {
            let isa = crate::isa::isa();
            if $level == Level::Avx512 && isa.supports(Level::Avx512) {
                use x86::avx512 as $m;
                // SAFETY: AVX-512 F/BW/VL, AVX2, FMA and F16C are present (checked just above).
                return unsafe { $body };
            }
            if $level >= Level::Avx2 && $level != Level::Neon && isa.supports(Level::Avx2) {
                use x86::avx2 as $m;
                // SAFETY: AVX2, FMA and F16C are present.
                return unsafe { $body };
            }
        }
    };
}

pub(crate) use x86_simd;

/// Σ x[i]·y[i] over the shorter of the two, at the dispatched level.
#[inline]
pub fn dot(x: &[f32], y: Row<'_>) -> f32 {
    dot_at(crate::isa::level(), x, y)
}

/// [`dot`] at an explicit level; a level this CPU lacks falls back to the portable code (so
/// callers never reach an unsupported instruction).
pub fn dot_at(level: Level, x: &[f32], y: Row<'_>) -> f32 {
    x86_simd!(level, m => match y {
        Row::F32(y) => m::dot_f32(x, y),
        Row::BF16(y) => m::dot_bf16(x, y),
        Row::F16(y) => m::dot_f16(x, y),
        Row::I8(y) => m::dot_i8(x, y),
        Row::E4M3(y) => m::dot_e4m3(x, y) * E4M3_VIA_F16,
    });
    #[cfg(target_arch = "aarch64")]
    if level == Level::Neon && crate::isa::isa().supports(Level::Neon) {
        if let Row::F32(y) = y {
            // SAFETY: NEON is present.
            return unsafe { neon::dot_f32(x, y) };
        }
    }
    let _ = level;
    portable(x, y)
}

/// Four weight rows of one format (see [`dot4_at`]).
#[derive(Copy, Clone, Debug)]
pub enum Rows4<'a> {
    F32([&'a [f32]; 4]),
    BF16([&'a [bf16]; 4]),
    F16([&'a [f16]; 4]),
    I8([&'a [i8]; 4]),
    E4M3([&'a [u8]; 4]),
}

/// `[x·y0, x·y1, x·y2, x·y3]`: four dots sharing every activation load (the GEMV's inner
/// kernel). Each result is what [`dot_at`] computes up to f32 summation order.
pub fn dot4_at(level: Level, x: &[f32], y: Rows4<'_>) -> [f32; 4] {
    x86_simd!(level, m => match y {
        Rows4::F32(y) => m::dot4_f32(x, y),
        Rows4::BF16(y) => m::dot4_bf16(x, y),
        Rows4::F16(y) => m::dot4_f16(x, y),
        Rows4::I8(y) => m::dot4_i8(x, y),
        Rows4::E4M3(y) => m::dot4_e4m3(x, y).map(|v| v * E4M3_VIA_F16),
    });
    let one = |r: Row<'_>| dot_at(level, x, r);
    match y {
        Rows4::F32(y) => y.map(|r| one(Row::F32(r))),
        Rows4::BF16(y) => y.map(|r| one(Row::BF16(r))),
        Rows4::F16(y) => y.map(|r| one(Row::F16(r))),
        Rows4::I8(y) => y.map(|r| one(Row::I8(r))),
        Rows4::E4M3(y) => y.map(|r| one(Row::E4M3(r))),
    }
}

/// The portable dot: 8 independent partial sums (so the compiler vectorizes it), summed at
/// the end.
pub fn portable(x: &[f32], y: Row<'_>) -> f32 {
    match y {
        Row::F32(y) => generic(x, y, |v| *v),
        Row::BF16(y) => generic(x, y, |v| v.to_f32()),
        Row::F16(y) => generic(x, y, |v| v.to_f32()),
        Row::I8(y) => generic(x, y, |v| *v as f32),
        Row::E4M3(y) => generic(x, y, |v| e4m3_to_f32(*v)),
    }
}

fn generic<T>(x: &[f32], y: &[T], f: impl Fn(&T) -> f32) -> f32 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0f32; 8];
    let mut xc = x.chunks_exact(8);
    let mut yc = y.chunks_exact(8);
    for (a, b) in (&mut xc).zip(&mut yc) {
        for l in 0..8 {
            acc[l] += a[l] * f(&b[l]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, b) in xc.remainder().iter().zip(yc.remainder()) {
        s += a * f(b);
    }
    s
}

/// The SIMD e4m3 paths reinterpret `(b & 0x7f) << 7` as an f16 (the same sign/exponent/mantissa
/// fields, exponent bias 15 instead of 7): the value is 2^-8 of the e4m3 value, exactly, for
/// normals and subnormals alike. This restores the factor.
pub(crate) const E4M3_VIA_F16: f32 = 256.0;

/// Decodes one fp8 e4m3 (E4M3FN) byte.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((b >> 3) & 0x0f) as i32;
    let m = (b & 0x07) as f32;
    if e == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    let mag = if e == 0 {
        m / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    sign * mag
}

/// Rounds an f32 to the nearest fp8 e4m3 (ties to even), saturating at ±448 (as
/// `torch.float8_e4m3fn` conversion with saturation does, which quantizers use); NaN → 0x7F.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= 448.0 {
        return sign | 0x7e;
    }
    // Candidates are the 127 non-negative finite codes; pick the nearest (ties to even code).
    // Scale to units of the smallest subnormal (2^-9) per binade to round exactly.
    let code = if a < 2f32.powi(-6) {
        // Subnormal range: value = m · 2^-9, m in 0..=8 (8 rounds up into the first normal).
        round_half_even(a * 512.0) as u8
    } else {
        let e = a.log2().floor() as i32; // -6..=8
        let e = e.clamp(-6, 8);
        let step = 2f32.powi(e - 3);
        let q = round_half_even(a / step) as u32; // 8..=16
        let (e, q) = if q == 16 { (e + 1, 8) } else { (e, q) };
        (((e + 7) as u32) << 3 | (q - 8)) as u8
    };
    sign | code.min(0x7e)
}

fn round_half_even(v: f32) -> f32 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    #[inline(always)]
    pub(super) unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// One dot kernel per (level, format): `$lanes` elements per load, four accumulators so the
    /// FMA latency is hidden, the tail in scalar code.
    macro_rules! dot_kernel {
        ($feat:literal, $name:ident, $name4:ident, $t:ty, $vec:ty, $lanes:literal, $zero:expr, $fma:ident,
         $add:ident, $hsum:expr, |$p:ident| $load:expr, |$v:ident| $scalar:expr) => {
            /// Four rows against one activation row: each activation vector is loaded once
            /// for all four, and two accumulators per row hide the FMA latency.
            #[target_feature(enable = $feat)]
            pub unsafe fn $name4(x: &[f32], y: [&[$t]; 4]) -> [f32; 4] {
                let n = y.iter().fold(x.len(), |m, r| m.min(r.len()));
                let xp = x.as_ptr();
                let yp = [y[0].as_ptr(), y[1].as_ptr(), y[2].as_ptr(), y[3].as_ptr()];
                let mut a: [[$vec; 2]; 4] = [[$zero; 2]; 4];
                let mut i = 0;
                while i + 2 * $lanes <= n {
                    let x0 = $crate::dot::x86::loadx::<$vec>(xp.add(i));
                    let x1 = $crate::dot::x86::loadx::<$vec>(xp.add(i + $lanes));
                    for r in 0..4 {
                        let w0 = {
                            let $p = yp[r].add(i);
                            $load
                        };
                        let w1 = {
                            let $p = yp[r].add(i + $lanes);
                            $load
                        };
                        a[r][0] = $fma(x0, w0, a[r][0]);
                        a[r][1] = $fma(x1, w1, a[r][1]);
                    }
                    i += 2 * $lanes;
                }
                if i + $lanes <= n {
                    let x0 = $crate::dot::x86::loadx::<$vec>(xp.add(i));
                    for r in 0..4 {
                        let w0 = {
                            let $p = yp[r].add(i);
                            $load
                        };
                        a[r][0] = $fma(x0, w0, a[r][0]);
                    }
                    i += $lanes;
                }
                let mut out = [0f32; 4];
                for r in 0..4 {
                    let mut s: f32 = $hsum($add(a[r][0], a[r][1]));
                    let mut j = i;
                    while j < n {
                        let $v = *yp[r].add(j);
                        s += *xp.add(j) * $scalar;
                        j += 1;
                    }
                    out[r] = s;
                }
                out
            }

            #[target_feature(enable = $feat)]
            pub unsafe fn $name(x: &[f32], y: &[$t]) -> f32 {
                let n = x.len().min(y.len());
                let (xp, yp) = (x.as_ptr(), y.as_ptr());
                let (mut a0, mut a1, mut a2, mut a3): ($vec, $vec, $vec, $vec) =
                    ($zero, $zero, $zero, $zero);
                let mut i = 0;
                while i + 4 * $lanes <= n {
                    let l0 = {
                        let $p = yp.add(i);
                        $load
                    };
                    let l1 = {
                        let $p = yp.add(i + $lanes);
                        $load
                    };
                    let l2 = {
                        let $p = yp.add(i + 2 * $lanes);
                        $load
                    };
                    let l3 = {
                        let $p = yp.add(i + 3 * $lanes);
                        $load
                    };
                    a0 = $fma($crate::dot::x86::loadx::<$vec>(xp.add(i)), l0, a0);
                    a1 = $fma($crate::dot::x86::loadx::<$vec>(xp.add(i + $lanes)), l1, a1);
                    a2 = $fma(
                        $crate::dot::x86::loadx::<$vec>(xp.add(i + 2 * $lanes)),
                        l2,
                        a2,
                    );
                    a3 = $fma(
                        $crate::dot::x86::loadx::<$vec>(xp.add(i + 3 * $lanes)),
                        l3,
                        a3,
                    );
                    i += 4 * $lanes;
                }
                while i + $lanes <= n {
                    let $p = yp.add(i);
                    a0 = $fma($crate::dot::x86::loadx::<$vec>(xp.add(i)), $load, a0);
                    i += $lanes;
                }
                let sum = $add($add(a0, a1), $add(a2, a3));
                let mut s: f32 = $hsum(sum);
                while i < n {
                    let $v = *yp.add(i);
                    s += *xp.add(i) * $scalar;
                    i += 1;
                }
                s
            }
        };
    }

    /// An unaligned load of f32 activations as the vector type of the level.
    pub(super) trait LoadX {
        unsafe fn load(p: *const f32) -> Self;
    }
    impl LoadX for __m256 {
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm256_loadu_ps(p)
        }
    }
    impl LoadX for __m512 {
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm512_loadu_ps(p)
        }
    }
    #[inline(always)]
    pub(super) unsafe fn loadx<V: LoadX>(p: *const f32) -> V {
        V::load(p)
    }

    /// e4m3 bytes (8 or 16 of them, widened to u16 lanes) → f16 bit patterns of value·2^-8.
    #[inline(always)]
    pub(super) unsafe fn e4m3_bits_128(w: __m128i) -> __m128i {
        let low = _mm_and_si128(w, _mm_set1_epi16(0x7f));
        let mag = _mm_slli_epi16(low, 7);
        let sign = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8);
        // The NaN codes (low 7 bits all set) get an all-ones f16 exponent: NaN.
        let nan = _mm_and_si128(
            _mm_cmpeq_epi16(low, _mm_set1_epi16(0x7f)),
            _mm_set1_epi16(0x7c00),
        );
        _mm_or_si128(_mm_or_si128(mag, sign), nan)
    }
    #[inline(always)]
    pub(crate) unsafe fn e4m3_bits_256(w: __m256i) -> __m256i {
        let low = _mm256_and_si256(w, _mm256_set1_epi16(0x7f));
        let mag = _mm256_slli_epi16(low, 7);
        let sign = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8);
        let nan = _mm256_and_si256(
            _mm256_cmpeq_epi16(low, _mm256_set1_epi16(0x7f)),
            _mm256_set1_epi16(0x7c00),
        );
        _mm256_or_si256(_mm256_or_si256(mag, sign), nan)
    }

    pub mod avx2 {
        use half::{bf16, f16};
        use std::arch::x86_64::*;

        dot_kernel!(
            "avx2,fma,f16c",
            dot_f32,
            dot4_f32,
            f32,
            __m256,
            8,
            _mm256_setzero_ps(),
            _mm256_fmadd_ps,
            _mm256_add_ps,
            |v| super::hsum256(v),
            |p| _mm256_loadu_ps(p),
            |v| v
        );
        dot_kernel!(
            "avx2,fma,f16c",
            dot_bf16,
            dot4_bf16,
            bf16,
            __m256,
            8,
            _mm256_setzero_ps(),
            _mm256_fmadd_ps,
            _mm256_add_ps,
            |v| super::hsum256(v),
            |p| _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
                16
            )),
            |v| v.to_f32()
        );
        dot_kernel!(
            "avx2,fma,f16c",
            dot_f16,
            dot4_f16,
            f16,
            __m256,
            8,
            _mm256_setzero_ps(),
            _mm256_fmadd_ps,
            _mm256_add_ps,
            |v| super::hsum256(v),
            |p| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            |v| v.to_f32()
        );
        dot_kernel!(
            "avx2,fma,f16c",
            dot_i8,
            dot4_i8,
            i8,
            __m256,
            8,
            _mm256_setzero_ps(),
            _mm256_fmadd_ps,
            _mm256_add_ps,
            |v| super::hsum256(v),
            |p| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))),
            |v| v as f32
        );
        dot_kernel!(
            "avx2,fma,f16c",
            dot_e4m3,
            dot4_e4m3,
            u8,
            __m256,
            8,
            _mm256_setzero_ps(),
            _mm256_fmadd_ps,
            _mm256_add_ps,
            |v| super::hsum256(v),
            |p| _mm256_cvtph_ps(super::e4m3_bits_128(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                p as *const __m128i
            )))),
            |v| crate::dot::e4m3_to_f32(v) / crate::dot::E4M3_VIA_F16
        );
    }

    pub mod avx512 {
        use half::{bf16, f16};
        use std::arch::x86_64::*;

        dot_kernel!(
            "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
            dot_f32,
            dot4_f32,
            f32,
            __m512,
            16,
            _mm512_setzero_ps(),
            _mm512_fmadd_ps,
            _mm512_add_ps,
            |v| _mm512_reduce_add_ps(v),
            |p| _mm512_loadu_ps(p),
            |v| v
        );
        dot_kernel!(
            "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
            dot_bf16,
            dot4_bf16,
            bf16,
            __m512,
            16,
            _mm512_setzero_ps(),
            _mm512_fmadd_ps,
            _mm512_add_ps,
            |v| _mm512_reduce_add_ps(v),
            |p| _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)),
                16
            )),
            |v| v.to_f32()
        );
        dot_kernel!(
            "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
            dot_f16,
            dot4_f16,
            f16,
            __m512,
            16,
            _mm512_setzero_ps(),
            _mm512_fmadd_ps,
            _mm512_add_ps,
            |v| _mm512_reduce_add_ps(v),
            |p| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
            |v| v.to_f32()
        );
        dot_kernel!(
            "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
            dot_i8,
            dot4_i8,
            i8,
            __m512,
            16,
            _mm512_setzero_ps(),
            _mm512_fmadd_ps,
            _mm512_add_ps,
            |v| _mm512_reduce_add_ps(v),
            |p| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))),
            |v| v as f32
        );
        dot_kernel!(
            "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
            dot_e4m3,
            dot4_e4m3,
            u8,
            __m512,
            16,
            _mm512_setzero_ps(),
            _mm512_fmadd_ps,
            _mm512_add_ps,
            |v| _mm512_reduce_add_ps(v),
            |p| _mm512_cvtph_ps(super::e4m3_bits_256(_mm256_cvtepu8_epi16(_mm_loadu_si128(
                p as *const __m128i
            )))),
            |v| crate::dot::e4m3_to_f32(v) / crate::dot::E4M3_VIA_F16
        );
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    #[target_feature(enable = "neon")]
    pub unsafe fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
        let n = x.len().min(y.len());
        let (xp, yp) = (x.as_ptr(), y.as_ptr());
        let mut a0 = vdupq_n_f32(0.0);
        let mut a1 = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 8 <= n {
            a0 = vfmaq_f32(a0, vld1q_f32(xp.add(i)), vld1q_f32(yp.add(i)));
            a1 = vfmaq_f32(a1, vld1q_f32(xp.add(i + 4)), vld1q_f32(yp.add(i + 4)));
            i += 8;
        }
        let mut s = vaddvq_f32(vaddq_f32(a0, a1));
        while i < n {
            s += *xp.add(i) * *yp.add(i);
            i += 1;
        }
        s
    }
}
