//! Collectives: all-reduce and all-gather in the graph, the CPU backend's group execution (ranks
//! as threads), and the rendezvous they meet at, including its failure paths (a failed or
//! missing peer must end in an error, never a hang).

use silica_tensor::collective::{Collective, Group};
use silica_tensor::cpu::{CpuBackend, CpuExecutable};
use silica_tensor::{
    grad, run_host, run_host_group, Arg, Backend, DType, Graph, HostTensor, Program,
};
use std::sync::Arc;
use std::time::Duration;

fn f32s(v: &[f32], dims: &[usize]) -> HostTensor {
    HostTensor::from_vec(v.to_vec(), dims.to_vec()).unwrap()
}

/// out = all_reduce(x · w) and gathered = all_gather(x, axis 1): one rank's program.
fn program(world: usize, dt: DType) -> Program {
    let mut g = Graph::new();
    let x = g.parameter("x", dt, [2, 3]).unwrap();
    let w = g.parameter("w", dt, [3, 2]).unwrap();
    let y = g.matmul(x, w).unwrap();
    let s = g.all_reduce(y, world).unwrap();
    let a = g.all_gather(x, 1, world).unwrap();
    Program::new("tp", g, vec![("sum".into(), s), ("gathered".into(), a)]).unwrap()
}

fn rank_inputs(world: usize, dt: DType) -> Vec<Vec<HostTensor>> {
    (0..world)
        .map(|r| {
            let x: Vec<f32> = (0..6).map(|i| (i + 10 * r) as f32 * 0.5).collect();
            let w: Vec<f32> = (0..6).map(|i| ((i * (r + 1)) % 5) as f32 - 2.0).collect();
            vec![f32s(&x, &[2, 3]).convert(dt), f32s(&w, &[3, 2]).convert(dt)]
        })
        .collect()
}

#[test]
fn group_results_equal_the_single_rank_computation() {
    let be = CpuBackend::new();
    for world in [2, 3, 4] {
        for dt in [DType::F32, DType::BF16] {
            let exe = be.compile(&program(world, dt)).unwrap();
            assert_eq!(exe.signature().world, world);
            let inputs = rank_inputs(world, dt);
            let out = run_host_group(&be, exe.as_ref(), &inputs).unwrap();
            // Reference: each rank's x·w on one rank, summed in rank order in f32 and rounded
            // once to the dtype (as XLA's all-reduce, and the CPU reduce, accumulate halves).
            let single = be.compile(&program(1, dt)).unwrap();
            let mut sum = vec![0f32; 4];
            let mut gathered: Vec<Vec<f32>> = vec![Vec::new(); 2];
            for inp in &inputs {
                let o = run_host(&be, single.as_ref(), inp).unwrap();
                let part = o[0].convert(DType::F32).to_vec::<f32>().unwrap();
                sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p);
                let x = inp[0].convert(DType::F32).to_vec::<f32>().unwrap();
                for row in 0..2 {
                    gathered[row].extend_from_slice(&x[row * 3..row * 3 + 3]);
                }
            }
            let sum = f32s(&sum, &[2, 2]).convert(dt);
            let want_sum = sum.convert(DType::F32).to_vec::<f32>().unwrap();
            let want_gather: Vec<f32> = gathered.concat();
            for (r, o) in out.iter().enumerate() {
                assert_eq!(o[0].dtype(), dt);
                assert_eq!(
                    o[0].convert(DType::F32).to_vec::<f32>().unwrap(),
                    want_sum,
                    "world {world} {dt} rank {r}: sum"
                );
                assert_eq!(o[1].dims(), [2, 3 * world]);
                assert_eq!(
                    o[1].convert(DType::F32).to_vec::<f32>().unwrap(),
                    want_gather,
                    "world {world} {dt} rank {r}: gather"
                );
            }
        }
    }
}

#[test]
fn world_one_collectives_are_the_operand_itself() {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [4]).unwrap();
    assert_eq!(g.all_reduce(x, 1).unwrap(), x);
    assert_eq!(g.all_gather(x, 0, 1).unwrap(), x);
    assert_eq!(g.nodes().len(), 1);
    assert_eq!(g.world().unwrap(), 1);
}

#[test]
fn bad_collectives_are_refused_when_built() {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [4]).unwrap();
    let i = g.parameter("i", DType::I32, [4]).unwrap();
    assert!(g.all_reduce(x, 0).is_err());
    assert!(g
        .all_reduce(i, 2)
        .unwrap_err()
        .to_string()
        .contains("float"));
    assert!(g.all_gather(x, 1, 2).is_err(), "axis out of range");
    assert!(g.all_gather(x, 0, usize::MAX).is_err(), "overflowing axis");
    // Two group sizes in one program.
    let a = g.all_reduce(x, 2).unwrap();
    let b = g.all_reduce(x, 4).unwrap();
    let c = g.add(a, b).unwrap();
    let e = Program::new("mixed", g, vec![("c".into(), c)]).unwrap_err();
    assert!(e.to_string().contains("over 2 and over 4 ranks"), "{e}");
}

