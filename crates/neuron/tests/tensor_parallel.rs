//! Tensor parallelism on the Neuron backend, against the libnrt double: one SPMD NEFF loaded
//! once per rank with `nrt_load_collectives` (rank r on NeuronCore `core + r`), every rank's
//! `nrt_execute` in flight at once, the double's ranks meeting at all-reduce / all-gather.
//! Results are compared with the CPU backend running the same group (`run_host_group`) and with
//! the unsharded program; then the error paths: wrong rank count, an argument on another rank's
//! core, too few visible cores, a rank that never executes (its peer times out), and leaks.
//!
//! Every test holds `serial()`: they change the double's visible cores and collective timeout
//! and read its global counters.

mod common;

use common::{fake_compiler_env, inf2_backend, serial, setup, stand_in_neff, Double};
use silica_neuron::Runtime;
use silica_neuron::{NeuronBackend, NeuronError, NeuronExecutable, NrtStatus};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{
    run_host, run_host_group, Arg, Backend, BackendError, Buffer, DType, Executable, Graph,
    HostTensor, Program, Shape,
};
use std::path::Path;

static USER_ROOT: std::sync::Once = std::sync::Once::new();

const B: usize = 3;
const D: usize = 4;
const H: usize = 8;

/// The double with `cores` visible NeuronCores and the default collective timeout.
fn double(cores: u32) -> &'static Double {
    fake_compiler_env();
    let d = setup();
    // A user's collective root (as for a group spanning instances) is what the runtime gets.
    USER_ROOT.call_once(|| std::env::set_var("NEURON_RT_ROOT_COMM_ID", "127.0.0.1:47111"));
    // nrt_init reads SILICA_NRT_DOUBLE_CORES: initialize first so the count set here stays.
    Runtime::global().unwrap();
    d.set_cores(cores);
    d.set_collective_timeout_ms(10_000);
    d
}

fn backend(cache: &Path, core: u32) -> NeuronBackend {
    inf2_backend(cache, core)
}

/// Rank r's part of a Megatron MLP over `world` ranks: `W1` split by columns and `W2` by rows,
/// so `silu(x·W1_r)·W2_r` are partial sums that all-reduce adds up to `silu(x·W1)·W2`; the
/// hidden activations are all-gathered back to `[B, H]`; a cache is updated in place (aliased)
/// with the reduced result. At `world` 1 it is the unsharded MLP.
fn tp_mlp(world: usize) -> Program {
    let hs = H / world;
    let mut g = Graph::new();
    let cache = g.parameter("kv cache", DType::F32, [B, D]).unwrap();
    let x = g.parameter("x", DType::F32, [B, D]).unwrap();
    let w1 = g.parameter("w1 shard", DType::F32, [D, hs]).unwrap();
    let w2 = g.parameter("w2 shard", DType::F32, [hs, D]).unwrap();
    let a = g.matmul(x, w1).unwrap();
    let act = g.silu(a).unwrap();
    let part = g.matmul(act, w2).unwrap();
    let y = g.all_reduce(part, world).unwrap();
    let hidden = g.all_gather(act, 1, world).unwrap();
    let new_cache = g.add(cache, y).unwrap();
    Program::new(
        format!("tp_mlp_{world}"),
        g,
        vec![
            ("y".into(), y),
            ("hidden".into(), hidden),
            ("cache_out".into(), new_cache),
        ],
    )
    .unwrap()
    .alias("cache_out", "kv cache")
    .unwrap()
}

fn values(n: usize, k: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32) * 0.61 + k).cos()).collect()
}

/// Columns `c0..c1` of a row-major `[rows, cols]` matrix.
fn columns(m: &[f32], cols: usize, c0: usize, c1: usize) -> Vec<f32> {
    m.chunks(cols)
        .flat_map(|row| row[c0..c1].to_vec())
        .collect()
}

