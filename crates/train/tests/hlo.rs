//! The train step lowers to one HLO module and computes on XLA CPU (through jax) what the CPU
//! backend computes: loss, grad norm, updated weights and AdamW state, with the in-place aliases.
//! The data-parallel step runs as a group of two ranks there too, its all-reduces lowered to
//! XLA's. Needs `bash scripts/check_hlo.sh` once; skipped with a message otherwise, unless
//! `SILICA_REQUIRE_HLO_CHECK=1`.

use silica_hlo::check::{checker_python, run_checker, write_group_case};
use silica_hlo::lower;
use silica_models::rope::rope_freqs;
use silica_models::weights::Checkpoint;
use silica_models::ModelConfig;
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{run_host_group, Backend, DType, HostTensor, SafetensorsFile};
use silica_train::step::state_names;
use silica_train::{train_step_program, StepConfig};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/train/tied-gqa-clip-cosine")
}

/// Rank `rank`'s inputs of a `world`-rank step over the fixture's first batch (4 sequences of
/// 8 + 1 tokens): fixture weights, non-zero moments (as after a few steps), step 3, its
/// contiguous share of the sequences.
fn rank_inputs(dir: &Path, cfg: &ModelConfig, world: usize, rank: usize) -> Vec<HostTensor> {
    let ck = Checkpoint::open(dir).unwrap();
    let weights = ck.weights(cfg).unwrap();
    let mut inputs: Vec<HostTensor> = weights.iter().map(|(_, t)| t.clone()).collect();
    for (_, t) in &weights {
        let v: Vec<f32> = t.to_f32_vec().iter().map(|x| x * 0.01).collect();
        inputs.push(HostTensor::from_vec(v, t.shape().clone()).unwrap());
    }
    for (_, t) in &weights {
        let v: Vec<f32> = t.to_f32_vec().iter().map(|x| x * x * 1e-3).collect();
        inputs.push(HostTensor::from_vec(v, t.shape().clone()).unwrap());
    }
    inputs.push(HostTensor::scalar(3.0, DType::F32));
    let batches = SafetensorsFile::open(dir.join("batches.safetensors")).unwrap();
    let ids = batches.get("input_ids").unwrap().to_f64_vec();
    let rows = 4 / world;
    let tokens: Vec<i32> = ids[rank * rows * 9..(rank + 1) * rows * 9]
        .iter()
        .map(|&v| v as i32)
        .collect();
    inputs.push(HostTensor::from_vec(tokens, [rows, 9]).unwrap());
    let f = rope_freqs(cfg, 8);
    inputs.push(HostTensor::from_vec(f.inv_freq, [cfg.head_dim / 2]).unwrap());
    inputs.push(HostTensor::scalar(1e-2, DType::F32));
    inputs
}

fn check_on_xla_cpu(data_parallel: usize, micro_batches: usize) {
    let dir = fixture();
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let mut sc = StepConfig::new(4, 8);
    sc.grad_clip = Some(1.0);
    sc.micro_batches = micro_batches;
    sc.data_parallel = data_parallel;
    let program = train_step_program(&cfg, &sc).unwrap();
    let module = lower(&program).unwrap();
    module.verify().unwrap();
    assert_eq!(module.signature.aliases.len(), state_names(&cfg).len());
    assert_eq!(module.signature.world, data_parallel);

    let require = std::env::var("SILICA_REQUIRE_HLO_CHECK").is_ok_and(|v| v == "1");
    let Some(python) = checker_python() else {
        assert!(
            !require,
            "SILICA_REQUIRE_HLO_CHECK=1 but no jax python: run `bash scripts/check_hlo.sh`"
        );
        eprintln!("skipped: XLA CPU check of the train step; run scripts/check_hlo.sh first");
        return;
    };

    let inputs: Vec<Vec<HostTensor>> = (0..data_parallel)
        .map(|r| rank_inputs(&dir, &cfg, data_parallel, r))
        .collect();
    assert_eq!(inputs[0].len(), program.signature().inputs.len());
    let be = CpuBackend::new();
    let exe = be.compile(&program).unwrap();
    let expected = run_host_group(&be, exe.as_ref(), &inputs).unwrap();
    let loss = expected[0][0].to_f64_vec()[0];
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    // After the all-reduce every rank holds the same loss and weights.
    for rank in &expected[1..] {
        for (a, b) in rank.iter().zip(&expected[0]) {
            assert_eq!(a.to_f64_vec(), b.to_f64_vec());
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    // f32 in both, different reduction orders: ~1e-6 relative per value; updates are ≈ lr = 1e-2.
    write_group_case(
        tmp.path(),
        &format!("train_step_dp{data_parallel}"),
        &module,
        &inputs,
        &expected,
        2e-5,
        2e-4,
    )
    .unwrap();
    let report = run_checker(&python, tmp.path()).unwrap();
    assert!(report.passed, "XLA CPU disagrees:\n{}", report.output);
    eprintln!("{}", report.output);
}

#[test]
fn train_step_matches_the_cpu_backend_on_xla_cpu() {
    check_on_xla_cpu(1, 2);
}

#[test]
fn data_parallel_train_step_matches_the_cpu_backend_on_xla_cpu() {
    check_on_xla_cpu(2, 1);
}
