//! Sampling against transformers' logits processors, with the expected values computed by hand
//! from the transformers formulas (generation/logits_process.py):
//!
//! - RepetitionPenaltyLogitsProcessor: `where(score < 0, score * penalty, score / penalty)` on the
//!   gathered logits of the previous tokens;
//! - TemperatureLogitsWarper: `scores / temperature`;
//! - TopKLogitsWarper: `scores < topk(scores, k)[0][..., -1]` → -inf;
//! - TopPLogitsWarper: sort ascending, `cumsum(softmax) <= 1 - top_p` → -inf, keep the last;
//! - MinPLogitsWarper: `softmax < min_p * max(softmax)` → -inf;
//! - then `multinomial(softmax(scores))`.

use silica_models::sampling::{
    apply_repetition_penalty, argmax, min_p_mask, softmax, top_k_mask, top_p_mask, Sampler,
    SamplingParams,
};

const NEG: f32 = f32::NEG_INFINITY;

fn params(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

fn ln(p: &[f64]) -> Vec<f32> {
    p.iter().map(|&x| x.ln() as f32).collect()
}

/// Which entries are still finite.
fn kept(scores: &[f32]) -> Vec<bool> {
    scores.iter().map(|s| s.is_finite()).collect()
}

#[test]
fn greedy_is_argmax_first_on_ties() {
    let mut s = Sampler::new(&SamplingParams::default());
    assert_eq!(s.sample(&[0.5, 2.0, -3.0, 1.0], &[]), 1);
    assert_eq!(s.sample(&[1.0, 7.0, 7.0, 7.0], &[]), 1);
    assert_eq!(s.sample(&[-5.0, -2.0, -2.5], &[]), 1);
    // Greedy ignores top-k / top-p / min-p (they never remove the argmax) and the seed.
    let p = SamplingParams {
        top_k: 1,
        top_p: 0.1,
        min_p: 0.9,
        seed: Some(3),
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(&p);
    for _ in 0..5 {
        assert_eq!(s.sample(&[0.1, 0.3, 0.2], &[]), 1);
    }
    assert_eq!(argmax(&[NEG, NEG, 0.0]), 2);
}

#[test]
fn repetition_penalty_arithmetic() {
    // Positive logits are divided, negative ones multiplied; each distinct token once.
    let mut v = vec![2.0f32, -1.0, 0.5, 3.0, -0.25, 0.0];
    apply_repetition_penalty(&mut v, &[0, 1, 1, 1, 4, 5, 99], 2.0, &mut Vec::new());
    assert_eq!(v, vec![1.0, -2.0, 0.5, 3.0, -0.5, 0.0]);
    let mut v = vec![1.2f32, -1.2];
    apply_repetition_penalty(&mut v, &[0, 1], 1.2, &mut Vec::new());
    assert_eq!(v, vec![1.2f32 / 1.2, -1.2f32 * 1.2]);
    // A penalty < 1 encourages repeats.
    let mut v = vec![1.0f32, -1.0];
    apply_repetition_penalty(&mut v, &[0, 1], 0.5, &mut Vec::new());
    assert_eq!(v, vec![2.0, -0.5]);

    // Through the sampler: the penalty changes the greedy choice.
    let p = SamplingParams {
        repetition_penalty: 1.1,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(&p);
    assert_eq!(s.sample(&[3.0, 2.9], &[]), 0);
    assert_eq!(s.sample(&[3.0, 2.9], &[0]), 1); // 3 / 1.1 = 2.73 < 2.9
    assert_eq!(s.sample(&[-1.0, -1.05], &[0, 0]), 1); // -1 * 1.1 = -1.1 < -1.05
    assert_eq!(
        s.process(&[3.0, 2.9, -1.0], &[0, 2]),
        &[3.0f32 / 1.1, 2.9, -1.1][..]
    );
}

#[test]
fn top_k_mask_keeps_k_largest_and_ties() {
    let mut v = vec![1.0f32, 5.0, 3.0, 4.0, 2.0];
    top_k_mask(&mut v, 2, &mut Vec::new());
    assert_eq!(v, vec![NEG, 5.0, NEG, 4.0, NEG]);
    // Every logit equal to the k-th largest stays (`scores < kth` is removed).
    let mut v = vec![1.0f32, 3.0, 2.0, 2.0, 0.0];
    top_k_mask(&mut v, 2, &mut Vec::new());
    assert_eq!(v, vec![NEG, 3.0, 2.0, 2.0, NEG]);
    // k >= vocabulary: nothing removed.
    let mut v = vec![1.0f32, 2.0];
    top_k_mask(&mut v, 5, &mut Vec::new());
    assert_eq!(v, vec![1.0, 2.0]);
}

#[test]
fn top_p_mask_matches_the_hf_formula() {
    // probs 0.05, 0.1, 0.15, 0.3, 0.4 (shuffled); ascending cumulative sums 0.05, 0.15, 0.30, 0.60, 1.0.
    let probs = [0.3, 0.05, 0.4, 0.15, 0.1];
    let check = |top_p: f32, want: [bool; 5]| {
        let mut v = ln(&probs);
        top_p_mask(&mut v, top_p, &mut Vec::new());
        assert_eq!(kept(&v), want, "top_p {top_p}");
        // By hand: remove where the ascending cumsum <= 1 - top_p, except the most likely token.
        let mut order: Vec<usize> = (0..5).collect();
        order.sort_by(|&a, &b| probs[a].partial_cmp(&probs[b]).unwrap());
        let mut cum = 0.0;
        let mut hand = [true; 5];
        for (pos, &i) in order.iter().enumerate() {
            cum += probs[i];
            if pos < 4 && cum <= 1.0 - top_p as f64 {
                hand[i] = false;
            }
        }
        assert_eq!(kept(&v), hand, "top_p {top_p} by hand");
    };
    check(0.65, [true, false, true, false, false]); // 1 - p = 0.35: 0.05, 0.15, 0.30 go
    check(0.75, [true, false, true, true, false]); // 0.25: 0.05, 0.15 go
    check(0.99, [true; 5]); // 1 - p = 0.01 < 0.05: nothing goes
    check(0.1, [false, false, true, false, false]); // only the top token
    check(1.0, [true; 5]);
    // Equal probabilities: 0.25 each, 1 - 0.6 = 0.4 → the first in ascending (stable) order goes.
    let mut v = ln(&[0.25, 0.25, 0.25, 0.25]);
    top_p_mask(&mut v, 0.6, &mut Vec::new());
    assert_eq!(v.iter().filter(|s| s.is_finite()).count(), 3);
    // Tokens already removed (-inf) count with probability 0.
    let mut v = vec![NEG, (0.5f64).ln() as f32, NEG, (0.5f64).ln() as f32];
    top_p_mask(&mut v, 0.4, &mut Vec::new());
    assert_eq!(kept(&v), [false, false, false, true]);
}

#[test]
fn min_p_mask_matches_the_hf_formula() {
    let probs = [0.3, 0.05, 0.4, 0.15, 0.1];
    for (min_p, want) in [
        (0.3f32, [true, false, true, true, false]), // threshold 0.12
        (0.5, [true, false, true, false, false]),   // 0.2
        (0.8, [false, false, true, false, false]),  // 0.32
        (0.1, [true, true, true, true, true]),      // 0.04
        (1.0, [false, false, true, false, false]),  // only the top
    ] {
        let mut v = ln(&probs);
        min_p_mask(&mut v, min_p);
        assert_eq!(kept(&v), want, "min_p {min_p}");
        let hand: Vec<bool> = probs.iter().map(|&p| p >= min_p as f64 * 0.4).collect();
        assert_eq!(kept(&v), hand, "min_p {min_p} by hand");
    }
}

/// The whole pipeline, in transformers' order, on logits 1..5.
fn pipeline_params(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.5,
        top_k: 4,
        top_p: 0.9,
        min_p: 0.1,
        repetition_penalty: 1.0,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

/// The transformers processors written out again in f64, straight from the formulas; returns
/// which tokens survive, or None when a cumulative sum or probability lies too close to its
/// threshold for f32 and f64 to agree.
fn hf_reference_mask(logits: &[f32], previous: &[u32], p: &SamplingParams) -> Option<Vec<bool>> {
    let mut s: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    let mut seen: Vec<u32> = previous.to_vec();
    seen.sort();
    seen.dedup();
    for &t in &seen {
        let x = &mut s[t as usize];
        let pen = p.repetition_penalty as f64;
        *x = if *x < 0.0 { *x * pen } else { *x / pen };
    }
    for x in s.iter_mut() {
        *x /= p.temperature as f64;
    }
    let softmax = |s: &[f64]| -> Vec<f64> {
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    };
    if p.top_k > 0 {
        let mut sorted = s.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let kth = sorted[p.top_k.min(s.len()) - 1];
        for x in s.iter_mut() {
            if *x < kth {
                *x = f64::NEG_INFINITY;
            }
        }
    }
    if p.top_p < 1.0 {
        let probs = softmax(&s);
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by(|&a, &b| s[a].partial_cmp(&s[b]).unwrap());
        let threshold = 1.0 - p.top_p as f64;
        let mut cum = 0.0;
        let mut remove = vec![];
        for (pos, &i) in order.iter().enumerate() {
            cum += probs[i];
            if probs[i] > 0.0 && (cum - threshold).abs() < 1e-4 {
                return None;
            }
            if pos + 1 < order.len() && cum <= threshold {
                remove.push(i);
            }
        }
        for i in remove {
            s[i] = f64::NEG_INFINITY;
        }
    }
    if p.min_p > 0.0 {
        let probs = softmax(&s);
        let top = probs.iter().copied().fold(0.0, f64::max);
        for (x, q) in s.iter_mut().zip(probs) {
            if q > 0.0 && (q - p.min_p as f64 * top).abs() < 1e-5 {
                return None;
            }
            if q < p.min_p as f64 * top {
                *x = f64::NEG_INFINITY;
            }
        }
    }
    Some(s.iter().map(|x| x.is_finite()).collect())
}

#[test]
fn processors_run_in_transformers_order() {
    let logits = [1.0f32, 2.0, 3.0, 4.0, 5.0];
    // By hand: temperature 0.5 → 2, 4, 6, 8, 10; top-k 4 removes 2; top-p 0.9: softmax of
    // 4, 6, 8, 10 has ascending cumsum ≈ 0.0021, 0.0180, 0.1350, 1 → the first two (<= 0.1) go;
    // min-p 0.1: softmax of 6, 8, 10 ≈ 0.0159, 0.1173, 0.8668, threshold 0.0867 → 6 goes.
    let mut s = Sampler::new(&pipeline_params(1));
    assert_eq!(s.process(&logits, &[]), &[NEG, NEG, NEG, 8.0, 10.0][..]);
    assert_eq!(
        hf_reference_mask(&logits, &[], &pipeline_params(1)).unwrap(),
        kept(s.process(&logits, &[]))
    );

    // Top-p before min-p: probs 0.5, 0.3, 0.2 with top_p 0.6 (1 - p = 0.4: cumsum 0.2 goes,
    // 0.5 stops) then min_p 0.5 (0.3 / 0.5 >= 0.5 stays) keeps two tokens; min-p first would
    // drop 0.2, renormalise to 0.625, 0.375 and top-p would then drop 0.375 too.
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.6,
        min_p: 0.5,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(&p);
    assert_eq!(
        kept(s.process(&ln(&[0.5, 0.3, 0.2]), &[])),
        [true, true, false]
    );

    // Repetition penalty comes first: it can push a token out of the top-k.
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 1,
        repetition_penalty: 2.0,
        ..SamplingParams::default()
    };
    let mut s = Sampler::new(&p);
    assert_eq!(kept(s.process(&[3.0, 2.0], &[0])), [false, true]);

    // Random logits and parameters against the f64 reference.
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut compared = 0;
    for case in 0..2000 {
        let n = 2 + (next() * 60.0) as usize;
        let logits: Vec<f32> = (0..n).map(|_| (next() * 12.0 - 6.0) as f32).collect();
        let previous: Vec<u32> = (0..(next() * 10.0) as usize)
            .map(|_| (next() * n as f64) as u32)
            .collect();
        let p = SamplingParams {
            temperature: (0.2 + next() * 2.0) as f32,
            top_k: if next() < 0.5 {
                0
            } else {
                1 + (next() * n as f64) as usize
            },
            top_p: if next() < 0.3 {
                1.0
            } else {
                (0.05 + next() * 0.95) as f32
            },
            min_p: if next() < 0.3 {
                0.0
            } else {
                (next() * 0.5) as f32
            },
            repetition_penalty: if next() < 0.3 {
                1.0
            } else {
                (0.5 + next() * 1.5) as f32
            },
            seed: Some(case),
            ..SamplingParams::default()
        };
        let Some(want) = hf_reference_mask(&logits, &previous, &p) else {
            continue;
        };
        let mut s = Sampler::new(&p);
        assert_eq!(
            kept(s.process(&logits, &previous)),
            want,
            "case {case}: {p:?} {logits:?} {previous:?}"
        );
        compared += 1;
    }
    assert!(compared > 1900, "{compared}");
}

#[test]
fn empirical_frequencies_within_three_sigma() {
    let probs = [0.1, 0.2, 0.3, 0.4];
    let n = 20_000;
    let mut s = Sampler::new(&params(1.0, 1234));
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&ln(&probs), &[]) as usize] += 1;
    }
    for (c, p) in counts.iter().zip(probs) {
        let mean = n as f64 * p;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (*c as f64 - mean).abs() <= 3.0 * sigma,
            "count {c} for p {p}: mean {mean}, sigma {sigma}; all {counts:?}"
        );
    }

    // Temperature 2 flattens: p ∝ exp(ln p / 2) = sqrt(p).
    let mut s = Sampler::new(&params(2.0, 99));
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&ln(&probs), &[]) as usize] += 1;
    }
    let z: f64 = probs.iter().map(|p: &f64| p.sqrt()).sum();
    for (c, p) in counts.iter().zip(probs) {
        let q = p.sqrt() / z;
        let (mean, sigma) = (n as f64 * q, (n as f64 * q * (1.0 - q)).sqrt());
        assert!(
            (*c as f64 - mean).abs() <= 3.0 * sigma,
            "T=2: count {c} for q {q}: {counts:?}"
        );
    }

    // The full pipeline draws from softmax(8, 10) over tokens 3 and 4 only.
    let mut s = Sampler::new(&pipeline_params(5));
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[s.sample(&[1.0, 2.0, 3.0, 4.0, 5.0], &[]) as usize] += 1;
    }
    assert_eq!(counts[..3], [0, 0, 0]);
    let q = 1.0 / (1.0 + 2.0f64.exp());
    let (mean, sigma) = (n as f64 * q, (n as f64 * q * (1.0 - q)).sqrt());
    assert!(
        (counts[3] as f64 - mean).abs() <= 3.0 * sigma,
        "{counts:?}, want token 3 with p {q}"
    );
}

