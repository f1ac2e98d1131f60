//! The paged KV-cache programs against the outside reference (HF transformers logits and greedy
//! continuations of models/fixtures) and against the contiguous-cache step: the same logits
//! whatever the block size, block placement, chunking, batch composition and padding.

use serde_json::Value;
use silica_models::paged::{PagedModel, PagedRow};
use silica_models::{LoadOptions, LoadedModel, LogitsMode};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{DType, SafetensorsFile};
use std::path::Path;
use std::sync::Arc;

mod common;
use common::{fixtures, ids, max_abs_diff};

fn load(dir: &Path) -> Arc<LoadedModel> {
    let opts = LoadOptions {
        dtype: DType::F32,
        max_context: Some(128),
        ..Default::default()
    };
    Arc::new(LoadedModel::load(dir, Arc::new(CpuBackend::new()), &opts).unwrap())
}

/// Prefills `prompt` in chunks of `chunk` tokens (a multiple of the block size) into the blocks
/// of `table`, returning the logits of every prompt position [n, V].
fn paged_prefill_all(pm: &mut PagedModel, prompt: &[u32], table: &[u32], chunk: usize) -> Vec<f32> {
    let v = pm.model.config.vocab_size;
    let mut out = Vec::new();
    for (c, piece) in prompt.chunks(chunk).enumerate() {
        let row = PagedRow {
            tokens: piece,
            start_pos: c * chunk,
            block_table: table,
            logits_at: 0,
        };
        let m = table.len().next_power_of_two();
        let l = pm.step(&[row], 1, chunk, m, LogitsMode::All).unwrap();
        out.extend_from_slice(&l.to_vec::<f32>().unwrap()[..piece.len() * v]);
    }
    out
}

#[test]
fn paged_prefill_matches_hf_logits_for_every_fixture() {
    for dir in fixtures() {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let st = SafetensorsFile::open(dir.join("reference.safetensors")).unwrap();
        let want = st.get("logits").unwrap().to_vec::<f32>().unwrap();
        let input = ids(&r["input_ids"]);
        let model = load(&dir);
        // Block sizes 4 (many blocks, chunked) and 16 (one partial block); blocks placed out of
        // order and away from the start so a wrong gather or write would show.
        for (bs, chunk) in [(4usize, 8usize), (16, 16), (4, 4)] {
            let mut pm = PagedModel::new(model.clone(), bs, 40).unwrap();
            let nblk = input.len().div_ceil(bs);
            let table: Vec<u32> = (0..nblk as u32).map(|i| 39 - 2 * i).collect();
            let got = paged_prefill_all(&mut pm, &input, &table, chunk);
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= 1e-4,
                "{}: block size {bs}, chunk {chunk}: max |Δlogit| {d} > 1e-4",
                dir.display()
            );
        }
    }
}

