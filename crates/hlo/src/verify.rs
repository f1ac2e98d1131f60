//! Structural checks of a serialized module, decoded back with prost: what XLA's proto importer
//! and verifier rely on, checked without XLA.

use crate::lower::array_shape;
use crate::proto::*;
use crate::HloModule;
use std::collections::{HashMap, HashSet};

fn is_row_major_array(s: &ShapeProto) -> bool {
    s.element_type != PrimitiveType::Tuple as i32
        && s.tuple_shapes.is_empty()
        && s.dimensions.iter().all(|&d| d >= 0)
        && s.layout.as_ref().is_some_and(|l| {
            l.minor_to_major == (0..s.dimensions.len() as i64).rev().collect::<Vec<_>>()
        })
}

fn valid_shape(s: &ShapeProto) -> bool {
    if s.element_type == PrimitiveType::Tuple as i32 {
        s.dimensions.is_empty() && s.layout.is_none() && s.tuple_shapes.iter().all(valid_shape)
    } else {
        is_row_major_array(s)
    }
}

impl HloModule {
    /// Decodes the bytes and checks their structure: unique ids and names, operands defined
    /// before use, parameters numbered 0…n-1 in order, callees before callers, row-major layouts
    /// on every array shape, elementwise operand shapes, collectives (cross-replica form, one
    /// replica group of every rank, a scalar `add` to apply, gathered shapes; one group size in
    /// the module, the signature's `world`), and that the entry's program shape and aliases
    /// match the signature. Returns a description of the first problem found.
    pub fn verify(&self) -> Result<(), String> {
        let m = <HloModuleProto as prost::Message>::decode(self.bytes.as_slice())
            .map_err(|e| format!("cannot decode: {e}"))?;
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        let mut comps: HashMap<i64, &HloComputationProto> = HashMap::new();
        // The group size the module's collectives name (all must agree).
        let mut world: Option<(i64, String)> = None;
        let last = m.computations.last().ok_or("no computations")?;
        if last.id != m.entry_computation_id || last.name != m.entry_computation_name {
            return Err("the entry computation must be the last one".into());
        }
        for c in &m.computations {
            if !ids.insert(c.id) || !names.insert(c.name.clone()) {
                return Err(format!("computation {} reuses an id or name", c.name));
            }
            let mut shapes: HashMap<i64, &ShapeProto> = HashMap::new();
            let mut params = Vec::new();
            for inst in &c.instructions {
                let what = format!("{}/{}", c.name, inst.name);
                if !ids.insert(inst.id) {
                    return Err(format!("{what}: id {} is not unique", inst.id));
                }
                if !names.insert(inst.name.clone()) {
                    return Err(format!("{what}: name is not unique"));
                }
                let shape = inst.shape.as_ref().ok_or(format!("{what}: no shape"))?;
                if !valid_shape(shape) {
                    return Err(format!("{what}: shape without a row-major layout"));
                }
                for o in &inst.operand_ids {
                    if !shapes.contains_key(o) {
                        return Err(format!("{what}: operand {o} is not defined before use"));
                    }
                }
                for k in &inst.called_computation_ids {
                    if !comps.contains_key(k) {
                        return Err(format!("{what}: calls computation {k} not defined before"));
                    }
                }
                let operand = |k: usize| shapes[&inst.operand_ids[k]];
                match inst.opcode.as_str() {
                    "parameter" => params.push((inst.parameter_number, shape.clone())),
                    "add" | "subtract" | "multiply" | "divide" | "maximum" | "minimum"
                    | "power" | "and" | "or" | "negate" | "abs" | "exponential" | "log"
                    | "sqrt" | "rsqrt" | "tanh" | "logistic" | "sine" | "cosine" => {
                        for k in 0..inst.operand_ids.len() {
                            if operand(k) != shape {
                                return Err(format!("{what}: operand {k} shape differs"));
                            }
                        }
                    }
                    "compare" | "convert" | "bitcast-convert" | "select" => {
                        for k in 0..inst.operand_ids.len() {
                            if operand(k).dimensions != shape.dimensions {
                                return Err(format!("{what}: operand {k} dims differ"));
                            }
                        }
                        if inst.opcode == "compare"
                            && (shape.element_type != PrimitiveType::Pred as i32
                                || inst.comparison_direction.is_empty())
                        {
                            return Err(format!("{what}: compare must give PRED with a direction"));
                        }
                    }
                    "reshape" => {
                        let n = |s: &ShapeProto| s.dimensions.iter().product::<i64>();
                        if n(operand(0)) != n(shape) {
                            return Err(format!("{what}: reshape changes the element count"));
                        }
                    }
                    "constant" => {
                        let lit = inst.literal.as_ref().ok_or(format!("{what}: no literal"))?;
                        if lit.shape.as_ref() != Some(shape) {
                            return Err(format!("{what}: literal shape differs"));
                        }
                    }
                    "replica-id"
                        if !inst.operand_ids.is_empty()
                            || shape.element_type != PrimitiveType::U32 as i32
                            || !shape.dimensions.is_empty() =>
                    {
                        return Err(format!("{what}: replica-id is a u32 scalar of no operand"));
                    }
                    "all-reduce" | "all-gather" => {
                        let n = collective_group(inst).map_err(|e| format!("{what}: {e}"))?;
                        match &world {
                            Some((w, other)) if *w != n => {
                                return Err(format!(
                                    "{what}: a group of {n} ranks, but {other} has {w}"
                                ))
                            }
                            _ => world = Some((n, what.clone())),
                        }
                        if inst.operand_ids.len() != 1 {
                            return Err(format!("{what}: takes one operand"));
                        }
                        let x = operand(0);
                        if inst.opcode == "all-reduce" {
                            if x != shape {
                                return Err(format!("{what}: result shape differs from operand"));
                            }
                            let [k] = inst.called_computation_ids[..] else {
                                return Err(format!("{what}: needs one computation to apply"));
                            };
                            check_scalar_add(comps[&k], x.element_type)
                                .map_err(|e| format!("{what}: to_apply {e}"))?;
                        } else {
                            let [axis] = inst.dimensions[..] else {
                                return Err(format!("{what}: needs one gather dimension"));
                            };
                            if axis < 0 || axis as usize >= x.dimensions.len() {
                                return Err(format!(
                                    "{what}: gather dimension {axis} out of range"
                                ));
                            }
                            let mut want = x.dimensions.clone();
                            want[axis as usize] = want[axis as usize].saturating_mul(n);
                            if shape.element_type != x.element_type || shape.dimensions != want {
                                return Err(format!(
                                    "{what}: gathers {:?} into {:?}, expected {want:?}",
                                    x.dimensions, shape.dimensions
                                ));
                            }
                        }
                    }
                    _ => {}
                }
                shapes.insert(inst.id, shape);
            }
            for (k, (n, _)) in params.iter().enumerate() {
                if *n != k as i64 {
                    return Err(format!("{}: parameter {k} has number {n}", c.name));
                }
            }
            let root = shapes.get(&c.root_id).ok_or(format!(
                "{}: root {} is not an instruction",
                c.name, c.root_id
            ))?;
            let ps = c.program_shape.as_ref().ok_or("no program shape")?;
            if ps.result.as_ref() != Some(*root)
                || ps.parameters != params.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>()
            {
                return Err(format!("{}: program shape does not match", c.name));
            }
            comps.insert(c.id, c);
        }
        let world = world.map_or(1, |(w, _)| w);
        if world != self.signature.world as i64 {
            return Err(format!(
                "the module's collectives run on {world} ranks, the signature on {}",
                self.signature.world
            ));
        }
        // The entry against the signature.
        let ps = m
            .host_program_shape
            .as_ref()
            .ok_or("no host program shape")?;
        if Some(ps) != last.program_shape.as_ref() {
            return Err("host program shape differs from the entry's".into());
        }
        let sig = &self.signature;
        let want: Vec<ShapeProto> = sig
            .inputs
            .iter()
            .map(|s| array_shape(s.dtype, s.shape.dims()))
            .collect();
        if ps.parameters != want {
            return Err("entry parameters do not match the signature's inputs".into());
        }
        let result = ps.result.as_ref().ok_or("no result shape")?;
        let outs: Vec<ShapeProto> = sig
            .outputs
            .iter()
            .map(|s| array_shape(s.dtype, s.shape.dims()))
            .collect();
        if result.element_type != PrimitiveType::Tuple as i32 || result.tuple_shapes != outs {
            return Err("entry result is not the tuple of the signature's outputs".into());
        }
        let aliases: Vec<(i64, i64)> = m
            .input_output_alias
            .iter()
            .flat_map(|a| &a.entries)
            .map(|e| {
                (
                    e.output_shape_index.first().copied().unwrap_or(-1),
                    e.parameter_number,
                )
            })
            .collect();
        let want: Vec<(i64, i64)> = sig
            .aliases
            .iter()
            .map(|a| (a.output as i64, a.input as i64))
            .collect();
        if aliases != want {
            return Err(format!("aliases {aliases:?} differ from {want:?}"));
        }
        Ok(())
    }
}

