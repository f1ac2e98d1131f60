//! Host tensors and safetensors I/O: round trips for every dtype, zero-copy maps, corrupt files
//! (typed errors, never panics) and atomic writes.

mod common;

use common::*;
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{
    bf16, f16, safetensors_to_bytes, save_safetensors, write_atomic, Backend, DType, HostTensor,
    SafetensorsFile, TensorError,
};
use std::collections::BTreeMap;
use std::path::Path;

fn roundtrip<T: silica_tensor::Element + PartialEq>(v: Vec<T>, dims: &[usize]) {
    let t = HostTensor::from_vec(v.clone(), dims.to_vec()).unwrap();
    assert_eq!(t.dtype(), T::DTYPE);
    assert_eq!(t.dims(), dims);
    assert_eq!(t.elem_count(), v.len());
    assert_eq!(t.as_bytes().len(), v.len() * T::DTYPE.size_in_bytes());
    assert_eq!(t.to_vec::<T>().unwrap(), v);
    assert_eq!(
        t.as_slice::<T>().unwrap().unwrap(),
        &v[..],
        "owned data is aligned"
    );
    let back = HostTensor::from_bytes(T::DTYPE, dims.to_vec(), t.as_bytes()).unwrap();
    assert_eq!(back, t);
}

#[test]
fn from_vec_to_vec_every_dtype() {
    roundtrip(vec![0u8, 1, 255, 7, 9, 128], &[2, 3]);
    roundtrip(vec![i32::MIN, -1, 0, 1, i32::MAX, 5], &[3, 2]);
    roundtrip(vec![i64::MIN, -1, 0, 1, i64::MAX, 5], &[6]);
    roundtrip(
        vec![
            f16::from_f32(1.5),
            f16::MAX,
            f16::MIN_POSITIVE,
            f16::NEG_INFINITY,
        ],
        &[2, 2],
    );
    roundtrip(
        vec![
            bf16::from_f32(1.5),
            bf16::MAX,
            bf16::MIN_POSITIVE,
            bf16::NEG_INFINITY,
        ],
        &[4, 1],
    );
    roundtrip(vec![1.5f32, -0.0, f32::MAX, f32::MIN_POSITIVE], &[1, 4]);
    roundtrip(vec![1.5f64, -0.0, f64::MAX, 1e-300], &[2, 1, 2]);
    roundtrip(vec![3.25f32], &[]);
    roundtrip(Vec::<f32>::new(), &[0, 5]);
    let b = HostTensor::from_bools(&[true, false, true], [3]).unwrap();
    assert_eq!(b.dtype(), DType::Bool);
    assert_eq!(b.as_bytes(), &[1, 0, 1]);
    assert_eq!(b.to_vec::<u8>().unwrap(), vec![1, 0, 1], "bools read as u8");
    assert_eq!(b.to_f64_vec(), vec![1.0, 0.0, 1.0]);
}

