//! Elementwise kernels. f16/bf16 compute in f32 and round once; f64 computes in f64. Integer
//! arithmetic wraps, and integer division by zero gives -1 (all ones), as XLA defines it.

use super::data::CpuData;
use super::Store;
use crate::graph::{BinaryOp, CmpDir, UnaryOp};
use half::{bf16, f16};
use rayon::prelude::*;

const PAR_MIN: usize = 1 << 14;

fn map_inplace<T: Send + Sync + Copy>(v: &mut [T], f: impl Fn(T) -> T + Sync) {
    if v.len() >= PAR_MIN {
        v.par_chunks_mut(4096)
            .for_each(|c| c.iter_mut().for_each(|x| *x = f(*x)));
    } else {
        v.iter_mut().for_each(|x| *x = f(*x));
    }
}

fn zip_inplace<T: Send + Sync + Copy>(a: &mut [T], b: &[T], f: impl Fn(T, T) -> T + Sync) {
    if a.len() >= PAR_MIN {
        a.par_chunks_mut(4096)
            .zip(b.par_chunks(4096))
            .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(p, &q)| *p = f(*p, q)));
    } else {
        a.iter_mut().zip(b).for_each(|(p, &q)| *p = f(*p, q));
    }
}

fn f32_unary(op: UnaryOp) -> fn(f32) -> f32 {
    match op {
        UnaryOp::Neg => |x| -x,
        UnaryOp::Abs => f32::abs,
        UnaryOp::Exp => f32::exp,
        UnaryOp::Log => f32::ln,
        UnaryOp::Sqrt => f32::sqrt,
        UnaryOp::Rsqrt => |x| 1.0 / x.sqrt(),
        UnaryOp::Tanh => f32::tanh,
        UnaryOp::Logistic => |x| 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Sin => f32::sin,
        UnaryOp::Cos => f32::cos,
    }
}

fn f64_unary(op: UnaryOp) -> fn(f64) -> f64 {
    match op {
        UnaryOp::Neg => |x| -x,
        UnaryOp::Abs => f64::abs,
        UnaryOp::Exp => f64::exp,
        UnaryOp::Log => f64::ln,
        UnaryOp::Sqrt => f64::sqrt,
        UnaryOp::Rsqrt => |x| 1.0 / x.sqrt(),
        UnaryOp::Tanh => f64::tanh,
        UnaryOp::Logistic => |x| 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Sin => f64::sin,
        UnaryOp::Cos => f64::cos,
    }
}

/// Applies `op` in place (the graph builder only allows valid dtype/op pairs).
pub fn unary(op: UnaryOp, mut x: CpuData) -> CpuData {
    let f = f32_unary(op);
    match &mut x {
        CpuData::F32(v) => map_inplace(v, f),
        CpuData::F64(v) => map_inplace(v, f64_unary(op)),
        CpuData::F16(v) => map_inplace(v, |a| f16::from_f32(f(a.to_f32()))),
        CpuData::BF16(v) => map_inplace(v, |a| bf16::from_f32(f(a.to_f32()))),
        CpuData::I32(v) => map_inplace(v, |a| {
            if op == UnaryOp::Neg {
                a.wrapping_neg()
            } else {
                a.wrapping_abs()
            }
        }),
        CpuData::I64(v) => map_inplace(v, |a| {
            if op == UnaryOp::Neg {
                a.wrapping_neg()
            } else {
                a.wrapping_abs()
            }
        }),
        CpuData::U8(_) | CpuData::Bool(_) => unreachable!("rejected by the graph builder"),
    }
    x
}

