//! What the fixture-backed tests share: the committed HF fixtures (models/fixtures, made by
//! scripts/make_fixtures.py) and their recorded references.

#![allow(dead_code)] // each test file uses part of it

use serde_json::Value;
use silica_tensor::SafetensorsFile;
use std::path::{Path, PathBuf};

/// Every fixture folder with a reference, sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("models/fixtures exists (bash scripts/make_fixtures.sh)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    v.sort();
    assert!(
        v.len() >= 5,
        "expected at least 5 fixture cases, found {}",
        v.len()
    );
    v
}

/// A fixture's reference.json and reference.safetensors.
pub fn reference(dir: &Path) -> (Value, SafetensorsFile) {
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    (
        r,
        SafetensorsFile::open(dir.join("reference.safetensors")).unwrap(),
    )
}

/// A JSON list of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The largest |a[i] − b[i]| (the slices must have the same length).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
