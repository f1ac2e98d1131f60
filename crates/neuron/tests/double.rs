//! The libnrt binding against the ABI test double (silica-nrt-double, loaded via SILICA_NRT_LIB):
//! marshalling, binding by name, checks before execute, status mapping, symbol and version
//! handling, init-once, and that every handle is freed. Not the hardware.

mod common;

use common::{serial, setup, stand_in_neff};
use silica_neuron::sys::{self, Api};
use silica_neuron::{NeuronError, NrtStatus, Runtime, Usage};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{run_host, Backend, DType, Graph, HostTensor, Program};

/// y = tanh(x·w + b) (2×3 · 3×4) and s = Σ y over axis 1: a few real ops, two outputs.
fn program() -> Program {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [2, 3]).unwrap();
    let w = g.parameter("w", DType::F32, [3, 4]).unwrap();
    let b = g.parameter("b", DType::F32, [4]).unwrap();
    let xw = g.matmul(x, w).unwrap();
    let z = g.add(xw, b).unwrap();
    let y = g.tanh(z).unwrap();
    let s = g.reduce_sum(y, &[1]).unwrap();
    Program::new("mlp", g, vec![("y".into(), y), ("s".into(), s)]).unwrap()
}

fn inputs() -> Vec<HostTensor> {
    let f = |n: usize, k: f32| {
        (0..n)
            .map(|i| ((i as f32) * 0.37 + k).sin())
            .collect::<Vec<_>>()
    };
    vec![
        HostTensor::from_vec(f(6, 0.1), [2, 3]).unwrap(),
        HostTensor::from_vec(f(12, 0.7), [3, 4]).unwrap(),
        HostTensor::from_vec(f(4, 1.3), [4]).unwrap(),
    ]
}

fn neff() -> Vec<u8> {
    stand_in_neff(&silica_hlo::lower(&program()).unwrap().bytes)
}

fn assert_no_leaks(d: &common::Double) {
    assert_eq!(
        d.live(),
        (0, 0, 0, 0),
        "live (tensors, sets, models, infos) after the test"
    );
}

#[test]
fn load_execute_read_back_matches_cpu() {
    let d = setup();
    let _s = serial();
    let rt = Runtime::global().unwrap();
    {
        let model = rt.load(&neff(), 0, "mlp").unwrap();
        let names: Vec<_> = model
            .inputs()
            .iter()
            .map(|i| (i.name.as_str(), i.size, i.shape.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("input0", 24, vec![2, 3]),
                ("input1", 48, vec![3, 4]),
                ("input2", 16, vec![4])
            ]
        );
        assert!(model.inputs().iter().all(|i| i.usage == Usage::Input));
        assert_eq!(model.outputs().len(), 2);
        assert_eq!(model.outputs()[1].name, "output1");
        assert_eq!(model.outputs()[1].size, 8);

        let ins = inputs();
        let mut dev = Vec::new();
        for (k, t) in ins.iter().enumerate() {
            let mut dt = rt
                .allocate(0, t.as_bytes().len(), &format!("in{k}"))
                .unwrap();
            dt.write(t.as_bytes(), 0).unwrap();
            assert_eq!(dt.runtime_size(), t.as_bytes().len());
            dev.push(dt);
        }
        let y = rt.allocate(0, 32, "y").unwrap();
        let s = rt.allocate(0, 8, "s").unwrap();
        // Bound in a different order than the NEFF lists them: binding is by name.
        let mut set_in = rt.tensor_set().unwrap();
        set_in.add("input2", &dev[2]).unwrap();
        set_in.add("input0", &dev[0]).unwrap();
        set_in.add("input1", &dev[1]).unwrap();
        let mut set_out = rt.tensor_set().unwrap();
        set_out.add("output1", &s).unwrap();
        set_out.add("output0", &y).unwrap();
        model.execute(&set_in, &mut set_out).unwrap();

        let cpu = CpuBackend::new();
        let exe = cpu.compile(&program()).unwrap();
        let want = run_host(&cpu, &*exe, &ins).unwrap();
        let got_y = HostTensor::from_bytes(DType::F32, [2, 4], &y.to_vec().unwrap()).unwrap();
        let got_s = HostTensor::from_bytes(DType::F32, [2], &s.to_vec().unwrap()).unwrap();
        for (g, w) in [(got_y, &want[0]), (got_s, &want[1])] {
            let (g, w) = (g.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap());
            assert!(w.iter().any(|v| v.abs() > 0.1), "reference is not trivial");
            for (a, b) in g.iter().zip(&w) {
                assert!((a - b).abs() <= 1e-6, "{g:?} vs {w:?}");
            }
        }
        // Partial reads honour the offset.
        let mut part = [0u8; 4];
        s.read(&mut part, 4).unwrap();
        assert_eq!(
            f32::from_le_bytes(part),
            want[1].to_vec::<f32>().unwrap()[1]
        );
        // Out-of-bounds access is refused by silica before reaching the runtime.
        assert!(s.read(&mut [0u8; 8], 4).is_err());
    }
    assert_no_leaks(d);
}

