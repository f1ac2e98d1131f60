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

criterion_group!(benches, matmul, norms, attention);
criterion_main!(benches);
