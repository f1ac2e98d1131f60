//! Programs and the Backend/Executable contract on the CPU backend: aliases (in-place updates of
//! donated buffers), argument validation, output bookkeeping and dead-code elimination.

mod common;

use common::*;
use silica_tensor::cpu::{CpuBackend, CpuBuffer, CpuData};
use silica_tensor::{
    run_host, Arg, Backend, BackendError, Buffer, DType, Graph, HostTensor, Program,
};
use std::time::{Duration, Instant};

const B: usize = 1;
const H: usize = 2;
const T: usize = 8;
const D: usize = 4;

/// A KV-cache-like step: writes `new` [B, H, 1, D] at row `pos` of `cache` [B, H, T, D] (aliased,
/// updated in place) and returns the sum of the updated cache.
fn kv_program() -> Program {
    let mut g = Graph::new();
    let cache = g.parameter("cache", DType::F32, [B, H, T, D]).unwrap();
    let new = g.parameter("new", DType::F32, [B, H, 1, D]).unwrap();
    let pos = g.parameter("pos", DType::I32, []).unwrap();
    let zero = g.constant(HostTensor::scalar(0.0, DType::I32));
    let updated = g
        .dynamic_update_slice(cache, new, &[zero, zero, pos, zero])
        .unwrap();
    let total = g.reduce_sum(updated, &[0, 1, 2, 3]).unwrap();
    Program::new(
        "kv_step",
        g,
        vec![("cache_out".into(), updated), ("total".into(), total)],
    )
    .unwrap()
    .alias("cache_out", "cache")
    .unwrap()
}

fn f32_ptr(b: &Buffer) -> *const f32 {
    match &b.downcast_ref::<CpuBuffer>().unwrap().0 {
        CpuData::F32(v) => v.as_ptr(),
        other => panic!("expected f32 storage, got {:?}", other.dtype()),
    }
}

fn row_values(step: usize) -> Vec<f32> {
    (0..B * H * D).map(|i| (step * 100 + i) as f32).collect()
}