#[test]
fn size_mismatch_and_wrong_names_are_caught_before_execute() {
    let d = setup();
    let _s = serial();
    let rt = Runtime::global().unwrap();
    {
        let model = rt.load(&neff(), 0, "mlp").unwrap();
        let a = rt.allocate(0, 24, "a").unwrap();
        let b_short = rt.allocate(0, 44, "b").unwrap();
        let c = rt.allocate(0, 16, "c").unwrap();
        let y = rt.allocate(0, 32, "y").unwrap();
        let s = rt.allocate(0, 8, "s").unwrap();
        let mut outs = rt.tensor_set().unwrap();
        outs.add("output0", &y).unwrap();
        outs.add("output1", &s).unwrap();
        d.reset();

        let mut ins = rt.tensor_set().unwrap();
        ins.add("input0", &a).unwrap();
        ins.add("input1", &b_short).unwrap();
        ins.add("input2", &c).unwrap();
        let e = model.execute(&ins, &mut outs).unwrap_err();
        assert!(
            matches!(&e, NeuronError::SizeMismatch { name, expected: 48, actual: 44, .. } if name == "input1"),
            "{e}"
        );
        assert!(e.to_string().contains("expects 48 bytes, got 44"), "{e}");

        let mut ins = rt.tensor_set().unwrap();
        ins.add("input0", &a).unwrap();
        ins.add("x", &c).unwrap();
        let e = model.execute(&ins, &mut outs).unwrap_err();
        assert!(
            e.to_string().contains("no tensor bound to input `input1`"),
            "{e}"
        );

        let mut ins = rt.tensor_set().unwrap();
        ins.add("input0", &a).unwrap();
        ins.add("input1", &a).unwrap();
        ins.add("input2", &c).unwrap();
        ins.add("input9", &c).unwrap();
        let e = model.execute(&ins, &mut outs).unwrap_err();
        assert!(e.to_string().contains("input1"), "{e}");
        assert_eq!(
            d.count("nrt_execute"),
            0,
            "nrt_execute must not be reached: {:?}",
            d.calls()
        );
    }
    assert_no_leaks(d);
}