/// The group size of a cross-replica collective: exactly one replica group listing every rank
/// `0..n` in order, no channel id, no global device ids (see the lowering's module docs).
fn collective_group(inst: &HloInstructionProto) -> Result<i64, String> {
    if inst.channel_id > 0 || inst.use_global_device_ids {
        return Err("not in cross-replica form (has a channel id or global device ids)".into());
    }
    let [group] = &inst.replica_groups[..] else {
        return Err(format!(
            "needs one replica group, has {}",
            inst.replica_groups.len()
        ));
    };
    let n = group.replica_ids.len() as i64;
    if n < 2 || group.replica_ids != (0..n).collect::<Vec<_>>() {
        return Err(format!(
            "replica group {:?} is not every rank 0..n of a group of at least 2",
            group.replica_ids
        ));
    }
    Ok(n)
}

/// Checks that `c` computes `lhs + rhs` on two scalars of `element_type`.
fn check_scalar_add(c: &HloComputationProto, element_type: i32) -> Result<(), String> {
    let scalar = ShapeProto {
        element_type,
        dimensions: vec![],
        tuple_shapes: vec![],
        layout: Some(LayoutProto {
            minor_to_major: vec![],
        }),
        is_dynamic_dimension: vec![],
    };
    let ps = c.program_shape.as_ref().ok_or("has no program shape")?;
    if ps.parameters != [scalar.clone(), scalar.clone()] || ps.result.as_ref() != Some(&scalar) {
        return Err(format!(
            "`{}` is not a function of two scalars of the operand's type",
            c.name
        ));
    }
    let root = c.instructions.iter().find(|i| i.id == c.root_id);
    let params: Vec<i64> = [0, 1]
        .iter()
        .filter_map(|&n| {
            c.instructions
                .iter()
                .find(|i| i.opcode == "parameter" && i.parameter_number == n)
                .map(|i| i.id)
        })
        .collect();
    match root {
        Some(r) if r.opcode == "add" && r.operand_ids == params => Ok(()),
        _ => Err(format!("`{}` is not `add(lhs, rhs)`", c.name)),
    }
}
