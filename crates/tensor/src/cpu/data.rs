//! Typed host storage of the CPU backend.

use crate::dtype::{f64_to_bf16, f64_to_f16};
use crate::{DType, HostTensor, Shape};
use half::{bf16, f16};
use std::fmt;
use std::ops::{Deref, DerefMut};

/// Elements below which a float conversion runs on the calling thread.
const PAR_CONVERT_MIN: usize = 1 << 16;

/// The elements of one tensor: a vector of its own, or the bytes of a [`HostTensor`] viewed in
/// place. Uploading a checkpoint's weights borrows them this way: a tensor memory-mapped from a
/// safetensors or GGUF file stays in the page cache and is never copied, so a model costs its
/// size in resident memory once, not twice (the upload used to copy every tensor).
///
/// Reading is a slice either way ([`Deref`]). Writing ([`DerefMut`], [`Store::make_mut`])
/// copies a borrowed store into a vector first (copy on write), so no kernel can write into a
/// checkpoint mapping or into a host tensor someone else holds.
pub enum Store<T: bytemuck::Pod> {
    Owned(Vec<T>),
    /// Invariant: the tensor's bytes are aligned for `T` and hold a whole number of `T`s.
    Shared(HostTensor),
}

impl<T: bytemuck::Pod> Store<T> {
    /// Borrows `t`'s bytes if they can be viewed as `T` in place, else copies them (mapped data
    /// at an offset that is not a multiple of `T`'s alignment).
    fn of_host(t: &HostTensor) -> Store<T> {
        let bytes = t.as_bytes();
        match bytemuck::try_cast_slice::<u8, T>(bytes) {
            Ok(_) => Store::Shared(t.clone()),
            Err(_) => Store::Owned(
                bytes
                    .chunks_exact(std::mem::size_of::<T>())
                    .map(bytemuck::pod_read_unaligned)
                    .collect(),
            ),
        }
    }

    pub fn as_slice(&self) -> &[T] {
        match self {
            Store::Owned(v) => v,
            Store::Shared(t) => bytemuck::cast_slice(t.as_bytes()),
        }
    }

    /// The vector, copying a borrowed store into one first.
    pub fn make_mut(&mut self) -> &mut Vec<T> {
        if let Store::Shared(t) = self {
            *self = Store::Owned(bytemuck::cast_slice(t.as_bytes()).to_vec());
        }
        match self {
            Store::Owned(v) => v,
            Store::Shared(_) => unreachable!("made owned above"),
        }
    }

    pub fn into_vec(self) -> Vec<T> {
        match self {
            Store::Owned(v) => v,
            Store::Shared(t) => bytemuck::cast_slice(t.as_bytes()).to_vec(),
        }
    }

    /// True when the elements are borrowed from a host tensor (no copy was made).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Shared(_))
    }
}

impl<T: bytemuck::Pod> Deref for Store<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: bytemuck::Pod> DerefMut for Store<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.make_mut()
    }
}

impl<T: bytemuck::Pod> Clone for Store<T> {
    /// A borrowed store clones its handle (cheap); an owned one its vector.
    fn clone(&self) -> Self {
        match self {
            Store::Owned(v) => Store::Owned(v.clone()),
            Store::Shared(t) => Store::Shared(t.clone()),
        }
    }
}

impl<T: bytemuck::Pod> From<Vec<T>> for Store<T> {
    fn from(v: Vec<T>) -> Self {
        Store::Owned(v)
    }
}

impl<T: bytemuck::Pod> From<Store<T>> for Vec<T> {
    fn from(s: Store<T>) -> Self {
        s.into_vec()
    }
}

impl<T: bytemuck::Pod + Send> rayon::iter::FromParallelIterator<T> for Store<T> {
    fn from_par_iter<I: rayon::iter::IntoParallelIterator<Item = T>>(it: I) -> Self {
        Store::Owned(Vec::from_par_iter(it))
    }
}

impl<T: bytemuck::Pod> FromIterator<T> for Store<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
        Store::Owned(it.into_iter().collect())
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for Store<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: bytemuck::Pod + fmt::Debug> fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// One tensor's elements, typed. `Bool` is stored as bytes 0/1.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuData {
    Bool(Store<u8>),
    U8(Store<u8>),
    I32(Store<i32>),
    I64(Store<i64>),
    F16(Store<f16>),
    BF16(Store<bf16>),
    F32(Store<f32>),
    F64(Store<f64>),
}

/// Applies a generic expression to the vector inside any variant, rewrapping in the same variant.
macro_rules! map_data {
    ($d:expr, $v:ident => $e:expr) => {
        match $d {
            CpuData::Bool($v) => CpuData::Bool($e),
            CpuData::U8($v) => CpuData::U8($e),
            CpuData::I32($v) => CpuData::I32($e),
            CpuData::I64($v) => CpuData::I64($e),
            CpuData::F16($v) => CpuData::F16($e),
            CpuData::BF16($v) => CpuData::BF16($e),
            CpuData::F32($v) => CpuData::F32($e),
            CpuData::F64($v) => CpuData::F64($e),
        }
    };
}