#[test]
fn every_status_code_is_mapped_with_advice() {
    let d = setup();
    let _s = serial();
    let rt = Runtime::global().unwrap();
    {
        let model = rt.load(&neff(), 0, "mlp").unwrap();
        let ts: Vec<_> = [24, 48, 16, 32, 8]
            .iter()
            .map(|&n| rt.allocate(0, n, "t").unwrap())
            .collect();
        let mut ins = rt.tensor_set().unwrap();
        for (k, t) in ts[..3].iter().enumerate() {
            ins.add(&format!("input{k}"), t).unwrap();
        }
        let mut outs = rt.tensor_set().unwrap();
        outs.add("output0", &ts[3]).unwrap();
        outs.add("output1", &ts[4]).unwrap();
        let mut statuses: Vec<NrtStatus> = NrtStatus::KNOWN[1..].to_vec();
        statuses.push(NrtStatus::Unknown(4242));
        for st in statuses {
            assert_eq!(NrtStatus::from_code(st.code()), st);
            d.inject("nrt_execute", st.code(), 0);
            let e = model.execute(&ins, &mut outs).unwrap_err();
            assert_eq!(e.status(), Some(st), "{e}");
            let msg = e.to_string();
            assert!(msg.contains("nrt_execute failed with"), "{msg}");
            assert!(msg.contains(&st.name()), "{msg}");
            assert!(msg.contains(st.advice()), "{msg}");
            assert!(msg.contains("model `mlp` on NeuronCore 0"), "{msg}");
        }
        // The injection fired once each; the model still runs.
        model.execute(&ins, &mut outs).unwrap();

        // RESOURCE on allocation names the bytes and the core.
        d.inject("nrt_tensor_allocate", 4, 0);
        let e = rt.allocate(1, 123_456, "big").unwrap_err();
        assert_eq!(
            e.to_string(),
            "device memory exhausted: 123456 bytes requested on NeuronCore 1 \
             (nrt_tensor_allocate returned NRT_RESOURCE=4); free buffers, use a smaller batch \
             or context, or shard over more NeuronCores"
        );
        // And for real: the double's per-core memory runs out.
        d.set_core_memory(1000);
        let e = rt.allocate(0, 2000, "too big").unwrap_err();
        assert!(
            matches!(
                e,
                NeuronError::DeviceMemory {
                    bytes: 2000,
                    core: 0,
                    ..
                }
            ),
            "{e}"
        );
        d.set_core_memory(16 << 30);
        // Load errors carry their own call.
        let e = rt.load(b"not a neff", 0, "junk").unwrap_err();
        assert_eq!(e.status(), Some(NrtStatus::Invalid));
        assert!(
            e.to_string()
                .starts_with("nrt_load failed with NRT_INVALID=2"),
            "{e}"
        );
        let e = rt
            .load(b"SILICA-NRT-DOUBLE-NEFF/7\n", 0, "future")
            .unwrap_err();
        assert_eq!(e.status(), Some(NrtStatus::UnsupportedNeffVersion));
        let e = rt.load(&neff(), 5, "mlp").unwrap_err();
        assert_eq!(e.status(), Some(NrtStatus::LoadNotEnoughNc));
        // A failure inside loading (after nrt_load succeeded) unloads the model again.
        d.inject("nrt_get_model_tensor_info", 1, 0);
        assert!(rt.load(&neff(), 0, "mlp").is_err());
    }
    assert_no_leaks(d);
}

#[test]
fn collectives_load_checks_rank_and_world() {
    let d = setup();
    let _s = serial();
    let rt = Runtime::global().unwrap();
    {
        let m = rt.load_collectives(&neff(), 1, 1, 2, "mlp-rank1").unwrap();
        assert_eq!(m.core(), 1);
        d.reset();
        let e = rt.load_collectives(&neff(), 0, 2, 2, "bad").unwrap_err();
        assert!(
            e.to_string()
                .contains("rank 2 must be below the world size 2"),
            "{e}"
        );
        assert_eq!(d.count("nrt_load_collectives"), 0);
    }
    assert_no_leaks(d);
}

#[test]
fn init_happens_once_across_threads() {
    let d = setup();
    let ptrs: Vec<usize> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| Runtime::global().unwrap() as *const Runtime as usize))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ptrs.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(d.init_calls(), 1);
    let rt = Runtime::global().unwrap();
    assert_eq!(rt.visible_cores().unwrap(), Some(2));
    assert_eq!(
        rt.api().visible_count.unwrap().0,
        "nrt_get_visible_vnc_count"
    );
    assert_eq!(d.init_calls(), 1);
}

/// `Api::resolve` over the double with some symbols hidden.
fn resolve_hiding(d: &common::Double, hidden: &[&str]) -> Result<Api, NeuronError> {
    let mut lookup = |name: &str| {
        if hidden.contains(&name) {
            Err(format!("{name}: undefined symbol (hidden by the test)"))
        } else {
            d.lookup(name)
        }
    };
    // SAFETY: the lookup returns the double's own symbols (or errors), of the nrt.h signatures.
    unsafe { Api::resolve("double", &mut lookup) }
}