/// Runs `$body` with `$f` bound to `op` as a closure over `$t`, one match arm per op, so each
/// loop is compiled for its op: a `fn` pointer called per element kept the compiler from
/// vectorising (2 ns an element for a bf16 add in a prefill profile).
macro_rules! with_float_op {
    ($op:expr, $t:ty, |$f:ident| $body:expr) => {
        match $op {
            BinaryOp::Add => {
                let $f = |a: $t, b: $t| a + b;
                $body
            }
            BinaryOp::Sub => {
                let $f = |a: $t, b: $t| a - b;
                $body
            }
            BinaryOp::Mul => {
                let $f = |a: $t, b: $t| a * b;
                $body
            }
            BinaryOp::Div => {
                let $f = |a: $t, b: $t| a / b;
                $body
            }
            // NaN-propagating, as HLO maximum/minimum are.
            BinaryOp::Max => {
                let $f = |a: $t, b: $t| {
                    if a.is_nan() || b.is_nan() {
                        <$t>::NAN
                    } else {
                        a.max(b)
                    }
                };
                $body
            }
            BinaryOp::Min => {
                let $f = |a: $t, b: $t| {
                    if a.is_nan() || b.is_nan() {
                        <$t>::NAN
                    } else {
                        a.min(b)
                    }
                };
                $body
            }
            BinaryOp::Pow => {
                let $f = |a: $t, b: $t| a.powf(b);
                $body
            }
        }
    };
}

/// Elements of a 16-bit binary op computed at a time in f32 (stack buffers).
const WIDE_CHUNK: usize = 1024;

/// `a[i] = narrow(f(widen(a[i]), widen(b[i])))` for 16-bit floats: chunks widened to f32,
/// computed, and rounded once with a slice conversion (vectorised for bf16 by the kernels
/// crate, bit for bit half's rounding).
fn zip_16<T: Send + Sync + Copy>(
    a: &mut [T],
    b: &[T],
    f: impl Fn(f32, f32) -> f32 + Sync,
    widen: impl Fn(T) -> f32 + Sync,
    narrow: impl Fn(&[f32], &mut [T]) + Sync,
) {
    let chunk = |x: &mut [T], y: &[T]| {
        let mut buf = [0f32; WIDE_CHUNK];
        for (xc, yc) in x.chunks_mut(WIDE_CHUNK).zip(y.chunks(WIDE_CHUNK)) {
            let r = &mut buf[..xc.len()];
            for ((o, &p), &q) in r.iter_mut().zip(xc.iter()).zip(yc) {
                *o = f(widen(p), widen(q));
            }
            narrow(r, xc);
        }
    };
    if a.len() >= PAR_MIN {
        a.par_chunks_mut(4096)
            .zip(b.par_chunks(4096))
            .for_each(|(x, y)| chunk(x, y));
    } else {
        chunk(a, b);
    }
}

macro_rules! int_binary {
    ($t:ty) => {
        |op: BinaryOp| -> fn($t, $t) -> $t {
            match op {
                BinaryOp::Add => |a, b| a.wrapping_add(b),
                BinaryOp::Sub => |a, b| a.wrapping_sub(b),
                BinaryOp::Mul => |a, b| a.wrapping_mul(b),
                BinaryOp::Div => |a, b| if b == 0 { !0 } else { a.wrapping_div(b) },
                BinaryOp::Max => |a, b| a.max(b),
                BinaryOp::Min => |a, b| a.min(b),
                BinaryOp::Pow => unreachable!("rejected by the graph builder"),
            }
        }
    };
}

/// `a op b` elementwise, written into `a`'s storage.
pub fn binary(op: BinaryOp, mut a: CpuData, b: &CpuData) -> CpuData {
    match (&mut a, b) {
        (CpuData::F32(x), CpuData::F32(y)) => with_float_op!(op, f32, |f| zip_inplace(x, y, f)),
        (CpuData::F64(x), CpuData::F64(y)) => with_float_op!(op, f64, |f| zip_inplace(x, y, f)),
        (CpuData::F16(x), CpuData::F16(y)) => with_float_op!(op, f32, |f| zip_16(
            x,
            y,
            f,
            |v: f16| v.to_f32(),
            |src: &[f32], dst: &mut [f16]| {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = f16::from_f32(s);
                }
            }
        )),
        (CpuData::BF16(x), CpuData::BF16(y)) => with_float_op!(op, f32, |f| zip_16(
            x,
            y,
            f,
            |v: bf16| v.to_f32(),
            silica_kernels::vector::f32_to_bf16
        )),
        (CpuData::I32(x), CpuData::I32(y)) => zip_inplace(x, y, int_binary!(i32)(op)),
        (CpuData::I64(x), CpuData::I64(y)) => zip_inplace(x, y, int_binary!(i64)(op)),
        (CpuData::U8(x), CpuData::U8(y)) => zip_inplace(x, y, int_binary!(u8)(op)),
        _ => unreachable!("operand dtypes are checked by the graph builder"),
    }
    a
}

