//! [`PjrtBackend`]: silica's `Backend` over a PJRT plugin. Programs are lowered to HLO
//! (`silica_hlo::lower`) and compiled by the plugin; weights and KV caches stay on the device as
//! [`DeviceBuffer`]s; inputs an alias updates are donated, so a decode step reuses the KV-cache
//! memory instead of allocating a new cache per token.

use crate::client::{Client, DeviceBuffer, LoadedExecutable};
use crate::error::PjrtError;
use crate::plugin::Plugin;
use crate::NAME;
use silica_tensor::backend::validate_args;
use silica_tensor::{
    Arg, Backend, BackendError, Buffer, DType, Executable, HostTensor, Program, Shape, Signature,
};
use std::sync::Arc;

/// The PJRT backend: one client on the plugin's first addressable device.
pub struct PjrtBackend {
    client: Arc<Client>,
}

impl PjrtBackend {
    /// Finds the plugin (`SILICA_PJRT_PLUGIN`, then Python site-packages), loads it and creates
    /// a client. Without a GPU this is [`PjrtError::NoDevice`] ("no GPU visible: …").
    pub fn new() -> Result<Self, PjrtError> {
        PjrtBackend::with_plugin(Plugin::discover()?)
    }

    /// Loads the PJRT C-API plugin at `path` (any plugin: jax's CUDA plugin, libneuronxla's
    /// Neuron plugin, libtpu) and creates a client on its first device. Only loading jax's CUDA
    /// plugin has been verified (without a GPU: it reaches its clean "no device" error).
    pub fn from_path(path: &std::path::Path) -> Result<Self, PjrtError> {
        if !path.is_file() {
            return Err(PjrtError::PluginPathMissing {
                path: path.to_path_buf(),
            });
        }
        PjrtBackend::with_plugin(Plugin::load(path)?)
    }

    pub fn with_plugin(plugin: &'static Plugin) -> Result<Self, PjrtError> {
        Ok(PjrtBackend {
            client: Client::new(plugin)?,
        })
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }
}

fn device_buffer(b: &Buffer) -> Result<&DeviceBuffer, BackendError> {
    b.downcast_ref::<DeviceBuffer>()
        .ok_or_else(|| BackendError::InvalidArgument(format!("{b:?} is not a pjrt buffer")))
}

fn wrap(dtype: DType, shape: Shape, b: DeviceBuffer) -> Buffer {
    Buffer::new(NAME, dtype, shape, Box::new(b))
}

impl Backend for PjrtBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_description(&self) -> String {
        let dev = self
            .client
            .devices()
            .first()
            .cloned()
            .unwrap_or_else(|| "no device".into());
        let (maj, min) = self.client.plugin().api_version();
        format!(
            "{dev} via PJRT {} {} (plugin API {maj}.{min})",
            self.client.platform(),
            self.client.platform_version()
        )
    }

    fn compile(&self, program: &Program) -> Result<Arc<dyn Executable>, BackendError> {
        single_device(program)?;
        let module = silica_hlo::lower(program).map_err(|e| BackendError::Device {
            backend: NAME,
            message: format!("lowering `{}` to HLO: {e}", program.name),
        })?;
        let exe = self.client.compile_hlo(&module.bytes)?;
        let signature = module.signature;
        if exe.num_outputs() != signature.outputs.len() {
            return Err(PjrtError::Unsupported(format!(
                "program `{}` has {} outputs but the compiled executable returns {}",
                signature.name,
                signature.outputs.len(),
                exe.num_outputs()
            ))
            .into());
        }
        Ok(Arc::new(PjrtExecutable { exe, signature }))
    }

    fn upload(&self, t: &HostTensor) -> Result<Buffer, BackendError> {
        let b = self.client.upload(t)?;
        Ok(wrap(t.dtype(), t.shape().clone(), b))
    }

    fn download(&self, b: &Buffer) -> Result<HostTensor, BackendError> {
        let d = device_buffer(b)?;
        Ok(self.client.download(d, b.dtype(), b.shape())?)
    }
}

/// The client drives one device: a world-N module would need N replicas with a device
/// assignment, which this backend does not set up (its `max_world` is 1), so tensor-parallel
/// programs are refused before XLA sees them.
fn single_device(program: &Program) -> Result<(), BackendError> {
    let world = program.world();
    if world > 1 {
        return Err(BackendError::Unavailable {
            backend: NAME,
            reason: format!(
                "program `{}` is tensor-parallel over {world} ranks, but the PJRT backend runs \
                 on one device (use --tp 1, or the cpu or neuron backend)",
                program.name
            ),
        });
    }
    Ok(())
}

struct PjrtExecutable {
    exe: LoadedExecutable,
    signature: Signature,
}

impl Executable for PjrtExecutable {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn execute(&self, args: &mut [Arg<'_>]) -> Result<Vec<Buffer>, BackendError> {
        validate_args(&self.signature, NAME, args)?;
        let sig = &self.signature;
        // Donate exactly the inputs an alias updates: their memory becomes the aliased output.
        let donate: Vec<bool> = (0..args.len())
            .map(|i| sig.alias_of_input(i).is_some())
            .collect();
        let bufs = args
            .iter()
            .map(|a| device_buffer(a.buffer()))
            .collect::<Result<Vec<_>, _>>()?;
        let outs = self.exe.execute(&bufs, &donate)?;
        let mut returned = Vec::with_capacity(outs.len());
        for (o, out) in outs.into_iter().enumerate() {
            let spec = &sig.outputs[o];
            match sig.aliases.iter().find(|a| a.output == o) {
                Some(alias) => {
                    // The donated input buffer is spent; the InOut argument now holds the
                    // aliased output (dropping the old handle destroys the spent PJRT_Buffer).
                    let Arg::InOut(slot) = &mut args[alias.input] else {
                        unreachable!("validate_args requires InOut for aliased inputs")
                    };
                    **slot = wrap(spec.dtype, spec.shape.clone(), out);
                }
                None => returned.push(wrap(spec.dtype, spec.shape.clone(), out)),
            }
        }
        Ok(returned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silica_tensor::Graph;

    fn program(world: usize) -> Program {
        let mut g = Graph::new();
        let x = g.parameter("x", DType::F32, [2]).unwrap();
        let s = g.all_reduce(x, world).unwrap();
        Program::new("tp", g, vec![("s".into(), s)]).unwrap()
    }

    #[test]
    fn tensor_parallel_programs_are_refused() {
        assert!(single_device(&program(1)).is_ok());
        let e = single_device(&program(2)).unwrap_err().to_string();
        assert!(e.contains("tensor-parallel over 2 ranks"), "{e}");
        assert!(e.contains("--tp 1"), "{e}");
    }
}