#[test]
fn group_calls_are_checked_before_any_rank_runs() {
    let be = CpuBackend::new();
    let exe = be.compile(&program(2, DType::F32)).unwrap();
    let inputs = rank_inputs(2, DType::F32);
    // One rank's arguments to a two-rank program.
    let bufs: Vec<_> = inputs[0].iter().map(|t| be.upload(t).unwrap()).collect();
    let mut args: Vec<Arg> = bufs.iter().map(Arg::In).collect();
    let e = exe.execute(&mut args).unwrap_err();
    assert!(e.to_string().contains("run it with execute_group"), "{e}");
    let e = run_host(&be, exe.as_ref(), &inputs[0]).unwrap_err();
    assert!(e.to_string().contains("group of 2 ranks"), "{e}");
    let e = run_host_group(&be, exe.as_ref(), &inputs[..1]).unwrap_err();
    assert!(e.to_string().contains("group of 2 ranks"), "{e}");
    // Rank 1 passes a wrong shape: refused up front, so rank 0 never waits for it.
    let mut bad = inputs.clone();
    bad[1][0] = f32s(&[0.0; 4], &[2, 2]);
    let e = run_host_group(&be, exe.as_ref(), &bad).unwrap_err();
    assert!(e.to_string().contains("must be f32 [2, 3]"), "{e}");
}

#[test]
fn a_failing_rank_releases_its_waiting_peers() {
    // Rank 0 runs through the CPU executor and blocks at its all-reduce; rank 1 never arrives
    // and aborts the group instead: rank 0 must return an error.
    let p = program(2, DType::F32);
    let exe = CpuExecutable::new(&p);
    let be = CpuBackend::new();
    let group = Group::new(2, None);
    let bufs: Vec<_> = rank_inputs(2, DType::F32)[0]
        .iter()
        .map(|t| be.upload(t).unwrap())
        .collect();
    let m0 = group.member(0);
    let g2 = group.clone();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut args: Vec<Arg> = bufs.iter().map(Arg::In).collect();
            exe.execute_rank(&mut args, &m0)
        });
        std::thread::sleep(Duration::from_millis(50));
        g2.abort("rank 1 failed: out of memory");
        let e = h.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("rank 1 failed: out of memory"), "{e}");
    });
}

/// A rank that panics while rank 0 waits for it at an exchange (a group with no timeout, as the
/// CPU backend's `execute_group` builds) must release rank 0: the panic aborts the group from
/// inside the unwinding thread, before the joins, which go in rank order and would otherwise
/// wait for rank 0 forever.
#[test]
fn a_panicking_rank_releases_a_peer_waiting_at_a_collective() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let group = Group::new(2, None);
        let results = silica_tensor::on_rank_threads(
            vec![(), ()],
            |rank, ()| {
                if rank == 1 {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!("rank 1 hit a bug");
                }
                group
                    .member(rank)
                    .exchange(f32s(&[1.0], &[1]))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            |rank| {
                group.abort(&format!("rank {rank} panicked"));
                Err(format!("rank {rank} panicked"))
            },
        );
        let _ = tx.send(results);
    });
    let results = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the group hung: rank 0 was never released");
    let e0 = results[0].as_ref().unwrap_err();
    assert!(e0.contains("rank 1 panicked"), "{e0}");
    assert_eq!(results[1].as_ref().unwrap_err(), "rank 1 panicked");
}