#[test]
fn constructor_and_accessor_errors() {
    let e = HostTensor::from_vec(vec![1f32, 2.0, 3.0], [2, 2]).unwrap_err();
    assert!(
        matches!(
            e,
            TensorError::ByteLength {
                expected: 16,
                actual: 12,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("[2, 2]"), "{e}");
    let e = HostTensor::from_bytes(DType::I64, [2], &[0u8; 12]).unwrap_err();
    assert!(matches!(e, TensorError::ByteLength { .. }));
    let t = HostTensor::from_vec(vec![1f32, 2.0], [2]).unwrap();
    let e = t.to_vec::<i32>().unwrap_err();
    assert!(matches!(
        e,
        TensorError::DTypeMismatch {
            expected: DType::I32,
            actual: DType::F32
        }
    ));
    assert!(t.as_slice::<f64>().is_err());
    let e = t.reshape([3]).unwrap_err();
    assert!(
        matches!(
            e,
            TensorError::Reshape {
                from_count: 2,
                to_count: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("[2]") && e.to_string().contains("[3]"),
        "{e}"
    );
}

#[test]
fn reshape_shares_bytes() {
    let t = HostTensor::from_vec((0..12).map(|v| v as f32).collect::<Vec<_>>(), [3, 4]).unwrap();
    let r = t.reshape([2, 2, 3]).unwrap();
    assert_eq!(r.dims(), &[2, 2, 3]);
    assert_eq!(
        r.as_bytes().as_ptr(),
        t.as_bytes().as_ptr(),
        "reshape copied"
    );
    assert_eq!(r.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
    assert_ne!(r, t, "different shapes are different tensors");
    let s = t.reshape([12]).unwrap().reshape([3, 4]).unwrap();
    assert_eq!(s, t);
}

#[test]
fn scalar_full_zeros() {
    for dt in DType::ALL {
        let z = HostTensor::zeros(dt, [2, 3]);
        assert_eq!(z.dtype(), dt);
        assert!(z.as_bytes().iter().all(|&b| b == 0));
        let f = HostTensor::full(3.0, dt, [4]);
        let want = if dt == DType::Bool { 1.0 } else { 3.0 };
        assert_eq!(f.to_f64_vec(), vec![want; 4]);
        let s = HostTensor::scalar(-2.5, dt);
        assert_eq!(s.dims(), &[] as &[usize]);
        assert_eq!(s.elem_count(), 1);
    }
    assert_eq!(
        HostTensor::scalar(-2.5, DType::I32)
            .to_vec::<i32>()
            .unwrap(),
        vec![-2]
    );
    assert_eq!(
        HostTensor::scalar(300.0, DType::U8).to_vec::<u8>().unwrap(),
        vec![255]
    );
    // Constants round to nearest even from f64, like every other conversion.
    let above_tie = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
    assert_eq!(
        HostTensor::scalar(above_tie, DType::BF16).to_f64_vec(),
        vec![1.0 + 2f64.powi(-7)]
    );
    let above_tie = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    assert_eq!(
        HostTensor::scalar(above_tie, DType::F16).to_f64_vec(),
        vec![1.0 + 2f64.powi(-10)]
    );
    let t = HostTensor::from_vec(vec![1.5f32, 2.0], [2]).unwrap();
    assert_eq!(t.to_f32_vec(), vec![1.5, 2.0]);
    assert!(format!("{t:?}").contains("f32 [2]"));
}

/// `HostTensor::convert` and the CPU backend's `convert` op implement the same semantics.
#[test]
fn host_convert_matches_backend_convert() {
    let mut r = rng(60);
    let special_f = [
        0.0,
        -0.0,
        2.7,
        -2.7,
        255.5,
        300.0,
        -1.0,
        3e9,
        -3e9,
        65520.0,
        f64::NAN,
        f64::INFINITY,
        1.0 + 2f64.powi(-8) + 2f64.powi(-40),
    ];
    let special_i = [
        0,
        1,
        -1,
        255,
        256,
        -129,
        3_000_000_000,
        -3_000_000_000,
        1 << 40,
        (1 << 24) + (1 << 16) + 1,
    ];
    let be = CpuBackend::new();
    for from in DType::ALL {
        let mut inputs = vec![rand_any(&mut r, from, &[32])];
        if from.is_float() {
            inputs.push(host_f(from, &[special_f.len()], &special_f));
        } else if from != DType::Bool {
            inputs.push(host_i(from, &[special_i.len()], &special_i));
        }
        for to in DType::ALL {
            let p = program1(&[(from, &[inputs[0].elem_count()])], |g, p| {
                g.convert(p[0], to)
            });
            for x in &inputs {
                let p = if x.elem_count() == inputs[0].elem_count() {
                    p.clone()
                } else {
                    program1(&[(from, &[x.elem_count()])], |g, p| g.convert(p[0], to))
                };
                let host = x.convert(to);
                let exe = be.compile(&p).unwrap();
                let dev = silica_tensor::run_host(&be, exe.as_ref(), std::slice::from_ref(x))
                    .unwrap()
                    .remove(0);
                assert_close(
                    &format!("host convert {from} → {to} of {x:?}"),
                    &host,
                    &RTensor::from_host(&dev),
                    Tol::EXACT,
                );
                // And both agree with the reference semantics.
                assert_close(
                    &format!("host convert {from} → {to}"),
                    &host,
                    &reference(&p, std::slice::from_ref(x))[0],
                    Tol::EXACT,
                );
            }
        }
    }
}

// ------------------------------------------------------------------------ safetensors

fn every_dtype_tensors() -> BTreeMap<String, HostTensor> {
    let mut r = rng(61);
    let mut m = BTreeMap::new();
    for (i, dt) in DType::ALL.into_iter().enumerate() {
        m.insert(
            format!("t_{}", dt.name()),
            rand_any(&mut r, dt, &[3, i + 1]),
        );
    }
    m.insert("scalar".into(), HostTensor::scalar(7.0, DType::F32));
    m.insert("empty".into(), HostTensor::zeros(DType::BF16, [0, 4]));
    m.insert("odd_bf16".into(), rand_any(&mut r, DType::BF16, &[3]));
    m
}

#[test]
fn safetensors_roundtrip_every_dtype_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let tensors = every_dtype_tensors();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("silica".to_string(), "test ✓".to_string());
    save_safetensors(
        &path,
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        Some(&meta),
    )
    .unwrap();
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.path, path);
    assert_eq!(f.metadata, meta);
    assert_eq!(
        f.names().collect::<Vec<_>>(),
        tensors.keys().map(String::as_str).collect::<Vec<_>>()
    );
    for (name, t) in &tensors {
        let got = f.get(name).unwrap();
        assert_eq!(got, t, "{name}");
        assert!(got.is_mapped(), "{name} is not a view of the map");
    }
    // Views are zero-copy and aligned for the common dtypes.
    let v = f.get("t_f32").unwrap();
    assert!(v.as_slice::<f32>().unwrap().is_some());
    let v = f.get("t_f64").unwrap();
    assert!(v.as_slice::<f64>().unwrap().is_some());
    // The tensors outlive the file object (they hold the map).
    let owned = f.into_tensors();
    assert_eq!(owned["t_i64"], tensors["t_i64"]);
    // No metadata → empty map; the file holds exactly the in-memory serialization. (With
    // metadata the header is not byte-stable: the safetensors crate takes the metadata as a
    // HashMap, so its key order varies between calls.)
    let p2 = dir.path().join("nometa.safetensors");
    save_safetensors(&p2, tensors.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
    assert!(SafetensorsFile::open(&p2).unwrap().metadata.is_empty());
    let bytes = safetensors_to_bytes(tensors.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
    assert_eq!(std::fs::read(&p2).unwrap(), bytes);
}

/// A safetensors file from a raw JSON header and data section.
fn raw_file(dir: &Path, name: &str, header: &str, data: &[u8]) -> std::path::PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn open_err(p: &Path) -> TensorError {
    match SafetensorsFile::open(p) {
        Ok(_) => panic!("{} opened but is corrupt", p.display()),
        Err(e) => e,
    }
}

#[test]
fn corrupt_safetensors_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A valid file to start from.
    let good = raw_file(
        d,
        "good.safetensors",
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]}}"#,
        &[0; 12],
    );
    let f = SafetensorsFile::open(&good).unwrap();
    assert_eq!(f.get("a").unwrap().dims(), &[2]);
    let good_bytes = std::fs::read(&good).unwrap();

    let mut cases: Vec<(&str, std::path::PathBuf)> = Vec::new();
    // Truncated: in the data, in the header, in the length prefix, empty.
    for (name, cut) in [
        ("trunc_data", good_bytes.len() - 3),
        ("trunc_header", 20),
        ("trunc_len", 5),
        ("empty", 0),
    ] {
        let p = d.join(name);
        std::fs::write(&p, &good_bytes[..cut]).unwrap();
        cases.push((name, p));
    }
    // Header length larger than the file (and absurdly large).
    for (name, len) in [("len_past_end", 10_000u64), ("len_huge", u64::MAX)] {
        let mut b = good_bytes.clone();
        b[..8].copy_from_slice(&len.to_le_bytes());
        let p = d.join(name);
        std::fs::write(&p, b).unwrap();
        cases.push((name, p));
    }
    let bad_headers: [(&str, &str, usize); 9] = [
        ("garbage", "this is not json at all!", 0),
        ("not_object", "[1, 2, 3]", 0),
        (
            "offsets_past_end",
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        ),
        (
            "overlap",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        ),
        (
            "gap",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            12,
        ),
        (
            "reversed",
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#,
            8,
        ),
        (
            "shape_mismatch",
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        ),
        (
            "dtype_mismatch",
            r#"{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        ),
        (
            "overflow_shape",
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
            8,
        ),
    ];
    for (name, header, n) in bad_headers {
        cases.push((name, raw_file(d, name, header, &vec![0u8; n])));
    }
    for (name, p) in &cases {
        let e = open_err(p);
        let msg = e.to_string();
        assert!(
            msg.contains(&p.display().to_string()),
            "{name}: error does not name the file: {msg}"
        );
        assert!(
            matches!(e, TensorError::Safetensors { .. } | TensorError::Io { .. }),
            "{name}: {e:?}"
        );
    }
    // A dtype silica does not support is named.
    let p = raw_file(
        d,
        "u16",
        r#"{"a":{"dtype":"U16","shape":[2],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    let e = open_err(&p);
    assert!(
        matches!(e, TensorError::UnsupportedDType { ref name, .. } if name == "a"),
        "{e:?}"
    );
    // A missing file is an I/O error naming the path.
    let e = open_err(&d.join("missing.safetensors"));
    assert!(matches!(e, TensorError::Io { .. }), "{e:?}");
}

#[test]
fn write_atomic_replaces_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.bin");
    write_atomic(&path, b"first").unwrap();
    write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["out.bin"], "temporary files left behind");
    // A missing folder is an I/O error.
    let e = write_atomic(&dir.path().join("no_such_dir").join("x.bin"), b"x").unwrap_err();
    assert!(matches!(e, TensorError::Io { .. }));
}

#[test]
fn write_atomic_failure_keeps_old_contents_and_cleans_up() {
    // Renaming a file over a non-empty directory fails: the destination must survive unchanged
    // and the temporary file must not be left behind.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("ckpt");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep.txt"), b"old").unwrap();
    let e = write_atomic(&dest, b"new contents").unwrap_err();
    assert!(matches!(e, TensorError::Io { .. }), "{e:?}");
    assert_eq!(std::fs::read(dest.join("keep.txt")).unwrap(), b"old");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["ckpt"],
        "temporary file left behind after a failed write"
    );
    // Saving a checkpoint over an existing one is all-or-nothing as well.
    let path = dir.path().join("w.safetensors");
    let t = HostTensor::from_vec(vec![1f32, 2.0], [2]).unwrap();
    save_safetensors(&path, [("w", &t)], None).unwrap();
    let t2 = HostTensor::from_vec(vec![3f32, 4.0], [2]).unwrap();
    save_safetensors(&path, [("w", &t2)], None).unwrap();
    assert_eq!(SafetensorsFile::open(&path).unwrap().get("w").unwrap(), &t2);
}