#[test]
fn missing_and_optional_symbols() {
    let d = setup();
    let _s = serial();
    for s in sys::REQUIRED_SYMBOLS {
        let e = resolve_hiding(d, &[s])
            .err()
            .expect("a required symbol is hidden");
        assert!(
            matches!(&e, NeuronError::MissingSymbol { symbol, .. } if symbol == s),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("missing required symbol `{s}`")),
            "{e}"
        );
    }
    // The deprecated visible-count name is used when the new one is absent; neither is fatal.
    let api = resolve_hiding(d, &["nrt_get_visible_vnc_count"]).unwrap();
    assert_eq!(api.visible_count.unwrap().0, "nrt_get_visible_nc_count");
    let api = resolve_hiding(
        d,
        &["nrt_get_visible_vnc_count", "nrt_get_visible_nc_count"],
    )
    .unwrap();
    assert!(api.visible_count.is_none());
    let api = resolve_hiding(d, &["nrt_load_collectives"]).unwrap();
    assert!(api.load_collectives.is_none());
    // A real shared library that is not libnrt.
    let e = sys::open_first(&["libc.so.6".into()]).err().unwrap();
    assert!(
        matches!(&e, NeuronError::MissingSymbol { symbol, .. } if symbol == "nrt_get_version"),
        "{e}"
    );
}

#[test]
fn library_not_found_says_where_it_looked() {
    let e = sys::open_first(&[
        "/nonexistent/libnrt.so.1".into(),
        "libnrt-silica-test-absent.so".into(),
    ])
    .err()
    .unwrap();
    let msg = e.to_string();
    assert!(msg.starts_with("libnrt not found; looked in:"), "{msg}");
    assert!(
        msg.contains("/nonexistent/libnrt.so.1: no such file"),
        "{msg}"
    );
    assert!(msg.contains("libnrt-silica-test-absent.so: "), "{msg}");
    assert!(msg.contains("aws-neuronx-runtime-lib"), "{msg}");
    assert!(msg.contains("SILICA_NRT_LIB"), "{msg}");
    // The default search order, when SILICA_NRT_LIB is not the one given.
    let c = {
        let _s = serial();
        setup();
        sys::candidates()
    };
    assert_eq!(c, [common::double_path().display().to_string()]);
}

/// The version is read, never a reason to refuse (the header does not say what `rt_major` and
/// `rt_minor` count): outside the 2.12+ line silica warns, names the version and proceeds.
#[test]
fn versions_outside_the_expected_line_load_with_a_warning() {
    let d = setup();
    let _s = serial();
    for (v, expected) in [
        ((2, 5, 0), false),
        ((2, 11, 9), false),
        ((2, 12, 0), true),
        ((3, 0, 0), false),
        ((1, 40, 0), false),
        ((2, 29, 1), true),
    ] {
        d.set_version(v.0, v.1, v.2);
        let api = resolve_hiding(d, &[]).unwrap_or_else(|e| panic!("version {v:?}: {e}"));
        assert_eq!((api.version.major, api.version.minor), (v.0, v.1));
        match (&api.version_note, expected) {
            (None, true) => {}
            (Some(note), false) => {
                assert!(note.contains(&format!("version {}.{}", v.0, v.1)), "{note}");
                assert!(note.contains("proceeding"), "{note}");
                assert!(note.contains("aws-neuronx-runtime-lib 2.12"), "{note}");
            }
            (n, _) => panic!("version {v:?}: unexpected note {n:?}"),
        }
    }
    d.set_version(2, 21, 0);
    let api = resolve_hiding(d, &[]).unwrap();
    assert_eq!(api.version.to_string(), "2.21.0 (silica-nrt-double)");
}

#[test]
fn dropped_handles_are_freed() {
    let d = setup();
    let _s = serial();
    let rt = Runtime::global().unwrap();
    let before = d.core_used(0);
    {
        let _m = rt.load(&neff(), 0, "mlp").unwrap();
        let t = rt.allocate(0, 1 << 20, "x").unwrap();
        let h = rt.allocate_host(100, "h").unwrap();
        let mut set = rt.tensor_set().unwrap();
        set.add("a", &t).unwrap();
        set.add("b", &h).unwrap();
        assert_eq!(d.live(), (2, 1, 1, 0));
        assert_eq!(d.core_used(0), before + (1 << 20));
    }
    assert_no_leaks(d);
    assert_eq!(d.core_used(0), before);
}

#[test]
fn an_unset_collective_root_gets_a_free_loopback_port() {
    setup();
    let id = Runtime::global().unwrap().root_comm_id();
    assert!(id.chosen_by_silica, "{id}");
    let port: u16 = id
        .value
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{id}"));
    assert!(port > 0);
    // Set for the runtime to read, and said where it matters (collective load errors).
    assert_eq!(std::env::var("NEURON_RT_ROOT_COMM_ID").unwrap(), id.value);
    assert!(id.to_string().contains("set by silica"), "{id}");
}