#[test]
fn alias_updates_the_donated_buffer_in_place() {
    let be = CpuBackend::new();
    let p = kv_program();
    let exe = be.compile(&p).unwrap();
    let sig = exe.signature();
    assert_eq!(sig.aliases.len(), 1);
    assert_eq!(sig.returned_outputs().count(), 1);
    let mut cache = be.zeros(DType::F32, &[B, H, T, D].into()).unwrap();
    let ptr = f32_ptr(&cache);
    for step in 0..3 {
        let new = be
            .upload(&HostTensor::from_vec(row_values(step), [B, H, 1, D]).unwrap())
            .unwrap();
        let pos = be
            .upload(&HostTensor::from_vec(vec![step as i32], []).unwrap())
            .unwrap();
        let out = exe
            .execute(&mut [Arg::InOut(&mut cache), Arg::In(&new), Arg::In(&pos)])
            .unwrap();
        // Only the non-aliased output comes back.
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].shape().dims(), &[] as &[usize]);
        let total = be.download(&out[0]).unwrap().to_vec::<f32>().unwrap()[0];
        let want: f32 = (0..=step).flat_map(row_values).sum();
        assert_eq!(total, want, "step {step}");
        // The cache is updated where it lives: no cache-sized buffer per step.
        assert_eq!(
            f32_ptr(&cache),
            ptr,
            "step {step}: the cache buffer was reallocated"
        );
    }
    let host = be.download(&cache).unwrap();
    assert_eq!(host.dims(), &[B, H, T, D]);
    let v = host.to_vec::<f32>().unwrap();
    for h in 0..H {
        for t in 0..T {
            for d in 0..D {
                let got = v[(h * T + t) * D + d];
                let want = if t < 3 { row_values(t)[h * D + d] } else { 0.0 };
                assert_eq!(got, want, "h {h} t {t} d {d}");
            }
        }
    }
    // run_host returns every output in order, the aliased one read back from its input.
    let cache0 = HostTensor::zeros(DType::F32, [B, H, T, D]);
    let new = HostTensor::from_vec(row_values(7), [B, H, 1, D]).unwrap();
    let outs = run_host(
        &be,
        exe.as_ref(),
        &[
            cache0.clone(),
            new.clone(),
            HostTensor::from_vec(vec![5i32], []).unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(outs.len(), 2);
    assert_eq!(outs[0].dims(), &[B, H, T, D]);
    let expected = reference(
        &p,
        &[cache0, new, HostTensor::from_vec(vec![5i32], []).unwrap()],
    );
    assert_close("cache_out", &outs[0], &expected[0], Tol::EXACT);
    assert_close("total", &outs[1], &expected[1], Tol::EXACT);
}

fn upload_all(be: &CpuBackend, ts: &[HostTensor]) -> Vec<Buffer> {
    ts.iter().map(|t| be.upload(t).unwrap()).collect()
}

fn kv_inputs() -> Vec<HostTensor> {
    vec![
        HostTensor::full(1.0, DType::F32, [B, H, T, D]),
        HostTensor::from_vec(row_values(1), [B, H, 1, D]).unwrap(),
        HostTensor::from_vec(vec![2i32], []).unwrap(),
    ]
}

fn invalid(e: BackendError) -> String {
    match e {
        BackendError::InvalidArgument(m) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn aliased_input_must_be_donated() {
    let be = CpuBackend::new();
    let exe = be.compile(&kv_program()).unwrap();
    let inputs = kv_inputs();
    let bufs = upload_all(&be, &inputs);
    let err = exe
        .execute(&mut [Arg::In(&bufs[0]), Arg::In(&bufs[1]), Arg::In(&bufs[2])])
        .unwrap_err();
    let msg = invalid(err);
    assert!(msg.contains("cache") && msg.contains("InOut"), "{msg}");
    for (b, t) in bufs.iter().zip(&inputs) {
        assert_eq!(&be.download(b).unwrap(), t, "an argument changed on error");
    }
}

#[test]
fn argument_errors_name_the_input_and_modify_nothing() {
    let be = CpuBackend::new();
    let exe = be.compile(&kv_program()).unwrap();
    let inputs = kv_inputs();
    let mut bufs = upload_all(&be, &inputs);
    // Wrong count.
    let (first, rest) = bufs.split_at_mut(1);
    let msg = invalid(
        exe.execute(&mut [Arg::InOut(&mut first[0]), Arg::In(&rest[0])])
            .unwrap_err(),
    );
    assert!(
        msg.contains("3") && msg.contains("cache, new, pos") && msg.contains("got 2"),
        "{msg}"
    );
    // Wrong dtype for `pos`.
    let pos64 = be
        .upload(&HostTensor::from_vec(vec![2i64], []).unwrap())
        .unwrap();
    let msg = invalid(
        exe.execute(&mut [
            Arg::InOut(&mut first[0]),
            Arg::In(&rest[0]),
            Arg::In(&pos64),
        ])
        .unwrap_err(),
    );
    assert!(
        msg.contains("`pos`") && msg.contains("i32") && msg.contains("i64"),
        "{msg}"
    );
    // Wrong shape for `new`.
    let wide = be
        .upload(&HostTensor::zeros(DType::F32, [B, H, 2, D]))
        .unwrap();
    let msg = invalid(
        exe.execute(&mut [Arg::InOut(&mut first[0]), Arg::In(&wide), Arg::In(&rest[1])])
            .unwrap_err(),
    );
    assert!(
        msg.contains("`new`") && msg.contains("[1, 2, 1, 4]") && msg.contains("[1, 2, 2, 4]"),
        "{msg}"
    );
    // A buffer from another backend.
    let alien = Buffer::new("fake", DType::I32, [].into(), Box::new(0u8));
    let msg = invalid(
        exe.execute(&mut [
            Arg::InOut(&mut first[0]),
            Arg::In(&rest[0]),
            Arg::In(&alien),
        ])
        .unwrap_err(),
    );
    assert!(msg.contains("`pos`") && msg.contains("fake"), "{msg}");
    assert!(be.download(&alien).is_err());
    // Nothing was modified, the donated cache included.
    for (b, t) in bufs.iter().zip(&inputs) {
        assert_eq!(&be.download(b).unwrap(), t);
    }
}

#[test]
fn inout_for_a_non_aliased_input_leaves_it_intact() {
    // Donating more than the aliases need is allowed by the Arg API; the extra buffer must keep
    // its contents (it is an input, not an output).
    let be = CpuBackend::new();
    let exe = be.compile(&kv_program()).unwrap();
    let inputs = kv_inputs();
    let mut bufs = upload_all(&be, &inputs);
    let (a, rest) = bufs.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    let out = exe
        .execute(&mut [Arg::InOut(&mut a[0]), Arg::InOut(&mut b[0]), Arg::In(&c[0])])
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(be.download(&bufs[1]).unwrap(), inputs[1]);
    assert_eq!(be.download(&bufs[2]).unwrap(), inputs[2]);
    // And a second run with the same buffers still works.
    let (a, rest) = bufs.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    exe.execute(&mut [Arg::InOut(&mut a[0]), Arg::InOut(&mut b[0]), Arg::In(&c[0])])
        .unwrap();
    assert_eq!(be.download(&bufs[1]).unwrap(), inputs[1]);
}

#[test]
fn same_value_twice_and_parameter_outputs() {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [3]).unwrap();
    let y = g.parameter("y", DType::F32, [3]).unwrap();
    let s = g.add(x, y).unwrap();
    let p = Program::new(
        "outs",
        g,
        vec![
            ("s1".into(), s),
            ("s2".into(), s),
            ("x_again".into(), x),
            ("s3".into(), s),
        ],
    )
    .unwrap();
    let xs = host_f(DType::F32, &[3], &[1.0, 2.0, 3.0]);
    let ys = host_f(DType::F32, &[3], &[10.0, 20.0, 30.0]);
    let out = check_program(&p, &[xs.clone(), ys], Tol::EXACT);
    assert_eq!(out.len(), 4);
    for k in [0, 1, 3] {
        assert_eq!(out[k].to_vec::<f32>().unwrap(), vec![11.0, 22.0, 33.0]);
    }
    assert_eq!(out[2], xs);
}

#[test]
fn aliased_outputs_with_old_values_and_swaps() {
    // Returns the old cache (the donated parameter itself) next to the updated one.
    let mut g = Graph::new();
    let c = g.parameter("c", DType::I32, [4]).unwrap();
    let one = g.constant(HostTensor::from_vec(vec![1i32], [1]).unwrap());
    let c1 = g.add(c, one).unwrap();
    let p = Program::new("old_new", g, vec![("new".into(), c1), ("old".into(), c)])
        .unwrap()
        .alias("new", "c")
        .unwrap();
    let be = CpuBackend::new();
    let exe = be.compile(&p).unwrap();
    let mut buf = be.upload(&host_i(DType::I32, &[4], &[1, 2, 3, 4])).unwrap();
    let out = exe.execute(&mut [Arg::InOut(&mut buf)]).unwrap();
    assert_eq!(
        be.download(&out[0]).unwrap().to_vec::<i32>().unwrap(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        be.download(&buf).unwrap().to_vec::<i32>().unwrap(),
        vec![2, 3, 4, 5]
    );

    // Two donated inputs whose aliased outputs swap them.
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [2]).unwrap();
    let b = g.parameter("b", DType::F32, [2]).unwrap();
    let p = Program::new("swap", g, vec![("a".into(), b), ("b".into(), a)])
        .unwrap()
        .alias("a", "a")
        .unwrap()
        .alias("b", "b")
        .unwrap();
    let exe = be.compile(&p).unwrap();
    let mut ba = be.upload(&host_f(DType::F32, &[2], &[1.0, 2.0])).unwrap();
    let mut bb = be.upload(&host_f(DType::F32, &[2], &[3.0, 4.0])).unwrap();
    let out = exe
        .execute(&mut [Arg::InOut(&mut ba), Arg::InOut(&mut bb)])
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(
        be.download(&ba).unwrap().to_vec::<f32>().unwrap(),
        vec![3.0, 4.0]
    );
    assert_eq!(
        be.download(&bb).unwrap().to_vec::<f32>().unwrap(),
        vec![1.0, 2.0]
    );

    // An aliased output that is a read-only input: copied into the donated buffer.
    let mut g = Graph::new();
    let dst = g.parameter("dst", DType::F32, [2]).unwrap();
    let src = g.parameter("src", DType::F32, [2]).unwrap();
    let _ = dst;
    let p = Program::new("copy", g, vec![("dst".into(), src)])
        .unwrap()
        .alias("dst", "dst")
        .unwrap();
    let exe = be.compile(&p).unwrap();
    let mut bd = be.upload(&host_f(DType::F32, &[2], &[0.0, 0.0])).unwrap();
    let bs = be.upload(&host_f(DType::F32, &[2], &[5.0, 6.0])).unwrap();
    exe.execute(&mut [Arg::InOut(&mut bd), Arg::In(&bs)])
        .unwrap();
    assert_eq!(
        be.download(&bd).unwrap().to_vec::<f32>().unwrap(),
        vec![5.0, 6.0]
    );
    assert_eq!(
        be.download(&bs).unwrap().to_vec::<f32>().unwrap(),
        vec![5.0, 6.0]
    );
}

#[test]
fn donated_weights_update_reuses_storage() {
    // w ← w − 0.5·g, in place: the elementwise op consumes the donated buffer.
    let mut g = Graph::new();
    let w = g.parameter("w", DType::F32, [1024]).unwrap();
    let gr = g.parameter("g", DType::F32, [1024]).unwrap();
    let step = g
        .binary_scalar(silica_tensor::BinaryOp::Mul, gr, 0.5)
        .unwrap();
    let w2 = g.sub(w, step).unwrap();
    let p = Program::new("sgd", g, vec![("w".into(), w2)])
        .unwrap()
        .alias("w", "w")
        .unwrap();
    let be = CpuBackend::new();
    let exe = be.compile(&p).unwrap();
    let mut r = rng(50);
    let w0 = rand_float(&mut r, DType::F32, &[1024], -1.0, 1.0);
    let g0 = rand_float(&mut r, DType::F32, &[1024], -1.0, 1.0);
    let mut wb = be.upload(&w0).unwrap();
    let gb = be.upload(&g0).unwrap();
    // The upload borrows the host tensor's bytes; the first in-place write gives the buffer
    // storage of its own (copy on write, once), which every later step then updates in place.
    assert_eq!(f32_ptr(&wb), w0.as_bytes().as_ptr() as *const f32);
    exe.execute(&mut [Arg::InOut(&mut wb), Arg::In(&gb)])
        .unwrap();
    let ptr = f32_ptr(&wb);
    assert_ne!(ptr, w0.as_bytes().as_ptr() as *const f32);
    for _ in 0..2 {
        exe.execute(&mut [Arg::InOut(&mut wb), Arg::In(&gb)])
            .unwrap();
    }
    assert_eq!(f32_ptr(&wb), ptr, "the donated weights were reallocated");
    let got = be.download(&wb).unwrap().to_vec::<f32>().unwrap();
    let (w0, g0) = (w0.to_vec::<f32>().unwrap(), g0.to_vec::<f32>().unwrap());
    for i in 0..1024 {
        let want = ((w0[i] - 0.5 * g0[i]) - 0.5 * g0[i]) - 0.5 * g0[i];
        assert_eq!(got[i], want, "{i}");
    }
    // The read-only input was not touched.
    assert_eq!(be.download(&gb).unwrap().to_vec::<f32>().unwrap(), g0);
}

#[test]
fn dead_code_is_not_executed() {
    // An unused 2^40-element node: evaluating it would abort on allocation.
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [4]).unwrap();
    let unused = g.parameter("unused", DType::F32, [4]).unwrap();
    let huge = g.full(1.0, DType::F32, [1 << 20, 1 << 20]).unwrap();
    let huge2 = g.exp(huge).unwrap();
    let _dead = g.reduce_sum(huge2, &[0, 1]).unwrap();
    let y = g.mul(x, x).unwrap();
    let p = Program::new("dce", g, vec![("y".into(), y)]).unwrap();
    let xs = host_f(DType::F32, &[4], &[1.0, 2.0, 3.0, 4.0]);
    let start = Instant::now();
    let out = check_program(&p, &[xs, HostTensor::zeros(DType::F32, [4])], Tol::EXACT);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![1.0, 4.0, 9.0, 16.0]);
    let _ = unused;
}

