//! Element types. The set mirrors what XLA HLO calls PRED, U8, S32, S64, F16, BF16, F32, F64, so every
//! dtype lowers 1:1 and every safetensors checkpoint we care about loads without a custom format.

use half::{bf16, f16};
use std::fmt;

/// The element type of a tensor.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// Boolean, stored as one byte (0 or 1); the result type of `compare`.
    Bool,
    U8,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    pub const ALL: [DType; 8] = [
        DType::Bool,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ];

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::Bool | DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::U8 | DType::I32 | DType::I64)
    }

    /// Lower-case name as used on the command line and in reports (`f32`, `bf16`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// Parses the names printed by [`DType::name`] (case-insensitive, also `float32`, `bfloat16`…).
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "bool" | "pred" => DType::Bool,
            "u8" | "uint8" => DType::U8,
            "i32" | "int32" | "s32" => DType::I32,
            "i64" | "int64" | "s64" => DType::I64,
            "f16" | "float16" | "half" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            "f32" | "float32" | "float" => DType::F32,
            "f64" | "float64" | "double" => DType::F64,
            _ => return None,
        })
    }

    pub(crate) fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::Bool => S::BOOL,
            DType::U8 => S::U8,
            DType::I32 => S::I32,
            DType::I64 => S::I64,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::F32 => S::F32,
            DType::F64 => S::F64,
        }
    }

    pub(crate) fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        use safetensors::Dtype as S;
        Some(match d {
            S::BOOL => DType::Bool,
            S::U8 => DType::U8,
            S::I32 => DType::I32,
            S::I64 => DType::I64,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F32 => DType::F32,
            S::F64 => DType::F64,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that is the storage of a [`DType`]. `Bool` is stored as `u8` and has no `Element`
/// of its own: use [`crate::HostTensor::from_bools`].
pub trait Element: bytemuck::Pod + Copy + Send + Sync + PartialOrd + fmt::Debug + 'static {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

macro_rules! element {
    ($t:ty, $d:expr, |$x:ident| $to:expr, |$v:ident| $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            #[inline]
            fn to_f64(self) -> f64 {
                let $x = self;
                $to
            }
            #[inline]
            fn from_f64($v: f64) -> Self {
                $from
            }
        }
    };
}

element!(u8, DType::U8, |x| x as f64, |v| v as u8);
element!(i32, DType::I32, |x| x as f64, |v| v as i32);
element!(i64, DType::I64, |x| x as f64, |v| v as i64);
element!(f16, DType::F16, |x| x.to_f64(), |v| f64_to_f16(v));
element!(bf16, DType::BF16, |x| x.to_f64(), |v| f64_to_bf16(v));

/// f64 → f16, rounded to nearest (ties to even). `half`'s `f16::from_f64` goes through f32 on x86
/// (F16C) and `bf16::from_f64` drops the low 32 significand bits before rounding: both misround
/// values just above or below a tie. Rounding to f32 with round-to-odd first and then to the
/// 16-bit format is exact, because f32 keeps more than p + 2 bits of either format.
pub(crate) fn f64_to_f16(v: f64) -> f16 {
    f16::from_f32(f32_round_odd(v))
}

/// f64 → bf16, rounded to nearest (ties to even); see [`f64_to_f16`].
pub(crate) fn f64_to_bf16(v: f64) -> bf16 {
    bf16::from_f32(f32_round_odd(v))
}

/// f64 → f32 truncated toward zero, with the last bit set when inexact ("round to odd").
fn f32_round_odd(v: f64) -> f32 {
    let f = v as f32;
    if !f.is_finite() || f as f64 == v {
        return f;
    }
    let trunc = if (f as f64).abs() > v.abs() {
        f32::from_bits(f.to_bits() - 1)
    } else {
        f
    };
    f32::from_bits(trunc.to_bits() | 1)
}
element!(f32, DType::F32, |x| x as f64, |v| v as f32);
element!(f64, DType::F64, |x| x, |v| v);
