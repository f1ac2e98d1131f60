//! [`NeuronBackend`]: silica's `Backend` on libnrt. Program → HLO (silica-hlo) → NEFF
//! (neuronx-cc, cached) → `nrt_load` on a NeuronCore; buffers are device tensors on that core.
//!
//! Weights and KV caches are uploaded once as [`Buffer`]s and every bucket's executable binds the
//! same device tensors into its tensor sets, so nothing is re-uploaded between buckets or steps.
//! An aliased output (KV cache update) is bound to the input's own device tensor, so the update
//! happens in place on the device.

use crate::compile::{
    compiler_version, default_cache_dir, find_compiler, CachedNeff, CompileOptions, NeffCache,
    Target,
};
use crate::error::NeuronError;
use crate::runtime::{DeviceTensor, Model, Runtime, TensorInfo};
use silica_tensor::backend::validate_args;
use silica_tensor::{
    Arg, Backend, BackendError, Buffer, DType, Executable, HostTensor, Program, Shape, Signature,
    TensorSpec,
};
use std::path::PathBuf;
use std::sync::Arc;

const NAME: &str = "neuron";

/// How to set up the backend. `Default` detects the target and uses NeuronCore 0.
#[derive(Clone, Debug, Default)]
pub struct NeuronOptions {
    /// Compile target; detected from the instance when `None` (see [`Target::detect`]).
    pub target: Option<Target>,
    /// The NeuronCore (index among the visible ones) that runs programs and holds buffers.
    pub core: u32,
    /// NEFF cache folder; [`default_cache_dir`] when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Extra neuronx-cc flags (after the standard ones).
    pub extra_flags: Vec<String>,
}

/// The device tensor inside a neuron [`Buffer`].
struct NeuronBuf {
    tensor: DeviceTensor,
}

/// The Neuron backend.
pub struct NeuronBackend {
    rt: &'static Runtime,
    core: i32,
    target: Target,
    visible: Option<u32>,
    options: CompileOptions,
    cache: NeffCache,
    /// `neuronx-cc` and its version line, when it is installed here.
    compiler: Option<(PathBuf, String)>,
}

impl NeuronBackend {
    /// Loads and initializes libnrt (failing fast, with where it looked, when it is missing),
    /// checks the core is visible, and finds neuronx-cc (optional: cached NEFFs need none).
    pub fn new(opts: NeuronOptions) -> Result<NeuronBackend, NeuronError> {
        let rt = Runtime::global()?;
        let visible = rt.visible_cores()?;
        if let Some(n) = visible {
            if opts.core >= n {
                return Err(NeuronError::Config(format!(
                    "NeuronCore {} requested but {n} are visible to this process \
                     (NEURON_RT_VISIBLE_CORES={})",
                    opts.core,
                    std::env::var("NEURON_RT_VISIBLE_CORES").unwrap_or_else(|_| "(unset)".into())
                )));
            }
        }
        let target = match opts.target {
            Some(t) => t,
            None => Target::detect()?,
        };
        let mut options = CompileOptions::new(target);
        options.extra_flags.extend(opts.extra_flags);
        let compiler = match find_compiler() {
            Some(p) => {
                let v = compiler_version(&p)?;
                Some((p, v))
            }
            None => None,
        };
        Ok(NeuronBackend {
            rt,
            core: opts.core as i32,
            target,
            visible,
            options,
            cache: NeffCache::new(opts.cache_dir.unwrap_or_else(default_cache_dir)),
            compiler,
        })
    }

    pub fn target(&self) -> Target {
        self.target
    }
    pub fn cache(&self) -> &NeffCache {
        &self.cache
    }
    pub fn compile_options(&self) -> &CompileOptions {
        &self.options
    }

    /// Lowers and compiles (or finds in the cache) the NEFF of `program`.
    pub fn neff(&self, program: &Program) -> Result<CachedNeff, NeuronError> {
        let hlo = silica_hlo::lower(program)?;
        self.cache.get_or_compile(
            &hlo,
            &self.options,
            self.compiler
                .as_ref()
                .map(|(p, v)| (p.as_path(), v.as_str())),
        )
    }

    /// Loads a NEFF file and binds it to `sig`.
    pub fn load_neff(&self, neff: &[u8], sig: Signature) -> Result<NeuronExecutable, NeuronError> {
        let model = self.rt.load(neff, self.core, &sig.name)?;
        let binding = Binding::new(&model, &sig)?;
        Ok(NeuronExecutable {
            rt: self.rt,
            model,
            sig,
            binding,
        })
    }
}

/// Which program input/output each NEFF tensor is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// (NEFF input name, program input index).
    pub inputs: Vec<(String, usize)>,
    /// (NEFF output name, program output index).
    pub outputs: Vec<(String, usize)>,
}

