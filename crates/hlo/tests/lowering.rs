//! Lowering tests: structure of the bytes (pure Rust), and execution of every test program on XLA
//! CPU through jax against the CPU reference backend (needs `bash scripts/check_hlo.sh` once;
//! skipped with a message otherwise, unless `SILICA_REQUIRE_HLO_CHECK=1`).

mod common;

use common::{all_cases, tp_cases, Case};
use silica_hlo::check::{checker_python, run_checker, write_case, write_group_case};
use silica_hlo::proto::*;
use silica_hlo::{lower, HloModule};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{run_host, run_host_group, Backend, DType, Graph, HostTensor, Program};
use std::collections::HashSet;

fn lowered(case: &Case) -> HloModule {
    let m = lower(&case.program).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    m.verify().unwrap_or_else(|e| panic!("{}: {e}", case.name));
    m
}

#[test]
fn every_case_lowers_to_a_well_formed_module() {
    let cases = all_cases();
    let mut names = HashSet::new();
    for case in &cases {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case {}",
            case.name
        );
        let m = lowered(case);
        // Deterministic: the same program gives the same bytes and hash.
        let again = lower(&case.program).unwrap();
        assert_eq!(m.bytes, again.bytes, "{}", case.name);
        assert_eq!(m.hash, again.hash);
        assert_eq!(m.hash.len(), 64);
        assert_eq!(m.signature, case.program.signature());
    }
}

/// Decodes a module and returns its entry computation.
fn entry(m: &HloModule) -> HloComputationProto {
    let p = m.proto();
    let e = p.computations.last().unwrap().clone();
    assert_eq!(e.id, p.entry_computation_id);
    e
}

