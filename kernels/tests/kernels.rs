//! Every kernel at every ISA level this machine has, against an f64 reference.

use half::{bf16, f16};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use silica_kernels::dot::{e4m3_to_f32, f32_to_e4m3, portable};
use silica_kernels::quant::{dequantize_e4m3, dequantize_i8, quantize_e4m3, quantize_i8};
use silica_kernels::{dot_at, gemv_at, isa, Level, Matrix, Row};

fn rand_vec(rng: &mut SmallRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Lengths around every unroll boundary of the 8- and 16-lane kernels.
const LENS: &[usize] = &[
    0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 200, 576, 1000,
];

/// All finite, non-NaN e4m3 codes.
fn e4m3_codes(rng: &mut SmallRng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| loop {
            let b: u8 = rng.gen();
            if b & 0x7f != 0x7f {
                break b;
            }
        })
        .collect()
}

fn check(level: Level, x: &[f32], y: Row<'_>, exact: f64) {
    let got = dot_at(level, x, y) as f64;
    let abs: f64 = match y {
        Row::F32(v) => x
            .iter()
            .zip(v)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum(),
        Row::BF16(v) => x
            .iter()
            .zip(v)
            .map(|(a, b)| (*a as f64 * b.to_f64()).abs())
            .sum(),
        Row::F16(v) => x
            .iter()
            .zip(v)
            .map(|(a, b)| (*a as f64 * b.to_f64()).abs())
            .sum(),
        Row::I8(v) => x
            .iter()
            .zip(v)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum(),
        Row::E4M3(v) => x
            .iter()
            .zip(v)
            .map(|(a, b)| (*a as f64 * e4m3_to_f32(*b) as f64).abs())
            .sum(),
    };
    // f32 accumulation: error ≤ n·ε·Σ|terms| (a loose but honest bound).
    let tol = (x.len() as f64 + 1.0) * f32::EPSILON as f64 * abs + 1e-30;
    assert!(
        (got - exact).abs() <= tol,
        "{level} {:?} n={}: got {got}, want {exact} (tol {tol})",
        std::mem::discriminant(&y),
        x.len()
    );
}

#[test]
fn dots_match_f64_at_every_level() {
    let mut rng = SmallRng::seed_from_u64(1);
    let levels = isa().supported_levels();
    assert!(levels.contains(&Level::Portable));
    for &n in LENS {
        let x = rand_vec(&mut rng, n);
        let yf = rand_vec(&mut rng, n);
        let yb: Vec<bf16> = yf.iter().map(|&v| bf16::from_f32(v)).collect();
        let yh: Vec<f16> = yf.iter().map(|&v| f16::from_f32(v)).collect();
        let yi: Vec<i8> = (0..n).map(|_| rng.gen_range(-127i8..=127)).collect();
        let ye = e4m3_codes(&mut rng, n);
        let ex = |f: &dyn Fn(usize) -> f64| (0..n).map(|i| x[i] as f64 * f(i)).sum::<f64>();
        let e_f = ex(&|i| yf[i] as f64);
        let e_b = ex(&|i| yb[i].to_f64());
        let e_h = ex(&|i| yh[i].to_f64());
        let e_i = ex(&|i| yi[i] as f64);
        let e_e = ex(&|i| e4m3_to_f32(ye[i]) as f64);
        for &l in &levels {
            check(l, &x, Row::F32(&yf), e_f);
            check(l, &x, Row::BF16(&yb), e_b);
            check(l, &x, Row::F16(&yh), e_h);
            check(l, &x, Row::I8(&yi), e_i);
            check(l, &x, Row::E4M3(&ye), e_e);
        }
    }
}

