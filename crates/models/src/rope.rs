//! Rotary-embedding frequencies for every rope type, following transformers'
//! `modeling_rope_utils` (`_compute_*_parameters`) formula by formula.
//!
//! The graph takes `inv_freq` as a runtime input (not a constant) because dynamic NTK scaling
//! changes it with the sequence length; every other type passes the same values every step.

use crate::config::{ModelConfig, RopeConfig, RopeScaling};

/// Inverse frequencies `[head_dim / 2]` and the attention scaling applied to cos/sin.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeFreqs {
    pub inv_freq: Vec<f32>,
    pub attention_scaling: f32,
}

fn base_inv_freq(base: f64, dim: usize) -> Vec<f64> {
    // transformers: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), in float32.
    (0..dim / 2)
        .map(|i| {
            let e = ((2 * i) as f32 / dim as f32) as f64;
            1.0 / (base.powf(e) as f32) as f64
        })
        .collect()
}

/// Whether a forward pass's frequencies depend on its largest position (dynamic NTK scaling,
/// and LongRoPE's short/long switch): then which sequences share a step changes the result, as
/// it does in transformers and vLLM, which choose per forward pass too.
pub fn depends_on_length(cfg: &ModelConfig) -> bool {
    matches!(
        cfg.rope.scaling,
        RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. }
    )
}

/// Frequencies for a forward pass whose largest position is `max_position` (dynamic NTK
/// scaling and LongRoPE depend on it).
pub fn rope_freqs(cfg: &ModelConfig, max_position: usize) -> RopeFreqs {
    rope_freqs_of(&cfg.rope, cfg.head_dim, max_position)
}

/// [`rope_freqs`] for any rope of head size `dim` (a model's local rope, say).
pub fn rope_freqs_of(rope: &RopeConfig, dim: usize, max_position: usize) -> RopeFreqs {
    let base = rope.theta;
    let (inv, att) = match &rope.scaling {
        RopeScaling::Default => (base_inv_freq(base, dim), 1.0),
        RopeScaling::Linear { factor } => (
            base_inv_freq(base, dim)
                .into_iter()
                .map(|f| f / factor)
                .collect(),
            1.0,
        ),
        RopeScaling::Dynamic {
            factor,
            original_max,
        } => {
            // seq_len = max(position) + 1, never below the original context.
            let seq_len = (max_position + 1).max(*original_max) as f64;
            let orig = *original_max as f64;
            let b = base
                * ((factor * seq_len / orig) - (factor - 1.0))
                    .powf(dim as f64 / (dim as f64 - 2.0));
            (base_inv_freq(b, dim), 1.0)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max,
        } => {
            let old = *original_max as f64;
            let low_wl = old / low_freq_factor;
            let high_wl = old / high_freq_factor;
            let inv = base_inv_freq(base, dim)
                .into_iter()
                .map(|f| {
                    let wl = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wl > low_wl { f / factor } else { f };
                    // transformers: ~(wavelen < high) & ~(wavelen > low); wavelengths are finite here.
                    let medium = wl >= high_wl && wl <= low_wl;
                    if medium {
                        let smooth =
                            (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect();
            (inv, 1.0)
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max,
            attention_factor,
        } => {
            // transformers: the long factors once the sequence (max position + 1) is longer
            // than the original context; 1 / (ext · base^(2i/d)) in f32.
            let ext = if max_position + 1 > *original_max {
                long_factor
            } else {
                short_factor
            };
            let inv = (0..dim / 2)
                .map(|i| {
                    let e = ((2 * i) as f32 / dim as f32) as f64;
                    let p = base.powf(e) as f32;
                    (1.0f32 / (ext[i] as f32 * p)) as f64
                })
                .collect();
            (inv, *attention_factor)
        }
        RopeScaling::Yarn {
            factor,
            original_max,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            attention_factor,
            truncate,
        } => yarn(
            base,
            dim,
            *factor,
            *original_max,
            *beta_fast,
            *beta_slow,
            *mscale,
            *mscale_all_dim,
            *attention_factor,
            *truncate,
        ),
    };
    RopeFreqs {
        inv_freq: inv.into_iter().map(|f| f as f32).collect(),
        attention_scaling: att as f32,
    }
}

#[allow(clippy::too_many_arguments)]
fn yarn(
    base: f64,
    dim: usize,
    factor: f64,
    original_max: usize,
    beta_fast: f64,
    beta_slow: f64,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    attention_factor: Option<f64>,
    truncate: bool,
) -> (Vec<f64>, f64) {
    let get_mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let att = attention_factor.unwrap_or_else(|| match (mscale, mscale_all_dim) {
        (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
            get_mscale(factor, m) / get_mscale(factor, ma)
        }
        _ => get_mscale(factor, 1.0),
    });
    let d = dim as f64;
    let corr_dim = |rot: f64| {
        (d * (original_max as f64 / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
    };
    let (mut low, mut high) = (corr_dim(beta_fast), corr_dim(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let high = high.min(d - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    let pos: Vec<f64> = base_inv_freq(base, dim);
    let inv = pos
        .iter()
        .enumerate()
        .map(|(i, &extra)| {
            let inter = extra / factor;
            let ramp =
                ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0) as f64;
            let extra_factor = 1.0 - ramp;
            inter * (1.0 - extra_factor) + extra * extra_factor
        })
        .collect();
    (inv, att)
}
