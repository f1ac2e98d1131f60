//! Tensor parallelism against the outside reference: every fixture split over 2 and 4 ranks
//! (the CPU backend runs the ranks as threads meeting at real all-reduces and all-gathers)
//! must reproduce transformers' logits and greedy continuations under the single-rank contract
//! (f32 logits within 1e-4, tokens equal), through the contiguous and the paged programs. The
//! fixtures cover split and replicated KV heads (2 KV heads over 4 ranks), tied and untied
//! heads, vocabularies that do not divide by the degree (padded head shards) and qkv bias.

use silica_models::llama::build_step;
use silica_models::paged::{PagedModel, PagedRow};
use silica_models::tp::{Shard, TpLayout};
use silica_models::weights::{random_weights, weight_specs};
use silica_models::{presets, GenerateOptions, LoadOptions, LoadedModel, LogitsMode, StepShape};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{DType, HostTensor, Op};
use std::path::Path;
use std::sync::Arc;

mod common;
use common::{fixtures, ids, max_abs_diff, reference};

fn load(dir: &Path, tp: usize) -> LoadedModel {
    let opts = LoadOptions {
        max_context: Some(128),
        tp,
        ..Default::default()
    };
    LoadedModel::load(dir, Arc::new(CpuBackend::new()), &opts)
        .unwrap_or_else(|e| panic!("{} tp {tp}: {e}", dir.display()))
}

#[test]
fn tensor_parallel_logits_and_greedy_tokens_match_transformers() {
    for dir in fixtures() {
        let (r, st) = reference(&dir);
        let input = ids(&r["input_ids"]);
        let want = st.get("logits").unwrap().to_vec::<f32>().unwrap();
        let want_ids = ids(&r["greedy"]["ids"]);
        for tp in [2, 4] {
            let model = load(&dir, tp);
            assert_eq!(model.tp.world, tp);
            let got = model.logits(&input).unwrap().to_vec::<f32>().unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= 1e-4,
                "{} tp {tp}: max |Δlogit| {d} > 1e-4",
                dir.display()
            );
            let opts = GenerateOptions {
                max_tokens: want_ids.len(),
                ignore_eos: true,
                ..Default::default()
            };
            let gen = model.generate(&input, &opts, |_| {}).unwrap();
            assert_eq!(gen.token_ids, want_ids, "{} tp {tp}: greedy", dir.display());
        }
    }
}

#[test]
fn tensor_parallel_paged_prefill_matches_transformers() {
    for dir in fixtures() {
        let (r, st) = reference(&dir);
        let input = ids(&r["input_ids"]);
        let want = st.get("logits").unwrap().to_vec::<f32>().unwrap();
        let model = Arc::new(load(&dir, 2));
        let v = model.config.vocab_size;
        let bs = 4;
        let mut pm = PagedModel::new(model, bs, 32).unwrap();
        let table: Vec<u32> = (0..input.len().div_ceil(bs) as u32)
            .map(|i| 31 - i)
            .collect();
        let mut got = Vec::new();
        for (c, piece) in input.chunks(8).enumerate() {
            let row = PagedRow {
                tokens: piece,
                start_pos: c * 8,
                block_table: &table,
                logits_at: 0,
            };
            let m = table.len().next_power_of_two();
            let l = pm.step(&[row], 1, 8, m, LogitsMode::All).unwrap();
            got.extend_from_slice(&l.to_vec::<f32>().unwrap()[..piece.len() * v]);
        }
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-4, "{} paged tp 2: max |Δlogit| {d}", dir.display());
    }
}

#[test]
fn rank_programs_carry_their_collectives() {
    let cfg = presets::preset("silica-tiny").unwrap();
    for tp in [1, 2, 4] {
        let s = StepShape {
            batch: 2,
            seq: 1,
            cache_len: 16,
            logits: LogitsMode::Last,
            dtype: DType::F32,
            tp,
            quant: None,
            blocks: None,
        };
        let p = build_step(&cfg, &s).unwrap();
        let count = |f: fn(&Op) -> bool| p.graph.nodes().iter().filter(|n| f(&n.op)).count();
        let reduces = count(|o| matches!(o, Op::AllReduce { .. }));
        let gathers = count(|o| matches!(o, Op::AllGather { .. }));
        let layers = cfg.num_hidden_layers;
        let ranks = count(|o| matches!(o, Op::RankId { .. }));
        if tp == 1 {
            assert_eq!((reduces, gathers, ranks, p.world()), (0, 0, 0, 1));
            assert!(!p.name.contains("tp"));
        } else {
            // Two per layer, and one assembling the vocab-parallel embedding.
            assert_eq!(
                (reduces, gathers, ranks, p.world()),
                (2 * layers + 1, 1, 1, tp)
            );
            assert!(p.name.ends_with(&format!("_tp{tp}")), "{}", p.name);
            let cache = p
                .signature()
                .inputs
                .iter()
                .find(|i| i.name == "cache_k.0")
                .cloned();
            let kv = cfg.num_key_value_heads;
            let local = if kv.is_multiple_of(tp) { kv / tp } else { 1 };
            assert_eq!(cache.unwrap().shape.dims()[1], local);
        }
    }
}