#[test]
fn every_e4m3_code_decodes_the_same_in_simd() {
    // Each code alone against x = 1: the SIMD widening must give exactly the scalar value.
    for l in isa().supported_levels() {
        for b in 0..=255u8 {
            let mut y = vec![0u8; 32];
            y[5] = b;
            let mut x = vec![0f32; 32];
            x[5] = 1.0;
            let (got, want) = (dot_at(l, &x, Row::E4M3(&y)), e4m3_to_f32(b));
            assert!(
                got == want || (got.is_nan() && want.is_nan()),
                "{l} code {b:#04x}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn e4m3_round_trips_and_rounds_to_nearest() {
    for b in 0..=255u8 {
        if b & 0x7f == 0x7f {
            assert!(e4m3_to_f32(b).is_nan());
            continue;
        }
        let v = e4m3_to_f32(b);
        let back = f32_to_e4m3(v);
        // ±0 both decode to 0; everything else round-trips exactly.
        assert_eq!(e4m3_to_f32(back), v, "code {b:#04x}");
    }
    assert_eq!(e4m3_to_f32(0x7e), 448.0);
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    assert_eq!(f32_to_e4m3(1e6), 0x7e);
    assert_eq!(f32_to_e4m3(-1e6), 0xfe);
    // Nearest: every f32 maps to a code no farther than any other code.
    let finite: Vec<f32> = (0..=255u8)
        .filter(|b| b & 0x7f != 0x7f)
        .map(e4m3_to_f32)
        .collect();
    let mut rng = SmallRng::seed_from_u64(2);
    for _ in 0..20000 {
        let x: f32 = rng.gen_range(-460.0..460.0) * 10f32.powi(rng.gen_range(-4..1));
        let got = e4m3_to_f32(f32_to_e4m3(x));
        let best = finite
            .iter()
            .map(|&c| (c - x).abs())
            .fold(f32::INFINITY, f32::min);
        assert!(
            (got - x).abs() <= best || x.abs() >= 448.0,
            "{x}: got {got}, a code {best} away exists"
        );
    }
    // Ties go to the even code: 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39).
    assert_eq!(f32_to_e4m3(1.0625), 0x38);
    assert_eq!(f32_to_e4m3(1.1875), 0x3a);
}

/// One random weight matrix `[n, k]` in every stored format the products take, owned, with
/// the dense values each one stands for.
struct Weights {
    k: usize,
    f32: Vec<f32>,
    bf16: Vec<bf16>,
    f16: Vec<f16>,
    i8: (Vec<i8>, Vec<f32>),
    e4m3: (Vec<u8>, Vec<f32>),
    /// ggml Q8_0 blocks (f16 scale + 32 int8), empty unless k is a whole number of blocks.
    q8_0: Vec<u8>,
}

impl Weights {
    fn new(rng: &mut SmallRng, n: usize, k: usize) -> Self {
        let wf = rand_vec(rng, n * k);
        let q8_0 = if k.is_multiple_of(32) {
            (0..n * k / 32)
                .flat_map(|b| {
                    let d = f16::from_f32(0.01 + (b % 7) as f32 * 0.003).to_le_bytes();
                    let q: Vec<u8> = (0..32).map(|_| rng.gen::<u8>()).collect();
                    d.into_iter().chain(q)
                })
                .collect()
        } else {
            Vec::new()
        };
        Weights {
            k,
            bf16: wf.iter().map(|&v| bf16::from_f32(v)).collect(),
            f16: wf.iter().map(|&v| f16::from_f32(v)).collect(),
            i8: quantize_i8(&wf, n, k),
            e4m3: quantize_e4m3(&wf, n, k),
            q8_0,
            f32: wf,
        }
    }

    /// (matrix, its dense values) for every format.
    fn cases(&self) -> Vec<(Matrix<'_>, Vec<f32>)> {
        let k = self.k;
        let (qi, si) = (&self.i8.0, &self.i8.1);
        let (qe, se) = (&self.e4m3.0, &self.e4m3.1);
        let mut cases: Vec<(Matrix, Vec<f32>)> = vec![
            (Matrix::F32(&self.f32), self.f32.clone()),
            (
                Matrix::BF16(&self.bf16),
                self.bf16.iter().map(|v| v.to_f32()).collect(),
            ),
            (
                Matrix::F16(&self.f16),
                self.f16.iter().map(|v| v.to_f32()).collect(),
            ),
            (
                Matrix::I8 {
                    q: qi,
                    scales: Some(si),
                },
                dequantize_i8(qi, si, k),
            ),
            (
                Matrix::E4M3 {
                    q: qe,
                    scales: Some(se),
                },
                dequantize_e4m3(qe, se, k),
            ),
        ];
        if !self.q8_0.is_empty() {
            let format = silica_kernels::blocks::BlockFormat::Q8_0;
            let mut dense = vec![0f32; self.f32.len()];
            silica_kernels::blocks::dequantize(format, &self.q8_0, &mut dense);
            let data = &self.q8_0;
            cases.push((Matrix::Blocks { format, data }, dense));
        }
        cases
    }
}

/// `out [m, n]` against Σ_k x[i, k]·dense[j, k] in f64.
fn assert_naive(
    what: &str,
    x: &[f32],
    dense: &[f32],
    out: &[f32],
    (m, k, n): (usize, usize, usize),
) {
    for i in 0..m {
        for j in 0..n {
            let e: f64 = (0..k)
                .map(|kk| x[i * k + kk] as f64 * dense[j * k + kk] as f64)
                .sum();
            let g = out[i * n + j] as f64;
            assert!(
                (g - e).abs() <= 1e-5 * (k as f64).sqrt() + 1e-6,
                "{what} m{m} k{k} n{n} [{i},{j}]: {g} vs {e}"
            );
        }
    }
}

#[test]
fn gemv_matches_naive_for_every_format_and_level() {
    let mut rng = SmallRng::seed_from_u64(3);
    for &(m, k, n) in &[
        (1, 64, 40),
        (1, 577, 33),
        (3, 100, 70),
        (8, 256, 300),
        (2, 0, 5),
    ] {
        let x = rand_vec(&mut rng, m * k);
        let w = Weights::new(&mut rng, n, k);
        for (mat, dense) in &w.cases() {
            for l in isa().supported_levels() {
                let mut out = vec![f32::NAN; m * n];
                gemv_at(l, &x, m, k, *mat, n, &mut out);
                let what = format!("{l} {:?}", std::mem::discriminant(mat));
                assert_naive(&what, &x, dense, &out, (m, k, n));
            }
        }
    }
}

#[test]
fn int8_scheme_bounds_the_error_by_half_a_step() {
    let mut rng = SmallRng::seed_from_u64(4);
    let (n, k) = (16, 300);
    let mut w = rand_vec(&mut rng, n * k);
    w[3 * k..4 * k].fill(0.0); // an all-zero row: scale 1, q 0
    let (q, s) = quantize_i8(&w, n, k);
    assert_eq!(s[3], 1.0);
    assert!(q[3 * k..4 * k].iter().all(|&v| v == 0));
    assert!(q.iter().all(|&v| v != -128), "symmetric range");
    let d = dequantize_i8(&q, &s, k);
    for j in 0..n {
        let mx = w[j * k..(j + 1) * k]
            .iter()
            .fold(0f32, |a, v| a.max(v.abs()));
        // The largest magnitude maps to ±127 exactly.
        if mx > 0.0 {
            assert!(q[j * k..(j + 1) * k]
                .iter()
                .any(|&v| v.unsigned_abs() == 127));
        }
        for kk in 0..k {
            let i = j * k + kk;
            assert!((d[i] - w[i]).abs() <= s[j] * 0.5 * (1.0 + 1e-6), "{i}");
        }
    }
    // The portable dot is the reference the SIMD paths are held to; spot-check it too.
    let x = rand_vec(&mut rng, k);
    let e: f32 = (0..k).map(|i| x[i] * q[i] as f32).sum();
    assert!((portable(&x, Row::I8(&q[..k])) - e).abs() < 1e-3);
}

#[test]
fn matmul_nt_matches_naive_for_every_format() {
    if !silica_kernels::gemm::supported() {
        eprintln!("no AVX-512 here: matmul_nt has no kernel to test");
        return;
    }
    let mut rng = SmallRng::seed_from_u64(11);
    // Tails in every dimension: m past multiples of the 6-row tile, n of the 4-row tile, k of
    // 16 lanes; one shape large enough to run in parallel.
    for &(m, k, n) in &[
        (1, 16, 4),
        (7, 33, 9),
        (13, 576, 21),
        (6, 15, 3),
        (64, 576, 100),
        (5, 0, 4),
    ] {
        let x = rand_vec(&mut rng, m * k);
        let w = Weights::new(&mut rng, n, k);
        for (mat, dense) in &w.cases() {
            let mut out = vec![f32::NAN; m * n];
            silica_kernels::gemm::matmul_nt(&x, m, k, *mat, n, &mut out);
            let what = format!("{:?}", std::mem::discriminant(mat));
            assert_naive(&what, &x, dense, &out, (m, k, n));
        }
    }
}

/// A bf16 × bf16 → f32 product (`f(x, m, k, w, n, out)`) against the naive reference on random
/// bf16 values, for each shape.
fn check_bf16_product(
    what: &str,
    seed: u64,
    shapes: &[(usize, usize, usize)],
    f: impl Fn(&[bf16], usize, usize, &[bf16], usize, &mut [f32]),
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    for &(m, k, n) in shapes {
        let mut bf = |len: usize| -> Vec<bf16> {
            rand_vec(&mut rng, len)
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect()
        };
        let (x, w) = (bf(m * k), bf(n * k));
        let mut out = vec![f32::NAN; m * n];
        f(&x, m, k, &w, n, &mut out);
        let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        assert_naive(what, &xf, &wf, &out, (m, k, n));
    }
}

#[test]
fn dpbf16_product_matches_naive() {
    if !silica_kernels::dpbf16::supported() {
        eprintln!("no AVX512_BF16 here: the vdpbf16ps product has nothing to run on");
        return;
    }
    // Tails in every dimension: tokens past the 6-row tile, weight rows past the 4-row tile, k
    // past whole 32-value steps (and below one); one shape large enough to run in parallel.
    let shapes = [
        (1, 32, 4),
        (7, 33, 9),
        (13, 576, 21),
        (6, 15, 3),
        (9, 64, 17),
        (64, 576, 1536),
        (5, 0, 4),
    ];
    check_bf16_product(
        "vdpbf16ps",
        13,
        &shapes,
        silica_kernels::dpbf16::matmul_nt_bf16,
    );
}

#[test]
fn amx_bf16_product_matches_naive() {
    if !silica_kernels::amx::supported(32) {
        eprintln!("no AMX-BF16 granted here: the AMX product has nothing to run on");
        return;
    }
    // Tails in every dimension the kernel tiles: tokens past multiples of 16 (and one token
    // tile, three, an odd count), weight rows past 16 and 32 (a partial last tile done without
    // AMX), several k steps; one shape large enough to run in parallel.
    let shapes = [
        (1, 32, 16),
        (9, 64, 17),
        (16, 32, 32),
        (17, 96, 48),
        (40, 576, 70),
        (64, 576, 1536),
        (3, 32, 5),
    ];
    check_bf16_product("amx bf16", 12, &shapes, silica_kernels::amx::matmul_nt_bf16);
    assert!(
        !silica_kernels::amx::supported(48),
        "k must be whole 32-value steps"
    );
}
