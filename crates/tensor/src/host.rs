//! Host tensors: a dtype, a shape and bytes that are either owned or borrowed from a memory map.
//!
//! Checkpoints are memory-mapped and their tensors are *views* into the map, so loading an 8 B model
//! costs page-table entries, not 16 GB of copies. Owned data is kept 8-byte aligned so it can be viewed
//! as any element type without copying; mapped data is viewed in place when its offset happens to be
//! aligned (the common case) and copied otherwise.

use crate::dtype::{f64_to_bf16, f64_to_f16, Element};
use crate::error::TensorError;
use crate::{DType, Shape};
use half::{bf16, f16};
use memmap2::Mmap;
use std::fmt;
use std::sync::Arc;

#[derive(Clone)]
enum Bytes {
    /// Backed by u64 words so that every dtype can be viewed in place.
    Owned { words: Arc<Vec<u64>>, len: usize },
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned { words, len } => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

/// A tensor in host memory. Cloning is cheap (the bytes are shared).
#[derive(Clone)]
pub struct HostTensor {
    dtype: DType,
    shape: Shape,
    bytes: Bytes,
}

impl HostTensor {
    /// Copies `bytes` into a new tensor; the length must match dtype × shape.
    pub fn from_bytes(
        dtype: DType,
        shape: impl Into<Shape>,
        bytes: &[u8],
    ) -> Result<Self, TensorError> {
        let shape = shape.into();
        check_len(dtype, &shape, bytes.len())?;
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Ok(HostTensor {
            dtype,
            shape,
            bytes: Bytes::Owned {
                words: Arc::new(words),
                len: bytes.len(),
            },
        })
    }

    /// A view of `len` bytes at `start` of a memory map (no copy).
    pub fn from_mmap(
        dtype: DType,
        shape: impl Into<Shape>,
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    ) -> Result<Self, TensorError> {
        let shape = shape.into();
        check_len(dtype, &shape, len)?;
        if start.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(TensorError::ByteLength {
                dtype,
                shape,
                expected: len,
                actual: map.len().saturating_sub(start),
            });
        }
        Ok(HostTensor {
            dtype,
            shape,
            bytes: Bytes::Mapped { map, start, len },
        })
    }

    /// Takes a vector of elements; errors if the shape does not hold exactly `data.len()` elements.
    pub fn from_vec<T: Element>(
        data: Vec<T>,
        shape: impl Into<Shape>,
    ) -> Result<Self, TensorError> {
        let shape = shape.into();
        let bytes: &[u8] = bytemuck::cast_slice(&data);
        Self::from_bytes(T::DTYPE, shape, bytes)
    }

    /// A boolean tensor (stored one byte per element).
    pub fn from_bools(data: &[bool], shape: impl Into<Shape>) -> Result<Self, TensorError> {
        let bytes: Vec<u8> = data.iter().map(|&b| b as u8).collect();
        Self::from_bytes(DType::Bool, shape, &bytes)
    }

    /// A scalar of any dtype from an f64 value (rounded/truncated like `as`).
    pub fn scalar(value: f64, dtype: DType) -> Self {
        Self::full(value, dtype, Shape::scalar())
    }

    /// A tensor filled with `value` converted to `dtype`.
    pub fn full(value: f64, dtype: DType, shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let n = shape.elem_count();
        let t = match dtype {
            DType::Bool => Self::from_bools(&vec![value != 0.0; n], shape),
            DType::U8 => Self::from_vec(vec![value as u8; n], shape),
            DType::I32 => Self::from_vec(vec![value as i32; n], shape),
            DType::I64 => Self::from_vec(vec![value as i64; n], shape),
            DType::F16 => Self::from_vec(vec![f64_to_f16(value); n], shape),
            DType::BF16 => Self::from_vec(vec![f64_to_bf16(value); n], shape),
            DType::F32 => Self::from_vec(vec![value as f32; n], shape),
            DType::F64 => Self::from_vec(vec![value; n], shape),
        };
        t.expect("length matches by construction")
    }

