//! 8-bit activations times quantized weights ([`silica_kernels::q8`]): the activation rounding
//! is ggml's (`d = max|x| / 127`, round half away from zero), and every integer kernel (VNNI
//! and portable) equals an f64 dot of the decoded weights with the dequantized activations, for
//! every code a block can hold (random bytes), odd block counts included; the GEMV over many
//! rows and threads equals the row-by-row dot.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use silica_kernels::blocks::{self, BlockFormat};
use silica_kernels::q8::{self, Kind, Order, Q8Row};
use silica_kernels::{gemv_with, Activations, Matrix};

/// Random bytes as `blocks` blocks of `format` (every code), f16 scales kept finite and
/// moderate, and their decoding.
fn random_blocks(format: BlockFormat, blocks: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let bb = format.block_bytes();
    let mut bytes: Vec<u8> = (0..blocks * bb).map(|_| rng.gen()).collect();
    let halves: &[usize] = match format {
        BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => &[0],
        BlockFormat::Q6K => &[208],
        _ => &[0, 2],
    };
    for b in 0..blocks {
        for &h in halves {
            let v = half::f16::from_f32(rng.gen_range(-2.0f32..2.0));
            bytes[b * bb + h..b * bb + h + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    let mut deq = vec![0f32; blocks * format.block_elems()];
    blocks::dequantize(format, &bytes, &mut deq);
    (bytes, deq)
}

fn activations(k: usize, seed: u64) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    // Blocks of very different magnitudes, an all-zero block, and outliers, as real hidden
    // states have.
    (0..k)
        .map(|i| {
            let b = i / 32;
            if b == 1 {
                0.0
            } else {
                rng.gen_range(-1.0f32..1.0)
                    * (1 << (b % 5)) as f32
                    * if i % 97 == 5 { 20.0 } else { 1.0 }
            }
        })
        .collect()
}

fn reference(w: &[f32], a: &[f32]) -> (f64, f64) {
    let dot: f64 = w.iter().zip(a).map(|(x, y)| *x as f64 * *y as f64).sum();
    let abs: f64 = w
        .iter()
        .zip(a)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum();
    (dot, abs)
}

const FORMATS: [BlockFormat; 6] = [
    BlockFormat::Q4_0,
    BlockFormat::Q4_1,
    BlockFormat::Q5_0,
    BlockFormat::Q8_0,
    BlockFormat::Q4K,
    BlockFormat::Q6K,
];

#[test]
fn activation_rounding_is_ggmls() {
    let x = activations(32 * 7, 3);
    for order in [Order::Natural, Order::Nibbles] {
        let a = Q8Row::new(&x, order);
        let deq = a.dequantized();
        for (b, xs) in x.chunks(32).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            assert_eq!(a.d[b].to_bits(), d.to_bits(), "block {b}");
            for (j, v) in xs.iter().enumerate() {
                let want = if d == 0.0 {
                    0.0
                } else {
                    (v * (1.0 / d)).round()
                };
                let got = deq[32 * b + j];
                assert_eq!(
                    got.to_bits(),
                    (want * d).to_bits(),
                    "block {b} value {j} ({order:?})"
                );
            }
        }
        // Lane sums and scales describe the codes as stored.
        for l in 0..x.len() / 4 {
            let s: i32 = a.q[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum();
            assert_eq!(a.lane_neg_sum[l], -s);
            assert_eq!(a.lane_fsum[l], a.lane_d[l] * s as f32);
        }
    }
}

#[test]
fn every_format_equals_the_f64_dot_of_dequantized_operands() {
    for format in FORMATS {
        let be = format.block_elems();
        // Odd and even block counts (the 32-value kernels pair blocks).
        for blocks in [1usize, 2, 3, 18, 7] {
            let k = blocks * be;
            let (bytes, wdeq) = random_blocks(format, blocks, 11 + blocks as u64);
            let x = activations(k, 5 + blocks as u64);
            let w = Matrix::Blocks {
                format,
                data: &bytes,
            };
            assert!(q8::supports(&w, k), "{format}");
            let a = Q8Row::for_matrix(&x, &w).unwrap();
            let (want, abs) = reference(&wdeq, &a.dequantized());
            let tol = 2e-6 * abs + 1e-30;
            let kind = Kind::Blocks(format);
            let portable = q8::portable_dot(kind, &bytes, &a) as f64;
            let fast = q8::dot(kind, &bytes, &a) as f64;
            assert!(
                (portable - want).abs() <= tol,
                "{format} k={k}: portable {portable} vs {want}"
            );
            assert!(
                (fast - want).abs() <= tol,
                "{format} k={k}: dispatched {fast} vs {want} (vnni: {})",
                q8::vnni()
            );
            // The same function as f32 activations, up to the activations' rounding.
            let exact: f64 = reference(&wdeq, &x).0;
            assert!(
                (fast - exact).abs() <= 0.02 * abs,
                "{format}: {fast} vs f32 {exact}"
            );
        }
    }
}

#[test]
fn per_channel_int8_equals_the_f64_dot() {
    let mut rng = SmallRng::seed_from_u64(9);
    for k in [32usize, 96, 576, 2048] {
        let codes: Vec<i8> = (0..k).map(|_| rng.gen()).collect();
        let x = activations(k, k as u64);
        let w = Matrix::I8 {
            q: &codes,
            scales: None,
        };
        let a = Q8Row::for_matrix(&x, &w).unwrap();
        let wf: Vec<f32> = codes.iter().map(|&c| c as f32).collect();
        let (want, abs) = reference(&wf, &a.dequantized());
        let bytes: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
        for got in [
            q8::portable_dot(Kind::I8, &bytes, &a),
            q8::dot(Kind::I8, &bytes, &a),
        ] {
            assert!(
                (got as f64 - want).abs() <= 2e-6 * abs,
                "k={k}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn a_non_finite_activation_block_gives_nan() {
    let (bytes, _) = random_blocks(BlockFormat::Q8_0, 4, 1);
    let mut x = activations(128, 2);
    x[70] = f32::INFINITY;
    let w = Matrix::Blocks {
        format: BlockFormat::Q8_0,
        data: &bytes,
    };
    let a = Q8Row::for_matrix(&x, &w).unwrap();
    assert!(q8::dot(Kind::Blocks(BlockFormat::Q8_0), &bytes, &a).is_nan());
    assert!(q8::portable_dot(Kind::Blocks(BlockFormat::Q8_0), &bytes, &a).is_nan());
}

#[test]
fn unsupported_formats_and_f32_mode_keep_the_f32_path() {
    for format in [BlockFormat::Q5_1, BlockFormat::Q5K] {
        let (bytes, _) = random_blocks(format, 1, 4);
        let w = Matrix::Blocks {
            format,
            data: &bytes,
        };
        assert!(!q8::supports(&w, format.block_elems()));
    }
    let w = [0f32; 64];
    assert!(!q8::supports(&Matrix::F32(&w), 64));
    // F32 mode is exactly gemv, bit for bit.
    let (bytes, _) = random_blocks(BlockFormat::Q4_0, 4 * 3, 6);
    let x = activations(128, 1);
    let w = Matrix::Blocks {
        format: BlockFormat::Q4_0,
        data: &bytes,
    };
    let (mut a, mut b) = (vec![0f32; 3], vec![0f32; 3]);
    gemv_with(Activations::F32, &x, 1, 128, w, 3, &mut a);
    silica_kernels::gemv(&x, 1, 128, w, 3, &mut b);
    assert_eq!(a, b);
}

#[test]
fn gemv_over_rows_and_threads_equals_the_row_dots() {
    // Enough bytes to split over the pool's threads, and a row count that is no multiple of 4;
    // activation rows one at a time, in groups of four plus a rest, and over several passes
    // (prefill): each token's result is the same bits whatever the step holds.
    for format in [
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q8_0,
        BlockFormat::Q4K,
        BlockFormat::Q6K,
    ] {
        // 17 blocks of 32 (an odd one at the end), or 2 super-blocks.
        let k = if format.block_elems() == 32 { 544 } else { 512 };
        let n = 301;
        let (bytes, _) = random_blocks(format, n * k / format.block_elems(), 21);
        let rb = format.row_bytes(k).unwrap();
        for m in [1usize, 2, 3, 5, 70] {
            let x = activations(m * k, 8 + m as u64);
            let w = Matrix::Blocks {
                format,
                data: &bytes,
            };
            let mut out = vec![0f32; m * n];
            gemv_with(Activations::Q8, &x, m, k, w, n, &mut out);
            for i in 0..m {
                let a = Q8Row::for_matrix(&x[i * k..(i + 1) * k], &w).unwrap();
                for j in 0..n {
                    let want = q8::dot(Kind::Blocks(format), &bytes[j * rb..(j + 1) * rb], &a);
                    assert_eq!(
                        out[i * n + j].to_bits(),
                        want.to_bits(),
                        "{format} m={m} [{i}, {j}]"
                    );
                }
            }
        }
    }
    // Per-channel int8 with its row scales applied.
    let (k, n) = (256, 130);
    let mut rng = SmallRng::seed_from_u64(2);
    let codes: Vec<i8> = (0..n * k).map(|_| rng.gen()).collect();
    let scales: Vec<f32> = (0..n).map(|j| 0.01 * (j + 1) as f32).collect();
    let x = activations(k, 3);
    let mut out = vec![0f32; n];
    let w = Matrix::I8 {
        q: &codes,
        scales: Some(&scales),
    };
    gemv_with(Activations::Q8, &x, 1, k, w, n, &mut out);
    let a = Q8Row::for_matrix(&x, &w).unwrap();
    for j in 0..n {
        let row: Vec<u8> = codes[j * k..(j + 1) * k].iter().map(|&c| c as u8).collect();
        let want = q8::dot(Kind::I8, &row, &a) * scales[j];
        assert_eq!(out[j].to_bits(), want.to_bits(), "int8 row {j}");
    }
}

#[test]
fn round_trip_is_the_rows_dequantized_activations() {
    let k = 96;
    // Few rows (one thread) and many (split over threads), a non-finite block among them.
    let mut x = activations(200 * k, 12);
    x[3 * k + 40] = f32::NAN;
    for rows in [5usize, 200] {
        let x = &x[..rows * k];
        let rt = q8::round_trip(x, k);
        for (i, r) in x.chunks(k).enumerate() {
            let want = Q8Row::new(r, Order::Natural).dequantized();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&rt[i * k..(i + 1) * k]), bits(&want), "row {i}");
            // The nibble order dequantizes to the same values.
            assert_eq!(
                bits(&Q8Row::new(r, Order::Nibbles).dequantized()),
                bits(&want)
            );
        }
    }
}

#[test]
fn integer_products_equal_f32_products_of_the_round_trip() {
    for format in FORMATS {
        let k = if format.block_elems() == 32 { 576 } else { 512 };
        let n = 64;
        let (bytes, deq) = random_blocks(format, n * k / format.block_elems(), 31);
        let w = Matrix::Blocks {
            format,
            data: &bytes,
        };
        for m in [1usize, 3] {
            let x = activations(m * k, 40 + m as u64);
            let (mut int, mut flt, mut tiled) =
                (vec![0f32; m * n], vec![0f32; m * n], vec![0f32; m * n]);
            gemv_with(Activations::Q8, &x, m, k, w, n, &mut int);
            let rt = q8::round_trip(&x, k);
            silica_kernels::gemv(&rt, m, k, w, n, &mut flt);
            if silica_kernels::gemm::supported() {
                silica_kernels::gemm::matmul_nt(&rt, m, k, w, n, &mut tiled);
            } else {
                tiled.clone_from(&flt);
            }
            for i in 0..m * n {
                let (r, j) = (i / n, i % n);
                let abs = reference(&deq[j * k..(j + 1) * k], &rt[r * k..(r + 1) * k]).1;
                let tol = (4e-6 * abs) as f32;
                assert!(
                    (int[i] - flt[i]).abs() <= tol,
                    "{format} m={m} [{i}]: {} vs {}",
                    int[i],
                    flt[i]
                );
                assert!(
                    (tiled[i] - flt[i]).abs() <= tol,
                    "{format} m={m} [{i}]: tiled {} vs {}",
                    tiled[i],
                    flt[i]
                );
            }
        }
    }
}

/// The vectorisable rounding equals `f32::round` (ggml's roundf, half away from zero) cast to
/// i8 on every f32 in [-160, 160] (all 1.4 billion of them would take too long in debug: every
/// bit pattern of that range's exponents at a stride, plus all halves and their neighbours),
/// and on the specials.
#[test]
fn round_i8_is_roundf_saturated() {
    let check = |t: f32| {
        assert_eq!(
            q8::round_i8(t),
            t.round() as i8,
            "{t:e} ({:#x})",
            t.to_bits()
        );
    };
    for bits in (0u32..=0x4320_0000).step_by(97) {
        check(f32::from_bits(bits));
        check(-f32::from_bits(bits));
    }
    for h in -320..=320 {
        let t = h as f32 * 0.5;
        for x in [
            t,
            f32::from_bits(t.to_bits() + 1),
            f32::from_bits(t.to_bits().max(1) - 1),
        ] {
            check(x);
            check(-x);
        }
    }
    for t in [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e30,
        127.5,
        -128.5,
        0.0,
        -0.0,
    ] {
        check(t);
    }
}
