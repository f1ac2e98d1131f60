//! What NeuronCores can run, checked on the lowered HLO before `neuronx-cc` sees it: a module
//! the hardware cannot execute is refused here, in a second, with the instruction named —
//! not after a long compile with a compiler error, or at load.
//!
//! Rules (NeuronCore-v2 is Inf2 and Trn1; NeuronCore-v3 is Trn2):
//! - **f64** and **complex** element types: no NeuronCore computes them → refused.
//! - **64-bit integers** on NeuronCore-v2: inside the module they are rewritten to i32 (silica's
//!   integers are positions, token ids and indices, far below 2³¹; a constant that does not fit
//!   is refused); an entry input or output of i64 is refused, since the caller binds its bytes.
//! - **fp8** types (F8E4M3FN, F8E5M2, …) on NeuronCore-v2 → refused (silica's `--quantize fp8`
//!   lowers e4m3 as bytes plus a lookup table, which every target runs).
//! - **dynamic shapes** (a dynamic dimension, `get-dimension-size` / `set-dimension-size`),
//!   **control flow** (`while`, `conditional`) and **custom calls** → refused: silica's
//!   programs are static, straight-line graphs, and a custom call's target is unknown to
//!   neuronx-cc unless it is one of its own kernels.
//!
//! The pass returns the module unchanged (same bytes, same hash, so NEFF cache keys stay put)
//! unless it rewrote something.

use crate::compile::Target;
use crate::error::NeuronError;
use prost::Message;
use silica_hlo::proto::{
    HloComputationProto, HloInstructionProto, HloModuleProto, PrimitiveType, ShapeProto,
};
use silica_hlo::HloModule;
use std::borrow::Cow;

/// XLA `PrimitiveType` numbers silica's proto subset does not name (xla_data.proto).
const C64: i32 = 15;
const C128: i32 = 18;
const FP8_TYPES: [(i32, &str); 9] = [
    (19, "F8E5M2"),
    (20, "F8E4M3FN"),
    (23, "F8E4M3B11FNUZ"),
    (24, "F8E5M2FNUZ"),
    (25, "F8E4M3FNUZ"),
    (28, "F8E4M3"),
    (29, "F8E3M4"),
    (32, "F4E2M1FN"),
    (33, "F8E8M0FNU"),
];

/// Whether the target's NeuronCores are v2 (Inf2, Trn1): no 64-bit integers, no fp8 types.
fn is_v2(target: Target) -> bool {
    matches!(target, Target::Inf2 | Target::Trn1)
}

