//! End to end without the hardware: Program → HLO → (fake) neuronx-cc → NEFF cache → the libnrt
//! double loads and executes it → outputs compared with the CPU backend. Also the cache under
//! concurrent writers, compiler failures and the missing-compiler message.

mod common;

use common::{fake_compiler, fake_compiler_env, inf2_backend, serial, setup};
use silica_models::{LoadOptions, LoadedModel};
use silica_neuron::{CacheOutcome, CompileOptions, NeffCache, NeuronBackend, NeuronError, Target};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{run_host, Backend, DType, Graph, HostTensor, Program};
use std::path::Path;
use std::sync::Arc;

fn backend(cache: &Path) -> NeuronBackend {
    inf2_backend(cache, 1)
}

fn compiles(log_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(log_dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// A decode-like step: `cache` is updated in place (aliased) and `y` returned.
fn step_program() -> Program {
    let mut g = Graph::new();
    let cache = g.parameter("kv cache/0", DType::F32, [2, 4]).unwrap();
    let x = g.parameter("x", DType::F32, [2, 4]).unwrap();
    let w = g.parameter("w", DType::F32, [4, 4]).unwrap();
    let h = g.matmul(x, w).unwrap();
    let new_cache = g.add(cache, h).unwrap();
    let sm = g.softmax(new_cache, 1).unwrap();
    let y = g.argmax(sm, 1).unwrap();
    Program::new(
        "step",
        g,
        vec![("y".into(), y), ("cache_out".into(), new_cache)],
    )
    .unwrap()
    .alias("cache_out", "kv cache/0")
    .unwrap()
}

fn host(n: usize, k: f32, dims: &[usize]) -> HostTensor {
    HostTensor::from_vec(
        (0..n)
            .map(|i| ((i as f32) * 0.61 + k).cos())
            .collect::<Vec<_>>(),
        dims.to_vec(),
    )
    .unwrap()
}

#[test]
fn program_runs_through_fake_compiler_and_double_like_cpu() {
    let _s = serial();
    let cc = fake_compiler_env();
    let cache = tempfile::tempdir().unwrap();
    let be = backend(cache.path());
    assert!(
        be.device_description().contains("inf2 NeuronCore 1 of 2"),
        "{}",
        be.device_description()
    );
    let p = step_program();
    let before = compiles(cc.parent().unwrap()).len();
    let exe = be.compile(&p).unwrap();
    let ins = [
        host(8, 0.2, &[2, 4]),
        host(8, 1.1, &[2, 4]),
        host(16, 0.5, &[4, 4]),
    ];
    let got = run_host(&be, &*exe, &ins).unwrap();
    let cpu = CpuBackend::new();
    let want = run_host(&cpu, &*cpu.compile(&p).unwrap(), &ins).unwrap();
    assert_eq!(
        got[0].to_vec::<i32>().unwrap(),
        want[0].to_vec::<i32>().unwrap()
    );
    for (a, b) in got[1]
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .zip(want[1].to_vec::<f32>().unwrap())
    {
        assert!((a - b).abs() <= 1e-6);
    }
    // One compile, with the flags docs/neuron.md gives, writing a temporary that was renamed in.
    let calls = compiles(cc.parent().unwrap());
    let mine: Vec<_> = calls[before..]
        .iter()
        .filter(|c| c.contains(cache.path().to_str().unwrap()))
        .collect();
    assert_eq!(mine.len(), 1, "{calls:?}");
    assert!(
        mine[0].contains(
            "--framework XLA --target inf2 --model-type transformer --auto-cast none -O1 \
             --tensorizer-options=--enable-ccop-compute-overlap --cc-pipeline-tiling-factor=2 \
             --vectorize-strided-dma --output"
        ),
        "{}",
        mine[0]
    );
    let neffs: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".neff"))
        .collect();
    assert_eq!(neffs.len(), 1, "{neffs:?}");
    assert!(!neffs[0].starts_with('.'));
    // A second backend (another process, in effect) hits the cache: no new compile.
    let be2 = backend(cache.path());
    assert_eq!(be2.neff(&p).unwrap().outcome, CacheOutcome::Hit);
    let _ = be2.compile(&p).unwrap();
    assert_eq!(
        compiles(cc.parent().unwrap())
            .iter()
            .filter(|c| c.contains(cache.path().to_str().unwrap()))
            .count(),
        1
    );
}