#[test]
fn structure_of_a_small_module() {
    let mut g = Graph::new();
    let x = g.parameter("x.weight", DType::F32, [2, 3]).unwrap();
    let y = g.parameter("y", DType::F32, [3]).unwrap();
    let unused = g.parameter("unused", DType::I32, [4]).unwrap();
    let _ = unused;
    let s = g.add(x, y).unwrap(); // broadcast + add
    let r = g.reduce_sum(s, &[1]).unwrap();
    let a = g.argmax(s, 1).unwrap();
    let p = Program::new("small test!", g, vec![("r".into(), r), ("a".into(), a)]).unwrap();
    let m = lower(&p).unwrap();
    m.verify().unwrap();
    assert_eq!(m.name, "small_test_");
    let proto = m.proto();
    assert_eq!(proto.name, "small_test_");
    assert!(proto.input_output_alias.is_none());
    // Sub-computations (add, argmax comparator) come before the entry and are called by id.
    assert_eq!(proto.computations.len(), 3);
    let e = entry(&m);
    assert_eq!(proto.entry_computation_name, e.name);
    let params: Vec<_> = e
        .instructions
        .iter()
        .filter(|i| i.opcode == "parameter")
        .collect();
    assert_eq!(params.len(), 3, "unused inputs stay parameters");
    assert_eq!(
        params
            .iter()
            .map(|i| i.parameter_number)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(params[0].name, "x.weight");
    let ps = e.program_shape.as_ref().unwrap();
    assert_eq!(ps.parameter_names, ["x.weight", "y", "unused"]);
    let x_shape = &ps.parameters[0];
    assert_eq!(x_shape.element_type, PrimitiveType::F32 as i32);
    assert_eq!(x_shape.dimensions, [2, 3]);
    assert_eq!(x_shape.layout.as_ref().unwrap().minor_to_major, [1, 0]);
    let root = e.instructions.iter().find(|i| i.id == e.root_id).unwrap();
    assert_eq!(root.opcode, "tuple");
    assert_eq!(root.operand_ids.len(), 2);
    let result = ps.result.as_ref().unwrap();
    assert_eq!(result.element_type, PrimitiveType::Tuple as i32);
    assert_eq!(
        result.tuple_shapes[1].element_type,
        PrimitiveType::S32 as i32
    );
    let bcast = e
        .instructions
        .iter()
        .find(|i| i.opcode == "broadcast")
        .unwrap();
    assert_eq!(bcast.dimensions, [1]);
    let reduces: Vec<_> = e
        .instructions
        .iter()
        .filter(|i| i.opcode == "reduce")
        .collect();
    assert_eq!(reduces.len(), 2);
    assert_eq!(reduces[0].dimensions, [1]);
    assert_eq!(reduces[0].operand_ids.len(), 2);
    assert_eq!(
        reduces[1].operand_ids.len(),
        4,
        "argmax is a variadic reduce"
    );
    let add_comp = &proto.computations[0];
    assert_eq!(reduces[0].called_computation_ids, [add_comp.id]);
    assert_eq!(add_comp.program_shape.as_ref().unwrap().parameters.len(), 2);
    let cmp = &proto.computations[1];
    assert_eq!(cmp.program_shape.as_ref().unwrap().parameters.len(), 4);
    let gte = e
        .instructions
        .iter()
        .find(|i| i.opcode == "get-tuple-element")
        .unwrap();
    assert_eq!(gte.tuple_index, 1);
    // Ids are unique across the module, names too.
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for c in &proto.computations {
        assert!(ids.insert(c.id));
        for i in &c.instructions {
            assert!(ids.insert(i.id));
            assert!(names.insert(i.name.clone()), "{}", i.name);
        }
    }
}

#[test]
fn verify_catches_broken_modules() {
    let case = common::alias_case();
    let good = lowered(&case);
    let broken = |edit: &dyn Fn(&mut HloModuleProto)| {
        let mut p = good.proto();
        edit(&mut p);
        HloModule {
            bytes: prost::Message::encode_to_vec(&p),
            ..good.clone()
        }
        .verify()
        .unwrap_err()
    };
    let entry = |p: &mut HloModuleProto| p.computations.len() - 1;
    let e = broken(&|p| {
        let k = entry(p);
        p.computations[k].instructions.reverse();
    });
    assert!(e.contains("not defined before use"), "{e}");
    let e = broken(&|p| {
        let k = entry(p);
        let i = &mut p.computations[k].instructions[0];
        i.shape.as_mut().unwrap().layout = None;
    });
    assert!(e.contains("layout"), "{e}");
    let e = broken(&|p| {
        let k = entry(p);
        p.computations[k].instructions[1].id = p.computations[k].instructions[0].id;
    });
    assert!(e.contains("not unique"), "{e}");
    let e = broken(&|p| p.input_output_alias = None);
    assert!(e.contains("aliases"), "{e}");
    let e = broken(&|p| {
        let k = entry(p);
        p.computations[k].instructions[0].parameter_number = 3;
    });
    assert!(e.contains("parameter"), "{e}");
}

#[test]
fn aliases_become_input_output_alias_entries() {
    let case = common::alias_case();
    let m = lowered(&case);
    let alias = m.proto().input_output_alias.unwrap();
    assert_eq!(alias.entries.len(), 1);
    let e = &alias.entries[0];
    assert_eq!(e.output_shape_index, [1]);
    assert_eq!(e.parameter_number, 0);
    assert!(e.parameter_shape_index.is_empty());
    assert_eq!(e.kind, AliasKind::MayAlias as i32);
}

#[test]
fn literals_use_the_dtype_fields() {
    let mut g = Graph::new();
    let a = g.constant(HostTensor::from_vec(vec![half_bf16(1.5), half_bf16(-2.0)], [2]).unwrap());
    let b = g.constant(HostTensor::from_bools(&[true, false, true], [3]).unwrap());
    let c = g.scalar(7.0, DType::I64);
    let p = Program::new(
        "lits",
        g,
        vec![("a".into(), a), ("b".into(), b), ("c".into(), c)],
    )
    .unwrap();
    let m = lower(&p).unwrap();
    let e = entry(&m);
    let lits: Vec<_> = e
        .instructions
        .iter()
        .filter_map(|i| i.literal.clone())
        .collect();
    assert_eq!(lits.len(), 3);
    assert_eq!(lits[0].bf16s, [0xc0, 0x3f, 0x00, 0xc0]);
    assert_eq!(lits[1].preds, [true, false, true]);
    assert_eq!(lits[2].s64s, [7]);
    assert!(lits[2].shape.as_ref().unwrap().dimensions.is_empty());
}

fn half_bf16(x: f32) -> silica_tensor::bf16 {
    silica_tensor::bf16::from_f32(x)
}

#[test]
fn composites_are_decomposed_and_dots_keep_precision() {
    let case = common::composite_cases()
        .into_iter()
        .find(|c| c.name == "attention_bf16")
        .unwrap();
    let m = lowered(&case);
    let e = entry(&m);
    let dots: Vec<_> = e
        .instructions
        .iter()
        .filter(|i| i.opcode == "dot")
        .collect();
    assert_eq!(dots.len(), 2);
    for d in dots {
        // Attention runs in f32 internally: HIGHEST precision, f32 result.
        assert_eq!(
            d.shape.as_ref().unwrap().element_type,
            PrimitiveType::F32 as i32
        );
        assert_eq!(
            d.precision_config.as_ref().unwrap().operand_precision,
            [Precision::Highest as i32; 2]
        );
        let dn = d.dot_dimension_numbers.as_ref().unwrap();
        assert_eq!(dn.lhs_batch_dimensions, [0, 1]);
    }
}

#[test]
fn lowered_programs_match_the_cpu_backend_on_xla_cpu() {
    let require = std::env::var("SILICA_REQUIRE_HLO_CHECK").is_ok_and(|v| v == "1");
    let Some(python) = checker_python() else {
        assert!(
            !require,
            "SILICA_REQUIRE_HLO_CHECK=1 but no jax python: run `bash scripts/check_hlo.sh` \
             (or set SILICA_HLO_PYTHON)"
        );
        eprintln!(
            "skipped: XLA CPU check of lowered programs; run scripts/check_hlo.sh first \
             (or set SILICA_HLO_PYTHON to a python with the pinned jax)"
        );
        return;
    };
    // SILICA_HLO_CASES_DIR keeps the case folders (to rerun scripts/check_hlo.py on them).
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("SILICA_HLO_CASES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let be = CpuBackend::new();
    let cases = all_cases();
    for case in &cases {
        let m = lowered(case);
        let exe = be.compile(&case.program).unwrap();
        let expected = run_host(&be, exe.as_ref(), &case.inputs)
            .unwrap_or_else(|e| panic!("{}: cpu backend: {e}", case.name));
        write_case(
            &dir,
            &case.name,
            &m,
            &case.inputs,
            &expected,
            case.atol,
            case.rtol,
        )
        .unwrap();
    }
    // Tensor-parallel programs: every rank's outputs, from the CPU backend running the group.
    let groups = tp_cases();
    for case in &groups {
        let m = lower(&case.program).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        m.verify().unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let exe = be.compile(&case.program).unwrap();
        let expected = run_host_group(&be, exe.as_ref(), &case.inputs)
            .unwrap_or_else(|e| panic!("{}: cpu backend: {e}", case.name));
        write_group_case(
            &dir,
            &case.name,
            &m,
            &case.inputs,
            &expected,
            case.atol,
            case.rtol,
        )
        .unwrap();
    }
    let t = std::time::Instant::now();
    let report = run_checker(&python, &dir).unwrap();
    eprintln!("{}", report.output);
    eprintln!(
        "{} cases ({} tensor-parallel) checked on XLA CPU in {:.1} s",
        cases.len() + groups.len(),
        groups.len(),
        t.elapsed().as_secs_f64()
    );
    for case in &groups {
        assert!(
            report.output.contains(&format!("ok   {}", case.name)),
            "{} did not pass on XLA CPU",
            case.name
        );
    }
    assert!(
        report.passed,
        "XLA CPU disagrees with the CPU backend (see above)"
    );
}

#[test]
fn tensor_parallel_cases_lower_and_match_their_unsharded_programs() {
    let be = CpuBackend::new();
    let mut names = HashSet::new();
    for case in tp_cases() {
        assert!(names.insert(case.name.clone()), "duplicate {}", case.name);
        let world = case.inputs.len();
        assert!(world > 1, "{}", case.name);
        assert_eq!(case.program.world(), world, "{}", case.name);
        let m = lower(&case.program).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        m.verify().unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(m.signature.world, world);
        assert_eq!(
            lower(&case.program).unwrap().bytes,
            m.bytes,
            "{}",
            case.name
        );
        let Some(reference) = &case.reference else {
            continue;
        };
        // The sharded group computes what the unsharded program computes (sums reordered).
        let exe = be.compile(&case.program).unwrap();
        let got = run_host_group(&be, exe.as_ref(), &case.inputs).unwrap();
        let rexe = be.compile(&reference.program).unwrap();
        let want = run_host(&be, rexe.as_ref(), &reference.inputs).unwrap();
        for (r, outs) in got.iter().enumerate() {
            assert_eq!(outs.len(), want.len());
            for (k, (g, w)) in outs.iter().zip(&want).enumerate() {
                assert_eq!(g.dims(), w.dims(), "{} rank {r} out{k}", case.name);
                for (a, b) in g.to_f64_vec().iter().zip(w.to_f64_vec()) {
                    assert!(
                        (a - b).abs() <= reference.atol + reference.rtol * b.abs(),
                        "{} rank {r} out{k}: {a} vs unsharded {b}",
                        case.name
                    );
                }
            }
        }
    }
}

/// A world-4 program with a bf16 all-reduce and an f32 all-gather along axis 1.
fn collectives_program() -> Program {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::BF16, [2, 3]).unwrap();
    let y = g.parameter("y", DType::F32, [2, 5, 3]).unwrap();
    let s = g.all_reduce(x, 4).unwrap();
    let a = g.all_gather(y, 1, 4).unwrap();
    Program::new("collectives", g, vec![("s".into(), s), ("a".into(), a)]).unwrap()
}

#[test]
fn collectives_lower_to_cross_replica_instructions() {
    let p = collectives_program();
    let m = lower(&p).unwrap();
    m.verify().unwrap();
    assert_eq!(m.signature.world, 4);
    let proto = m.proto();
    let e = entry(&m);
    let find = |op: &str| {
        let v: Vec<_> = e.instructions.iter().filter(|i| i.opcode == op).collect();
        assert_eq!(v.len(), 1, "{op}");
        v[0].clone()
    };
    let every = vec![ReplicaGroup {
        replica_ids: vec![0, 1, 2, 3],
    }];
    let ar = find("all-reduce");
    assert_eq!(ar.replica_groups, every);
    assert_eq!(ar.channel_id, 0, "cross-replica: no channel id");
    assert!(!ar.use_global_device_ids);
    let shape = ar.shape.as_ref().unwrap();
    assert_eq!(shape.element_type, PrimitiveType::Bf16 as i32);
    assert_eq!(shape.dimensions, [2, 3]);
    // to_apply: the scalar bf16 add (no f32 accumulation: the CPU backend adds in bf16).
    assert_eq!(ar.called_computation_ids.len(), 1);
    let add = proto
        .computations
        .iter()
        .find(|c| c.id == ar.called_computation_ids[0])
        .unwrap();
    let ps = add.program_shape.as_ref().unwrap();
    assert_eq!(ps.parameters.len(), 2);
    for s in ps.parameters.iter().chain(ps.result.as_ref()) {
        assert_eq!(s.element_type, PrimitiveType::Bf16 as i32);
        assert!(s.dimensions.is_empty());
    }
    let root = add
        .instructions
        .iter()
        .find(|i| i.id == add.root_id)
        .unwrap();
    assert_eq!(root.opcode, "add");
    let ag = find("all-gather");
    assert_eq!(ag.replica_groups, every);
    assert_eq!(ag.dimensions, [1]);
    assert_eq!(ag.channel_id, 0);
    assert!(ag.called_computation_ids.is_empty());
    assert_eq!(ag.shape.as_ref().unwrap().dimensions, [2, 20, 3]);
    let operand = e
        .instructions
        .iter()
        .find(|i| i.id == ag.operand_ids[0])
        .unwrap();
    assert_eq!(operand.opcode, "parameter");
    assert_eq!(operand.parameter_number, 1);
}

#[test]
fn single_rank_collectives_are_identities() {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [2, 3]).unwrap();
    let s = g.all_reduce(x, 1).unwrap();
    let a = g.all_gather(s, 0, 1).unwrap();
    let p = Program::new("solo", g, vec![("a".into(), a)]).unwrap();
    assert_eq!(p.world(), 1);
    let m = lower(&p).unwrap();
    m.verify().unwrap();
    let e = entry(&m);
    assert!(e
        .instructions
        .iter()
        .all(|i| i.opcode != "all-reduce" && i.opcode != "all-gather"));
}

