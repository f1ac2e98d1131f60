//! The sampler program ([`silica_models::device_sampling`]) against the host [`Sampler`]: for a
//! seed, the program run on the CPU backend must pick exactly the host's token, for greedy rows,
//! temperature, top-k (ties), top-p, min-p and their combinations, mixed in one batch, with NaN
//! and infinite logits, and the chosen token's log-probability must be `log_softmax`'s.

use silica_models::device_sampling::{sampler_program, DeviceDraw, SamplerShape};
use silica_models::sampling::{Sampler, SamplingParams};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{run_host, Backend, HostTensor};

/// A deterministic pseudo-normal logit row (xorshift), scaled like real logits.
fn logits_row(v: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..v)
        .map(|_| {
            let mut acc = 0.0f32;
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                acc += (x >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * scale
        })
        .collect()
}

fn params(t: f32, k: usize, p: f32, min_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: t,
        top_k: k,
        top_p: p,
        min_p,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

/// Runs the sampler program for one batch and returns (tokens, logprobs).
fn run_program(
    be: &CpuBackend,
    v: usize,
    rows: &[Vec<f32>],
    draws: &[DeviceDraw],
) -> (Vec<i32>, Vec<f32>) {
    let b = rows.len();
    let shape = SamplerShape::for_rows(b, v, draws);
    let prog = sampler_program(&shape).unwrap();
    let exe = be.compile(&prog).unwrap();
    let mut inputs = vec![HostTensor::from_vec(rows.concat(), [b, v]).unwrap()];
    inputs.extend(shape.inputs(draws).unwrap());
    let out = run_host(be, exe.as_ref(), &inputs).unwrap();
    (
        out[0].to_vec::<i32>().unwrap(),
        out[1].to_vec::<f32>().unwrap(),
    )
}

fn log_softmax_at(row: &[f32], tok: usize) -> f64 {
    let x: Vec<f64> = row
        .iter()
        .map(|&v| {
            if v.is_nan() {
                f64::NEG_INFINITY
            } else {
                v as f64
            }
        })
        .collect();
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + x.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
    x[tok] - lse
}

/// Every parameter set, each row its own seed; `steps` tokens per row from one logit row each.
fn check(v: usize, rows: Vec<Vec<f32>>, sets: &[SamplingParams], steps: usize) {
    let be = CpuBackend::new();
    let b = sets.len();
    let mut host: Vec<Sampler> = sets.iter().map(Sampler::new).collect();
    let mut dev: Vec<Sampler> = sets.iter().map(Sampler::new).collect();
    for step in 0..steps {
        let batch: Vec<Vec<f32>> = (0..b)
            .map(|r| rows[(r + step) % rows.len()].clone())
            .collect();
        let draws: Vec<DeviceDraw> = dev.iter_mut().map(|s| s.device_draw().unwrap()).collect();
        let (toks, lps) = run_program(&be, v, &batch, &draws);
        for r in 0..b {
            let want = host[r].sample(&batch[r], &[]);
            assert_eq!(
                toks[r] as u32, want,
                "step {step} row {r} ({:?}, u = {}): program token {} vs host {want}",
                sets[r], draws[r].uniform, toks[r]
            );
            let lp = log_softmax_at(&batch[r], want as usize);
            if lp.is_finite() {
                assert!(
                    (lps[r] as f64 - lp).abs() <= 1e-4 * (1.0 + lp.abs()),
                    "step {step} row {r}: logprob {} vs {lp}",
                    lps[r]
                );
            }
        }
    }
}

#[test]
fn greedy_program_is_argmax_first_on_ties_with_nan() {
    let v = 37;
    let mut r0 = logits_row(v, 1, 3.0);
    r0[5] = 100.0;
    r0[9] = 100.0; // tie: the first wins
    let mut r1 = logits_row(v, 2, 3.0);
    r1[0] = f32::NAN;
    r1[3] = f32::NAN;
    let r2 = vec![f32::NAN; v]; // nothing finite: token 0
    let sets = vec![SamplingParams::default(); 3];
    check(v, vec![r0, r1, r2], &sets, 3);
}

#[test]
fn sampled_tokens_equal_the_host_samplers_for_a_seed() {
    let v = 1000; // not a power of two: the prefix sum's last shift is partial
    let rows: Vec<Vec<f32>> = (0..6).map(|i| logits_row(v, 10 + i, 2.5)).collect();
    let sets = vec![
        params(1.0, 0, 1.0, 0.0, 1),
        params(0.7, 0, 1.0, 0.0, 2),
        params(0.0, 40, 0.5, 0.0, 3), // greedy row in a sampling batch
        params(1.3, 5, 1.0, 0.0, 4),
        params(1.0, 1, 1.0, 0.0, 5),
        params(0.9, 0, 0.9, 0.0, 6),
        params(1.0, 0, 0.3, 0.0, 7),
        params(0.8, 50, 0.8, 0.05, 8),
        params(1.0, 0, 1.0, 0.2, 9),
        params(1.0, 5000, 1e-3, 0.0, 10), // top_k past the vocabulary; top_p keeps only the max
    ];
    check(v, rows, &sets, 25);
}

#[test]
fn top_k_keeps_ties_and_extremes_match() {
    let v = 64;
    // Many ties at the k-th value, negative and zero scores (-0 and +0 tie), -inf entries.
    let mut tied: Vec<f32> = (0..v).map(|i| ((i % 7) as f32 - 3.0) * 0.5).collect();
    tied[1] = -0.0;
    tied[2] = f32::NEG_INFINITY;
    tied[60] = f32::NAN;
    // +inf logits: only they can be drawn, uniformly by the same number.
    let mut inf = logits_row(v, 3, 1.0);
    inf[7] = f32::INFINITY;
    inf[40] = f32::INFINITY;
    let mut all_neg = vec![f32::NEG_INFINITY; v];
    all_neg[63] = -1e30;
    let sets = vec![
        params(1.0, 10, 1.0, 0.0, 11),
        params(1.0, 3, 1.0, 0.0, 12),
        params(2.0, 0, 1.0, 0.0, 13),
        // No top-p here: where the top-p boundary falls inside a tie, the host removes a prefix of
        // the tie (its sort order) and the program the whole tie (see the module's notes).
        params(1.0, 20, 1.0, 0.1, 14),
    ];
    check(v, vec![tied, inf, all_neg], &sets, 30);
}

#[test]
fn the_rng_stays_in_step_across_paths() {
    // A sequence that alternates host and program draws gives the host-only sequence.
    let v = 300;
    let rows: Vec<Vec<f32>> = (0..4).map(|i| logits_row(v, 40 + i, 2.0)).collect();
    let p = params(1.0, 30, 0.9, 0.0, 99);
    let mut only_host = Sampler::new(&p);
    let mut mixed = Sampler::new(&p);
    let be = CpuBackend::new();
    for step in 0..20 {
        let row = &rows[step % rows.len()];
        let want = only_host.sample(row, &[]);
        let got = if step % 2 == 0 {
            mixed.sample(row, &[])
        } else {
            let d = mixed.device_draw().unwrap();
            run_program(&be, v, std::slice::from_ref(row), &[d]).0[0] as u32
        };
        assert_eq!(got, want, "step {step}");
    }
}

#[test]
fn repetition_penalty_stays_on_the_host_and_shapes_are_minimal() {
    let mut s = Sampler::new(&SamplingParams {
        repetition_penalty: 1.2,
        ..SamplingParams::default()
    });
    assert_eq!(s.device_draw(), None);
    let greedy = [DeviceDraw::GREEDY; 2];
    let shape = SamplerShape::for_rows(2, 10, &greedy);
    assert!(!shape.sample && shape.parameter_names().is_empty());
    assert_eq!(shape.name(), "sample_greedy_b2");
    let mut d = DeviceDraw::GREEDY;
    d.temperature = 1.0;
    d.top_k = 10; // == vocab: off
    let shape = SamplerShape::for_rows(2, 10, &[DeviceDraw::GREEDY, d]);
    assert!(shape.sample && !shape.top_k && !shape.top_p);
    assert_eq!(shape.parameter_names(), ["temperature", "min_p", "uniform"]);
    d.top_p = 0.5;
    d.top_k = 3;
    let shape = SamplerShape::for_rows(2, 10, &[d, DeviceDraw::GREEDY]);
    assert_eq!(shape.name(), "sample_topk_topp_b2");
}
