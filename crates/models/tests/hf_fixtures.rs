//! The outside reference: tiny random checkpoints made by Hugging Face transformers
//! (`scripts/make_fixtures.py`), with logits and greedy continuations recorded in f32.
//!
//! Contract (models/fixtures/README.md): f32 logits within 1e-4 absolute, greedy tokens equal.
//! Lower-precision compute is compared with the same f32 reference; see `low_precision` for
//! the tolerance argument.

use silica_models::{GenerateOptions, LoadOptions, LoadedModel};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::DType;
use std::path::Path;
use std::sync::Arc;

mod common;
use common::{fixtures as cases, ids, reference};

fn load(dir: &Path, dtype: DType, max_context: Option<usize>) -> LoadedModel {
    let opts = LoadOptions {
        dtype,
        max_context,
        ..Default::default()
    };
    LoadedModel::load(dir, Arc::new(CpuBackend::new()), &opts)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Max |a - b| and where.
fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .enumerate()
        .fold((0.0, 0), |(m, mi), (i, (x, y))| {
            let d = (x - y).abs();
            if d > m || d.is_nan() {
                (d, i)
            } else {
                (m, mi)
            }
        })
}

fn check_logits(name: &str, got: &[f32], want: &[f32], tol: f32) {
    let (d, i) = max_abs_diff(got, want);
    assert!(
        d <= tol,
        "{name}: max |diff| {d} > {tol} at flat index {i} (got {}, want {})",
        got[i],
        want[i]
    );
}