/// Checks (and where allowed rewrites) `hlo` for `target`; see the module docs for the rules.
pub fn prepare(hlo: &HloModule, target: Target) -> Result<Cow<'_, HloModule>, NeuronError> {
    let mut m = HloModuleProto::decode(hlo.bytes.as_slice()).map_err(|e| {
        NeuronError::Config(format!("`{}`: not a valid HloModuleProto: {e}", hlo.name))
    })?;
    let refuse =
        |c: &HloComputationProto, i: &HloInstructionProto, what: String| NeuronError::Unsupported {
            program: hlo.name.clone(),
            target: target.to_string(),
            detail: format!(
                "instruction `{}` ({}, in `{}`) has {what}",
                i.name, i.opcode, c.name
            ),
        };
    let entry_id = m.entry_computation_id;
    let mut any_s64 = false;
    for c in &m.computations {
        for i in &c.instructions {
            match i.opcode.as_str() {
                "while" | "conditional" => {
                    return Err(refuse(
                        c,
                        i,
                        "control flow; silica's programs are straight-line (unroll it)".into(),
                    ))
                }
                "custom-call" => {
                    return Err(refuse(
                        c,
                        i,
                        format!(
                            "a custom call to `{}`, which neuronx-cc does not know",
                            i.custom_call_target
                        ),
                    ))
                }
                "get-dimension-size" | "set-dimension-size" => {
                    return Err(refuse(c, i, "a dynamic shape".into()))
                }
                _ => {}
            }
            let Some(shape) = &i.shape else { continue };
            if let Some(what) = element_problem(shape, target) {
                return Err(refuse(c, i, what));
            }
            if has_dynamic_dimension(shape) {
                return Err(refuse(
                    c,
                    i,
                    format!("a dynamic dimension in shape {:?}", shape.dimensions),
                ));
            }
            let s64 = has_element(shape, PrimitiveType::S64 as i32);
            any_s64 |= s64;
            if s64 && is_v2(target) && c.id == entry_id {
                if i.opcode == "parameter" {
                    return Err(refuse(
                        c,
                        i,
                        format!(
                            "input {} is i64; NeuronCore-v2 has no 64-bit integers (pass it as i32)",
                            i.parameter_number
                        ),
                    ));
                }
                if i.id == c.root_id {
                    return Err(refuse(
                        c,
                        i,
                        "an i64 output; NeuronCore-v2 has no 64-bit integers (return i32)".into(),
                    ));
                }
            }
            if s64 && is_v2(target) && i.opcode == "constant" {
                let vals = i.literal.as_ref().map_or(&[][..], |l| l.s64s.as_slice());
                if let Some(v) = vals.iter().find(|&&v| i32::try_from(v).is_err()) {
                    return Err(refuse(
                        c,
                        i,
                        format!("the i64 constant {v}, which does not fit the i32 NeuronCore-v2 computes in"),
                    ));
                }
            }
        }
    }
    if !is_v2(target) || !any_s64 {
        return Ok(Cow::Borrowed(hlo));
    }
    // Every i64 inside the module becomes i32 (checked above to be safe).
    for c in &mut m.computations {
        if let Some(ps) = &mut c.program_shape {
            ps.parameters.iter_mut().for_each(to_s32);
            if let Some(r) = &mut ps.result {
                to_s32(r);
            }
        }
        for i in &mut c.instructions {
            if let Some(s) = &mut i.shape {
                to_s32(s);
            }
            if let Some(l) = &mut i.literal {
                if let Some(s) = &mut l.shape {
                    to_s32(s);
                }
                if !l.s64s.is_empty() {
                    l.s32s = l.s64s.iter().map(|&v| v as i32).collect();
                    l.s64s.clear();
                }
            }
        }
    }
    if let Some(ps) = &mut m.host_program_shape {
        ps.parameters.iter_mut().for_each(to_s32);
        if let Some(r) = &mut ps.result {
            to_s32(r);
        }
    }
    Ok(Cow::Owned(hlo.with_bytes(m.encode_to_vec())))
}

/// An element type no NeuronCore of `target` computes, described.
fn element_problem(s: &ShapeProto, target: Target) -> Option<String> {
    if s.element_type == PrimitiveType::Tuple as i32 {
        return s
            .tuple_shapes
            .iter()
            .find_map(|t| element_problem(t, target));
    }
    let t = s.element_type;
    if t == PrimitiveType::F64 as i32 {
        return Some("f64, which no NeuronCore computes (use --dtype f32)".into());
    }
    if t == C64 || t == C128 {
        return Some("a complex type, which no NeuronCore computes".into());
    }
    if is_v2(target) {
        if let Some((_, name)) = FP8_TYPES.iter().find(|(code, _)| *code == t) {
            return Some(format!(
                "{name}, an fp8 type NeuronCore-v2 (inf2, trn1) does not compute in (trn2 \
                 does; silica's --quantize fp8 stores e4m3 as bytes and runs everywhere)"
            ));
        }
    }
    None
}

fn has_dynamic_dimension(s: &ShapeProto) -> bool {
    s.is_dynamic_dimension.iter().any(|&d| d) || s.tuple_shapes.iter().any(has_dynamic_dimension)
}

fn has_element(s: &ShapeProto, t: i32) -> bool {
    s.element_type == t || s.tuple_shapes.iter().any(|x| has_element(x, t))
}

fn to_s32(s: &mut ShapeProto) {
    if s.element_type == PrimitiveType::S64 as i32 {
        s.element_type = PrimitiveType::S32 as i32;
    }
    s.tuple_shapes.iter_mut().for_each(to_s32);
}