#[test]
fn compiled_program_runs_many_times() {
    let p = program1(&[(DType::F32, &[2, 3]), (DType::F32, &[4, 3])], |g, p| {
        g.linear(p[0], p[1])
    });
    let be = CpuBackend::new();
    let exe = be.compile(&p).unwrap();
    let mut r = rng(51);
    let w = be
        .upload(&rand_float(&mut r, DType::F32, &[4, 3], -1.0, 1.0))
        .unwrap();
    for _ in 0..3 {
        let xh = rand_float(&mut r, DType::F32, &[2, 3], -1.0, 1.0);
        let x = be.upload(&xh).unwrap();
        let out = exe.execute(&mut [Arg::In(&x), Arg::In(&w)]).unwrap();
        let wh = be.download(&w).unwrap();
        let expected = reference(&p, &[xh, wh]);
        let got = be.download(&out[0]).unwrap();
        assert_close("linear", &got, &expected[0], Tol::rel(1e-6, 1e-6));
    }
}

#[test]
fn program_construction_errors() {
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [2]).unwrap();
    let _b = g.parameter("b", DType::I32, [2]).unwrap();
    let c = g.parameter("c", DType::F32, [3]).unwrap();
    assert!(
        g.parameter("a", DType::F32, [1]).is_err(),
        "duplicate parameter name"
    );
    let e = Program::new("p", g.clone(), vec![("o".into(), a), ("o".into(), c)]).unwrap_err();
    assert!(e.to_string().contains("`o`"), "{e}");
    let p = Program::new("p", g.clone(), vec![("o".into(), a), ("q".into(), c)]).unwrap();
    assert!(p.clone().alias("nope", "a").is_err());
    assert!(p.clone().alias("o", "nope").is_err());
    let e = p.clone().alias("o", "b").unwrap_err();
    assert!(
        e.to_string().contains("f32") && e.to_string().contains("i32"),
        "{e}"
    );
    assert!(p.clone().alias("o", "c").is_err(), "shape differs");
    let p2 = p.clone().alias("o", "a").unwrap();
    assert!(p2.clone().alias("o", "a").is_err(), "already aliased");
    let sig = p2.signature();
    assert_eq!(sig.input_index("c"), Some(2));
    assert_eq!(sig.output_index("q"), Some(1));
    assert!(sig.alias_of_input(0).is_some() && sig.alias_of_input(1).is_none());
    assert!(sig.is_aliased_output(0) && !sig.is_aliased_output(1));
    assert_eq!(
        sig.returned_outputs().map(|(i, _)| i).collect::<Vec<_>>(),
        vec![1]
    );
    // Inputs are the parameters in creation order, even the unused ones.
    let names: Vec<String> = p.inputs().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
}

