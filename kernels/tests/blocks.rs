//! GGUF block formats against candle-core's port of ggml (an independent implementation of the
//! same layouts): decoding is bit-identical at every ISA level, and the fused dot equals an f64
//! dot of the decoded values to f32 rounding.

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use silica_kernels::blocks::{self, BlockFormat};
use silica_kernels::{gemv_at, Level, Matrix};

const LEVELS: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

fn ggml(format: BlockFormat) -> GgmlDType {
    match format {
        BlockFormat::Q4_0 => GgmlDType::Q4_0,
        BlockFormat::Q4_1 => GgmlDType::Q4_1,
        BlockFormat::Q5_0 => GgmlDType::Q5_0,
        BlockFormat::Q5_1 => GgmlDType::Q5_1,
        BlockFormat::Q8_0 => GgmlDType::Q8_0,
        BlockFormat::Q4K => GgmlDType::Q4K,
        BlockFormat::Q5K => GgmlDType::Q5K,
        BlockFormat::Q6K => GgmlDType::Q6K,
    }
}

/// (bytes, candle's dequantization) of `rows × cols` values quantized by candle.
fn quantized(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| rng.gen_range(-1.0f32..1.0) * (1.0 + (i % 7) as f32))
        .collect();
    let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, ggml(format)).unwrap();
    let bytes = q.data().unwrap().into_owned();
    let deq = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (bytes, deq)
}

/// candle's decoding of arbitrary bytes (every code, including ones no quantizer writes), with the
/// f16 scales kept finite.
fn random_blocks(format: BlockFormat, blocks: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let bb = format.block_bytes();
    let mut bytes: Vec<u8> = (0..blocks * bb).map(|_| rng.gen()).collect();
    // The f16 fields (d, dmin) sit at the start of each block, except for Q6_K's d at its end.
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
    let n = blocks * format.block_elems();
    let storage = QStorage::from_data(bytes.clone().into(), &Device::Cpu, ggml(format)).unwrap();
    let q = QTensor::new(storage, (n,)).unwrap();
    let deq = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (bytes, deq)
}

fn same_bits(a: &[f32], b: &[f32]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
}

#[test]
fn layouts_match_ggml() {
    for f in BlockFormat::ALL {
        let (bytes, _) = quantized(f, 1, 256, 1);
        assert_eq!(bytes.len(), f.row_bytes(256).unwrap(), "{f}");
        assert_eq!(
            f.row_bytes(256),
            Some(256 / f.block_elems() * f.block_bytes())
        );
        assert_eq!(f.row_elems(bytes.len()), Some(256));
        assert_eq!(f.row_bytes(f.block_elems() + 1), None);
    }
}

#[test]
fn dequantize_is_bit_identical_to_candle() {
    for f in BlockFormat::ALL {
        for (seed, (bytes, want)) in [quantized(f, 3, 512, 2), random_blocks(f, 24, 3)]
            .into_iter()
            .enumerate()
        {
            for level in LEVELS {
                let mut got = vec![0f32; want.len()];
                blocks::dequantize_at(level, f, &bytes, &mut got);
                if let Some(i) = same_bits(&got, &want) {
                    panic!(
                        "{f} case {seed} at {level:?}: value {i} is {} (candle: {})",
                        got[i], want[i]
                    );
                }
            }
        }
    }
}

#[test]
fn dot_matches_an_f64_dot_of_the_decoded_values() {
    let mut rng = SmallRng::seed_from_u64(9);
    for f in BlockFormat::ALL {
        for cols in [256usize, 512, 1536] {
            let (bytes, w) = quantized(f, 1, cols, cols as u64);
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let exact: f64 = x.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
            let abs: f64 = x
                .iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            for level in LEVELS {
                let got = blocks::dot_at(level, &x, f, &bytes) as f64;
                // f32 accumulation of `cols` products: a few ulps of the absolute sum.
                let tol = abs * cols as f64 * f32::EPSILON as f64 / 8.0 + 1e-6;
                assert!(
                    (got - exact).abs() <= tol,
                    "{f} K={cols} at {level:?}: {got} vs {exact} (tol {tol})"
                );
            }
        }
    }
}

#[test]
fn gemv_over_blocks_equals_rowwise_dots() {
    let mut rng = SmallRng::seed_from_u64(4);
    // Rows not a multiple of 4, and enough bytes to run on the pool.
    let (n, k) = (203usize, 1024usize);
    for f in BlockFormat::ALL {
        let (bytes, _) = quantized(f, n, k, 5);
        let rb = f.row_bytes(k).unwrap();
        for m in [1usize, 3] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            for level in LEVELS {
                let mut out = vec![0f32; m * n];
                let w = Matrix::Blocks {
                    format: f,
                    data: &bytes,
                };
                gemv_at(level, &x, m, k, w, n, &mut out);
                for i in 0..m {
                    for j in 0..n {
                        let want = blocks::dot_at(
                            level,
                            &x[i * k..(i + 1) * k],
                            f,
                            &bytes[j * rb..(j + 1) * rb],
                        );
                        assert_eq!(
                            out[i * n + j].to_bits(),
                            want.to_bits(),
                            "{f} m={m} {i},{j}"
                        );
                    }
                }
            }
        }
    }
}
