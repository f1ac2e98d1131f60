//! The libnrt double (crates/nrt-double) runs stand-in NEFFs by decoding their HLO back into a
//! silica program (`hlo_exec::decode`, the inverse of lowering). That crate is a cdylib without
//! unit tests (it is exercised through its C ABI), so its decoder is compiled here, next to the
//! lowering it inverts, and checked on round trips: lower → decode → run on the CPU backend must
//! give what the original program gives, tensor-parallel programs included.

mod common;
#[allow(dead_code)]
#[path = "../../nrt-double/src/hlo_exec.rs"]
mod hlo_exec;

use common::{all_cases, tp_cases};
use silica_hlo::lower;
use silica_hlo::proto::HloModuleProto;
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{run_host, run_host_group, Backend, HostTensor};

fn same(a: &[HostTensor], b: &[HostTensor], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.dtype(), y.dtype(), "{what} out{k}");
        assert_eq!(x.dims(), y.dims(), "{what} out{k}");
        // Same primitives in the same order on the same backend: the same bits (NaN == NaN).
        assert_eq!(x.as_bytes(), y.as_bytes(), "{what} out{k}");
    }
}

#[test]
fn decoded_tensor_parallel_programs_compute_what_the_originals_do() {
    let be = CpuBackend::new();
    for case in tp_cases() {
        let m = lower(&case.program).unwrap();
        let d = hlo_exec::decode(&m.bytes).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(d.program.world(), case.inputs.len(), "{}", case.name);
        // Lowering decomposes composites; compare with the decomposed original.
        let original = case.program.decomposed().unwrap();
        let want =
            run_host_group(&be, be.compile(&original).unwrap().as_ref(), &case.inputs).unwrap();
        // The double's program has no aliases (the NEFF's I/O is positional): run it as is.
        let got =
            run_host_group(&be, be.compile(&d.program).unwrap().as_ref(), &case.inputs).unwrap();
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            same(g, w, &format!("{} rank {r}", case.name));
        }
    }
}

#[test]
fn decoded_single_rank_programs_compute_what_the_originals_do() {
    let be = CpuBackend::new();
    for case in all_cases() {
        let m = lower(&case.program).unwrap();
        let d = hlo_exec::decode(&m.bytes).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(d.program.world(), 1);
        let original = case.program.decomposed().unwrap();
        let want = run_host(&be, be.compile(&original).unwrap().as_ref(), &case.inputs).unwrap();
        let got = run_host(&be, be.compile(&d.program).unwrap().as_ref(), &case.inputs).unwrap();
        same(&got, &want, &case.name);
    }
}

/// Lowers a world-2 all-reduce and edits its instruction.
fn edited(edit: impl Fn(&mut HloModuleProto)) -> Vec<u8> {
    let mut g = silica_tensor::Graph::new();
    let x = g.parameter("x", silica_tensor::DType::F32, [3]).unwrap();
    let s = g.all_reduce(x, 2).unwrap();
    let a = g.all_gather(x, 0, 2).unwrap();
    let p = silica_tensor::Program::new("c", g, vec![("s".into(), s), ("a".into(), a)]).unwrap();
    let mut proto = lower(&p).unwrap().proto();
    edit(&mut proto);
    prost::Message::encode_to_vec(&proto)
}

fn entry_inst<'a>(
    p: &'a mut HloModuleProto,
    op: &str,
) -> &'a mut silica_hlo::proto::HloInstructionProto {
    let k = p.computations.len() - 1;
    p.computations[k]
        .instructions
        .iter_mut()
        .find(|i| i.opcode == op)
        .unwrap()
}

#[test]
fn the_decoder_rejects_collectives_it_cannot_run() {
    let err = |bytes: Vec<u8>| match hlo_exec::decode(&bytes) {
        Ok(_) => panic!("decoded"),
        Err(e) => e,
    };
    assert!(hlo_exec::decode(&edited(|_| {})).is_ok());
    // A max all-reduce: the double only runs sums.
    let e = err(edited(|p| {
        let root = p.computations[0].root_id;
        let r = p.computations[0]
            .instructions
            .iter_mut()
            .find(|i| i.id == root)
            .unwrap();
        r.opcode = "maximum".into();
    }));
    assert!(e.contains("applies `maximum`"), "{e}");
    let e = err(edited(|p| entry_inst(p, "all-reduce").channel_id = 3));
    assert!(e.contains("cross-replica"), "{e}");
    let e = err(edited(|p| {
        entry_inst(p, "all-gather").replica_groups[0].replica_ids = vec![1, 0]
    }));
    assert!(e.contains("replica groups"), "{e}");
    let e = err(edited(|p| {
        let i = entry_inst(p, "all-gather");
        i.replica_groups.push(i.replica_groups[0].clone());
    }));
    assert!(e.contains("replica groups"), "{e}");
    let e = err(edited(|p| entry_inst(p, "all-gather").dimensions.clear()));
    assert!(e.contains("gather dimension"), "{e}");
}