#[test]
fn verify_catches_broken_collectives() {
    let good = lower(&collectives_program()).unwrap();
    let broken = |edit: &dyn Fn(&mut HloModuleProto)| {
        let mut p = good.proto();
        edit(&mut p);
        HloModule {
            bytes: prost::Message::encode_to_vec(&p),
            ..good.clone()
        }
        .verify()
        .unwrap_err()
    };
    /// Edits the entry's (only) instruction with opcode `op`.
    fn with(
        op: &'static str,
        edit: impl Fn(&mut HloInstructionProto),
    ) -> impl Fn(&mut HloModuleProto) {
        move |p| {
            let k = p.computations.len() - 1;
            let i = p.computations[k]
                .instructions
                .iter_mut()
                .find(|i| i.opcode == op)
                .unwrap();
            edit(i)
        }
    }
    let e = broken(&with("all-reduce", |i| i.channel_id = 1));
    assert!(e.contains("cross-replica"), "{e}");
    let e = broken(&with("all-gather", |i| i.use_global_device_ids = true));
    assert!(e.contains("cross-replica"), "{e}");
    let e = broken(&with("all-reduce", |i| i.replica_groups.clear()));
    assert!(e.contains("one replica group"), "{e}");
    let e = broken(&with("all-reduce", |i| {
        i.replica_groups[0].replica_ids = vec![1, 0, 2, 3]
    }));
    assert!(e.contains("every rank"), "{e}");
    // A group of 2 in a module whose other collective spans 4.
    let e = broken(&with("all-gather", |i| {
        i.replica_groups[0].replica_ids = vec![0, 1]
    }));
    assert!(e.contains("group of"), "{e}");
    let e = broken(&with("all-gather", |i| i.dimensions = vec![0]));
    assert!(e.contains("expected"), "{e}");
    let e = broken(&with("all-gather", |i| i.dimensions = vec![3]));
    assert!(e.contains("out of range"), "{e}");
    let e = broken(&with("all-reduce", |i| {
        i.shape.as_mut().unwrap().dimensions = vec![3, 2]
    }));
    assert!(e.contains("shape"), "{e}");
    let e = broken(&with("all-reduce", |i| i.called_computation_ids.clear()));
    assert!(e.contains("one computation"), "{e}");
    // to_apply must add: make the called computation's root a multiply.
    let e = broken(&|p| {
        let root = p.computations[0].root_id;
        let r = p.computations[0]
            .instructions
            .iter_mut()
            .find(|i| i.id == root)
            .unwrap();
        r.opcode = "multiply".into();
    });
    assert!(e.contains("add(lhs, rhs)"), "{e}");
    // The signature's world must be the module's.
    let mut sig = good.signature.clone();
    sig.world = 2;
    let e = HloModule {
        signature: sig,
        ..good.clone()
    }
    .verify()
    .unwrap_err();
    assert!(e.contains("4 ranks"), "{e}");
}

#[test]
fn group_cases_need_one_input_list_per_rank() {
    let m = lower(&collectives_program()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let x = HostTensor::zeros(DType::BF16, [2, 3]);
    let y = HostTensor::zeros(DType::F32, [2, 5, 3]);
    let e = write_group_case(
        dir.path(),
        "short",
        &m,
        &vec![vec![x.clone(), y.clone()]; 2],
        &vec![vec![]; 2],
        0.0,
        0.0,
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("4 ranks"), "{e}");
    // A world-4 case writes per-rank files and says its world.
    let folder = write_group_case(
        dir.path(),
        "four",
        &m,
        &vec![vec![x.clone(), y.clone()]; 4],
        &vec![vec![x, y]; 4],
        0.0,
        0.0,
    )
    .unwrap();
    for r in 0..4 {
        assert!(folder.join(format!("inputs.rank{r}.safetensors")).exists());
        assert!(folder
            .join(format!("expected.rank{r}.safetensors"))
            .exists());
    }
    assert!(!folder.join("inputs.safetensors").exists());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("case.json")).unwrap()).unwrap();
    assert_eq!(meta["world"], 4);
}