/// The full inputs (cache, x, W1, W2) and every rank's shard of them for `world` ranks.
fn group_inputs(world: usize) -> (Vec<HostTensor>, Vec<Vec<HostTensor>>) {
    let hs = H / world;
    let cache = values(B * D, 0.3);
    let x = values(B * D, 1.7);
    let w1 = values(D * H, 0.2);
    let w2 = values(H * D, 2.9);
    let t = |v: Vec<f32>, dims: &[usize]| HostTensor::from_vec(v, dims.to_vec()).unwrap();
    let full = vec![
        t(cache.clone(), &[B, D]),
        t(x.clone(), &[B, D]),
        t(w1.clone(), &[D, H]),
        t(w2.clone(), &[H, D]),
    ];
    let ranks = (0..world)
        .map(|r| {
            vec![
                t(cache.clone(), &[B, D]),
                t(x.clone(), &[B, D]),
                t(columns(&w1, H, r * hs, (r + 1) * hs), &[D, hs]),
                t(w2[r * hs * D..(r + 1) * hs * D].to_vec(), &[hs, D]),
            ]
        })
        .collect();
    (full, ranks)
}

fn f32s(t: &HostTensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// Loads the program's NEFF through the backend (compiled by the fake neuronx-cc into the
/// cache) as a `NeuronExecutable`, so tests can see its models and its typed errors.
fn load(be: &NeuronBackend, p: &Program) -> Result<NeuronExecutable, NeuronError> {
    let neff = be.neff(p)?;
    be.load_neff(&std::fs::read(&neff.path).unwrap(), p.signature())
}

/// Every rank's arguments: the cache donated (it is updated in place), the rest read.
fn group_args(bufs: &mut [Vec<Buffer>]) -> Vec<Vec<Arg<'_>>> {
    bufs.iter_mut()
        .map(|b| {
            let mut it = b.iter_mut();
            let cache = Arg::InOut(it.next().unwrap());
            std::iter::once(cache)
                .chain(it.map(|b| Arg::In(b)))
                .collect()
        })
        .collect()
}

fn assert_no_leaks(d: &Double, cores: u32) {
    assert_eq!(
        d.live(),
        (0, 0, 0, 0),
        "live (tensors, sets, models, infos) after the test"
    );
    for c in 0..cores {
        assert_eq!(d.core_used(c), 0, "bytes left on NeuronCore {c}");
    }
    assert_eq!(d.collective_contexts(), 0, "collective contexts left");
}

/// A world-`world` group starting at NeuronCore `core`: every rank's outputs through the
/// double equal the CPU backend's group run, and the unsharded MLP's.
fn group_matches_cpu(world: usize, core: u32) {
    let d = double(4);
    let cache = tempfile::tempdir().unwrap();
    let be = backend(cache.path(), core);
    assert_eq!(be.max_world(), Some(4 - core as usize));
    let p = tp_mlp(world);
    assert_eq!(p.world(), world);
    let (full, ranks) = group_inputs(world);
    {
        d.reset();
        let exe = load(&be, &p).unwrap();
        // One NEFF loaded once per rank with nrt_load_collectives(rank, world), rank r on
        // NeuronCore core + r; no plain nrt_load.
        assert_eq!(d.count("nrt_load_collectives"), world, "{:?}", d.calls());
        assert_eq!(d.count("nrt_load"), 0);
        assert_eq!(exe.models().len(), world);
        for (r, m) in exe.models().iter().enumerate() {
            let want = (core + r as u32, Some(r as u32), Some(world as u32));
            assert_eq!(d.placement(m.as_ptr().cast()), want, "rank {r}");
            assert_eq!(m.collectives(), Some((r as u32, world as u32)));
            assert_eq!(m.core(), (core as usize + r) as i32);
        }
        let got = run_host_group(&be, &exe, &ranks).unwrap();
        assert_eq!(d.count("nrt_execute"), world);
        // Weights went to each rank's own core; everything was freed after the run.
        for c in 0..4 {
            assert_eq!(d.core_used(c), 0, "NeuronCore {c} after run_host_group");
        }

        let cpu = CpuBackend::new();
        let want = run_host_group(&cpu, &*cpu.compile(&p).unwrap(), &ranks).unwrap();
        let unsharded = run_host(&cpu, &*cpu.compile(&tp_mlp(1)).unwrap(), &full).unwrap();
        assert_eq!(got.len(), world);
        for r in 0..world {
            assert_eq!(got[r].len(), 3);
            for o in 0..3 {
                assert_eq!(got[r][o].dims(), want[r][o].dims(), "rank {r} output {o}");
                // The double runs the lowered HLO on the CPU kernels (silu decomposed), the CPU
                // backend the fused graph: the same math up to f32 rounding.
                let diff = max_diff(&f32s(&got[r][o]), &f32s(&want[r][o]));
                assert!(diff <= 1e-5, "rank {r} output {o}: |neuron - cpu| = {diff}");
                let diff = max_diff(&f32s(&got[r][o]), &f32s(&unsharded[o]));
                assert!(
                    diff <= 1e-5,
                    "rank {r} output {o}: |sharded - unsharded| = {diff}"
                );
            }
            // Collectives combine in rank order on every rank: all ranks hold the same bits.
            for (o, (mine, first)) in got[r].iter().zip(&got[0]).enumerate() {
                assert_eq!(f32s(mine), f32s(first), "rank {r} output {o}");
            }
        }
    }
    assert_no_leaks(d, 4);
}

