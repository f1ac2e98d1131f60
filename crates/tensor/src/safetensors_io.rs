//! safetensors files: memory-mapped zero-copy loads and atomic saves.

use crate::error::TensorError;
use crate::{DType, HostTensor, Shape};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One-byte safetensors dtypes that silica has no element type for: such tensors are read as
/// their raw bytes (`U8`, same shape), and [`SafetensorsFile::byte_dtype`] says what the bytes
/// are. Quantized checkpoints (compressed-tensors' int8 and fp8 weights) store them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ByteDType {
    /// `I8`: two's-complement integers.
    I8,
    /// `F8_E4M3`: OCP float8 e4m3fn codes.
    F8E4M3,
}

impl ByteDType {
    /// The safetensors header name.
    pub fn name(self) -> &'static str {
        match self {
            ByteDType::I8 => "I8",
            ByteDType::F8E4M3 => "F8_E4M3",
        }
    }

    fn from_safetensors(d: safetensors::Dtype) -> Option<ByteDType> {
        match d {
            safetensors::Dtype::I8 => Some(ByteDType::I8),
            safetensors::Dtype::F8_E4M3 => Some(ByteDType::F8E4M3),
            _ => None,
        }
    }

    fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            ByteDType::I8 => safetensors::Dtype::I8,
            ByteDType::F8E4M3 => safetensors::Dtype::F8_E4M3,
        }
    }
}

/// The tensors of one safetensors file, each a view into the shared memory map.
pub struct SafetensorsFile {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, String>,
    tensors: BTreeMap<String, HostTensor>,
    /// Tensors stored in a [`ByteDType`] (held as `U8` in `tensors`).
    byte_dtypes: BTreeMap<String, ByteDType>,
}

impl SafetensorsFile {
    /// Maps `path` and validates its header (offsets in range, contiguous, dtype × shape = length).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TensorError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| TensorError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; a checkpoint modified on disk while mapped is the user's
        // problem in every runtime that maps weights (transformers, llama.cpp, candle do the same).
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io)?);
        let bad = |message: String| TensorError::Safetensors {
            path: path.clone(),
            message,
        };
        let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
        let metadata = header
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        let base = map.as_ptr() as usize;
        let mut tensors = BTreeMap::new();
        let mut byte_dtypes = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = match DType::from_safetensors(view.dtype()) {
                Some(d) => d,
                None => match ByteDType::from_safetensors(view.dtype()) {
                    Some(b) => {
                        byte_dtypes.insert(name.clone(), b);
                        DType::U8
                    }
                    None => {
                        return Err(TensorError::UnsupportedDType {
                            path: path.clone(),
                            name: name.clone(),
                            dtype: format!("{:?}", view.dtype()),
                        })
                    }
                },
            };
            let data = view.data();
            let start = data.as_ptr() as usize - base;
            let t = HostTensor::from_mmap(
                dtype,
                Shape::new(view.shape().to_vec()),
                map.clone(),
                start,
                data.len(),
            )?;
            tensors.insert(name, t);
        }
        Ok(SafetensorsFile {
            path,
            metadata,
            tensors,
            byte_dtypes,
        })
    }

    /// What the bytes of tensor `name` are when the file stores it in a one-byte dtype silica
    /// reads as `U8` (see [`ByteDType`]); `None` for every other tensor (a real `U8` one too).
    pub fn byte_dtype(&self, name: &str) -> Option<ByteDType> {
        self.byte_dtypes.get(name).copied()
    }

    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn tensors(&self) -> &BTreeMap<String, HostTensor> {
        &self.tensors
    }

    pub fn into_tensors(self) -> BTreeMap<String, HostTensor> {
        self.tensors
    }
}

struct View<'a>(&'a HostTensor, Option<ByteDType>);

impl safetensors::View for View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.1 {
            Some(b) => b.to_safetensors(),
            None => self.0.dtype().to_safetensors(),
        }
    }
    fn shape(&self) -> &[usize] {
        self.0.dims()
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.0.as_bytes())
    }
    fn data_len(&self) -> usize {
        self.0.as_bytes().len()
    }
}

/// Serializes tensors (sorted by name, as safetensors requires) to bytes.
pub fn safetensors_to_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, TensorError> {
    let views: Vec<(&str, View)> = tensors
        .into_iter()
        .map(|(n, t)| (n, View(t, None)))
        .collect();
    serialize(views, metadata)
}

/// [`safetensors_to_bytes`] where a tensor may be stored in a [`ByteDType`] (its `U8` bytes
/// written under that dtype).
pub fn safetensors_to_bytes_typed<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor, Option<ByteDType>)>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, TensorError> {
    let mut views = Vec::new();
    for (n, t, b) in tensors {
        if b.is_some() && t.dtype() != DType::U8 {
            return Err(TensorError::Serialize(format!(
                "`{n}`: only U8 bytes can be stored as a one-byte dtype, not {}",
                t.dtype()
            )));
        }
        views.push((n, View(t, b)));
    }
    serialize(views, metadata)
}

fn serialize(
    views: Vec<(&str, View)>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, TensorError> {
    let meta = metadata.map(|m| m.clone().into_iter().collect());
    safetensors::serialize(views, meta).map_err(|e| TensorError::Serialize(e.to_string()))
}

/// Writes a safetensors file atomically: a temporary file in the same folder, fsync, rename.
/// A crash mid-write leaves any previous file at `path` intact.
pub fn save_safetensors<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(), TensorError> {
    let bytes = safetensors_to_bytes(tensors, metadata)?;
    write_atomic(path.as_ref(), &bytes)
}

/// Atomic file write: temp file + fsync + rename + fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TensorError> {
    use std::io::Write;
    let io = |source| TensorError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        // Leave no temporary file behind; the previous file at `path` is untouched.
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Ok(d) = File::open(dir) {
        // Persist the rename itself; not all filesystems support fsync on a directory.
        let _ = d.sync_all();
    }
    Ok(())
}