#[test]
fn llama_fixture_on_neuron_double_matches_cpu() {
    let _s = serial();
    let d = setup();
    let cache = tempfile::tempdir().unwrap();
    let be: Arc<dyn Backend> = Arc::new(backend(cache.path()));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/llama3-tied");
    let opts = LoadOptions {
        max_context: Some(32),
        max_prefill_chunk: 8,
        ..Default::default()
    };
    let ids = [1u32, 17, 42, 7, 99, 3, 12, 5, 64, 2];
    let memory = |be: &Arc<dyn Backend>| be.device_memory(0).expect("a device backend");
    let before_all = memory(&be).used;
    assert_eq!(memory(&be).total, 16 << 30, "an Inf2 NeuronCore-v2");
    let handle = be.clone();
    {
        let before = d.core_used(1);
        let on_neuron = LoadedModel::load(&dir, be, &opts).unwrap();
        let after_load = d.core_used(1);
        assert!(after_load > before, "weights live on NeuronCore 1");
        // What the backend says it holds is what the runtime allocated (the KV pool is sized
        // from it).
        assert_eq!(memory(&handle).used - before_all, after_load - before);
        let on_cpu = LoadedModel::load(&dir, Arc::new(CpuBackend::new()), &opts).unwrap();
        // Two prefill chunks (8 + 2 tokens): two bucket programs share the same weight tensors.
        let got = on_neuron.logits(&ids).unwrap().to_vec::<f32>().unwrap();
        let want = on_cpu.logits(&ids).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(got.len(), want.len());
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Same f32 kernels on both sides (the double runs the CPU backend); only the graph
        // round trip through HLO differs (decomposed composites).
        assert!(max <= 1e-4, "max |neuron - cpu| = {max}");
        let gen = silica_models::GenerateOptions {
            max_tokens: 6,
            ignore_eos: true,
            ..Default::default()
        };
        let a = on_neuron.generate(&ids[..4], &gen, |_| {}).unwrap();
        let b = on_cpu.generate(&ids[..4], &gen, |_| {}).unwrap();
        assert_eq!(a.token_ids, b.token_ids);
        assert_eq!(a.token_ids.len(), 6);
        // The stand-in compiler saw NxD Inference's flags per program kind: prefill buckets
        // at -O1 with collective pipeline tiling 2, decode at -O2 with tiling 1.
        let log = std::fs::read_to_string(
            common::fake_compiler_env()
                .parent()
                .unwrap()
                .join("calls.log"),
        )
        .unwrap();
        let mine: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(cache.path().to_str().unwrap()))
            .collect();
        let (prefill, decode): (Vec<&str>, Vec<&str>) =
            mine.iter().partition(|l| !l.contains(" -O2 "));
        assert!(!prefill.is_empty() && !decode.is_empty(), "{mine:?}");
        for l in &prefill {
            assert!(l.contains(" -O1 ") && l.contains("tiling-factor=2"), "{l}");
        }
        for l in &decode {
            assert!(l.contains(" -O2 ") && l.contains("tiling-factor=1"), "{l}");
        }
        // Weights were uploaded once at load: running both bucket programs and a generation
        // allocated nothing that stayed (KV caches and outputs were freed), re-uploaded nothing.
        assert_eq!(
            d.core_used(1),
            after_load,
            "device memory grew while running"
        );
        assert_eq!(memory(&handle).used - before_all, after_load - before);
    }
    assert_eq!(memory(&handle).used, before_all, "freed with the model");
}