#[test]
fn world_2_from_core_2_matches_cpu_group_and_unsharded() {
    let _s = serial();
    group_matches_cpu(2, 2);
}

#[test]
fn world_4_matches_cpu_group_and_unsharded() {
    let _s = serial();
    group_matches_cpu(4, 0);
}

#[test]
fn compile_and_execute_group_through_the_backend_trait() {
    let _s = serial();
    let d = double(4);
    let cache = tempfile::tempdir().unwrap();
    let be = backend(cache.path(), 0);
    let p = tp_mlp(2);
    let (_, ranks) = group_inputs(2);
    {
        let exe = be.compile(&p).unwrap();
        assert_eq!(exe.signature().world, 2);
        // Buffers uploaded per rank, the cache donated (InOut) on every rank.
        let mut bufs: Vec<Vec<_>> = ranks
            .iter()
            .enumerate()
            .map(|(r, ts)| ts.iter().map(|t| be.upload_to(t, r).unwrap()).collect())
            .collect();
        assert!(d.core_used(0) > 0 && d.core_used(1) > 0 && d.core_used(2) == 0);
        let zeros = be.zeros_on(DType::F32, &Shape::from([5]), 1).unwrap();
        let before = d.core_used(1);
        drop(zeros);
        assert_eq!(
            d.core_used(1),
            before - 20,
            "zeros_on allocated on rank 1's core"
        );
        let out = {
            let mut args = group_args(&mut bufs);
            exe.execute_group(&mut args).unwrap()
        };
        // y and hidden are returned; the cache was updated in place on each rank's core.
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.len() == 2));
        let y = f32s(&be.download(&out[0][0]).unwrap());
        for (r, b) in bufs.iter().enumerate() {
            let cache = f32s(&be.download(&b[0]).unwrap());
            let orig = f32s(&ranks[r][0]);
            for i in 0..B * D {
                assert!(
                    (cache[i] - (orig[i] + y[i])).abs() <= 1e-6,
                    "rank {r} cache[{i}]"
                );
            }
        }
    }
    assert_no_leaks(d, 4);
}

