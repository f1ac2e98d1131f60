//! CPU kernel benchmarks. Throughput is reported as "elements" = FLOPs for matmul/attention
//! (so criterion's `Gelem/s` reads as GFLOP/s) and as bytes for the memory-bound norms.
//! The machine's memory bandwidth and FMA peak are measured first, in the same run.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use silica_benches::{print_limits, random, Prepared};
use silica_tensor::{DType, HostTensor};

fn matmul(c: &mut Criterion) {
    print_limits();
    let mut g = c.benchmark_group("matmul");
    // (name, M, K, N): decode-like skinny (one token through a 2048→8192 projection) and
    // prefill-like square shapes.
    let shapes = [
        ("decode_1x2048x8192", 1, 2048, 8192),
        ("decode_8x2048x8192", 8, 2048, 8192),
        ("prefill_512x2048x2048", 512, 2048, 2048),
        // SmolLM2-135M's MLP up/gate projection at a 64-token prefill (a small real model).
        ("prefill_64x576x1536", 64, 576, 1536),
    ];
    for (name, m, k, n) in shapes {
        let flops = 2 * m * k * n;
        g.throughput(Throughput::Elements(flops as u64));
        for dt in [DType::F32, DType::BF16] {
            let p = Prepared::new(&[(dt, vec![m, k]), (dt, vec![n, k])], |g, x| {
                g.linear(x[0], x[1]).unwrap()
            });
            g.bench_function(format!("silica_{dt}_{name}"), |b| b.iter(|| p.run()));
        }
        // Peer in the same run: candle's CPU matmul (f32), same shapes, weight transposed as a view.
        let dev = candle_core::Device::Cpu;
        let to_candle = |t: HostTensor, s: (usize, usize)| {
            candle_core::Tensor::from_vec(t.to_vec::<f32>().unwrap(), s, &dev).unwrap()
        };
        let x = to_candle(random(DType::F32, &[m, k], 1), (m, k));
        let w = to_candle(random(DType::F32, &[n, k], 2), (n, k));
        g.bench_function(format!("candle_f32_{name}"), |b| {
            b.iter(|| x.matmul(&w.t().unwrap()).unwrap())
        });
        // Like with like for silica's bf16 rows: candle's bf16 matmul, where its CPU backend
        // has one (it says so when it does not).
        let (xb, wb) = (
            x.to_dtype(candle_core::DType::BF16).unwrap(),
            w.to_dtype(candle_core::DType::BF16).unwrap(),
        );
        match xb.matmul(&wb.t().unwrap()) {
            Ok(_) => {
                g.bench_function(format!("candle_bf16_{name}"), |b| {
                    b.iter(|| xb.matmul(&wb.t().unwrap()).unwrap())
                });
            }
            Err(e) => eprintln!("candle_bf16_{name}: no bf16 CPU matmul in candle ({e})"),
        }
    }
    g.finish();
}

