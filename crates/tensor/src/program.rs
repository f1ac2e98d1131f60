//! Programs: a graph plus its ordered named inputs, named outputs and in-place aliases.

use crate::decompose::decompose_graph;
use crate::error::GraphError;
use crate::graph::{Graph, Op, ValueId};
use crate::{DType, Shape};

/// Name, dtype and shape of a program input or output.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
}

/// Output `output` is written into the buffer of input `input` (both indices into the lists):
/// KV caches during decoding, weights and optimizer state during training.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Alias {
    pub output: usize,
    pub input: usize,
}

/// What a compiled program takes and returns; enough to validate a call without the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub name: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub aliases: Vec<Alias>,
    /// Ranks of the tensor-parallel group the program runs on (1: no collectives). Each rank
    /// gets its own arguments; see [`crate::Executable::execute_group`].
    pub world: usize,
}

impl Signature {
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|s| s.name == name)
    }

    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|s| s.name == name)
    }

    /// The alias that writes into input `input`, if any.
    pub fn alias_of_input(&self, input: usize) -> Option<Alias> {
        self.aliases.iter().copied().find(|a| a.input == input)
    }

    pub fn is_aliased_output(&self, output: usize) -> bool {
        self.aliases.iter().any(|a| a.output == output)
    }

    /// Outputs that `execute` returns (those not written into an input), in order.
    pub fn returned_outputs(&self) -> impl Iterator<Item = (usize, &TensorSpec)> {
        self.outputs
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.is_aliased_output(*i))
    }
}

/// A graph with named, ordered inputs (its parameters) and outputs, and in-place aliases.
#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    pub graph: Graph,
    pub outputs: Vec<(String, ValueId)>,
    pub aliases: Vec<Alias>,
}

impl Program {
    pub fn new(
        name: impl Into<String>,
        graph: Graph,
        outputs: Vec<(String, ValueId)>,
    ) -> Result<Self, GraphError> {
        let n = graph.nodes().len();
        for (i, (name, v)) in outputs.iter().enumerate() {
            if v.index() >= n {
                return Err(GraphError::new(
                    "program",
                    format!("output `{name}` refers to a value not in the graph"),
                ));
            }
            if outputs[..i].iter().any(|(m, _)| m == name) {
                return Err(GraphError::new(
                    "program",
                    format!("output name `{name}` is used twice"),
                ));
            }
        }
        // Collectives must agree on one group size (checked here so `world()` cannot fail).
        graph.world()?;
        Ok(Program {
            name: name.into(),
            graph,
            outputs,
            aliases: Vec::new(),
        })
    }

    /// Declares that output `output` updates input `input` in place (same dtype and shape).
    pub fn alias(mut self, output: &str, input: &str) -> Result<Self, GraphError> {
        let sig = self.signature();
        let o = sig.output_index(output).ok_or_else(|| {
            GraphError::new("program", format!("alias: no output named `{output}`"))
        })?;
        let i = sig.input_index(input).ok_or_else(|| {
            GraphError::new("program", format!("alias: no input named `{input}`"))
        })?;
        let (os, is) = (&sig.outputs[o], &sig.inputs[i]);
        if os.dtype != is.dtype || os.shape != is.shape {
            return Err(GraphError::new(
                "program",
                format!(
                    "alias: output `{output}` {} {} differs from input `{input}` {} {}",
                    os.dtype, os.shape, is.dtype, is.shape
                ),
            ));
        }
        if self.aliases.iter().any(|a| a.output == o || a.input == i) {
            return Err(GraphError::new(
                "program",
                format!("alias: `{output}` or `{input}` is already aliased"),
            ));
        }
        self.aliases.push(Alias {
            output: o,
            input: i,
        });
        Ok(self)
    }

    /// Ranks of the tensor-parallel group this program runs on (1 without collectives).
    pub fn world(&self) -> usize {
        self.graph.world().unwrap_or(1)
    }

    pub fn inputs(&self) -> Vec<TensorSpec> {
        self.graph
            .params()
            .iter()
            .map(|&p| {
                let node = self.graph.node(p);
                let Op::Parameter { name, .. } = &node.op else {
                    unreachable!("params() holds parameter nodes")
                };
                TensorSpec {
                    name: name.clone(),
                    dtype: node.dtype,
                    shape: node.shape.clone(),
                }
            })
            .collect()
    }

    pub fn signature(&self) -> Signature {
        Signature {
            name: self.name.clone(),
            inputs: self.inputs(),
            outputs: self
                .outputs
                .iter()
                .map(|(name, v)| TensorSpec {
                    name: name.clone(),
                    dtype: self.graph.dtype(*v),
                    shape: self.graph.shape(*v).clone(),
                })
                .collect(),
            aliases: self.aliases.clone(),
            world: self.world(),
        }
    }

    /// The same program with composites decomposed into primitives.
    pub fn decomposed(&self) -> Result<Program, GraphError> {
        let (graph, map) = decompose_graph(&self.graph)?;
        Ok(Program {
            name: self.name.clone(),
            graph,
            outputs: self
                .outputs
                .iter()
                .map(|(n, v)| (n.clone(), map[v.index()]))
                .collect(),
            aliases: self.aliases.clone(),
        })
    }
}