#[test]
fn device_sampling_on_the_double_downloads_token_ids_and_keeps_the_hosts_tokens() {
    let _s = serial();
    let d = setup();
    let cache = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/llama3-tied");
    let opts = LoadOptions {
        max_context: Some(32),
        max_prefill_chunk: 8,
        ..Default::default()
    };
    let on_neuron = LoadedModel::load(
        &dir,
        Arc::new(backend(cache.path())),
        &LoadOptions {
            device_sampling: true,
            ..opts.clone()
        },
    )
    .unwrap();
    let on_cpu = LoadedModel::load(&dir, Arc::new(CpuBackend::new()), &opts).unwrap();
    let ids = [1u32, 17, 42, 7, 99, 3];
    // Greedy, and sampling with every warper: the sampler programs (lowered to HLO, through
    // the stand-in compiler, decoded and run by the double) pick the host sampler's tokens
    // for the same seed.
    for sampling in [
        silica_models::sampling::SamplingParams::default(),
        silica_models::sampling::SamplingParams {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.02,
            seed: Some(5),
            ..Default::default()
        },
        silica_models::sampling::SamplingParams {
            temperature: 1.5,
            seed: Some(6),
            ..Default::default()
        },
    ] {
        let gen = silica_models::GenerateOptions {
            max_tokens: 8,
            ignore_eos: true,
            sampling,
            ..Default::default()
        };
        let a = on_neuron.generate(&ids, &gen, |_| {}).unwrap();
        let b = on_cpu.generate(&ids, &gen, |_| {}).unwrap();
        assert_eq!(a.token_ids, b.token_ids, "{:?}", gen.sampling);
    }
    // Bytes downloaded by one decode step (nrt_tensor_read): the [1, V] f32 logits on the
    // host path, one token id and its log-probability with sampling in the program.
    let v = on_neuron.config.vocab_size as u64;
    let mut kv = on_neuron.new_cache(1).unwrap();
    let prompt = silica_models::RowInput {
        cache_row: 0,
        tokens: &ids,
        start_pos: 0,
        logits_at: ids.len() - 1,
    };
    on_neuron
        .step_buffer(&mut kv, &[prompt], silica_models::LogitsMode::Last)
        .unwrap();
    let tok = [5u32];
    let row = |pos: usize| silica_models::RowInput {
        cache_row: 0,
        tokens: &tok,
        start_pos: pos,
        logits_at: 0,
    };
    let r0 = d.bytes_read();
    let logits = on_neuron
        .step(&mut kv, &[row(6)], silica_models::LogitsMode::Last)
        .unwrap();
    let host_bytes = d.bytes_read() - r0;
    let r1 = d.bytes_read();
    let draw = silica_models::device_sampling::DeviceDraw::GREEDY;
    let s = on_neuron.step_sampled(&mut kv, &[row(7)], &[draw]).unwrap();
    let device_bytes = d.bytes_read() - r1;
    eprintln!(
        "bytes downloaded per decode step: host sampling {host_bytes}, device {device_bytes}"
    );
    assert_eq!(host_bytes, v * 4);
    assert_eq!(device_bytes, 8);
    // The step at position 7 saw the same cache as a host step would: its greedy token is the
    // argmax of the host path's logits for that step.
    let mut kv2 = on_neuron.new_cache(1).unwrap();
    on_neuron
        .step_buffer(
            &mut kv2,
            &[prompt_row(&ids)],
            silica_models::LogitsMode::Last,
        )
        .unwrap();
    on_neuron
        .step_buffer(&mut kv2, &[row(6)], silica_models::LogitsMode::Last)
        .unwrap();
    let l7 = on_neuron
        .step(&mut kv2, &[row(7)], silica_models::LogitsMode::Last)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(s.tokens[0], silica_models::sampling::argmax(&l7) as u32);
    drop(logits);
}

fn prompt_row(ids: &[u32]) -> silica_models::RowInput<'_> {
    silica_models::RowInput {
        cache_row: 0,
        tokens: ids,
        start_pos: 0,
        logits_at: ids.len() - 1,
    }
}