#[test]
fn wrong_rank_count_and_plain_execute_are_refused_like_cpu() {
    let _s = serial();
    let d = double(4);
    let cache = tempfile::tempdir().unwrap();
    let be = backend(cache.path(), 0);
    let p = tp_mlp(2);
    let (_, ranks) = group_inputs(2);
    {
        let exe = be.compile(&p).unwrap();
        let cpu = CpuBackend::new();
        let cpu_exe = cpu.compile(&p).unwrap();
        let mut bufs: Vec<_> = ranks[0].iter().map(|t| be.upload(t).unwrap()).collect();
        let mut cpu_bufs: Vec<_> = ranks[0].iter().map(|t| cpu.upload(t).unwrap()).collect();
        d.reset();
        // execute() on a tensor-parallel program: the CPU backend's error, word for word.
        let e = {
            let mut args: Vec<Arg> = bufs.iter_mut().map(Arg::InOut).collect();
            exe.execute(&mut args).unwrap_err()
        };
        let cpu_e = {
            let mut args: Vec<Arg> = cpu_bufs.iter_mut().map(Arg::InOut).collect();
            cpu_exe.execute(&mut args).unwrap_err()
        };
        assert!(matches!(e, BackendError::InvalidArgument(_)), "{e}");
        assert_eq!(e.to_string(), cpu_e.to_string());
        assert!(e.to_string().contains("execute_group"), "{e}");
        // One rank's arguments for a group of two.
        let e = {
            let mut args = vec![bufs.iter().map(Arg::In).collect::<Vec<_>>()];
            exe.execute_group(&mut args).unwrap_err()
        };
        assert!(matches!(e, BackendError::InvalidArgument(_)), "{e}");
        assert!(
            e.to_string()
                .contains("runs on a group of 2 ranks, got arguments for 1"),
            "{e}"
        );
        assert_eq!(d.count("nrt_execute"), 0, "nothing ran");
    }
    assert_no_leaks(d, 4);
}

#[test]
fn an_argument_on_another_ranks_core_is_refused_before_anything_runs() {
    let _s = serial();
    let d = double(4);
    let cache = tempfile::tempdir().unwrap();
    let be = backend(cache.path(), 1);
    let p = tp_mlp(2);
    let (_, ranks) = group_inputs(2);
    {
        let exe = load(&be, &p).unwrap();
        // Rank 1's x uploaded for rank 0 (NeuronCore 1 instead of 2).
        let mut bufs: Vec<Vec<_>> = ranks
            .iter()
            .enumerate()
            .map(|(r, ts)| {
                ts.iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let rank = if r == 1 && i == 1 { 0 } else { r };
                        be.upload_to(t, rank).unwrap()
                    })
                    .collect()
            })
            .collect();
        let tensors = d.live().0;
        let cache0 = f32s(&be.download(&bufs[0][0]).unwrap());
        d.reset();
        let mut args = group_args(&mut bufs);
        // Through the trait: the caller's mistake, InvalidArgument.
        let e = exe.execute_group(&mut args).unwrap_err();
        assert!(matches!(e, BackendError::InvalidArgument(_)), "{e}");
        let msg = e.to_string();
        for want in [
            "input `x` lives on NeuronCore 1",
            "rank 1 of `tp_mlp_2` runs on NeuronCore 2",
            "upload_to",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
        // Directly: the same check, before any output is allocated or any rank runs.
        let e = exe.run_group(&mut args).unwrap_err();
        assert!(e.to_string().contains("lives on NeuronCore 1"), "{e}");
        drop(args);
        assert_eq!(d.count("nrt_execute"), 0, "{:?}", d.calls());
        assert_eq!(
            d.count("nrt_tensor_allocate"),
            0,
            "no outputs were allocated"
        );
        assert_eq!(d.live().0, tensors);
        assert_eq!(f32s(&be.download(&bufs[0][0]).unwrap()), cache0);
    }
    assert_no_leaks(d, 4);
}

#[test]
fn too_few_visible_cores_is_an_actionable_error() {
    let _s = serial();
    let d = double(2);
    let cache = tempfile::tempdir().unwrap();
    let be = backend(cache.path(), 1);
    assert_eq!(be.max_world(), Some(1));
    let p = tp_mlp(2);
    d.reset();
    let e = be.compile(&p).err().expect("a group of 2 from core 1 of 2");
    let msg = e.to_string();
    for want in [
        "tensor parallelism over 2 ranks needs NeuronCores 1..=2 but 2 are visible",
        "NEURON_RT_VISIBLE_CORES",
        "at most 1 starting at NeuronCore 1",
    ] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
    assert_eq!(d.count("nrt_load_collectives"), 0, "checked before loading");
    // A degree Inf2 does not support is refused before compiling, with the ones it does.
    let e = backend(cache.path(), 0).compile(&tp_mlp(3)).err().unwrap();
    assert!(e.to_string().contains("[1, 2, 4, 8, 24]"), "{e}");
    assert_eq!(d.count("nrt_load_collectives"), 0);
    let e = be
        .upload_to(&HostTensor::zeros(DType::F32, [2]), 1)
        .unwrap_err();
    assert!(e.to_string().contains("needs NeuronCores 1..=2"), "{e}");
    assert_eq!(d.count("nrt_tensor_allocate"), 0);
    // From core 0 the same two cores hold the group.
    let be0 = backend(cache.path(), 0);
    assert_eq!(be0.max_world(), Some(2));
    drop(be0.compile(&p).unwrap());
    assert_no_leaks(d, 2);
    d.set_cores(4);
}