#[test]
fn degrees_that_do_not_split_the_model_are_refused_with_the_reason() {
    let dir = &fixtures()[0];
    let opts = |tp| LoadOptions {
        tp,
        ..Default::default()
    };
    let be = || -> Arc<dyn silica_tensor::Backend> { Arc::new(CpuBackend::new()) };
    let e = LoadedModel::load(dir, be(), &opts(3))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("4 attention heads") && e.contains("1, 2, 4"),
        "{e}"
    );
    let e = LoadedModel::load(dir, be(), &opts(0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("at least 1"), "{e}");
    // 4 heads over 8 ranks: no head left for half of them.
    let e = LoadedModel::load(dir, be(), &opts(8))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("do not split"), "{e}");
}

/// Column shards stack back into the weight, row shards side by side, replicated KV heads go to
/// the ranks whose query heads use them, and the head's last vocab shard is zero-padded.
#[test]
fn shards_reassemble_to_the_checkpoint() {
    let mut cfg = presets::preset("silica-tiny").unwrap();
    cfg.vocab_size = 1001; // not a multiple of 4: the last head shard is padded
    let weights = random_weights(&cfg, DType::F32, 7);
    let whole = |name: &str| {
        weights
            .iter()
            .find(|(s, _)| s.name == name)
            .unwrap()
            .1
            .to_vec::<f32>()
            .unwrap()
    };
    for tp in [2, 4] {
        let layout = TpLayout::new(&cfg, tp).unwrap();
        let specs = layout.specs(&cfg);
        let shards: Vec<Vec<HostTensor>> = (0..tp)
            .map(|r| layout.shard(&cfg, &weights, r).unwrap())
            .collect();
        let part = |rank: usize, name: &str| {
            let i = specs.iter().position(|s| s.name == name).unwrap();
            assert_eq!(shards[rank][i].dims(), specs[i].shape.dims(), "{name}");
            shards[rank][i].to_vec::<f32>().unwrap()
        };
        let h = cfg.hidden_size;
        // Column-parallel: rank blocks of rows, in order.
        let up = "model.layers.0.mlp.up_proj.weight";
        let joined: Vec<f32> = (0..tp).flat_map(|r| part(r, up)).collect();
        assert_eq!(joined, whole(up));
        // Row-parallel: each row of the weight is the ranks' row pieces side by side.
        let down = "model.layers.1.mlp.down_proj.weight";
        let (w, i) = (whole(down), cfg.intermediate_size);
        for r in 0..tp {
            let p = part(r, down);
            for row in 0..h {
                let k = i / tp;
                assert_eq!(
                    p[row * k..(row + 1) * k],
                    w[row * i + r * k..row * i + (r + 1) * k]
                );
            }
        }
        // KV heads: split (kv % tp == 0) or the head of the rank's query heads.
        let kproj = "model.layers.0.self_attn.k_proj.weight";
        let (kw, d, kv) = (whole(kproj), cfg.head_dim, cfg.num_key_value_heads);
        for r in 0..tp {
            let first_q = r * cfg.num_attention_heads / tp;
            let head = first_q / (cfg.num_attention_heads / kv);
            let n = layout.kv_heads;
            assert_eq!(
                part(r, kproj),
                kw[head * d * h..(head + n) * d * h],
                "tp {tp} rank {r}"
            );
        }
        // Vocab-parallel embedding and head, last shard zero-padded.
        let mut tables = vec!["model.embed_tokens.weight"];
        if !cfg.tie_word_embeddings {
            tables.push("lm_head.weight");
        }
        for t in tables {
            let mut rows: Vec<f32> = (0..tp).flat_map(|r| part(r, t)).collect();
            let pad = rows.split_off(cfg.vocab_size * h);
            assert_eq!(rows, whole(t), "{t}");
            assert_eq!(pad.len(), (layout.vocab_shard * tp - cfg.vocab_size) * h);
            assert!(pad.iter().all(|&x| x == 0.0));
        }
        assert_eq!(
            layout.shard_of(&cfg, "model.norm.weight"),
            Shard::Replicated
        );
    }
    // A weight of the wrong shape is refused, not sliced.
    let mut bad = weights.clone();
    bad[1].1 = HostTensor::zeros(DType::F32, vec![3]);
    let e = TpLayout::new(&cfg, 2)
        .unwrap()
        .shard(&cfg, &bad, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&bad[1].0.name), "{e}");
}

#[test]
fn llama3_8b_splits_into_core_sized_shards() {
    let cfg = presets::preset("llama-3.1-8b").unwrap();
    let one = TpLayout::new(&cfg, 1).unwrap();
    // 8,030,261,248 parameters × 2 bytes, as published.
    assert_eq!(one.bytes_per_rank(&cfg, DType::BF16), 16_060_522_496);
    assert_eq!(
        weight_specs(&cfg).len(),
        one.specs(&cfg).len(),
        "world 1 is the checkpoint's layout"
    );
    let eight = TpLayout::new(&cfg, 8).unwrap();
    assert_eq!(
        (eight.heads, eight.kv_heads, eight.vocab_shard),
        (4, 1, 16032)
    );
    // Only the norms are replicated (8 KV heads over 8 ranks split evenly); the vocab rows pad
    // by 8 × 16032 − 128256 = 0.
    let b = eight.bytes_per_rank(&cfg, DType::BF16);
    assert!(b <= 16_060_522_496 / 8 + 2 * 65 * 4096 * 2, "{b}");
    assert!(
        TpLayout::new(&cfg, 24).is_err(),
        "32 heads do not split over 24 ranks"
    );
}