fn lowered() -> silica_hlo::HloModule {
    silica_hlo::lower(&step_program()).unwrap()
}

#[test]
fn concurrent_writers_compile_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cc = fake_compiler(&tmp.path().join("slow"), 1.0, None, true);
    let cache = NeffCache::new(tmp.path().join("cache"));
    let opts = CompileOptions::new(Target::Trn1);
    let hlo = lowered();
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    cache
                        .get_or_compile(&hlo, &opts, Some((&cc, "fake 1")))
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        compiles(cc.parent().unwrap()).len(),
        1,
        "compiled more than once"
    );
    let compiled = outcomes
        .iter()
        .filter(|o| o.outcome == CacheOutcome::Compiled)
        .count();
    assert_eq!(compiled, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| o.path == outcomes[0].path));
    let bytes = std::fs::read(&outcomes[0].path).unwrap();
    assert_eq!(
        &bytes[25..],
        &hlo.bytes[..],
        "NEFF is the complete compiler output"
    );
    // Nothing temporary is left: the key's .neff, .hlo.pb, .log and .lock only.
    let mut names: Vec<String> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let k = &outcomes[0].key;
    assert_eq!(
        names,
        [
            format!("{k}.hlo.pb"),
            format!("{k}.lock"),
            format!("{k}.log"),
            format!("{k}.neff")
        ]
    );
    // A different compiler version is a different key: compiled again.
    let o = cache
        .get_or_compile(&hlo, &opts, Some((&cc, "fake 2")))
        .unwrap();
    assert_eq!(o.outcome, CacheOutcome::Compiled);
    assert_ne!(o.key, *k);
}

#[test]
fn failed_compiles_leave_no_neff_and_show_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = NeffCache::new(tmp.path().join("cache"));
    let opts = CompileOptions::new(Target::Inf2);
    let hlo = lowered();
    let bad = fake_compiler(
        &tmp.path().join("bad"),
        0.0,
        Some("out of host memory"),
        true,
    );
    let e = cache
        .get_or_compile(&hlo, &opts, Some((&bad, "v")))
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, NeuronError::CompilerFailed { .. }), "{msg}");
    assert!(msg.contains("ERROR: out of host memory"), "{msg}");
    assert!(msg.contains("exit status: 3"), "{msg}");
    let silent = fake_compiler(&tmp.path().join("silent"), 0.0, None, false);
    let e = cache
        .get_or_compile(&hlo, &opts, Some((&silent, "v2")))
        .unwrap_err();
    assert!(e.to_string().contains("wrote no NEFF"), "{e}");
    let leftovers: Vec<_> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".neff"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn missing_compiler_prints_a_runnable_command_whose_output_is_then_used() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = NeffCache::new(tmp.path().join("cache"));
    let opts = CompileOptions::new(Target::Trn2);
    let hlo = lowered();
    let e = cache.get_or_compile(&hlo, &opts, None).unwrap_err();
    let NeuronError::CompilerNotFound {
        command,
        hlo: hlo_path,
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(
        std::fs::read(hlo_path).unwrap(),
        hlo.bytes,
        "the HLO is written where it says"
    );
    assert!(e.to_string().contains(command.as_str()));
    assert!(e.to_string().contains(&hlo_path.display().to_string()));
    assert!(command.starts_with("neuronx-cc compile "), "{command}");
    assert!(command.contains(" --target trn2 "), "{command}");
    // Run the printed command (with the fake compiler standing in for neuronx-cc elsewhere)…
    let cc = fake_compiler(&tmp.path().join("elsewhere"), 0.0, None, true);
    let args: Vec<&str> = command.split(' ').skip(1).collect();
    let st = std::process::Command::new(&cc)
        .args(&args)
        .status()
        .unwrap();
    assert!(st.success());
    // …and the next run finds its NEFF without a compiler.
    let o = cache.get_or_compile(&hlo, &opts, None).unwrap();
    assert_eq!(o.outcome, CacheOutcome::Hit);
}