#[test]
fn seeds_reproduce_and_differ() {
    let logits: Vec<f32> = (0..50).map(|i| ((i * 7919) % 13) as f32 * 0.1).collect();
    let draw = |seed: u64| -> Vec<u32> {
        let mut s = Sampler::new(&SamplingParams {
            top_k: 20,
            top_p: 0.95,
            ..params(0.8, seed)
        });
        (0..200).map(|_| s.sample(&logits, &[])).collect()
    };
    assert_eq!(draw(42), draw(42));
    assert_ne!(draw(42), draw(43));
    // No seed: a fresh random seed each time.
    let fresh = |_| {
        let mut s = Sampler::new(&SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        });
        (0..200)
            .map(|_| s.sample(&logits, &[]))
            .collect::<Vec<u32>>()
    };
    assert_ne!(fresh(0), fresh(1));
    // A cloned sampler continues the same sequence.
    let mut a = Sampler::new(&params(1.0, 7));
    a.sample(&logits, &[]);
    let mut b = a.clone();
    assert_eq!(
        (0..20).map(|_| a.sample(&logits, &[])).collect::<Vec<_>>(),
        (0..20).map(|_| b.sample(&logits, &[])).collect::<Vec<_>>()
    );
}

#[test]
fn nan_and_infinite_logits_do_not_panic() {
    for p in [
        SamplingParams::default(),
        params(1.0, 1),
        pipeline_params(2),
        SamplingParams {
            top_k: 2,
            ..params(0.7, 3)
        },
    ] {
        let mut s = Sampler::new(&p);
        for _ in 0..50 {
            assert_eq!(s.sample(&[f32::NAN, 1.0, f32::NAN], &[]), 1, "{p:?}");
        }
        assert_eq!(s.sample(&[f32::NAN, f32::NAN], &[0, 1]), 0);
        assert_eq!(s.sample(&[NEG, NEG, NEG], &[]), 0);
        let t = s.sample(&[f32::INFINITY, 0.0, f32::INFINITY], &[]);
        assert!(t == 0 || t == 2, "{p:?}: {t}");
        assert_eq!(s.sample(&[], &[]), 0);
        assert_eq!(s.sample(&[0.0, 1e30, -1e30], &[5, 6]), 1);
    }
    let tiny = SamplingParams {
        temperature: 1e-30,
        ..pipeline_params(3)
    };
    let mut s = Sampler::new(&tiny);
    assert_eq!(s.sample(&[0.0, 1.0, 0.5], &[]), 1);
    assert!(softmax(&[NEG, NEG]).iter().all(|&p| p == 0.0));
}

#[test]
fn validate_rejects_bad_values_with_usable_messages() {
    assert_eq!(SamplingParams::default().validate(), Ok(()));
    assert_eq!(pipeline_params(0).validate(), Ok(()));
    let bad = [
        (
            SamplingParams {
                temperature: -0.5,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::INFINITY,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: -0.1,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: f32::NAN,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                min_p: -0.1,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                min_p: 1.1,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                min_p: f32::NAN,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                repetition_penalty: -1.0,
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                repetition_penalty: f32::NAN,
                ..Default::default()
            },
            "repetition_penalty",
        ),
    ];
    for (p, name) in bad {
        let e = p.validate().expect_err(name);
        assert!(e.contains(name), "{e}");
        assert!(e.contains("got"), "the message shows the value: {e}");
    }
    // Edges that are allowed.
    for p in [
        SamplingParams {
            top_p: 1.0,
            min_p: 1.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: 1e-6,
            min_p: 0.0,
            repetition_penalty: 0.01,
            temperature: 100.0,
            ..Default::default()
        },
    ] {
        assert_eq!(p.validate(), Ok(()), "{p:?}");
    }
}
