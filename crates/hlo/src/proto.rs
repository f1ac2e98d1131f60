//! The subset of XLA's protobuf messages that silica writes, derived by hand with prost.
//!
//! Field numbers and names are those of openxla `xla/service/hlo.proto` (HloModuleProto,
//! HloComputationProto, HloInstructionProto, HloInputOutputAliasProto) and `xla/xla_data.proto`
//! (PrimitiveType, ShapeProto, LayoutProto, ProgramShapeProto, LiteralProto, PaddingConfig,
//! DotDimensionNumbers, GatherDimensionNumbers, PrecisionConfig, ReplicaGroup,
//! ScatterDimensionNumbers). Only the fields
//! silica uses are declared; protobuf readers skip nothing they need and ignore nothing we
//! write. Field numbers are stable across XLA releases (removed ones are `reserved`, never
//! reused), so the bytes parse with any XLA new enough to know these ops, neuronx-cc's included.

// ------------------------------------------------------------------ xla_data.proto

/// `xla.PrimitiveType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PrimitiveType {
    PrimitiveTypeInvalid = 0,
    Pred = 1,
    S8 = 2,
    S16 = 3,
    S32 = 4,
    S64 = 5,
    U8 = 6,
    U16 = 7,
    U32 = 8,
    U64 = 9,
    F16 = 10,
    F32 = 11,
    F64 = 12,
    Tuple = 13,
    Bf16 = 16,
}

/// `xla.LayoutProto` (dense layouts only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LayoutProto {
    /// Dimension indices from minor (fastest varying) to major; row-major is `[rank-1, …, 0]`.
    #[prost(int64, repeated, tag = "1")]
    pub minor_to_major: Vec<i64>,
}

/// `xla.ShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShapeProto {
    #[prost(enumeration = "PrimitiveType", tag = "2")]
    pub element_type: i32,
    #[prost(int64, repeated, tag = "3")]
    pub dimensions: Vec<i64>,
    #[prost(message, repeated, tag = "4")]
    pub tuple_shapes: Vec<ShapeProto>,
    #[prost(message, optional, tag = "5")]
    pub layout: Option<LayoutProto>,
    /// Which dimensions are dynamic (bounded by `dimensions`); silica writes none, and the
    /// Neuron compatibility pass refuses modules that have any.
    #[prost(bool, repeated, tag = "6")]
    pub is_dynamic_dimension: Vec<bool>,
}

/// `xla.ProgramShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProgramShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub parameters: Vec<ShapeProto>,
    #[prost(message, optional, tag = "2")]
    pub result: Option<ShapeProto>,
    #[prost(string, repeated, tag = "3")]
    pub parameter_names: Vec<String>,
}

/// `xla.LiteralProto` (array literals of the dtypes silica has).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LiteralProto {
    #[prost(message, optional, tag = "1")]
    pub shape: Option<ShapeProto>,
    #[prost(bool, repeated, tag = "2")]
    pub preds: Vec<bool>,
    #[prost(bytes = "vec", tag = "3")]
    pub u8s: Vec<u8>,
    #[prost(int32, repeated, tag = "4")]
    pub s32s: Vec<i32>,
    #[prost(int64, repeated, tag = "5")]
    pub s64s: Vec<i64>,
    #[prost(float, repeated, tag = "8")]
    pub f32s: Vec<f32>,
    #[prost(double, repeated, tag = "9")]
    pub f64s: Vec<f64>,
    /// Little-endian IEEE half bytes.
    #[prost(bytes = "vec", tag = "11")]
    pub f16s: Vec<u8>,
    /// Little-endian bfloat16 bytes.
    #[prost(bytes = "vec", tag = "13")]
    pub bf16s: Vec<u8>,
}

/// `xla.PaddingConfig.PaddingConfigDimension`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PaddingConfigDimension {
    #[prost(int64, tag = "1")]
    pub edge_padding_low: i64,
    #[prost(int64, tag = "2")]
    pub edge_padding_high: i64,
    #[prost(int64, tag = "3")]
    pub interior_padding: i64,
}

