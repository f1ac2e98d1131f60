//! Shared helpers for silica's criterion benches: build one-op programs on the CPU backend and
//! print the machine limits measured in the same run.

use silica_tensor::cpu::CpuBackend;
use silica_tensor::{
    Arg, Backend, Buffer, DType, Executable, Graph, HostTensor, Program, Shape, ValueId,
};
use std::sync::{Arc, Once};

/// A compiled single-purpose program with its inputs already on the backend.
pub struct Prepared {
    pub exe: Arc<dyn Executable>,
    pub inputs: Vec<Buffer>,
}

impl Prepared {
    /// Builds a program whose inputs are random tensors of the given dtypes and shapes.
    pub fn new(
        inputs: &[(DType, Vec<usize>)],
        build: impl FnOnce(&mut Graph, &[ValueId]) -> ValueId,
    ) -> Self {
        let backend = CpuBackend::new();
        let mut g = Graph::new();
        let params: Vec<ValueId> = inputs
            .iter()
            .enumerate()
            .map(|(i, (dt, s))| {
                g.parameter(&format!("in{i}"), *dt, s.clone())
                    .expect("valid parameter")
            })
            .collect();
        let out = build(&mut g, &params);
        let program = Program::new("bench", g, vec![("out".into(), out)]).expect("valid program");
        let exe = backend.compile(&program).expect("cpu compiles everything");
        let inputs = inputs
            .iter()
            .enumerate()
            .map(|(i, (dt, s))| backend.upload(&random(*dt, s, i as u64)).expect("upload"))
            .collect();
        Prepared { exe, inputs }
    }

    pub fn run(&self) -> Vec<Buffer> {
        let mut args: Vec<Arg> = self.inputs.iter().map(Arg::In).collect();
        self.exe.execute(&mut args).expect("execute")
    }
}

/// Uniform(-1, 1) values of any float dtype (deterministic per seed).
pub fn random(dt: DType, shape: &[usize], seed: u64) -> HostTensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    HostTensor::from_vec(v, Shape::new(shape.to_vec()))
        .expect("shape matches")
        .convert(dt)
}

/// Measures and prints the machine limits once per bench process.
pub fn print_limits() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let l = silica_probe::measure(true);
        let h = silica_probe::host_info();
        eprintln!(
            "machine: {} ({} threads, {}) | measured in this run: memory read {:.1} GB/s, f32 FMA peak {:.1} GFLOP/s",
            h.cpu_model, l.threads, l.simd, l.mem_read_gbps, l.fma_peak_gflops
        );
    });
}