fn cmp<T: PartialOrd + Copy + Sync>(a: &[T], b: &[T], dir: CmpDir) -> Vec<u8> {
    let f = |x: T, y: T| -> u8 {
        (match dir {
            CmpDir::Eq => x == y,
            CmpDir::Ne => x != y,
            CmpDir::Lt => x < y,
            CmpDir::Le => x <= y,
            CmpDir::Gt => x > y,
            CmpDir::Ge => x >= y,
        }) as u8
    };
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

pub fn compare(a: &CpuData, b: &CpuData, dir: CmpDir) -> CpuData {
    CpuData::Bool(match (a, b) {
        (CpuData::Bool(x), CpuData::Bool(y)) | (CpuData::U8(x), CpuData::U8(y)) => {
            Store::from(cmp(x, y, dir))
        }
        (CpuData::I32(x), CpuData::I32(y)) => Store::from(cmp(x, y, dir)),
        (CpuData::I64(x), CpuData::I64(y)) => Store::from(cmp(x, y, dir)),
        (CpuData::F16(x), CpuData::F16(y)) => Store::from(cmp(x, y, dir)),
        (CpuData::BF16(x), CpuData::BF16(y)) => Store::from(cmp(x, y, dir)),
        (CpuData::F32(x), CpuData::F32(y)) => Store::from(cmp(x, y, dir)),
        (CpuData::F64(x), CpuData::F64(y)) => Store::from(cmp(x, y, dir)),
        _ => unreachable!("operand dtypes are checked by the graph builder"),
    })
}

/// `pred ? t : f`, written into `t`'s storage.
pub fn select(pred: &CpuData, mut t: CpuData, f: &CpuData) -> CpuData {
    let CpuData::Bool(p) = pred else {
        unreachable!("predicate is bool")
    };
    fn sel<T: Copy>(p: &[u8], t: &mut [T], f: &[T]) {
        for ((x, &c), &y) in t.iter_mut().zip(p).zip(f) {
            if c == 0 {
                *x = y;
            }
        }
    }
    match (&mut t, f) {
        (CpuData::Bool(x), CpuData::Bool(y)) | (CpuData::U8(x), CpuData::U8(y)) => sel(p, x, y),
        (CpuData::I32(x), CpuData::I32(y)) => sel(p, x, y),
        (CpuData::I64(x), CpuData::I64(y)) => sel(p, x, y),
        (CpuData::F16(x), CpuData::F16(y)) => sel(p, x, y),
        (CpuData::BF16(x), CpuData::BF16(y)) => sel(p, x, y),
        (CpuData::F32(x), CpuData::F32(y)) => sel(p, x, y),
        (CpuData::F64(x), CpuData::F64(y)) => sel(p, x, y),
        _ => unreachable!("branch dtypes are checked by the graph builder"),
    }
    t
}

/// iota: the index along `dim` at every position of `dims`.
pub fn iota(dtype: crate::DType, dims: &[usize], dim: usize) -> CpuData {
    let inner: usize = dims[dim + 1..].iter().product();
    let n: usize = dims.iter().product();
    let idx: Vec<i64> = (0..n)
        .map(|i| ((i / inner.max(1)) % dims[dim]) as i64)
        .collect();
    CpuData::I64(Store::from(idx)).convert(dtype)
}