/// `xla.PaddingConfig`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PaddingConfig {
    #[prost(message, repeated, tag = "1")]
    pub dimensions: Vec<PaddingConfigDimension>,
}

/// `xla.DotDimensionNumbers`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DotDimensionNumbers {
    #[prost(int64, repeated, tag = "1")]
    pub lhs_contracting_dimensions: Vec<i64>,
    #[prost(int64, repeated, tag = "2")]
    pub rhs_contracting_dimensions: Vec<i64>,
    #[prost(int64, repeated, tag = "3")]
    pub lhs_batch_dimensions: Vec<i64>,
    #[prost(int64, repeated, tag = "4")]
    pub rhs_batch_dimensions: Vec<i64>,
}

/// `xla.GatherDimensionNumbers`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GatherDimensionNumbers {
    #[prost(int64, repeated, tag = "1")]
    pub offset_dims: Vec<i64>,
    #[prost(int64, repeated, tag = "2")]
    pub collapsed_slice_dims: Vec<i64>,
    #[prost(int64, repeated, tag = "3")]
    pub start_index_map: Vec<i64>,
    #[prost(int64, tag = "4")]
    pub index_vector_dim: i64,
}

/// `xla.ScatterDimensionNumbers`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScatterDimensionNumbers {
    #[prost(int64, repeated, tag = "1")]
    pub update_window_dims: Vec<i64>,
    #[prost(int64, repeated, tag = "2")]
    pub inserted_window_dims: Vec<i64>,
    #[prost(int64, repeated, tag = "3")]
    pub scatter_dims_to_operand_dims: Vec<i64>,
    #[prost(int64, tag = "4")]
    pub index_vector_dim: i64,
}

/// `xla.ReplicaGroup`: the ranks (replica ids, in the cross-replica mode silica uses) that take
/// part in one collective together.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReplicaGroup {
    #[prost(int64, repeated, tag = "1")]
    pub replica_ids: Vec<i64>,
}

/// `xla.PrecisionConfig.Precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Precision {
    Default = 0,
    High = 1,
    Highest = 2,
}

/// `xla.PrecisionConfig`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PrecisionConfig {
    #[prost(enumeration = "Precision", repeated, tag = "1")]
    pub operand_precision: Vec<i32>,
}

// ------------------------------------------------------------------ hlo.proto

/// `xla.HloInstructionProto.SliceDimensions`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SliceDimensions {
    #[prost(int64, tag = "1")]
    pub start: i64,
    #[prost(int64, tag = "2")]
    pub limit: i64,
    #[prost(int64, tag = "3")]
    pub stride: i64,
}