/// `s` made an HLO identifier the way silica-hlo names parameters.
fn hlo_ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The index of the spec a NEFF tensor name refers to: the exact name, the HLO identifier made
/// from it, or XLA's positional `{prefix}{N}` (neuronx-cc names XLA NEFF tensors `input0…`,
/// `output0…` by parameter number / result tuple index).
pub fn resolve_name(neff_name: &str, specs: &[TensorSpec], prefix: &str) -> Option<usize> {
    if let Some(i) = specs.iter().position(|s| s.name == neff_name) {
        return Some(i);
    }
    if let Some(i) = specs.iter().position(|s| hlo_ident(&s.name) == neff_name) {
        return Some(i);
    }
    let n: usize = neff_name.strip_prefix(prefix)?.parse().ok()?;
    (n < specs.len()).then_some(n)
}

impl Binding {
    /// Binds every NEFF tensor to a program input/output and checks their sizes agree. Program
    /// inputs the NEFF lacks are allowed (the compiler prunes unused parameters); outputs are not.
    pub fn from_infos(
        model: &str,
        inputs: &[TensorInfo],
        outputs: &[TensorInfo],
        sig: &Signature,
    ) -> Result<Binding, NeuronError> {
        let err = |message: String| NeuronError::Binding {
            model: model.to_string(),
            message,
        };
        let size = |s: &TensorSpec| s.shape.elem_count() * s.dtype.size_in_bytes();
        let mut b = Binding {
            inputs: vec![],
            outputs: vec![],
        };
        for (infos, specs, prefix, out) in [
            (inputs, &sig.inputs, "input", &mut b.inputs),
            (outputs, &sig.outputs, "output", &mut b.outputs),
        ] {
            for info in infos {
                let i = resolve_name(&info.name, specs, prefix).ok_or_else(|| {
                    err(format!(
                        "NEFF {prefix} `{}` matches no program {prefix} ({})",
                        info.name,
                        specs
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                if out.iter().any(|(_, j)| *j == i) {
                    return Err(err(format!(
                        "two NEFF {prefix}s bind program {prefix} `{}`",
                        specs[i].name
                    )));
                }
                if info.size != size(&specs[i]) {
                    return Err(NeuronError::SizeMismatch {
                        model: model.to_string(),
                        name: info.name.clone(),
                        expected: size(&specs[i]),
                        actual: info.size,
                    });
                }
                out.push((info.name.clone(), i));
            }
        }
        for (o, spec) in sig.outputs.iter().enumerate() {
            if !b.outputs.iter().any(|(_, j)| *j == o) {
                return Err(err(format!(
                    "the NEFF does not produce program output `{}`",
                    spec.name
                )));
            }
        }
        Ok(b)
    }

    fn new(model: &Model, sig: &Signature) -> Result<Binding, NeuronError> {
        Binding::from_infos(model.name(), model.inputs(), model.outputs(), sig)
    }
}

/// A program loaded on a NeuronCore.
pub struct NeuronExecutable {
    rt: &'static Runtime,
    model: Model,
    sig: Signature,
    binding: Binding,
}

impl NeuronExecutable {
    pub fn model(&self) -> &Model {
        &self.model
    }
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    fn run(&self, args: &mut [Arg<'_>]) -> Result<Vec<Buffer>, NeuronError> {
        let core = self.model.core();
        let mut tensors: Vec<&DeviceTensor> = Vec::with_capacity(args.len());
        for (spec, a) in self.sig.inputs.iter().zip(args.iter()) {
            let t = &a
                .buffer()
                .downcast_ref::<NeuronBuf>()
                .ok_or_else(|| {
                    NeuronError::Config(format!("input `{}` is not a neuron buffer", spec.name))
                })?
                .tensor;
            if t.core() != core {
                return Err(NeuronError::Config(format!(
                    "input `{}` lives on NeuronCore {} but `{}` runs on NeuronCore {core}",
                    spec.name,
                    t.core(),
                    self.sig.name
                )));
            }
            tensors.push(t);
        }
        // Fresh device tensors for returned outputs; aliased outputs write into their input.
        let mut fresh: Vec<(usize, DeviceTensor)> = Vec::new();
        for (o, spec) in self.sig.returned_outputs() {
            let bytes = spec.shape.elem_count() * spec.dtype.size_in_bytes();
            fresh.push((o, self.rt.allocate(core, bytes, &spec.name)?));
        }
        {
            let mut ins = self.rt.tensor_set()?;
            for (name, i) in &self.binding.inputs {
                ins.add(name, tensors[*i])?;
            }
            let mut outs = self.rt.tensor_set()?;
            for (name, o) in &self.binding.outputs {
                let t = match self.sig.aliases.iter().find(|a| a.output == *o) {
                    Some(a) => tensors[a.input],
                    None => {
                        &fresh
                            .iter()
                            .find(|(k, _)| k == o)
                            .expect("allocated above")
                            .1
                    }
                };
                outs.add(name, t)?;
            }
            self.model.execute(&ins, &mut outs)?;
        }
        Ok(fresh
            .into_iter()
            .map(|(o, t)| {
                let s = &self.sig.outputs[o];
                Buffer::new(
                    NAME,
                    s.dtype,
                    s.shape.clone(),
                    Box::new(NeuronBuf { tensor: t }),
                )
            })
            .collect())
    }
}

impl Executable for NeuronExecutable {
    fn signature(&self) -> &Signature {
        &self.sig
    }

    fn execute(&self, args: &mut [Arg<'_>]) -> Result<Vec<Buffer>, BackendError> {
        validate_args(&self.sig, NAME, args)?;
        Ok(self.run(args)?)
    }
}

impl Backend for NeuronBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_description(&self) -> String {
        format!(
            "AWS Neuron {} NeuronCore {} of {} visible (libnrt {}, {})",
            self.target,
            self.core,
            self.visible.map_or("?".to_string(), |n| n.to_string()),
            self.rt.api().version,
            self.rt.api().path
        )
    }

    fn compile(&self, program: &Program) -> Result<Arc<dyn Executable>, BackendError> {
        let cached = self.neff(program)?;
        let bytes = std::fs::read(&cached.path).map_err(|e| NeuronError::io(&cached.path, e))?;
        Ok(Arc::new(self.load_neff(&bytes, program.signature())?))
    }

    fn upload(&self, tensor: &HostTensor) -> Result<Buffer, BackendError> {
        let bytes = tensor.as_bytes();
        let mut t = self.rt.allocate(self.core, bytes.len(), "silica-upload")?;
        t.write(bytes, 0)?;
        Ok(Buffer::new(
            NAME,
            tensor.dtype(),
            tensor.shape().clone(),
            Box::new(NeuronBuf { tensor: t }),
        ))
    }

    fn download(&self, buffer: &Buffer) -> Result<HostTensor, BackendError> {
        let b = buffer.downcast_ref::<NeuronBuf>().ok_or_else(|| {
            BackendError::InvalidArgument(format!("{buffer:?} is not a neuron buffer"))
        })?;
        let bytes = b.tensor.to_vec()?;
        Ok(HostTensor::from_bytes(
            buffer.dtype(),
            buffer.shape().clone(),
            &bytes,
        )?)
    }

    fn zeros(&self, dtype: DType, shape: &Shape) -> Result<Buffer, BackendError> {
        self.upload(&HostTensor::zeros(dtype, shape.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Usage;

    fn spec(name: &str, dims: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: DType::F32,
            shape: Shape::new(dims.to_vec()),
        }
    }

    fn info(name: &str, usage: Usage, size: usize) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            usage,
            size,
            shape: vec![],
            raw_dtype: 0,
        }
    }

    fn sig() -> Signature {
        Signature {
            name: "p".into(),
            inputs: vec![
                spec("model.embed/w", &[4, 2]),
                spec("ids", &[3]),
                spec("unused", &[1]),
            ],
            outputs: vec![spec("logits", &[3, 4])],
            aliases: vec![],
            world: 1,
        }
    }

    #[test]
    fn names_resolve_exact_hlo_ident_and_positional() {
        let s = sig();
        assert_eq!(resolve_name("ids", &s.inputs, "input"), Some(1));
        assert_eq!(resolve_name("model.embed_w", &s.inputs, "input"), Some(0));
        assert_eq!(resolve_name("input2", &s.inputs, "input"), Some(2));
        assert_eq!(resolve_name("input3", &s.inputs, "input"), None);
        assert_eq!(resolve_name("output0", &s.outputs, "output"), Some(0));
        assert_eq!(resolve_name("inputx", &s.inputs, "input"), None);
    }

    #[test]
    fn binding_checks_sizes_coverage_and_duplicates() {
        let s = sig();
        let ok = Binding::from_infos(
            "p",
            &[
                info("input0", Usage::Input, 32),
                info("input1", Usage::Input, 12),
            ],
            &[info("output0", Usage::Output, 48)],
            &s,
        )
        .unwrap();
        assert_eq!(
            ok.inputs,
            vec![("input0".to_string(), 0), ("input1".to_string(), 1)]
        );
        let e = Binding::from_infos(
            "p",
            &[info("input0", Usage::Input, 31)],
            &[info("output0", Usage::Output, 48)],
            &s,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                NeuronError::SizeMismatch {
                    expected: 32,
                    actual: 31,
                    ..
                }
            ),
            "{e}"
        );
        let e = Binding::from_infos("p", &[], &[], &s).unwrap_err();
        assert!(
            e.to_string()
                .contains("does not produce program output `logits`"),
            "{e}"
        );
        let e = Binding::from_infos(
            "p",
            &[
                info("input1", Usage::Input, 12),
                info("ids", Usage::Input, 12),
            ],
            &[info("output0", Usage::Output, 48)],
            &s,
        )
        .unwrap_err();
        assert!(e.to_string().contains("two NEFF inputs"), "{e}");
        let e = Binding::from_infos("p", &[info("mystery", Usage::Input, 4)], &[], &s).unwrap_err();
        assert!(
            e.to_string().contains("`mystery` matches no program input"),
            "{e}"
        );
    }
}
