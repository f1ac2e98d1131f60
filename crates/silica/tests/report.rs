//! `silica report` as a user runs it on other tools' result files (captured from real AIPerf and
//! GuideLLM runs, in crates/bench/tests/data): the comparison table, vLLM's result shape, and
//! clear refusals of files it cannot read.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn silica(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_silica"))
        .args(args)
        .output()
        .unwrap()
}

fn data(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bench/tests/data")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn aiperf_and_guidellm_results_read_side_by_side_and_export_as_vllm() {
    let (a, g) = (
        data("aiperf_profile_export_aiperf.json"),
        data("guidellm_benchmarks.json"),
    );
    let o = silica(&["report", &a, &g, "--instance", "inf2.xlarge"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<&str> = md.lines().filter(|l| l.contains("| measured |")).collect();
    assert_eq!(rows.len(), 3, "{md}");
    assert!(rows[0].ends_with("| aiperf |") && rows[2].ends_with("| guidellm |"));
    // Priced from the table: inf2.xlarge at AIPerf's 2508 output tok/s.
    assert!(
        rows[0].contains("| 2508 |") && rows[0].contains("$0.084"),
        "{}",
        rows[0]
    );

    let o = silica(&["report", &a, &g, "--format", "vllm"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let conc: Vec<u64> = lines
        .iter()
        .map(|l| l["max_concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(conc, [4, 1, 4]);
    assert!(lines.iter().all(|l| l["completed"] == 24));
}

#[test]
fn unreadable_results_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.json");
    let text = std::fs::read_to_string(data("guidellm_benchmarks.json")).unwrap();
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    let units = dir.path().join("units.json");
    let mut v: Value = serde_json::from_str(
        &std::fs::read_to_string(data("aiperf_profile_export_aiperf.json")).unwrap(),
    )
    .unwrap();
    v["time_to_first_token"]["unit"] = "furlongs".into();
    std::fs::write(&units, v.to_string()).unwrap();
    for (file, says) in [(&cut, "not valid JSON"), (&units, "\"furlongs\"")] {
        let o = silica(&["report", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{file:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains(says),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
