//! `xla.CompileOptionsProto`, the compile options `PJRT_Client_Compile` takes serialized.
//!
//! Field numbers from openxla `xla/pjrt/proto/compile_options.proto`; only the fields silica
//! sets are declared (protobuf readers default everything else).

/// `xla.ExecutableBuildOptionsProto` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecutableBuildOptionsProto {
    /// -1: not set (the client picks its default device).
    #[prost(int64, tag = "1")]
    pub device_ordinal: i64,
    #[prost(int64, tag = "4")]
    pub num_replicas: i64,
    #[prost(int64, tag = "5")]
    pub num_partitions: i64,
}

/// `xla.CompileOptionsProto` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CompileOptionsProto {
    #[prost(message, optional, tag = "3")]
    pub executable_build_options: Option<ExecutableBuildOptionsProto>,
}

/// The options silica compiles with: one replica, one partition, the client's default device.
pub fn single_device() -> CompileOptionsProto {
    CompileOptionsProto {
        executable_build_options: Some(ExecutableBuildOptionsProto {
            device_ordinal: -1,
            num_replicas: 1,
            num_partitions: 1,
        }),
    }
}

/// The serialized [`single_device`] options.
pub fn single_device_bytes() -> Vec<u8> {
    prost::Message::encode_to_vec(&single_device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn encodes_and_decodes_back() {
        let bytes = single_device_bytes();
        let back = CompileOptionsProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, single_device());
        let b = back.executable_build_options.unwrap();
        assert_eq!(
            (b.device_ordinal, b.num_replicas, b.num_partitions),
            (-1, 1, 1)
        );
    }

    /// The wire bytes by hand: field 3 (length-delimited) holding fields 1, 4, 5 (varints).
    /// -1 as an int64 varint is ten bytes (two's complement, 64 bits).
    #[test]
    fn wire_format_is_the_protobuf_encoding() {
        let mut inner = vec![0x08];
        inner.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        inner.extend_from_slice(&[0x20, 0x01, 0x28, 0x01]);
        let mut want = vec![0x1a, inner.len() as u8];
        want.extend_from_slice(&inner);
        assert_eq!(single_device_bytes(), want);
    }
}