/// Per rank, per output.
type Outputs = Vec<Vec<HostTensor>>;

/// Uploads `ranks` for each rank and runs the group through `run_group` (typed errors);
/// returns the outputs and every rank's arguments read back afterwards.
fn run_typed(
    be: &NeuronBackend,
    exe: &NeuronExecutable,
    ranks: &[Vec<HostTensor>],
) -> (Result<Outputs, NeuronError>, Outputs) {
    let mut bufs: Vec<Vec<_>> = ranks
        .iter()
        .enumerate()
        .map(|(r, ts)| ts.iter().map(|t| be.upload_to(t, r).unwrap()).collect())
        .collect();
    let res = {
        let mut args = group_args(&mut bufs);
        exe.run_group(&mut args)
    };
    let res = res.map(|outs| {
        outs.iter()
            .map(|o| o.iter().map(|b| be.download(b).unwrap()).collect())
            .collect()
    });
    let after = bufs
        .iter()
        .map(|b| b.iter().map(|b| be.download(b).unwrap()).collect())
        .collect();
    (res, after)
}

#[test]
fn a_rank_that_never_executes_makes_its_peer_time_out_with_a_typed_error() {
    let _s = serial();
    let d = double(4);
    let cache = tempfile::tempdir().unwrap();
    let be = backend(cache.path(), 0);
    let p = tp_mlp(2);
    let (_, ranks) = group_inputs(2);
    {
        let exe = load(&be, &p).unwrap();
        d.set_collective_timeout_ms(300);
        // The first rank to call nrt_execute fails at once (a hardware error): it never reaches
        // the all-reduce, so its peer waits for it until the collective timeout.
        d.inject("nrt_execute", 6, 0);
        let (res, after) = run_typed(&be, &exe, &ranks);
        let e = res.unwrap_err();
        // The root cause is reported, typed, with the rank numbers and the peer's timeout.
        assert_eq!(e.status(), Some(NrtStatus::HwError), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("nrt_execute failed with NRT_HW_ERROR=6"),
            "{msg}"
        );
        assert!(msg.contains("in a group of 2 running `tp_mlp_2`"), "{msg}");
        assert!(msg.contains("also failed: rank"), "{msg}");
        assert!(msg.contains("NRT_TIMEOUT=5"), "{msg}");
        assert!(
            msg.contains("rank 0 of 2 on NeuronCore 0")
                || msg.contains("rank 1 of 2 on NeuronCore 1"),
            "{msg}"
        );
        // No rank wrote its in-place cache.
        for (r, a) in after.iter().enumerate() {
            assert_eq!(f32s(&a[0]), f32s(&ranks[r][0]), "rank {r} cache");
        }
        // The group recovers: the next execution of both ranks succeeds.
        d.set_collective_timeout_ms(10_000);
        let (res, _) = run_typed(&be, &exe, &ranks);
        let got = res.unwrap();
        let cpu = CpuBackend::new();
        let want = run_host_group(&cpu, &*cpu.compile(&p).unwrap(), &ranks).unwrap();
        assert!(max_diff(&f32s(&got[1][0]), &f32s(&want[1][0])) <= 1e-5);
        // Through the trait the failure is a device error naming the status.
        d.set_collective_timeout_ms(300);
        d.inject("nrt_execute", 6, 1);
        let e = run_host_group(&be, &exe, &ranks).unwrap_err();
        assert!(matches!(e, BackendError::Device { .. }), "{e}");
        assert!(e.to_string().contains("NRT_HW_ERROR"), "{e}");
    }
    d.set_collective_timeout_ms(10_000);
    assert_no_leaks(d, 4);
}