fn norms(c: &mut Criterion) {
    print_limits();
    let mut g = c.benchmark_group("norms");
    let (rows, d) = (512, 2048);
    for dt in [DType::F32, DType::BF16] {
        let bytes = 2 * rows * d * dt.size_in_bytes();
        g.throughput(Throughput::Bytes(bytes as u64));
        let p = Prepared::new(&[(dt, vec![rows, d]), (dt, vec![d])], |g, x| {
            g.rms_norm(x[0], x[1], 1e-5).unwrap()
        });
        g.bench_function(format!("rms_norm_{dt}_{rows}x{d}"), |b| b.iter(|| p.run()));
        let p = Prepared::new(&[(dt, vec![32 * 128, 512])], |g, x| {
            g.softmax(x[0], 1).unwrap()
        });
        g.throughput(Throughput::Bytes(
            (2 * 32 * 128 * 512 * dt.size_in_bytes()) as u64,
        ));
        g.bench_function(format!("softmax_{dt}_4096x512"), |b| b.iter(|| p.run()));
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    print_limits();
    let mut g = c.benchmark_group("attention");
    // Llama-3.2-1B geometry: 32 query heads, 8 kv heads, head_dim 64.
    let (hq, hkv, d) = (32, 8, 64);
    for (name, tq, tk) in [("decode_t1_kv2048", 1, 2048), ("prefill_t256", 256, 256)] {
        let flops = 4 * hq * tq * tk * d;
        g.throughput(Throughput::Elements(flops as u64));
        for dt in [DType::F32, DType::BF16] {
            let p = Prepared::new(
                &[
                    (dt, vec![1, hq, tq, d]),
                    (dt, vec![1, hkv, tk, d]),
                    (dt, vec![1, hkv, tk, d]),
                    (dt, vec![1, tq, tk]),
                ],
                |g, x| g.attention(x[0], x[1], x[2], x[3], 0.125).unwrap(),
            );
            g.bench_function(format!("{dt}_{name}"), |b| b.iter(|| p.run()));
        }
    }
    g.finish();
}

/// GGUF block formats: the fused decode-dot over one activation row (the decode GEMV's inner
/// loop, one core) at K = 1536, and the same for f32/bf16/int8 rows for comparison. Throughput in
/// weights per second.
fn blocks(c: &mut Criterion) {
    use silica_kernels::blocks::{dot, BlockFormat};
    print_limits();
    let mut g = c.benchmark_group("blocks");
    let k = 1536;
    let x: Vec<f32> = random(DType::F32, &[k], 1).to_f32_vec();
    g.throughput(Throughput::Elements(k as u64));
    for f in [
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q8_0,
        BlockFormat::Q4K,
        BlockFormat::Q5K,
        BlockFormat::Q6K,
    ] {
        // Random bytes are valid blocks except for the f16 scales: set them to small normals.
        let mut row = vec![0u8; f.row_bytes(k).unwrap()];
        let mut state = 0x9e3779b9u32;
        for b in row.iter_mut() {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            *b = (state >> 24) as u8;
        }
        let blocks = row.len() / f.block_bytes();
        for i in 0..blocks {
            // The f16 super/block scales of each format (ggml's block structs).
            let offs: &[usize] = match f {
                BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => &[0],
                BlockFormat::Q4_1 | BlockFormat::Q5_1 | BlockFormat::Q4K | BlockFormat::Q5K => {
                    &[0, 2]
                }
                BlockFormat::Q6K => &[208],
            };
            for &off in offs {
                let at = i * f.block_bytes() + off;
                row[at..at + 2].copy_from_slice(&silica_tensor::f16::from_f32(0.01).to_le_bytes());
            }
        }
        g.bench_function(format!("dot_{}_k{k}", f.name()), |b| {
            b.iter(|| dot(std::hint::black_box(&x), f, std::hint::black_box(&row)))
        });
        // The same row against 8-bit activations (quantized once, as a GEMV does).
        let m = silica_kernels::Matrix::Blocks {
            format: f,
            data: &row,
        };
        if let Some(a) = silica_kernels::q8::Q8Row::for_matrix(&x, &m) {
            let kind = silica_kernels::q8::Kind::Blocks(f);
            g.bench_function(format!("q8dot_{}_k{k}", f.name()), |b| {
                b.iter(|| silica_kernels::q8::dot(kind, std::hint::black_box(&row), &a))
            });
        }
    }
    let wf: Vec<f32> = random(DType::F32, &[k], 2).to_f32_vec();
    let wb: Vec<silica_tensor::bf16> = wf
        .iter()
        .map(|&v| silica_tensor::bf16::from_f32(v))
        .collect();
    let wi: Vec<i8> = wf.iter().map(|&v| (v * 127.0) as i8).collect();
    use silica_kernels::Row;
    for (name, row) in [
        ("f32", Row::F32(&wf)),
        ("bf16", Row::BF16(&wb)),
        ("int8", Row::I8(&wi)),
    ] {
        g.bench_function(format!("dot_{name}_k{k}"), |b| {
            b.iter(|| silica_kernels::dot(std::hint::black_box(&x), row))
        });
    }
    g.finish();
}

/// The decode GEMV (one token through 2048→8192 projections, both threads) over a working set
/// larger than the last-level cache (this project's hosts report up to 300 MiB of L3), so it
/// streams from memory as a real model's step does. Throughput in weight bytes: compare with
/// the memory bandwidth printed above.
fn gemv(c: &mut Criterion) {
    use silica_kernels::blocks::BlockFormat;
    use silica_kernels::{gemv_with, Activations, Matrix};
    print_limits();
    let mut g = c.benchmark_group("gemv");
    let (k, n) = (2048, 8192);
    let x: Vec<f32> = random(DType::F32, &[k], 1).to_f32_vec();
    let mut out = vec![0f32; n];
    let set_bytes = 512usize << 20;
    let base: Vec<f32> = random(DType::F32, &[n, k], 2).to_f32_vec();
    let scales = vec![0.01f32; n];
    let f32s: Vec<Vec<f32>> = (0..set_bytes / (4 * n * k)).map(|_| base.clone()).collect();
    let bf16s: Vec<Vec<silica_tensor::bf16>> = (0..set_bytes / (2 * n * k))
        .map(|_| {
            base.iter()
                .map(|&v| silica_tensor::bf16::from_f32(v))
                .collect()
        })
        .collect();
    let i8s: Vec<Vec<i8>> = (0..set_bytes / (n * k))
        .map(|_| base.iter().map(|&v| (v * 127.0) as i8).collect())
        .collect();
    // ggml blocks: random codes with small f16 scales (see `blocks`).
    let block_mats = |f: BlockFormat| -> Vec<Vec<u8>> {
        let bytes = f.row_bytes(k).unwrap() * n;
        let mut m = vec![0u8; bytes];
        let mut state = 0x9e3779b9u32;
        for b in m.iter_mut() {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            *b = (state >> 24) as u8;
        }
        let offs: &[usize] = match f {
            BlockFormat::Q6K => &[208],
            BlockFormat::Q4_1 | BlockFormat::Q5_1 | BlockFormat::Q4K | BlockFormat::Q5K => &[0, 2],
            _ => &[0],
        };
        for i in 0..bytes / f.block_bytes() {
            for &off in offs {
                let at = i * f.block_bytes() + off;
                m[at..at + 2].copy_from_slice(&silica_tensor::f16::from_f32(0.01).to_le_bytes());
            }
        }
        (0..set_bytes / bytes).map(|_| m.clone()).collect()
    };
    let q4_0s = block_mats(BlockFormat::Q4_0);
    let q8_0s = block_mats(BlockFormat::Q8_0);
    let q4_ks = block_mats(BlockFormat::Q4K);
    let mut run_with = |name: &str, act: Activations, bytes: usize, mats: Vec<Matrix<'_>>| {
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut i = 0;
        g.bench_function(format!("{name}_1x{k}x{n}"), |b| {
            b.iter(|| {
                gemv_with(act, &x, 1, k, mats[i % mats.len()], n, &mut out);
                i += 1;
            })
        });
    };
    for (name, f, mats) in [
        ("q4_0", BlockFormat::Q4_0, &q4_0s),
        ("q8_0", BlockFormat::Q8_0, &q8_0s),
        ("q4_k", BlockFormat::Q4K, &q4_ks),
    ] {
        for act in [Activations::F32, Activations::Q8] {
            run_with(
                &format!("{name}_{}", act.name()),
                act,
                f.row_bytes(k).unwrap() * n,
                mats.iter()
                    .map(|data| Matrix::Blocks { format: f, data })
                    .collect(),
            );
        }
    }
    run_with(
        "int8_q8",
        Activations::Q8,
        n * k,
        i8s.iter()
            .map(|q| Matrix::I8 {
                q,
                scales: Some(&scales),
            })
            .collect(),
    );
    let mut run = |name: &str, bytes: usize, mats: Vec<Matrix<'_>>| {
        run_with(name, Activations::F32, bytes, mats)
    };
    run(
        "f32",
        4 * n * k,
        f32s.iter().map(|w| Matrix::F32(w)).collect(),
    );
    run(
        "bf16",
        2 * n * k,
        bf16s.iter().map(|w| Matrix::BF16(w)).collect(),
    );
    run(
        "int8",
        n * k,
        i8s.iter()
            .map(|q| Matrix::I8 {
                q,
                scales: Some(&scales),
            })
            .collect(),
    );
    g.finish();
}

criterion_group!(benches, matmul, norms, attention, blocks, gemv);
criterion_main!(benches);
