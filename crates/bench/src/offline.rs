//! Offline benchmark: fixed batches of synthetic requests through the model's prefill and decode
//! programs, timed separately (like llama-bench's pp/tg) and per request (TTFT, token times).

use crate::{bail, Result};
use rand::{Rng, SeedableRng};
use silica_models::device_sampling::DeviceDraw;
use silica_models::{KvCache, LoadedModel, LogitsMode, RowInput};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct OfflineConfig {
    pub batch: usize,
    pub input_len: usize,
    pub output_len: usize,
    /// Measured batches (requests = batch × iterations).
    pub iterations: usize,
    /// Unmeasured batches first (compiles programs, warms caches).
    pub warmup: usize,
    pub seed: u64,
}

/// One request's timeline, in seconds since the run started.
#[derive(Clone, Debug)]
pub struct Timeline {
    pub start_s: f64,
    pub token_times_s: Vec<f64>,
    pub end_s: f64,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
}

#[derive(Clone, Debug)]
pub struct OfflineResult {
    pub timelines: Vec<Timeline>,
    /// Median over iterations of batch × input_len / prefill time.
    pub prefill_tok_s: f64,
    /// Median over iterations of batch × (output_len − 1) / decode time.
    pub decode_tok_s: f64,
    /// Wall time of the measured iterations.
    pub duration_s: f64,
}

/// The median of the rounds (numpy's, as every other statistic of the report); 0 for none.
fn median(v: Vec<f64>) -> f64 {
    crate::metrics::percentile(&v, 50.0).unwrap_or(0.0)
}

/// `torch.argmax` of a logits row (the first maximum), as the host sampler takes it.
fn argmax(row: &[f32]) -> u32 {
    silica_models::sampling::argmax(row) as u32
}

pub fn run(
    model: &LoadedModel,
    cfg: &OfflineConfig,
    mut progress: impl FnMut(u64),
) -> Result<OfflineResult> {
    if cfg.batch == 0 || cfg.input_len == 0 || cfg.output_len == 0 || cfg.iterations == 0 {
        bail!(
            "--batch, --input-len, --output-len and the number of requests must all be at least 1"
        );
    }
    if cfg.input_len + cfg.output_len > model.cache_len {
        bail!(
            "--input-len {} + --output-len {} exceed the context of {} tokens (raise --max-context, up to the model's max_position_embeddings {})",
            cfg.input_len,
            cfg.output_len,
            model.cache_len,
            model.config.max_position_embeddings
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let vocab = model.config.vocab_size as u32;
    let mut cache = model.new_cache(cfg.batch)?;
    let run0 = Instant::now();
    let mut timelines = Vec::new();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    let mut measured_start = None;
    for it in 0..cfg.warmup + cfg.iterations {
        let measured = it >= cfg.warmup;
        if measured && measured_start.is_none() {
            measured_start = Some(run0.elapsed().as_secs_f64());
        }
        let prompts: Vec<Vec<u32>> = (0..cfg.batch)
            .map(|_| {
                (0..cfg.input_len)
                    .map(|_| rng.gen_range(0..vocab))
                    .collect()
            })
            .collect();
        let t0 = run0.elapsed().as_secs_f64();
        let rows: Vec<RowInput> = prompts
            .iter()
            .enumerate()
            .map(|(r, p)| RowInput {
                cache_row: r,
                tokens: p,
                start_pos: 0,
                logits_at: p.len() - 1,
            })
            .collect();
        let mut last = greedy_tokens(model, &mut cache, &rows)?;
        let t_first = run0.elapsed().as_secs_f64();
        let mut times: Vec<Vec<f64>> = vec![vec![t_first]; cfg.batch];
        for step in 1..cfg.output_len {
            let pos = cfg.input_len + step - 1;
            let toks: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
            let rows: Vec<RowInput> = toks
                .iter()
                .enumerate()
                .map(|(r, t)| RowInput {
                    cache_row: r,
                    tokens: t,
                    start_pos: pos,
                    logits_at: 0,
                })
                .collect();
            last = greedy_tokens(model, &mut cache, &rows)?;
            let now = run0.elapsed().as_secs_f64();
            for t in times.iter_mut() {
                t.push(now);
            }
            if measured {
                progress(cfg.batch as u64);
            }
        }
        if measured {
            progress(cfg.batch as u64);
        }
        let t_end = run0.elapsed().as_secs_f64();
        if measured {
            pp.push((cfg.batch * cfg.input_len) as f64 / (t_first - t0));
            if cfg.output_len > 1 {
                tg.push((cfg.batch * (cfg.output_len - 1)) as f64 / (t_end - t_first));
            }
            for t in times {
                timelines.push(Timeline {
                    start_s: t0,
                    token_times_s: t,
                    end_s: t_end,
                    prompt_tokens: cfg.input_len,
                    output_tokens: cfg.output_len,
                });
            }
        }
    }
    let duration_s = run0.elapsed().as_secs_f64() - measured_start.unwrap_or(0.0);
    Ok(OfflineResult {
        timelines,
        prefill_tok_s: median(pp),
        decode_tok_s: median(tg),
        duration_s,
    })
}

/// One step's greedy tokens, one per row: picked in the backend with `--sampling device`
/// (only token ids are downloaded), else the argmax of the downloaded logits.
fn greedy_tokens(model: &LoadedModel, cache: &mut KvCache, rows: &[RowInput]) -> Result<Vec<u32>> {
    if model.device_sampling {
        let draws = vec![DeviceDraw::GREEDY; rows.len()];
        return Ok(model.step_sampled(cache, rows, &draws)?.tokens);
    }
    let logits = model
        .step(cache, rows, LogitsMode::Last)?
        .to_vec::<f32>()
        .map_err(silica_models::ModelError::from)?;
    let v = model.config.vocab_size;
    Ok(logits.chunks(v).map(argmax).collect())
}