/// Uploading a memory-mapped checkpoint tensor to the CPU backend borrows the mapping (the buffer
/// reads the file's pages where they are, no copy: an 8 B bf16 model used to cost 16 GB of
/// copies and twice its size in resident memory); a program that writes into such a buffer
/// (donated, updated in place) copies it first, leaving the mapping and the host tensor as they
/// were.
#[test]
fn upload_borrows_a_mapped_tensor_and_copies_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let cache = HostTensor::from_vec(
        (0..B * H * T * D).map(|i| i as f32).collect::<Vec<f32>>(),
        [B, H, T, D],
    )
    .unwrap();
    silica_tensor::save_safetensors(&path, [("cache", &cache)], None).unwrap();
    let file = silica_tensor::SafetensorsFile::open(&path).unwrap();
    let mapped = file.get("cache").unwrap().clone();
    assert!(mapped.is_mapped());

    let be = CpuBackend::new();
    let mut buf = be.upload(&mapped).unwrap();
    assert_eq!(
        f32_ptr(&buf),
        mapped.as_bytes().as_ptr() as *const f32,
        "the upload copied the mapped tensor"
    );
    assert!(buf.downcast_ref::<CpuBuffer>().unwrap().0.is_shared());
    // Downloading it hands back the same bytes, still without a copy.
    let back = be.download(&buf).unwrap();
    assert!(back.is_mapped());
    assert_eq!(back, cache);

    // Written in place: the buffer gets storage of its own; the file's bytes stay.
    let exe = be.compile(&kv_program()).unwrap();
    let new = be
        .upload(&HostTensor::from_vec(vec![-1.0f32; B * H * D], [B, H, 1, D]).unwrap())
        .unwrap();
    let pos = be
        .upload(&HostTensor::from_vec(vec![2i32], []).unwrap())
        .unwrap();
    let out = exe
        .execute(&mut [Arg::InOut(&mut buf), Arg::In(&new), Arg::In(&pos)])
        .unwrap();
    assert_ne!(f32_ptr(&buf), mapped.as_bytes().as_ptr() as *const f32);
    assert!(!buf.downcast_ref::<CpuBuffer>().unwrap().0.is_shared());
    assert_eq!(mapped, cache, "the write reached the mapped tensor");
    let total = be.download(&out[0]).unwrap().to_vec::<f32>().unwrap()[0];
    let want: f32 = cache.to_vec::<f32>().unwrap().iter().sum::<f32>()
        - (0..H)
            .flat_map(|h| (0..D).map(move |d| ((h * T + 2) * D + d) as f32 + 1.0))
            .sum::<f32>();
    assert_eq!(total, want);
    let written = be.download(&buf).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(written[2 * D], -1.0);
    assert_eq!(written[0], 0.0);
}