#[test]
fn f32_logits_match_transformers() {
    for dir in cases() {
        let (r, st) = reference(&dir);
        let model = load(&dir, DType::F32, None);
        let input = ids(&r["input_ids"]);
        let got = model.logits(&input).unwrap().to_vec::<f32>().unwrap();
        let want = st.get("logits").unwrap().to_vec::<f32>().unwrap();
        check_logits(&dir.display().to_string(), &got, &want, 1e-4);
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for dir in cases() {
        let (r, _) = reference(&dir);
        let model = load(&dir, DType::F32, None);
        let input = ids(&r["input_ids"]);
        let want = ids(&r["greedy"]["ids"]);
        let opts = GenerateOptions {
            max_tokens: want.len(),
            ignore_eos: true,
            ..Default::default()
        };
        let got = model.generate(&input, &opts, |_| {}).unwrap();
        assert_eq!(
            got.token_ids,
            want,
            "{}: greedy tokens differ",
            dir.display()
        );
    }
}

#[test]
fn long_inputs_and_chunked_prefill_match() {
    // Inputs longer than max_position_embeddings (dynamic rope grows its base) where recorded,
    // processed with a small prefill chunk so chunking is exercised too.
    let mut seen = 0;
    for dir in cases() {
        let (r, st) = reference(&dir);
        let Some(long) = r.get("long") else { continue };
        seen += 1;
        let input = ids(&long["input_ids"]);
        let want = st.get("long_logits").unwrap().to_vec::<f32>().unwrap();
        let model = load(&dir, DType::F32, Some(input.len() + 8));
        let got = model.logits(&input).unwrap().to_vec::<f32>().unwrap();
        check_logits(&format!("{} long", dir.display()), &got, &want, 1e-4);
    }
    assert!(seen > 0, "no fixture records a long input");
}

#[test]
fn chunked_prefill_equals_single_prefill() {
    let dir = &cases()[0];
    let (r, st) = reference(dir);
    let input = ids(&r["input_ids"]);
    let want = st.get("logits").unwrap().to_vec::<f32>().unwrap();
    let opts = LoadOptions {
        max_prefill_chunk: 3,
        ..Default::default()
    };
    let model = LoadedModel::load(dir, Arc::new(CpuBackend::new()), &opts).unwrap();
    let got = model.logits(&input).unwrap().to_vec::<f32>().unwrap();
    check_logits("chunked", &got, &want, 1e-4);
}

/// bf16/f16 compute against the f32 reference.
///
/// Tolerance argument: every matmul input is rounded to 8 (bf16) or 11 (f16) significant bits,
/// a relative error of 2^-9 ≈ 0.2% (bf16) / 2^-12 (f16) per rounding; through 2 layers and the
/// lm_head that compounds to a few percent of the logits' scale. We therefore require the
/// max |diff| to be below 5% (bf16) / 1% (f16) of the reference logits' max |value|, and the
/// argmax at each position to agree wherever the f32 reference's top-2 margin exceeds that
/// tolerance (ties inside the noise may flip legitimately).
#[test]
fn low_precision_compute_tracks_f32() {
    for (dt, rel) in [(DType::BF16, 0.05f32), (DType::F16, 0.01f32)] {
        for dir in cases() {
            let (r, st) = reference(&dir);
            // (MoE fixtures are drawn with every token's top-k experts ≥ 0.5 router logits clear
            // of the next, so 16-bit compute routes as f32 does: see ROUTER_MARGIN in
            // scripts/make_fixtures.py.)
            let want = st.get("logits").unwrap().to_vec::<f32>().unwrap();
            let model = load(&dir, dt, None);
            let got = model
                .logits(&ids(&r["input_ids"]))
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let tol = rel * scale;
            check_logits(&format!("{} {dt}", dir.display()), &got, &want, tol);
            let v = model.config.vocab_size;
            for (p, (g, w)) in got.chunks(v).zip(want.chunks(v)).enumerate() {
                let mut sorted = w.to_vec();
                sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
                if sorted[0] - sorted[1] > 2.0 * tol {
                    let am = |x: &[f32]| {
                        x.iter()
                            .enumerate()
                            .max_by(|a, b| a.1.partial_cmp(b.1).unwrap())
                            .unwrap()
                            .0
                    };
                    assert_eq!(
                        am(g),
                        am(w),
                        "{} {dt}: argmax differs at position {p}",
                        dir.display()
                    );
                }
            }
        }
    }
}

#[test]
fn batched_rows_match_single_sequences() {
    // Two prompts of different lengths in one batch (different lengths, padding in the shorter
    // row) give each prompt's own logits — the row/position/cache bookkeeping is per sequence.
    use silica_models::{LogitsMode, RowInput};
    for dir in cases() {
        let (r, st) = reference(&dir);
        let batch = r["batch"].as_array().expect("batch cases");
        let prompts: Vec<Vec<u32>> = batch.iter().map(|b| ids(&b["input_ids"])).collect();
        let model = load(&dir, DType::F32, None);
        let mut cache = model.new_cache(prompts.len()).unwrap();
        let rows: Vec<RowInput> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| RowInput {
                cache_row: i,
                tokens: p,
                start_pos: 0,
                logits_at: 0,
            })
            .collect();
        let out = model.step(&mut cache, &rows, LogitsMode::All).unwrap();
        let (t, v) = (out.dims()[1], out.dims()[2]);
        let all = out.to_vec::<f32>().unwrap();
        for (row, (b, p)) in batch.iter().zip(&prompts).enumerate() {
            let name = b["tensor"].as_str().unwrap();
            let want = st.get(name).unwrap().to_vec::<f32>().unwrap();
            let got = &all[row * t * v..row * t * v + p.len() * v];
            check_logits(&format!("{} {name}", dir.display()), got, &want, 1e-4);
        }
    }
}

