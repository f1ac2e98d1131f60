//! The Neuron compatibility pass (`silica_neuron::compat`): one test per rule, each on a real
//! lowered module (edited where the graph IR cannot express the construct), and the programs
//! silica itself emits passing unchanged.

use silica_hlo::proto::HloModuleProto;
use silica_hlo::{lower, HloModule};
use silica_neuron::compat::prepare;
use silica_neuron::{CompileOptions, NeffCache, NeuronError, Target};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{run_host, Backend, DType, Graph, HostTensor, Program};
use std::borrow::Cow;
use std::path::Path;

// The double's HLO decoder (how it runs a stand-in NEFF), included as silica-hlo's tests do.
#[path = "../../nrt-double/src/hlo_exec.rs"]
#[allow(dead_code)]
mod hlo_exec;

const ALL: [Target; 3] = [Target::Inf2, Target::Trn1, Target::Trn2];

fn program(build: impl FnOnce(&mut Graph) -> Vec<silica_tensor::ValueId>) -> Program {
    let mut g = Graph::new();
    let outs = build(&mut g);
    let outputs = outs
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("out{i}"), v))
        .collect();
    Program::new("compat_case", g, outputs).unwrap()
}

/// A small f32 program: y = x * 2 + 1.
fn f32_program() -> Program {
    program(|g| {
        let x = g.parameter("x", DType::F32, [2, 3]).unwrap();
        let y = g
            .binary_scalar(silica_tensor::BinaryOp::Mul, x, 2.0)
            .unwrap();
        vec![g
            .binary_scalar(silica_tensor::BinaryOp::Add, y, 1.0)
            .unwrap()]
    })
}

/// The lowered module with `edit` applied to its proto.
fn edited(m: &HloModule, edit: impl FnOnce(&mut HloModuleProto)) -> HloModule {
    let mut p = m.proto();
    edit(&mut p);
    m.with_bytes(prost::Message::encode_to_vec(&p))
}

/// The entry computation's first instruction with `opcode`.
fn first<'a>(
    p: &'a mut HloModuleProto,
    opcode: &str,
) -> &'a mut silica_hlo::proto::HloInstructionProto {
    let entry = p.entry_computation_id;
    p.computations
        .iter_mut()
        .find(|c| c.id == entry)
        .unwrap()
        .instructions
        .iter_mut()
        .find(|i| i.opcode == opcode)
        .unwrap()
}

fn refused(m: &HloModule, t: Target) -> String {
    match prepare(m, t) {
        Err(e @ NeuronError::Unsupported { .. }) => e.to_string(),
        Err(e) => panic!("{t}: wrong error {e}"),
        Ok(_) => panic!("{t}: accepted"),
    }
}

#[test]
fn silicas_own_programs_pass_unchanged_on_every_target() {
    let cfg = silica_models::presets::preset("silica-tiny").unwrap();
    let shape = silica_models::StepShape {
        batch: 2,
        seq: 1,
        cache_len: 32,
        logits: silica_models::LogitsMode::Last,
        dtype: DType::BF16,
        tp: 1,
        quant: None,
        blocks: None,
    };
    let step = silica_models::llama::build_step(&cfg, &shape).unwrap();
    let sampler = silica_models::device_sampling::sampler_program(
        &silica_models::device_sampling::SamplerShape {
            batch: 2,
            vocab: 64,
            sample: true,
            top_k: true,
            top_p: true,
        },
    )
    .unwrap();
    for p in [step, sampler, f32_program()] {
        let m = lower(&p).unwrap();
        for t in ALL {
            let out = prepare(&m, t).unwrap_or_else(|e| panic!("{} on {t}: {e}", p.name));
            assert!(
                matches!(out, Cow::Borrowed(_)),
                "{} on {t} was rewritten",
                p.name
            );
        }
    }
}

#[test]
fn f64_is_refused_everywhere_with_the_instruction_named() {
    let m = lower(&program(|g| {
        let x = g.parameter("x", DType::F64, [4]).unwrap();
        vec![g.exp(x).unwrap()]
    }))
    .unwrap();
    for t in ALL {
        let e = refused(&m, t);
        assert!(e.contains("f64") && e.contains("compat_case"), "{e}");
        assert!(e.contains(&format!("cannot run on {t}")), "{e}");
    }
}

