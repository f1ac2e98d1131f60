//! Test programs shared by the tests of several crates, built once here so that a change to one
//! (a new op in the graph builder, a renamed alias) is made once and every backend's test sees
//! the same program: the lowering tests and the XLA CPU check (silica-hlo), the real PJRT plugin
//! (silica-pjrt); and the mutation-fuzzing loop of the file loaders' and the HTTP server's fuzz
//! tests ([`fuzz`]).

pub mod fuzz;

use silica_tensor::{DType, Graph, HostTensor, Program};

/// The shapes of [`kv_alias_program`]'s cache and update.
pub const KV_CACHE: [usize; 4] = [2, 3, 8, 4];
pub const KV_UPDATE: [usize; 4] = [1, 3, 2, 4];

/// A KV-cache-style step: writes `update` [1, 3, 2, 4] into `cache` [2, 3, 8, 4] at row `row`,
/// position `pos` (`cache.out` aliases `cache`: the donated buffer is updated in place), and
/// returns `sum`, the updated cache summed over dims 1 and 3, which reads the new contents.
pub fn kv_alias_program() -> Program {
    let mut g = Graph::new();
    let cache = g.parameter("cache", DType::F32, KV_CACHE).unwrap();
    let upd = g.parameter("update", DType::F32, KV_UPDATE).unwrap();
    let row = g.parameter("row", DType::I32, []).unwrap();
    let pos = g.parameter("pos", DType::I32, []).unwrap();
    let z = g.scalar(0.0, DType::I32);
    let new = g
        .dynamic_update_slice(cache, upd, &[row, z, pos, z])
        .unwrap();
    let sum = g.reduce_sum(new, &[1, 3]).unwrap();
    Program::new(
        "kv_alias",
        g,
        vec![("sum".into(), sum), ("cache.out".into(), new)],
    )
    .unwrap()
    .alias("cache.out", "cache")
    .unwrap()
}

/// Inputs for [`kv_alias_program`]: a cache of values that are exact in f32 and distinct enough
/// that a write at the wrong place changes the sums, an update, row 1 and position 5.
pub fn kv_alias_inputs() -> Vec<HostTensor> {
    let n: usize = KV_CACHE.iter().product();
    let cache: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.25 - 2.0).collect();
    let m: usize = KV_UPDATE.iter().product();
    let upd: Vec<f32> = (0..m).map(|i| i as f32 * 0.5).collect();
    vec![
        HostTensor::from_vec(cache, KV_CACHE).unwrap(),
        HostTensor::from_vec(upd, KV_UPDATE).unwrap(),
        HostTensor::from_vec(vec![1i32], []).unwrap(),
        HostTensor::from_vec(vec![5i32], []).unwrap(),
    ]
}