#[test]
fn rope_frequencies_match_transformers() {
    // inv_freq and attention scaling for every rope type, as transformers computed them.
    for dir in cases() {
        let (r, st) = reference(&dir);
        let model = load(&dir, DType::F32, None);
        let input = ids(&r["input_ids"]);
        let mut checks = vec![(
            st.get("rope_inv_freq").unwrap().to_vec::<f32>().unwrap(),
            input.len(),
        )];
        if let Some(long) = r.get("long") {
            let name = long["rope_inv_freq_tensor"].as_str().unwrap();
            checks.push((
                st.get(name).unwrap().to_vec::<f32>().unwrap(),
                ids(&long["input_ids"]).len(),
            ));
        }
        for (want, n) in checks {
            let f = silica_models::rope::rope_freqs(&model.config, n - 1);
            for (i, (g, w)) in f.inv_freq.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                    "{}: inv_freq[{i}] {g} vs {w} (seq {n})",
                    dir.display()
                );
            }
            let att = r["rope"]["attention_scaling"].as_f64().unwrap() as f32;
            assert!(
                (f.attention_scaling - att).abs() < 1e-6,
                "{}: attention scaling {} vs {att}",
                dir.display(),
                f.attention_scaling
            );
        }
        // The sliding layers' own rope (Gemma 3), where the model has one.
        let local = r["rope"].get("local_tensor").and_then(|t| t.as_str());
        assert_eq!(
            local.is_some(),
            model.config.local_rope.is_some(),
            "{}: a local rope on one side only",
            dir.display()
        );
        if let (Some(name), Some(rope)) = (local, &model.config.local_rope) {
            let want = st.get(name).unwrap().to_vec::<f32>().unwrap();
            let f = silica_models::rope::rope_freqs_of(rope, model.config.head_dim, 0);
            assert_eq!(f.inv_freq.len(), want.len());
            for (i, (g, w)) in f.inv_freq.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                    "{}: local inv_freq[{i}] {g} vs {w}",
                    dir.display()
                );
            }
        }
    }
}

/// Gemma 3's multimodal checkpoints in both transformers layouts load as the same text model:
/// the fixture's hub layout (`language_model.model.*`), and transformers 5's in-memory names
/// (`model.language_model.*`, `lm_head.weight`) written out; a checkpoint with both copies is
/// refused as ambiguous.
#[test]
fn multimodal_checkpoint_layouts_load_the_same_text_model() {
    use silica_models::weights::canonical_name;
    use silica_tensor::SafetensorsFile;
    let src = cases()
        .into_iter()
        .find(|d| d.ends_with("gemma3-multimodal-text"))
        .expect("the gemma3-multimodal-text fixture");
    let (r, st) = reference(&src);
    let input = ids(&r["input_ids"]);
    let want = st.get("logits").unwrap().to_vec::<f32>().unwrap();
    let hub = SafetensorsFile::open(src.join("model.safetensors")).unwrap();
    assert!(hub.names().any(|n| n.starts_with("vision_tower.")));
    let v5_name = |n: &str| match n.strip_prefix("language_model.model.") {
        Some(rest) => format!("model.language_model.{rest}"),
        None => n.replace("language_model.lm_head.", "lm_head."),
    };
    let write = |dir: &Path, names: &dyn Fn(&str) -> Vec<String>| {
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let renamed: Vec<(String, &silica_tensor::HostTensor)> = hub
            .tensors()
            .iter()
            .flat_map(|(n, t)| names(n).into_iter().map(move |m| (m, t)))
            .collect();
        silica_tensor::save_safetensors(
            dir.join("model.safetensors"),
            renamed.iter().map(|(n, t)| (n.as_str(), *t)),
            None,
        )
        .unwrap();
    };
    let v5 = tempfile::tempdir().unwrap();
    write(v5.path(), &|n| vec![v5_name(n)]);
    let m = load(v5.path(), DType::F32, None);
    assert_eq!(
        m.config.text_model_of.as_ref().map(|o| o.class),
        Some("Gemma3ForConditionalGeneration")
    );
    let got = m.logits(&input).unwrap().to_vec::<f32>().unwrap();
    check_logits("transformers-5 layout", &got, &want, 1e-4);
    assert_eq!(
        canonical_name("model.language_model.norm.weight"),
        "model.norm.weight"
    );
    assert_eq!(
        canonical_name("language_model.lm_head.weight"),
        "lm_head.weight"
    );
    assert_eq!(
        canonical_name("vision_tower.x.weight"),
        "vision_tower.x.weight"
    );

    let both = tempfile::tempdir().unwrap();
    write(both.path(), &|n| {
        if n == "language_model.model.norm.weight" {
            vec![n.to_string(), v5_name(n)]
        } else {
            vec![n.to_string()]
        }
    });
    let e = LoadedModel::load(
        both.path(),
        Arc::new(CpuBackend::new()),
        &LoadOptions::default(),
    )
    .err()
    .expect("two copies of one weight are refused")
    .to_string();
    assert!(
        e.contains("ambiguous") && e.contains("model.language_model.norm.weight"),
        "{e}"
    );
}