    pub fn zeros(dtype: DType, shape: impl Into<Shape>) -> Self {
        Self::full(0.0, dtype, shape)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// The raw little-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// True when the bytes live in a memory map (no copy was made).
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped { .. })
    }

    /// Views the data as `T` without copying, if the dtype matches and the bytes are aligned.
    pub fn as_slice<T: Element>(&self) -> Result<Option<&[T]>, TensorError> {
        self.check_dtype(T::DTYPE)?;
        Ok(bytemuck::try_cast_slice(self.as_bytes()).ok())
    }

    /// Copies the data out as `T` (the dtype must be `T`'s).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        self.check_dtype(T::DTYPE)?;
        let bytes = self.as_bytes();
        Ok(match bytemuck::try_cast_slice::<u8, T>(bytes) {
            Ok(s) => s.to_vec(),
            Err(_) => bytes
                .chunks_exact(std::mem::size_of::<T>())
                .map(bytemuck::pod_read_unaligned)
                .collect(),
        })
    }

    /// Every element converted to f64 (any dtype; booleans become 0/1).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        macro_rules! conv {
            ($t:ty) => {
                self.to_vec::<$t>()
                    .expect("dtype checked")
                    .into_iter()
                    .map(Element::to_f64)
                    .collect()
            };
        }
        match self.dtype {
            DType::Bool | DType::U8 => self.as_bytes().iter().map(|&b| b as f64).collect(),
            DType::I32 => conv!(i32),
            DType::I64 => conv!(i64),
            DType::F16 => conv!(f16),
            DType::BF16 => conv!(bf16),
            DType::F32 => conv!(f32),
            DType::F64 => conv!(f64),
        }
    }

    /// Every element converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        if self.dtype == DType::F32 {
            return self.to_vec::<f32>().expect("dtype checked");
        }
        self.to_f64_vec().into_iter().map(|v| v as f32).collect()
    }

    /// Converts to another dtype with the semantics of the graph's `convert` op (XLA): floats round
    /// to nearest even, float → int truncates (saturating, NaN → 0), int → int wraps like `as`,
    /// anything → bool is `!= 0`. Shares the CPU backend's implementation so the two never differ.
    pub fn convert(&self, dtype: DType) -> HostTensor {
        if dtype == self.dtype {
            return self.clone();
        }
        crate::cpu::CpuData::from_host(self)
            .convert(dtype)
            .to_host(&self.shape)
    }

    /// Rows `[start, start + count)` along dimension 0: a view of a memory map's bytes (no
    /// copy), or a copy of an owned tensor's.
    pub fn rows(&self, start: usize, count: usize) -> Result<HostTensor, TensorError> {
        let dims = self.shape.dims();
        let n = dims.first().copied().unwrap_or(0);
        // A scalar has no rows to take: the same error as an out-of-range request.
        if dims.is_empty() || start.checked_add(count).is_none_or(|end| end > n) {
            return Err(TensorError::Rows {
                start,
                end: start.saturating_add(count),
                rows: n,
            });
        }
        let row = self.as_bytes().len() / n.max(1);
        let mut shape = dims.to_vec();
        shape[0] = count;
        match &self.bytes {
            Bytes::Mapped { map, start: s0, .. } => Ok(HostTensor {
                dtype: self.dtype,
                shape: Shape::new(shape),
                bytes: Bytes::Mapped {
                    map: map.clone(),
                    start: s0 + start * row,
                    len: count * row,
                },
            }),
            Bytes::Owned { .. } => HostTensor::from_bytes(
                self.dtype,
                shape,
                &self.as_bytes()[start * row..(start + count) * row],
            ),
        }
    }

    /// Same bytes, new shape with the same element count (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<HostTensor, TensorError> {
        let to = shape.into();
        if to.elem_count() != self.elem_count() {
            return Err(TensorError::Reshape {
                from: self.shape.clone(),
                from_count: self.elem_count(),
                to_count: to.elem_count(),
                to,
            });
        }
        Ok(HostTensor {
            dtype: self.dtype,
            shape: to,
            bytes: self.bytes.clone(),
        })
    }

    fn check_dtype(&self, expected: DType) -> Result<(), TensorError> {
        let ok = self.dtype == expected || (self.dtype == DType::Bool && expected == DType::U8);
        if ok {
            Ok(())
        } else {
            Err(TensorError::DTypeMismatch {
                expected,
                actual: self.dtype,
            })
        }
    }
}

fn check_len(dtype: DType, shape: &Shape, len: usize) -> Result<(), TensorError> {
    let expected = shape.elem_count() * dtype.size_in_bytes();
    if expected != len {
        return Err(TensorError::ByteLength {
            dtype,
            shape: shape.clone(),
            expected,
            actual: len,
        });
    }
    Ok(())
}

impl fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostTensor({} {}", self.dtype, self.shape)?;
        if self.elem_count() <= 8 {
            write!(f, " {:?}", self.to_f64_vec())?;
        }
        if self.is_mapped() {
            write!(f, " mapped")?;
        }
        write!(f, ")")
    }
}

impl PartialEq for HostTensor {
    fn eq(&self, other: &Self) -> bool {
        self.dtype == other.dtype
            && self.shape == other.shape
            && self.as_bytes() == other.as_bytes()
    }
}
