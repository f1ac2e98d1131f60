//! `silica plan` as a user runs it: the cheapest instance per SLO by projection, with the
//! published evidence of the same model size, as JSON; and bad arguments refused cleanly.

use serde_json::Value;
use std::process::Command;

fn silica(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_silica"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn plan_lists_instances_meeting_the_slo_with_published_evidence() {
    let o = silica(&[
        "plan",
        "--preset",
        "llama-3.1-8b",
        "--slo",
        "tpot:50,ttft:2000",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let opts = v["options"].as_array().unwrap();
    assert!(opts.len() >= 5, "{v}");
    let mut last = 0.0;
    let mut instances = Vec::new();
    for c in opts {
        assert!(c["tpot_ms"].as_f64().unwrap() <= 50.0);
        assert!(c["ttft_ms"].as_f64().unwrap() <= 2000.0);
        let usd = c["usd_per_m_output"].as_f64().unwrap_or(f64::INFINITY);
        assert!(usd >= last, "not cheapest first: {v}");
        last = usd;
        let inst = c["projection"]["instance"].as_str().unwrap().to_string();
        assert!(
            !instances.contains(&inst),
            "one option per instance: {inst}"
        );
        instances.push(inst);
    }
    // Neuron and GPU instances both appear; the A10G has no cited figures, so no g5.
    assert!(
        instances.iter().any(|i| i.starts_with("inf2.")),
        "{instances:?}"
    );
    assert!(
        instances.iter().any(|i| i.starts_with("p5.")),
        "{instances:?}"
    );
    assert!(!instances.iter().any(|i| i.starts_with("g5.")));
    // Llama-3-8B's published rows (the preset has its shapes), each with its ratio.
    let published = v["published"].as_array().unwrap();
    assert_eq!(published.len(), 10);
    assert!(published.iter().all(|c| c["ratio"].as_f64().unwrap() > 0.0));
    // The table form says what the figures rest on.
    let o = silica(&["plan", "--preset", "llama-3.1-8b"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("efficiency Inferentia2") || text.contains("| inf2."),
        "{text}"
    );
    assert!(text.contains("projected / published"), "{text}");
}

#[test]
fn plan_refuses_bad_arguments() {
    for (args, want) in [
        (vec!["plan", "--preset", "no-such"], "unknown preset"),
        (
            vec!["plan", "--preset", "llama-3.1-8b", "--dtype", "int4"],
            "unknown weight format",
        ),
        (
            vec!["plan", "--preset", "llama-3.1-8b", "--slo", "tpot"],
            "tpot",
        ),
        (
            vec!["plan", "--preset", "llama-3.1-8b", "--input-len", "0"],
            "at least 1",
        ),
        (vec!["plan", "--model", "/no/such/dir"], "/no/such/dir"),
        (vec!["plan"], "--preset"),
    ] {
        let o = silica(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A model that fits nowhere under the target says so, and succeeds.
    let o = silica(&["plan", "--preset", "llama-3.1-70b", "--slo", "tpot:0.01"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("No instance meets the target"));
}