#[test]
fn internal_i64_becomes_i32_on_neuroncore_v2_and_computes_the_same() {
    // i32 in and out; i64 inside (a convert, a constant, an add, a compare).
    let p = program(|g| {
        let x = g.parameter("x", DType::I32, [5]).unwrap();
        let w = g.convert(x, DType::I64).unwrap();
        let c = g.scalar(1_000_000.0, DType::I64);
        let s = g.add(w, c).unwrap();
        let big = g.scalar(1_000_002.0, DType::I64);
        let gt = g.compare(s, big, silica_tensor::CmpDir::Gt).unwrap();
        let back = g.convert(s, DType::I32).unwrap();
        vec![back, gt]
    });
    let m = lower(&p).unwrap();
    let x = HostTensor::from_vec(vec![-3i32, 0, 1, 2, 7], [5]).unwrap();
    let be = CpuBackend::new();
    let want = run_host(
        &be,
        be.compile(&p).unwrap().as_ref(),
        std::slice::from_ref(&x),
    )
    .unwrap();
    for t in [Target::Inf2, Target::Trn1] {
        let out = prepare(&m, t).unwrap();
        let Cow::Owned(rewritten) = out else {
            panic!("{t}: not rewritten")
        };
        assert_ne!(rewritten.hash, m.hash, "a new module, a new cache key");
        let proto = rewritten.proto();
        let s64 = silica_hlo::proto::PrimitiveType::S64 as i32;
        assert!(proto
            .computations
            .iter()
            .all(|c| c
                .instructions
                .iter()
                .all(|i| i.shape.as_ref().unwrap().element_type != s64)));
        // The rewritten module computes what the original does (decoded and run as the
        // libnrt double runs a stand-in NEFF).
        let d = hlo_exec::decode(&rewritten.bytes).unwrap();
        let got = run_host(
            &be,
            be.compile(&d.program).unwrap().as_ref(),
            std::slice::from_ref(&x),
        )
        .unwrap();
        assert_eq!(
            got[0].to_vec::<i32>().unwrap(),
            want[0].to_vec::<i32>().unwrap()
        );
        assert_eq!(
            got[1].to_vec::<u8>().unwrap(),
            want[1].to_vec::<u8>().unwrap()
        );
    }
    assert!(matches!(
        prepare(&m, Target::Trn2).unwrap(),
        Cow::Borrowed(_)
    ));
}

#[test]
fn i64_that_the_caller_binds_or_that_does_not_fit_is_refused_on_v2() {
    let input = lower(&program(|g| {
        let x = g.parameter("x", DType::I64, [3]).unwrap();
        vec![g.convert(x, DType::I32).unwrap()]
    }))
    .unwrap();
    let output = lower(&program(|g| {
        let x = g.parameter("x", DType::I32, [3]).unwrap();
        vec![g.convert(x, DType::I64).unwrap()]
    }))
    .unwrap();
    let huge = lower(&program(|g| {
        let x = g.parameter("x", DType::I32, [3]).unwrap();
        let w = g.convert(x, DType::I64).unwrap();
        let c = g.scalar(5e9, DType::I64);
        let s = g.add(w, c).unwrap();
        vec![g.convert(s, DType::I32).unwrap()]
    }))
    .unwrap();
    for t in [Target::Inf2, Target::Trn1] {
        assert!(refused(&input, t).contains("input 0 is i64"));
        assert!(refused(&output, t).contains("i64 output"));
        assert!(refused(&huge, t).contains("5000000000"));
    }
    for m in [&input, &output, &huge] {
        prepare(m, Target::Trn2).unwrap();
    }
}

#[test]
fn fp8_types_are_refused_on_inf2_and_trn1_only() {
    let m = edited(&lower(&f32_program()).unwrap(), |p| {
        // A convert to F8E4M3FN (xla PrimitiveType 20), as a framework's fp8 matmul emits.
        first(p, "multiply").shape.as_mut().unwrap().element_type = 20;
    });
    for t in [Target::Inf2, Target::Trn1] {
        let e = refused(&m, t);
        assert!(e.contains("F8E4M3FN") && e.contains("multiply"), "{e}");
    }
    prepare(&m, Target::Trn2).unwrap();
}

#[test]
fn dynamic_shapes_control_flow_and_custom_calls_are_refused() {
    let base = lower(&f32_program()).unwrap();
    let dynamic = edited(&base, |p| {
        first(p, "multiply")
            .shape
            .as_mut()
            .unwrap()
            .is_dynamic_dimension = vec![true, false];
    });
    let dim_size = edited(&base, |p| {
        first(p, "multiply").opcode = "set-dimension-size".into()
    });
    let while_loop = edited(&base, |p| first(p, "multiply").opcode = "while".into());
    let cond = edited(&base, |p| first(p, "add").opcode = "conditional".into());
    let custom = edited(&base, |p| {
        let i = first(p, "add");
        i.opcode = "custom-call".into();
        i.custom_call_target = "cublas$lt$matmul".into();
    });
    for t in ALL {
        assert!(refused(&dynamic, t).contains("dynamic dimension"));
        assert!(refused(&dim_size, t).contains("dynamic shape"));
        assert!(refused(&while_loop, t).contains("(while,"));
        assert!(refused(&cond, t).contains("control flow"));
        let e = refused(&custom, t);
        assert!(e.contains("cublas$lt$matmul"), "{e}");
    }
}

#[test]
fn the_neff_cache_refuses_before_running_the_compiler() {
    let m = lower(&program(|g| {
        let x = g.parameter("x", DType::F64, [4]).unwrap();
        vec![g.exp(x).unwrap()]
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = NeffCache::new(dir.path());
    // A compiler that does not exist: reaching it would be a different error.
    let e = cache
        .get_or_compile(
            &m,
            &CompileOptions::new(Target::Inf2),
            Some((Path::new("/nonexistent/neuronx-cc"), "neuronx-cc 2.0")),
        )
        .unwrap_err();
    assert!(matches!(e, NeuronError::Unsupported { .. }), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).map_or(0, |d| d.count()), 0);
}