#[test]
fn paged_greedy_decode_matches_hf_continuation() {
    for dir in fixtures() {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let input = ids(&r["input_ids"]);
        let want = ids(&r["greedy"]["ids"]);
        let model = load(&dir);
        let bs = 4;
        let mut pm = PagedModel::new(model.clone(), bs, 64).unwrap();
        let total = input.len() + want.len();
        let table: Vec<u32> = (0..total.div_ceil(bs) as u32).map(|i| 5 + 3 * i).collect();
        // Prefill whole blocks; the prompt tail shares its block with the first decoded tokens.
        let v = model.config.vocab_size;
        let logits = paged_prefill_all(&mut pm, &input, &table, 8);
        let last = &logits[(input.len() - 1) * v..input.len() * v];
        let mut tok = argmax(last);
        let mut seq = input.clone();
        let mut got = vec![];
        while got.len() < want.len() {
            got.push(tok);
            seq.push(tok);
            let pos = seq.len() - 1;
            let row = PagedRow {
                tokens: &seq[pos..],
                start_pos: pos,
                block_table: &table[..(pos + 1).div_ceil(bs)],
                logits_at: 0,
            };
            // Padded to a batch of 4 and a table bucket of 16 blocks.
            let l = pm.step(&[row], 4, 1, 16, LogitsMode::Last).unwrap();
            tok = argmax(&l.to_vec::<f32>().unwrap()[..v]);
        }
        assert_eq!(got, want, "{}: greedy continuation", dir.display());
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Several sequences of different lengths decode together (with padding rows), after being
/// prefilled together in one batched chunk step; each row's logits equal the contiguous cache's
/// logits of that sequence alone.
#[test]
fn batched_rows_match_the_contiguous_cache() {
    let dir = fixtures()
        .into_iter()
        .find(|p| p.ends_with("qwen2-bias-tied"))
        .unwrap();
    let model = load(&dir);
    let v = model.config.vocab_size;
    let bs = 8;
    let mut pm = PagedModel::new(model.clone(), bs, 32).unwrap();
    let seqs: Vec<Vec<u32>> = vec![
        (0..21).map(|i| (i * 7 + 3) % v as u32).collect(),
        (0..5).map(|i| (i * 11 + 1) % v as u32).collect(),
        (0..16).map(|i| (i * 13 + 2) % v as u32).collect(),
    ];
    let tables: Vec<Vec<u32>> = vec![vec![3, 9, 4, 20], vec![7, 30], vec![1, 2, 12]];
    // Batched prefill: every row's prompt but its last token, in one chunk of 24 tokens.
    let rows: Vec<PagedRow> = seqs
        .iter()
        .zip(&tables)
        .map(|(s, t)| PagedRow {
            tokens: &s[..s.len() - 1],
            start_pos: 0,
            block_table: t,
            logits_at: s.len() - 2,
        })
        .collect();
    let l = pm
        .step(&rows, 4, 24, 4, LogitsMode::Last)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let want = model
            .logits(&s[..s.len() - 1])
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let want = &want[(s.len() - 2) * v..(s.len() - 1) * v];
        let d = max_abs_diff(&l[i * v..(i + 1) * v], want);
        assert!(d <= 1e-4, "prefill row {i}: max |Δlogit| {d}");
    }
    // Batched decode of each row's last token, padded to 8 rows.
    let rows: Vec<PagedRow> = seqs
        .iter()
        .zip(&tables)
        .map(|(s, t)| PagedRow {
            tokens: &s[s.len() - 1..],
            start_pos: s.len() - 1,
            block_table: &t[..s.len().div_ceil(bs)],
            logits_at: 0,
        })
        .collect();
    let l = pm
        .step(&rows, 8, 1, 4, LogitsMode::Last)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let want = model.logits(s).unwrap().to_vec::<f32>().unwrap();
        let want = &want[(s.len() - 1) * v..s.len() * v];
        let d = max_abs_diff(&l[i * v..(i + 1) * v], want);
        assert!(d <= 1e-4, "decode row {i}: max |Δlogit| {d}");
    }
}

#[test]
fn bad_rows_are_errors_not_panics() {
    let dir = fixtures().into_iter().next().unwrap();
    let model = load(&dir);
    let mut pm = PagedModel::new(model.clone(), 4, 8).unwrap();
    let toks = [1u32, 2, 3];
    let cases: Vec<(PagedRow, usize, usize, &str)> = vec![
        // Block 0 is scratch.
        (
            PagedRow {
                tokens: &toks,
                start_pos: 0,
                block_table: &[0],
                logits_at: 0,
            },
            4,
            1,
            "scratch",
        ),
        // Outside the pool.
        (
            PagedRow {
                tokens: &toks,
                start_pos: 0,
                block_table: &[8],
                logits_at: 0,
            },
            4,
            1,
            "outside",
        ),
        // Table too short for the positions.
        (
            PagedRow {
                tokens: &toks,
                start_pos: 4,
                block_table: &[1],
                logits_at: 0,
            },
            4,
            2,
            "need",
        ),
        // Crosses a block boundary in a sub-block bucket.
        (
            PagedRow {
                tokens: &toks,
                start_pos: 2,
                block_table: &[1, 2],
                logits_at: 0,
            },
            4,
            2,
            "cross",
        ),
        // One token fits its block, but the bucket's padding would cross it (its write would
        // be moved back over the real slot).
        (
            PagedRow {
                tokens: &toks[..1],
                start_pos: 3,
                block_table: &[1, 2],
                logits_at: 0,
            },
            2,
            2,
            "cross",
        ),
        // Chunk not at a block boundary.
        (
            PagedRow {
                tokens: &toks,
                start_pos: 2,
                block_table: &[1, 2, 3],
                logits_at: 0,
            },
            8,
            4,
            "boundary",
        ),
    ];
    for (row, seq, m, what) in cases {
        let e = pm
            .step(&[row], 1, seq, m, LogitsMode::Last)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(what),
            "expected an error about `{what}`, got: {e}"
        );
    }
    assert!(PagedModel::new(model, 4, 1).is_err());
}
