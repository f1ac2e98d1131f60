//! Tensor parallelism on NeuronCores: which degrees a target supports and whether one rank's
//! share fits a NeuronCore. How a model is split (Megatron-style shards, all-reduces, the
//! vocab-parallel head) is the model's business: `silica_models::tp`; the group itself runs as
//! one NEFF loaded once per rank with `nrt_load_collectives` (see [`crate::backend`]).

use crate::compile::Target;
use crate::error::NeuronError;

/// Tensor-parallel degrees the Neuron stack supports per target (docs/architecture.md: Inf2 {1,2,4,8,24},
/// Trn1 {1,2,8,16,32}). Trn2 (8 NeuronCore-v3 per chip, logical cores of 2 by default) takes
/// powers of two up to 64 on trn2.48xlarge.
pub fn valid_degrees(target: Target) -> &'static [usize] {
    match target {
        Target::Inf2 => &[1, 2, 4, 8, 24],
        Target::Trn1 => &[1, 2, 8, 16, 32],
        Target::Trn2 => &[1, 2, 4, 8, 16, 32, 64],
    }
}

/// Device memory of one NeuronCore in bytes (16 GiB on Inf2/Trn1; Trn2: 96 GiB per chip over 4
/// logical cores = 24 GiB).
pub fn core_memory(target: Target) -> u64 {
    match target {
        Target::Inf2 | Target::Trn1 => 16 << 30,
        Target::Trn2 => 24 << 30,
    }
}

/// Checks that `target` supports tensor-parallel degree `degree`.
pub fn check_valid_degree(target: Target, degree: usize) -> Result<(), NeuronError> {
    let ok = valid_degrees(target);
    if ok.contains(&degree) {
        return Ok(());
    }
    Err(NeuronError::Config(format!(
        "tensor-parallel degree {degree} is not supported: {target} supports tensor-parallel \
         degrees {ok:?}"
    )))
}

/// Checks `degree` against the target and the visible cores, and that `bytes_per_rank` of
/// weights fit one NeuronCore with `reserve` bytes left for the KV cache and activations.
pub fn check_degree(
    target: Target,
    degree: usize,
    visible_cores: Option<u32>,
    bytes_per_rank: u64,
    reserve: u64,
) -> Result<(), NeuronError> {
    let bad = |m: String| Err(NeuronError::Config(m));
    check_valid_degree(target, degree)?;
    if let Some(n) = visible_cores {
        if degree > n as usize {
            return bad(format!(
                "tensor-parallel degree {degree} needs {degree} NeuronCores but {n} are visible \
                 (a larger instance, or NEURON_RT_VISIBLE_CORES)"
            ));
        }
    }
    let cap = core_memory(target);
    if bytes_per_rank + reserve > cap {
        return bad(format!(
            "weights need {:.2} GiB per NeuronCore at degree {degree} (+{:.2} GiB reserved for \
             KV cache and activations) but a {target} NeuronCore has {} GiB; use a higher degree",
            bytes_per_rank as f64 / (1u64 << 30) as f64,
            reserve as f64 / (1u64 << 30) as f64,
            cap >> 30
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degrees_follow_the_target() {
        let e = check_degree(Target::Inf2, 3, None, 0, 0).unwrap_err();
        assert!(e.to_string().contains("[1, 2, 4, 8, 24]"), "{e}");
        assert!(check_degree(Target::Trn1, 4, None, 0, 0).is_err());
        assert!(check_degree(Target::Trn1, 8, Some(2), 0, 0)
            .unwrap_err()
            .to_string()
            .contains("2 are visible"));
        check_degree(Target::Trn2, 64, None, 0, 0).unwrap();
    }

    #[test]
    fn memory_fit_is_checked_per_rank() {
        // Llama-3-8B in bf16 is 16.06 GB: one 16 GiB NeuronCore cannot also hold a 2 GiB reserve.
        let e = check_degree(Target::Inf2, 1, None, 16_060_522_496, 2 << 30).unwrap_err();
        assert!(e.to_string().contains("use a higher degree"), "{e}");
        check_degree(Target::Inf2, 2, None, 16_060_522_496 / 2, 2 << 30).unwrap();
        check_degree(Target::Trn2, 1, None, 16_060_522_496, 2 << 30).unwrap();
    }
}
