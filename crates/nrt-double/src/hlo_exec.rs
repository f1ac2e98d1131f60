//! Turns the HLO module inside a stand-in NEFF back into a silica [`Program`] so the double can
//! really compute (on the CPU reference backend) what a NEFF compiled from it would compute.
//!
//! This is the inverse of `silica_hlo::lower` for exactly the instruction forms that lowering
//! emits; anything else is reported as unsupported (the load fails with `NRT_INVALID`).

use silica_hlo::proto::{HloComputationProto, HloInstructionProto, HloModuleProto, PrimitiveType};
use silica_tensor::graph::DotDims;
use silica_tensor::{BinaryOp, CmpDir, DType, Graph, HostTensor, Program, UnaryOp, ValueId};
use std::collections::HashMap;

/// Name, dtype and dims of one NEFF input or output.
#[derive(Clone, Debug)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<usize>,
}

impl IoSpec {
    pub fn bytes(&self) -> usize {
        self.dims.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// A decoded stand-in NEFF: the program to run and its I/O in NEFF naming (`input{i}`,
/// `output{i}`, the names XLA-compiled NEFFs use).
pub struct Decoded {
    pub program: Program,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

enum Val {
    Array(ValueId),
    /// The (value, index) tuple of an argmax reduce along `axis` of `values`.
    ArgMax {
        values: ValueId,
        axis: usize,
    },
    Tuple(Vec<ValueId>),
}

fn dtype_of(t: i32) -> Result<DType, String> {
    Ok(match PrimitiveType::try_from(t) {
        Ok(PrimitiveType::Pred) => DType::Bool,
        Ok(PrimitiveType::U8) => DType::U8,
        Ok(PrimitiveType::S32) => DType::I32,
        Ok(PrimitiveType::S64) => DType::I64,
        Ok(PrimitiveType::F16) => DType::F16,
        Ok(PrimitiveType::Bf16) => DType::BF16,
        Ok(PrimitiveType::F32) => DType::F32,
        Ok(PrimitiveType::F64) => DType::F64,
        _ => return Err(format!("element type {t} is not supported")),
    })
}

fn array_of(i: &HloInstructionProto) -> Result<(DType, Vec<usize>), String> {
    let s = i
        .shape
        .as_ref()
        .ok_or_else(|| format!("instruction {} has no shape", i.name))?;
    Ok((
        dtype_of(s.element_type)?,
        s.dimensions.iter().map(|&d| d as usize).collect(),
    ))
}

fn us(v: &[i64]) -> Vec<usize> {
    v.iter().map(|&d| d as usize).collect()
}

fn literal(i: &HloInstructionProto) -> Result<HostTensor, String> {
    let (dt, dims) = array_of(i)?;
    let l = i
        .literal
        .as_ref()
        .ok_or_else(|| format!("constant {} has no literal", i.name))?;
    let bytes: Vec<u8> = match dt {
        DType::Bool => l.preds.iter().map(|&b| b as u8).collect(),
        DType::U8 => l.u8s.clone(),
        DType::I32 => l.s32s.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => l.s64s.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => l.f16s.clone(),
        DType::BF16 => l.bf16s.clone(),
        DType::F32 => l.f32s.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => l.f64s.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    HostTensor::from_bytes(dt, dims, &bytes).map_err(|e| format!("constant {}: {e}", i.name))
}

/// The root opcode of a scalar reducer computation (`add`, `maximum`, `tuple` for argmax).
fn reducer_root(m: &HloModuleProto, id: i64) -> Result<&str, String> {
    let c = m
        .computations
        .iter()
        .find(|c| c.id == id)
        .ok_or_else(|| format!("called computation {id} not in module"))?;
    c.instructions
        .iter()
        .find(|i| i.id == c.root_id)
        .map(|i| i.opcode.as_str())
        .ok_or_else(|| format!("computation {} has no root", c.name))
}

/// The group size of a collective in the cross-replica form silica lowers: one replica group
/// holding every rank `0..n` in order, no channel id, no global device ids.
fn replica_world(i: &HloInstructionProto) -> Result<usize, String> {
    if i.channel_id > 0 || i.use_global_device_ids {
        return Err(format!(
            "{} {}: only cross-replica collectives (no channel_id, no use_global_device_ids) \
             are supported",
            i.opcode, i.name
        ));
    }
    match &i.replica_groups[..] {
        [g] if !g.replica_ids.is_empty()
            && g.replica_ids == (0..g.replica_ids.len() as i64).collect::<Vec<_>>() =>
        {
            Ok(g.replica_ids.len())
        }
        groups => Err(format!(
            "{} {}: replica groups {:?} are not supported (only one group of every rank \
             0..n in order)",
            i.opcode,
            i.name,
            groups.iter().map(|g| &g.replica_ids).collect::<Vec<_>>()
        )),
    }
}

fn unary(op: &str) -> Option<UnaryOp> {
    Some(match op {
        "negate" => UnaryOp::Neg,
        "abs" => UnaryOp::Abs,
        "exponential" => UnaryOp::Exp,
        "log" => UnaryOp::Log,
        "sqrt" => UnaryOp::Sqrt,
        "rsqrt" => UnaryOp::Rsqrt,
        "tanh" => UnaryOp::Tanh,
        "logistic" => UnaryOp::Logistic,
        "sine" => UnaryOp::Sin,
        "cosine" => UnaryOp::Cos,
        _ => return None,
    })
}

fn binary(op: &str) -> Option<BinaryOp> {
    Some(match op {
        "add" => BinaryOp::Add,
        "subtract" => BinaryOp::Sub,
        "multiply" => BinaryOp::Mul,
        "divide" => BinaryOp::Div,
        "maximum" => BinaryOp::Max,
        "minimum" => BinaryOp::Min,
        "power" => BinaryOp::Pow,
        _ => return None,
    })
}

fn direction(s: &str) -> Result<CmpDir, String> {
    Ok(match s {
        "EQ" => CmpDir::Eq,
        "NE" => CmpDir::Ne,
        "LT" => CmpDir::Lt,
        "LE" => CmpDir::Le,
        "GT" => CmpDir::Gt,
        "GE" => CmpDir::Ge,
        _ => return Err(format!("comparison direction `{s}`")),
    })
}

/// Decodes a serialized `HloModuleProto` into a program with NEFF-style I/O names.
pub fn decode(hlo: &[u8]) -> Result<Decoded, String> {
    let m = <HloModuleProto as prost::Message>::decode(hlo)
        .map_err(|e| format!("not an HloModuleProto: {e}"))?;
    let entry: &HloComputationProto = m
        .computations
        .iter()
        .find(|c| c.id == m.entry_computation_id)
        .ok_or("the module has no entry computation")?;
    let mut g = Graph::new();
    let mut vals: HashMap<i64, Val> = HashMap::new();
    // Parameters first, in parameter-number order, so graph input i is HLO parameter i.
    let mut params: Vec<&HloInstructionProto> = entry
        .instructions
        .iter()
        .filter(|i| i.opcode == "parameter")
        .collect();
    params.sort_by_key(|i| i.parameter_number);
    let mut inputs = Vec::new();
    for (n, p) in params.iter().enumerate() {
        if p.parameter_number as usize != n {
            return Err(format!("parameter numbers are not 0..{}", params.len()));
        }
        let (dt, dims) = array_of(p)?;
        let v = g
            .parameter(&format!("input{n}"), dt, dims.clone())
            .map_err(|e| e.to_string())?;
        vals.insert(p.id, Val::Array(v));
        inputs.push(IoSpec {
            name: format!("input{n}"),
            dtype: dt,
            dims,
        });
    }
    for i in &entry.instructions {
        if i.opcode == "parameter" {
            continue;
        }
        let arr = |vals: &HashMap<i64, Val>, k: usize| -> Result<ValueId, String> {
            let id = i
                .operand_ids
                .get(k)
                .ok_or_else(|| format!("{} lacks operand {k}", i.name))?;
            match vals.get(id) {
                Some(Val::Array(v)) => Ok(*v),
                _ => Err(format!("{}: operand {k} is not an array value", i.name)),
            }
        };
        let e = |r: Result<ValueId, silica_tensor::GraphError>| r.map_err(|e| e.to_string());
        let op = i.opcode.as_str();
        let v = if let Some(u) = unary(op) {
            Val::Array(e(g.unary(u, arr(&vals, 0)?))?)
        } else if let Some(b) = binary(op) {
            Val::Array(e(g.binary(b, arr(&vals, 0)?, arr(&vals, 1)?))?)
        } else {
            match op {
                "constant" => Val::Array(g.constant(literal(i)?)),
                "iota" => {
                    let (dt, dims) = array_of(i)?;
                    let d = *i.dimensions.first().ok_or("iota without dimension")? as usize;
                    Val::Array(e(g.iota(dt, dims, d))?)
                }
                "compare" => Val::Array(e(g.compare(
                    arr(&vals, 0)?,
                    arr(&vals, 1)?,
                    direction(&i.comparison_direction)?,
                ))?),
                "select" => {
                    Val::Array(e(g.select(arr(&vals, 0)?, arr(&vals, 1)?, arr(&vals, 2)?))?)
                }
                "convert" => Val::Array(e(g.convert(arr(&vals, 0)?, array_of(i)?.0))?),
                "bitcast-convert" => {
                    Val::Array(e(g.bitcast_convert(arr(&vals, 0)?, array_of(i)?.0))?)
                }
                "reshape" => Val::Array(e(g.reshape(arr(&vals, 0)?, array_of(i)?.1))?),
                "transpose" => Val::Array(e(g.transpose(arr(&vals, 0)?, &us(&i.dimensions)))?),
                "broadcast" => Val::Array(e(g.broadcast_in_dim(
                    arr(&vals, 0)?,
                    array_of(i)?.1,
                    &us(&i.dimensions),
                ))?),
                "slice" => {
                    let sd = &i.slice_dimensions;
                    let start: Vec<usize> = sd.iter().map(|s| s.start as usize).collect();
                    let limit: Vec<usize> = sd.iter().map(|s| s.limit as usize).collect();
                    let stride: Vec<usize> = sd.iter().map(|s| s.stride as usize).collect();
                    Val::Array(e(g.slice(arr(&vals, 0)?, &start, &limit, &stride))?)
                }
                "concatenate" => {
                    let xs = (0..i.operand_ids.len())
                        .map(|k| arr(&vals, k))
                        .collect::<Result<Vec<_>, _>>()?;
                    let axis = *i.dimensions.first().ok_or("concatenate without axis")? as usize;
                    Val::Array(e(g.concat(&xs, axis))?)
                }
                "pad" => {
                    let pc = i.padding_config.as_ref().ok_or("pad without config")?;
                    let low: Vec<usize> = pc
                        .dimensions
                        .iter()
                        .map(|d| d.edge_padding_low as usize)
                        .collect();
                    let high: Vec<usize> = pc
                        .dimensions
                        .iter()
                        .map(|d| d.edge_padding_high as usize)
                        .collect();
                    let interior: Vec<usize> = pc
                        .dimensions
                        .iter()
                        .map(|d| d.interior_padding as usize)
                        .collect();
                    Val::Array(e(g.pad(
                        arr(&vals, 0)?,
                        arr(&vals, 1)?,
                        &low,
                        &high,
                        &interior,
                    ))?)
                }
                "gather" => {
                    let dn = i
                        .gather_dimension_numbers
                        .as_ref()
                        .ok_or("gather without dimension numbers")?;
                    if dn.collapsed_slice_dims.len() != 1
                        || dn.start_index_map != dn.collapsed_slice_dims
                    {
                        return Err(format!(
                            "gather {}: only take-along-one-axis gathers are supported",
                            i.name
                        ));
                    }
                    let axis = dn.collapsed_slice_dims[0] as usize;
                    Val::Array(e(g.gather(arr(&vals, 0)?, arr(&vals, 1)?, axis))?)
                }
                "scatter" => {
                    let dn = i
                        .scatter_dimension_numbers
                        .as_ref()
                        .ok_or("scatter without dimension numbers")?;
                    if dn.inserted_window_dims.len() != 1
                        || dn.scatter_dims_to_operand_dims != dn.inserted_window_dims
                    {
                        return Err(format!(
                            "scatter {}: only add-along-one-axis scatters are supported",
                            i.name
                        ));
                    }
                    let comp = *i
                        .called_computation_ids
                        .first()
                        .ok_or("scatter without computation")?;
                    let root = reducer_root(&m, comp)?;
                    if root != "add" || i.operand_ids.len() != 3 {
                        return Err(format!(
                            "scatter {} with a `{root}` combiner over {} operands: only scatter-add",
                            i.name,
                            i.operand_ids.len()
                        ));
                    }
                    let axis = dn.inserted_window_dims[0] as usize;
                    Val::Array(e(g.scatter_add(
                        arr(&vals, 0)?,
                        arr(&vals, 1)?,
                        arr(&vals, 2)?,
                        axis,
                    ))?)
                }
                "dynamic-slice" => {
                    let starts = (1..i.operand_ids.len())
                        .map(|k| arr(&vals, k))
                        .collect::<Result<Vec<_>, _>>()?;
                    Val::Array(e(g.dynamic_slice(
                        arr(&vals, 0)?,
                        &starts,
                        &us(&i.dynamic_slice_sizes),
                    ))?)
                }
                "dynamic-update-slice" => {
                    let starts = (2..i.operand_ids.len())
                        .map(|k| arr(&vals, k))
                        .collect::<Result<Vec<_>, _>>()?;
                    Val::Array(e(g.dynamic_update_slice(
                        arr(&vals, 0)?,
                        arr(&vals, 1)?,
                        &starts,
                    ))?)
                }
                "reduce" => {
                    let comp = *i
                        .called_computation_ids
                        .first()
                        .ok_or("reduce without computation")?;
                    let axes = us(&i.dimensions);
                    match (reducer_root(&m, comp)?, i.operand_ids.len()) {
                        ("add", 2) => Val::Array(e(g.reduce_sum(arr(&vals, 0)?, &axes))?),
                        ("maximum", 2) => Val::Array(e(g.reduce_max(arr(&vals, 0)?, &axes))?),
                        ("tuple", 4) if axes.len() == 1 => Val::ArgMax {
                            values: arr(&vals, 0)?,
                            axis: axes[0],
                        },
                        (root, n) => {
                            return Err(format!(
                                "reduce {} with a `{root}` reducer over {n} operands",
                                i.name
                            ))
                        }
                    }
                }
                "get-tuple-element" => match vals.get(&i.operand_ids[0]) {
                    Some(Val::ArgMax { values, axis }) if i.tuple_index == 1 => {
                        Val::Array(e(g.argmax(*values, *axis))?)
                    }
                    Some(Val::Tuple(xs)) => Val::Array(
                        *xs.get(i.tuple_index as usize)
                            .ok_or("tuple index out of range")?,
                    ),
                    _ => return Err(format!("get-tuple-element {} unsupported", i.name)),
                },
                "dot" => {
                    let dn = i
                        .dot_dimension_numbers
                        .as_ref()
                        .ok_or("dot without dimension numbers")?;
                    let (out_dt, _) = array_of(i)?;
                    // A mixed-precision dot (bf16 × bf16 → f32) is the f32 dot of the widened
                    // operands: the products and the f32 accumulation are the same.
                    let mut l = arr(&vals, 0)?;
                    let mut r = arr(&vals, 1)?;
                    if g.dtype(l) != out_dt {
                        l = e(g.convert(l, out_dt))?;
                    }
                    if g.dtype(r) != out_dt {
                        r = e(g.convert(r, out_dt))?;
                    }
                    Val::Array(e(g.dot_general(
                        l,
                        r,
                        DotDims {
                            lhs_batch: us(&dn.lhs_batch_dimensions),
                            rhs_batch: us(&dn.rhs_batch_dimensions),
                            lhs_contract: us(&dn.lhs_contracting_dimensions),
                            rhs_contract: us(&dn.rhs_contracting_dimensions),
                        },
                    ))?)
                }
                "all-reduce" => {
                    let world = replica_world(i)?;
                    let comp = *i
                        .called_computation_ids
                        .first()
                        .ok_or_else(|| format!("all-reduce {} without a computation", i.name))?;
                    match reducer_root(&m, comp)? {
                        "add" => Val::Array(e(g.all_reduce(arr(&vals, 0)?, world))?),
                        root => {
                            return Err(format!(
                                "all-reduce {} applies `{root}`: only the sum (`add`) that \
                                 silica lowers is supported",
                                i.name
                            ))
                        }
                    }
                }
                "replica-id" => {
                    // The group is the one of the module's collectives (silica's rank ids come
                    // with them); its u32 scalar becomes silica's i32 (the next convert keeps it).
                    let world = entry
                        .instructions
                        .iter()
                        .find(|c| !c.replica_groups.is_empty())
                        .map(replica_world)
                        .transpose()?
                        .ok_or_else(|| {
                            format!("replica-id {} in a module without collectives", i.name)
                        })?;
                    Val::Array(e(g.rank_id(world))?)
                }
                "all-gather" => {
                    let world = replica_world(i)?;
                    let [axis] = i.dimensions[..] else {
                        return Err(format!(
                            "all-gather {} needs exactly one gather dimension",
                            i.name
                        ));
                    };
                    Val::Array(e(g.all_gather(arr(&vals, 0)?, axis as usize, world))?)
                }
                "tuple" => Val::Tuple(
                    (0..i.operand_ids.len())
                        .map(|k| arr(&vals, k))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                other => {
                    return Err(format!(
                        "HLO opcode `{other}` is not supported by the double"
                    ))
                }
            }
        };
        vals.insert(i.id, v);
    }
    let outs = match vals.get(&entry.root_id) {
        Some(Val::Tuple(xs)) => xs.clone(),
        Some(Val::Array(x)) => vec![*x],
        _ => return Err("the entry root is neither a tuple nor an array".into()),
    };
    let named: Vec<(String, ValueId)> = outs
        .iter()
        .enumerate()
        .map(|(k, v)| (format!("output{k}"), *v))
        .collect();
    let outputs = named
        .iter()
        .map(|(n, v)| IoSpec {
            name: n.clone(),
            dtype: g.dtype(*v),
            dims: g.dims(*v).to_vec(),
        })
        .collect();
    let program = Program::new(m.name.clone(), g, named).map_err(|e| e.to_string())?;
    Ok(Decoded {
        program,
        inputs,
        outputs,
    })
}