/// The double's C ABI directly: one rank of a collective NEFF executing alone times out with
/// NRT_TIMEOUT; loading a rank twice, a mismatched world, or a collective NEFF through plain
/// nrt_load are load errors.
#[test]
fn double_collectives_through_the_c_abi() {
    let _s = serial();
    let d = double(4);
    let rt = Runtime::global().unwrap();
    let neff = stand_in_neff(&silica_hlo::lower(&tp_mlp(2)).unwrap().bytes);
    {
        let e = rt.load(&neff, 0, "plain").unwrap_err();
        assert_eq!(e.status(), Some(NrtStatus::Invalid), "{e}");
        let e = rt.load_collectives(&neff, 0, 0, 4, "world 4").unwrap_err();
        assert_eq!(e.status(), Some(NrtStatus::Invalid), "{e}");
        assert_eq!(d.collective_contexts(), 0);

        let r0 = rt.load_collectives(&neff, 0, 0, 2, "rank 0").unwrap();
        let _r1 = rt.load_collectives(&neff, 1, 1, 2, "rank 1").unwrap();
        assert_eq!(d.collective_contexts(), 1);
        let e = rt
            .load_collectives(&neff, 2, 1, 2, "rank 1 again")
            .unwrap_err();
        assert_eq!(e.status(), Some(NrtStatus::Invalid), "{e}");
        assert!(e.to_string().contains("rank 1 of 2 on NeuronCore 2"), "{e}");
        assert_eq!(d.placement(r0.as_ptr().cast()), (0, Some(0), Some(2)));

        // Rank 0 executes; rank 1 never does.
        let (_, ranks) = group_inputs(2);
        let mut ins = Vec::new();
        for (i, t) in ranks[0].iter().enumerate() {
            let mut dt = rt
                .allocate(0, t.as_bytes().len(), &format!("in{i}"))
                .unwrap();
            dt.write(t.as_bytes(), 0).unwrap();
            ins.push(dt);
        }
        let outs: Vec<_> = r0
            .outputs()
            .iter()
            .map(|o| rt.allocate(0, o.size, &o.name).unwrap())
            .collect();
        let mut in_set = rt.tensor_set().unwrap();
        for (info, t) in r0.inputs().iter().zip(&ins) {
            in_set.add(&info.name, t).unwrap();
        }
        let mut out_set = rt.tensor_set().unwrap();
        for (info, t) in r0.outputs().iter().zip(&outs) {
            out_set.add(&info.name, t).unwrap();
        }
        d.set_collective_timeout_ms(200);
        let e = r0.execute(&in_set, &mut out_set).unwrap_err();
        assert_eq!(e.status(), Some(NrtStatus::Timeout), "{e}");
        assert!(
            matches!(
                e,
                NeuronError::Call {
                    call: "nrt_execute",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("rank 0 of 2 on NeuronCore 0"), "{e}");
        d.set_collective_timeout_ms(10_000);
    }
    assert_no_leaks(d, 4);
}

#[test]
fn single_rank_programs_are_unchanged() {
    let _s = serial();
    let d = double(4);
    let cache = tempfile::tempdir().unwrap();
    let be = backend(cache.path(), 3);
    let p = tp_mlp(1);
    assert_eq!(p.world(), 1);
    let (full, _) = group_inputs(1);
    {
        d.reset();
        let exe = load(&be, &p).unwrap();
        assert_eq!(d.count("nrt_load"), 1);
        assert_eq!(d.count("nrt_load_collectives"), 0);
        assert_eq!(d.placement(exe.model().as_ptr().cast()), (3, None, None));
        assert_eq!(exe.model().collectives(), None);
        // execute_group with one rank is execute.
        let got = run_host_group(&be, &exe, std::slice::from_ref(&full)).unwrap();
        let cpu = CpuBackend::new();
        let want = run_host(&cpu, &*cpu.compile(&p).unwrap(), &full).unwrap();
        for o in 0..3 {
            assert!(max_diff(&f32s(&got[0][o]), &f32s(&want[o])) <= 1e-5);
        }
        // Rank 1 of a single-rank backend is on the next core (when visible).
        assert_eq!(be.max_world(), Some(1));
        assert!(be.upload_to(&full[0], 1).is_err());
    }
    assert_no_leaks(d, 4);
}

#[test]
fn a_rank_failing_to_load_unloads_the_others() {
    let _s = serial();
    let d = double(4);
    let cache = tempfile::tempdir().unwrap();
    let be = backend(cache.path(), 0);
    let p = tp_mlp(4);
    be.neff(&p).unwrap();
    d.reset();
    // One of the four loads (whichever thread comes second) finds no free NeuronCore.
    d.inject("nrt_load_collectives", 9, 1);
    let e = load(&be, &p).err().expect("a rank failed to load");
    assert_eq!(e.status(), Some(NrtStatus::LoadNotEnoughNc), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("`tp_mlp_4` rank "), "{msg}");
    assert!(msg.contains(" of 4 on NeuronCore "), "{msg}");
    // Every rank was tried (concurrently), and the three that loaded were unloaded.
    assert_eq!(d.count("nrt_load_collectives"), 4);
    assert_eq!(d.count("nrt_unload"), 3);
    assert_no_leaks(d, 4);
}

/// The tensor-parallel Llama path (silica-models shards the weights per rank and builds
/// programs with all-reduce / all-gather) on the double's NeuronCores equals the single-rank
/// model on the CPU backend: logits and a greedy generation.
#[test]
fn llama_fixture_tensor_parallel_on_neuron_double_matches_cpu() {
    use silica_models::{GenerateOptions, LoadOptions, LoadedModel};
    use std::sync::Arc;
    let _s = serial();
    let d = double(4);
    let cache = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/llama3-tied");
    let ids = [1u32, 17, 42, 7, 99, 3, 12, 5, 64, 2];
    let opts = |tp: usize| LoadOptions {
        max_context: Some(32),
        max_prefill_chunk: 8,
        tp,
        ..Default::default()
    };
    let on_cpu = LoadedModel::load(&dir, Arc::new(CpuBackend::new()), &opts(1)).unwrap();
    let want = on_cpu.logits(&ids).unwrap().to_vec::<f32>().unwrap();
    let gen = GenerateOptions {
        max_tokens: 6,
        ignore_eos: true,
        ..Default::default()
    };
    let want_tokens = on_cpu.generate(&ids[..4], &gen, |_| {}).unwrap().token_ids;
    for tp in [2, 4] {
        {
            d.reset();
            let be = Arc::new(backend(cache.path(), 0));
            let on_neuron = LoadedModel::load(&dir, be, &opts(tp)).unwrap();
            for c in 0..tp as u32 {
                assert!(
                    d.core_used(c) > 0,
                    "tp {tp}: rank {c}'s weights on NeuronCore {c}"
                );
            }
            let got = on_neuron.logits(&ids).unwrap().to_vec::<f32>().unwrap();
            // Same f32 kernels; the sharded sums are added in another order than unsharded.
            let diff = max_diff(&got, &want);
            assert!(diff <= 1e-4, "tp {tp}: max |neuron - cpu| = {diff}");
            let got_tokens = on_neuron
                .generate(&ids[..4], &gen, |_| {})
                .unwrap()
                .token_ids;
            assert_eq!(got_tokens, want_tokens, "tp {tp}");
            // Every program ran as a group: loaded once per rank with collectives, never alone.
            let loads = d.count("nrt_load_collectives");
            assert!(
                loads >= tp && loads.is_multiple_of(tp),
                "tp {tp}: {loads} loads"
            );
            assert_eq!(d.count("nrt_load"), 0, "tp {tp}");
        }
        assert_no_leaks(d, 4);
    }
}

#[test]
fn a_users_collective_root_is_kept() {
    let _s = serial();
    double(2);
    let id = Runtime::global().unwrap().root_comm_id();
    assert_eq!(id.value, "127.0.0.1:47111");
    assert!(!id.chosen_by_silica);
    assert_eq!(
        std::env::var("NEURON_RT_ROOT_COMM_ID").unwrap(),
        "127.0.0.1:47111"
    );
    assert!(!id.to_string().contains("set by silica"), "{id}");
}