/// `xla.HloInstructionProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HloInstructionProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub opcode: String,
    #[prost(message, optional, tag = "3")]
    pub shape: Option<ShapeProto>,
    /// kConstant only.
    #[prost(message, optional, tag = "8")]
    pub literal: Option<LiteralProto>,
    /// kParameter only.
    #[prost(int64, tag = "9")]
    pub parameter_number: i64,
    /// kGetTupleElement only.
    #[prost(int64, tag = "13")]
    pub tuple_index: i64,
    /// Broadcast (operand→output dim map), transpose (permutation), reduce (reduced dims),
    /// concatenate (the axis), iota (the iota dimension), all-gather (the gathered axis).
    #[prost(int64, repeated, tag = "14")]
    pub dimensions: Vec<i64>,
    #[prost(message, repeated, tag = "17")]
    pub slice_dimensions: Vec<SliceDimensions>,
    #[prost(int64, repeated, tag = "20")]
    pub dynamic_slice_sizes: Vec<i64>,
    #[prost(message, optional, tag = "21")]
    pub padding_config: Option<PaddingConfig>,
    /// Collectives: present means the cross-partition/flattened-id modes; silica's collectives
    /// are cross-replica and leave it unset (0: "no channel id" to XLA).
    #[prost(int64, tag = "26")]
    pub channel_id: i64,
    /// kCustomCall only: the external target's name (silica emits no custom calls; read so
    /// that the Neuron compatibility pass can name one it refuses).
    #[prost(string, tag = "28")]
    pub custom_call_target: String,
    #[prost(message, optional, tag = "30")]
    pub dot_dimension_numbers: Option<DotDimensionNumbers>,
    #[prost(message, optional, tag = "33")]
    pub gather_dimension_numbers: Option<GatherDimensionNumbers>,
    #[prost(int64, repeated, tag = "34")]
    pub gather_slice_sizes: Vec<i64>,
    #[prost(int64, tag = "35")]
    pub id: i64,
    #[prost(int64, repeated, tag = "36")]
    pub operand_ids: Vec<i64>,
    /// Reduce: the scalar reducer; all-reduce: its `to_apply` (the scalar combiner).
    #[prost(int64, repeated, tag = "38")]
    pub called_computation_ids: Vec<i64>,
    /// Collectives: the groups of ranks that combine their operands. XLA marks this field
    /// deprecated in favour of `collective_device_list` (87) but still reads it first
    /// (`CollectiveDeviceList::FromProto`), and older XLAs, neuronx-cc's, know only this one.
    /// kScatter only.
    #[prost(message, optional, tag = "48")]
    pub scatter_dimension_numbers: Option<ScatterDimensionNumbers>,
    #[prost(message, repeated, tag = "49")]
    pub replica_groups: Vec<ReplicaGroup>,
    #[prost(message, optional, tag = "51")]
    pub precision_config: Option<PrecisionConfig>,
    /// kCompare only: "EQ", "NE", "LT", "LE", "GT", "GE".
    #[prost(string, tag = "63")]
    pub comparison_direction: String,
    /// Collectives: replica groups hold flattened device ids (needs a channel id); unset in
    /// silica's cross-replica form.
    #[prost(bool, tag = "71")]
    pub use_global_device_ids: bool,
    /// kCompare only: "FLOAT", "TOTALORDER", "SIGNED", "UNSIGNED" (empty: XLA's default for the
    /// operand type, which is what silica means).
    #[prost(string, tag = "72")]
    pub comparison_type: String,
}

/// `xla.HloComputationProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HloComputationProto {
    #[prost(string, tag = "1")]
    pub name: String,
    /// In dependency order: operands before their users.
    #[prost(message, repeated, tag = "2")]
    pub instructions: Vec<HloInstructionProto>,
    #[prost(message, optional, tag = "4")]
    pub program_shape: Option<ProgramShapeProto>,
    #[prost(int64, tag = "5")]
    pub id: i64,
    #[prost(int64, tag = "6")]
    pub root_id: i64,
}

/// `xla.Kind` (of an input/output alias).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AliasKind {
    UndefinedAlias = 0,
    /// The buffers may alias: XLA reuses the parameter's buffer when the caller donates it.
    MayAlias = 1,
    /// The buffers must alias: the caller has to donate the parameter.
    MustAlias = 2,
}

/// `xla.HloInputOutputAliasProto.AliasEntryProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AliasEntryProto {
    #[prost(int64, repeated, tag = "1")]
    pub output_shape_index: Vec<i64>,
    #[prost(int64, tag = "2")]
    pub parameter_number: i64,
    #[prost(int64, repeated, tag = "3")]
    pub parameter_shape_index: Vec<i64>,
    #[prost(enumeration = "AliasKind", tag = "4")]
    pub kind: i32,
}

/// `xla.HloInputOutputAliasProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HloInputOutputAliasProto {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<AliasEntryProto>,
}

/// `xla.HloModuleProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HloModuleProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub entry_computation_name: String,
    /// Callees before callers; the entry computation last.
    #[prost(message, repeated, tag = "3")]
    pub computations: Vec<HloComputationProto>,
    #[prost(message, optional, tag = "4")]
    pub host_program_shape: Option<ProgramShapeProto>,
    #[prost(int64, tag = "5")]
    pub id: i64,
    #[prost(int64, tag = "6")]
    pub entry_computation_id: i64,
    #[prost(message, optional, tag = "8")]
    pub input_output_alias: Option<HloInputOutputAliasProto>,
}