/// Evaluates a generic expression on the vector inside any variant.
macro_rules! with_data {
    ($d:expr, $v:ident => $e:expr) => {
        match $d {
            CpuData::Bool($v) => $e,
            CpuData::U8($v) => $e,
            CpuData::I32($v) => $e,
            CpuData::I64($v) => $e,
            CpuData::F16($v) => $e,
            CpuData::BF16($v) => $e,
            CpuData::F32($v) => $e,
            CpuData::F64($v) => $e,
        }
    };
}

pub(crate) use {map_data, with_data};

impl CpuData {
    pub fn dtype(&self) -> DType {
        match self {
            CpuData::Bool(_) => DType::Bool,
            CpuData::U8(_) => DType::U8,
            CpuData::I32(_) => DType::I32,
            CpuData::I64(_) => DType::I64,
            CpuData::F16(_) => DType::F16,
            CpuData::BF16(_) => DType::BF16,
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
        }
    }

    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, n: usize) -> CpuData {
        match dtype {
            DType::Bool => CpuData::Bool(Store::from(vec![0; n])),
            DType::U8 => CpuData::U8(Store::from(vec![0; n])),
            DType::I32 => CpuData::I32(Store::from(vec![0; n])),
            DType::I64 => CpuData::I64(Store::from(vec![0; n])),
            DType::F16 => CpuData::F16(Store::from(vec![f16::ZERO; n])),
            DType::BF16 => CpuData::BF16(Store::from(vec![bf16::ZERO; n])),
            DType::F32 => CpuData::F32(Store::from(vec![0.0; n])),
            DType::F64 => CpuData::F64(Store::from(vec![0.0; n])),
        }
    }

    /// The host tensor's elements, borrowed without a copy where they can be (see [`Store`]).
    pub fn from_host(t: &HostTensor) -> CpuData {
        match t.dtype() {
            // Normalised to 0/1 (any non-zero byte is true), so always a copy.
            DType::Bool => CpuData::Bool(t.as_bytes().iter().map(|&b| (b != 0) as u8).collect()),
            DType::U8 => CpuData::U8(Store::of_host(t)),
            DType::I32 => CpuData::I32(Store::of_host(t)),
            DType::I64 => CpuData::I64(Store::of_host(t)),
            DType::F16 => CpuData::F16(Store::of_host(t)),
            DType::BF16 => CpuData::BF16(Store::of_host(t)),
            DType::F32 => CpuData::F32(Store::of_host(t)),
            DType::F64 => CpuData::F64(Store::of_host(t)),
        }
    }

    /// True when the elements are borrowed from a host tensor (see [`Store`]).
    pub fn is_shared(&self) -> bool {
        with_data!(self, v => v.is_shared())
    }

    pub fn to_host(&self, shape: &Shape) -> HostTensor {
        // A borrowed store hands back the tensor it borrows (same bytes, this shape).
        let shared = with_data!(self, v => match v {
            Store::Shared(t) => Some(t),
            Store::Owned(_) => None,
        });
        if let Some(t) = shared.filter(|t| t.dtype() == self.dtype()) {
            if let Ok(t) = t.reshape(shape.clone()) {
                return t;
            }
        }
        let bytes: &[u8] = with_data!(self, v => bytemuck::cast_slice(v.as_slice()));
        HostTensor::from_bytes(self.dtype(), shape.clone(), bytes)
            .expect("CpuData length matches its shape")
    }

    /// Values as f32 (converting on the fly) — used by kernels that compute in f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            CpuData::F32(v) => Vec::from(v.clone()),
            _ => self.convert(DType::F32).into_f32(),
        }
    }

    pub fn into_f32(self) -> Vec<f32> {
        match self {
            CpuData::F32(v) => Vec::from(v),
            other => other.to_f32(),
        }
    }

    /// Integer values widened to i64 (indices); floats truncate.
    pub fn to_i64(&self) -> Vec<i64> {
        match self {
            CpuData::Bool(v) | CpuData::U8(v) => v.iter().map(|&x| x as i64).collect(),
            CpuData::I32(v) => v.iter().map(|&x| x as i64).collect(),
            CpuData::I64(v) => Vec::from(v.clone()),
            CpuData::F16(v) => v.iter().map(|&x| x.to_f32() as i64).collect(),
            CpuData::BF16(v) => v.iter().map(|&x| x.to_f32() as i64).collect(),
            CpuData::F32(v) => v.iter().map(|&x| x as i64).collect(),
            CpuData::F64(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    /// Elementwise conversion with XLA `convert` semantics: floats round to nearest even,
    /// float→int truncates toward zero (saturating; NaN→0), anything→bool is `!= 0`.
    /// The same bits as `to` (f32 ↔ i32, f64 ↔ i64; the graph builder admits nothing else).
    pub fn bitcast(self, to: DType) -> CpuData {
        match (self, to) {
            (CpuData::F32(v), DType::I32) => {
                CpuData::I32(v.iter().map(|x| x.to_bits() as i32).collect())
            }
            (CpuData::I32(v), DType::F32) => {
                CpuData::F32(v.iter().map(|&x| f32::from_bits(x as u32)).collect())
            }
            (CpuData::F64(v), DType::I64) => {
                CpuData::I64(v.iter().map(|x| x.to_bits() as i64).collect())
            }
            (CpuData::I64(v), DType::F64) => {
                CpuData::F64(v.iter().map(|&x| f64::from_bits(x as u64)).collect())
            }
            (same, to) if same.dtype() == to => same,
            (v, to) => unreachable!(
                "bitcast {} -> {to} is rejected by the graph builder",
                v.dtype()
            ),
        }
    }

    pub fn convert(&self, to: DType) -> CpuData {
        use rayon::prelude::*;
        if self.dtype() == to {
            return self.clone();
        }
        // Fast paths between the float types that models convert between constantly. Small
        // tensors (a decode step's activations) convert on the calling thread: waking rayon
        // for 576 values cost 10–20 µs per op, a third of a small bf16 model's decode step.
        macro_rules! widen {
            ($v:expr, $f:expr) => {
                if $v.len() >= PAR_CONVERT_MIN {
                    $v.par_iter().map($f).collect()
                } else {
                    $v.iter().map($f).collect()
                }
            };
        }
        match (self, to) {
            (CpuData::F32(v), DType::BF16) => {
                // The kernels crate's vectorised rounding (half's, bit for bit).
                let mut out = vec![bf16::ZERO; v.len()];
                let f = silica_kernels::vector::f32_to_bf16;
                if v.len() >= PAR_CONVERT_MIN {
                    out.par_chunks_mut(8192)
                        .zip(v.par_chunks(8192))
                        .for_each(|(o, s)| f(s, o));
                } else {
                    f(v, &mut out);
                }
                return CpuData::BF16(Store::from(out));
            }
            (CpuData::F32(v), DType::F16) => return CpuData::F16(widen!(v, |&x| f16::from_f32(x))),
            (CpuData::BF16(v), DType::F32) => return CpuData::F32(widen!(v, |&x| x.to_f32())),
            (CpuData::F16(v), DType::F32) => return CpuData::F32(widen!(v, |&x| x.to_f32())),
            (CpuData::F32(v), DType::F64) => {
                return CpuData::F64(v.iter().map(|&x| x as f64).collect())
            }
            (CpuData::F64(v), DType::F32) => {
                return CpuData::F32(v.iter().map(|&x| x as f32).collect())
            }
            _ => {}
        }
        // Generic path through f64 (exact for every source except i64 beyond 2^53, where
        // integer→integer conversions take the i64 path below instead).
        if self.dtype().is_int() || self.dtype() == DType::Bool {
            let v = self.to_i64();
            return match to {
                DType::Bool => CpuData::Bool(v.iter().map(|&x| (x != 0) as u8).collect()),
                DType::U8 => CpuData::U8(v.iter().map(|&x| x as u8).collect()),
                DType::I32 => CpuData::I32(v.iter().map(|&x| x as i32).collect()),
                DType::I64 => CpuData::I64(Store::from(v)),
                DType::F16 => CpuData::F16(v.iter().map(|&x| f64_to_f16(x as f64)).collect()),
                DType::BF16 => CpuData::BF16(v.iter().map(|&x| f64_to_bf16(x as f64)).collect()),
                DType::F32 => CpuData::F32(v.iter().map(|&x| x as f32).collect()),
                DType::F64 => CpuData::F64(v.iter().map(|&x| x as f64).collect()),
            };
        }
        let v: Vec<f64> = match self {
            CpuData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            CpuData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            CpuData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuData::F64(v) => Vec::from(v.clone()),
            _ => unreachable!("integer sources handled above"),
        };
        match to {
            DType::Bool => CpuData::Bool(v.iter().map(|&x| (x != 0.0) as u8).collect()),
            DType::U8 => CpuData::U8(v.iter().map(|&x| x as u8).collect()),
            DType::I32 => CpuData::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I64 => CpuData::I64(v.iter().map(|&x| x as i64).collect()),
            DType::F16 => CpuData::F16(v.iter().map(|&x| f64_to_f16(x)).collect()),
            DType::BF16 => CpuData::BF16(v.iter().map(|&x| f64_to_bf16(x)).collect()),
            DType::F32 => CpuData::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => CpuData::F64(Store::from(v)),
        }
    }

    /// f32 data converted back to `dt` (f64 data for F64).
    pub fn from_f32(v: Vec<f32>, dt: DType) -> CpuData {
        if dt == DType::F32 {
            // Moved, not converted: `convert` to the same dtype copies (it takes `&self`), and
            // every f32 op output came through here.
            return CpuData::F32(Store::from(v));
        }
        CpuData::F32(Store::from(v)).convert(dt)
    }
}