/// A rank whose peer fails at a collective returns an error, and its donated (in-place) buffer
/// stays usable: valid f32 storage of its size (here: the cache with this step's update, which
/// ran before the collective), and the next execution on it succeeds. It was left empty, so the
/// next step on it failed.
#[test]
fn donated_buffers_stay_usable_after_a_failed_collective() {
    let mut g = Graph::new();
    let cache = g.parameter("cache", DType::F32, [2, 4]).unwrap();
    let x = g.parameter("x", DType::F32, [2, 4]).unwrap();
    let one = g.scalar(1.0, DType::F32);
    let updated = g.add(cache, one).unwrap();
    let s = g.all_reduce(x, 2).unwrap();
    let p = Program::new(
        "kv",
        g,
        vec![("cache_out".into(), updated), ("sum".into(), s)],
    )
    .unwrap()
    .alias("cache_out", "cache")
    .unwrap();
    let be = CpuBackend::new();
    let exe = CpuExecutable::new(&p);
    let start: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let mut c0 = be.upload(&f32s(&start, &[2, 4])).unwrap();
    let x0 = be.upload(&f32s(&[1.0; 8], &[2, 4])).unwrap();
    let group = Group::new(2, None);
    let m0 = group.member(0);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let mut args = vec![Arg::InOut(&mut c0), Arg::In(&x0)];
            exe.execute_rank(&mut args, &m0).map(|_| ())
        });
        std::thread::sleep(Duration::from_millis(50));
        group.abort("rank 1 failed");
        assert!(h.join().unwrap().is_err());
    });
    let after = be.download(&c0).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(after.len(), 8);
    // Now a whole group runs on the same buffer.
    let mut c1 = be.upload(&f32s(&start, &[2, 4])).unwrap();
    let x1 = be.upload(&f32s(&[2.0; 8], &[2, 4])).unwrap();
    let exe: Arc<dyn silica_tensor::Executable> = be.compile(&p).unwrap();
    let out = exe
        .execute_group(&mut [
            vec![Arg::InOut(&mut c0), Arg::In(&x0)],
            vec![Arg::InOut(&mut c1), Arg::In(&x1)],
        ])
        .unwrap();
    assert_eq!(out[0][0].dtype(), DType::F32);
    let c0v = be.download(&c0).unwrap().to_vec::<f32>().unwrap();
    let want: Vec<f32> = after.iter().map(|v| v + 1.0).collect();
    assert_eq!(c0v, want);
}

#[test]
fn a_missing_peer_times_out() {
    let group = Group::new(3, Some(Duration::from_millis(100)));
    let m = group.member(0);
    let e = m.exchange(f32s(&[1.0], &[1])).unwrap_err().to_string();
    assert!(e.contains("1 of 3 ranks"), "{e}");
    // The group stays failed: a late peer gets the error too instead of waiting.
    let late = group.member(2).exchange(f32s(&[1.0], &[1])).unwrap_err();
    assert!(late.to_string().contains("aborted"), "{late}");
}

#[test]
fn many_rounds_keep_ranks_in_step() {
    // Ranks exchange 200 times without barriers of their own; a rank racing ahead into the next
    // round must not overwrite a round its peers have not collected.
    let world = 4;
    let group = Group::new(world, Some(Duration::from_secs(30)));
    std::thread::scope(|s| {
        for r in 0..world {
            let m = group.member(r);
            s.spawn(move || {
                for round in 0..200 {
                    let got = m.exchange(f32s(&[(round * 10 + r) as f32], &[1])).unwrap();
                    let vals: Vec<f32> =
                        got.iter().map(|t| t.to_vec::<f32>().unwrap()[0]).collect();
                    let want: Vec<f32> = (0..world).map(|k| (round * 10 + k) as f32).collect();
                    assert_eq!(vals, want, "rank {r} round {round}");
                }
            });
        }
    });
    assert_eq!(Arc::strong_count(&group), 1);
}

#[test]
fn tensor_parallel_programs_are_not_differentiated_silently() {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [3]).unwrap();
    let y = g.all_reduce(x, 2).unwrap();
    let l = g.reduce_sum(y, &[0]).unwrap();
    let e = grad(&g, l, &[x]).unwrap_err().to_string();
    assert!(e.contains("tensor-parallel"), "{e}");
}

#[test]
fn rank_id_is_each_ranks_number() {
    let be = CpuBackend::new();
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [2]).unwrap();
    let r = g.rank_id(3).unwrap();
    let s = g.all_reduce(x, 3).unwrap();
    let p = Program::new("rank", g, vec![("r".into(), r), ("s".into(), s)]).unwrap();
    assert_eq!(p.world(), 3);
    let exe = be.compile(&p).unwrap();
    let inputs: Vec<Vec<HostTensor>> = (0..3).map(|_| vec![f32s(&[1.0, 2.0], &[2])]).collect();
    let out = run_host_group(&be, exe.as_ref(), &inputs).unwrap();
    for (rank, o) in out.iter().enumerate() {
        assert_eq!(o[0].to_vec::<i32>().unwrap(), [rank as i32]);
        assert_eq!(o[1].to_vec::<f32>().unwrap(), [3.0, 6.0]);
    }
    // One rank: the constant 0, no node of its own.
    let mut g = Graph::new();
    let r = g.rank_id(1).unwrap();
    assert!(matches!(g.node(r).op, silica_tensor::Op::Constant(_)));
    assert!(g.rank_id(0).is_err());
}
