//! silica-bench end to end: metric arithmetic on hand-computed timelines, goodput, cost, the
//! report schema, imports of vLLM and llmperf results, and rendering.

use silica_bench::instance::InstanceSource;
use silica_bench::metrics::{compute, OfflineMetrics, RequestTiming, Slo, Stats};
use silica_bench::pricing::Instances;
use silica_bench::report::{
    Machine, Mode, ModelInfo, Report, Roofline, RunConfig, Source, SCHEMA, SCHEMA_VERSION,
};
use silica_bench::{html, load_any, markdown};
use silica_probe::{HostInfo, MachineLimits};
use std::path::{Path, PathBuf};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[track_caller]
fn assert_stats(s: &Stats, want: [f64; 7]) {
    let got = [
        s.mean,
        s.median,
        s.p90.unwrap(),
        s.p99.unwrap(),
        s.std.unwrap(),
        s.min.unwrap(),
        s.max.unwrap(),
    ];
    for (name, (g, w)) in ["mean", "median", "p90", "p99", "std", "min", "max"]
        .iter()
        .zip(got.iter().zip(want))
    {
        assert!(close(*g, w), "{name}: got {g}, want {w}");
    }
}

fn req(start: f64, tokens: &[f64], end: f64, prompt: usize, out: usize) -> RequestTiming {
    RequestTiming {
        start_s: start,
        token_times_s: tokens.to_vec(),
        end_s: end,
        prompt_tokens: prompt,
        output_tokens: out,
        ok: true,
        error: None,
    }
}

/// Three successful requests and a failed one, over 2 s.
///
/// | req | start | tokens                 | end | prompt | out | TTFT | TPOT        | E2E | ITLs        |
/// | 1   | 0.0   | 0.10 0.15 0.25 0.30    | 0.3 | 10     | 4   | 100  | 200/3       | 300 | 50 100 50   |
/// | 2   | 0.5   | 0.70 0.80              | 0.8 | 20     | 2   | 200  | 100         | 300 | 100         |
/// | 3   | 1.0   | 1.40                   | 1.4 | 30     | 1   | 400  | (none)      | 400 | (none)      |
/// | 4   | failed                                  | 40     | 0   |
fn timeline() -> Vec<RequestTiming> {
    vec![
        req(0.0, &[0.1, 0.15, 0.25, 0.3], 0.3, 10, 4),
        req(0.5, &[0.7, 0.8], 0.8, 20, 2),
        req(1.0, &[1.4], 1.4, 30, 1),
        RequestTiming {
            start_s: 1.0,
            token_times_s: vec![1.05],
            end_s: 1.1,
            prompt_tokens: 40,
            output_tokens: 0,
            ok: false,
            error: Some("connection reset".into()),
        },
    ]
}

#[test]
fn serving_metrics_match_hand_computed_values() {
    let m = compute(&timeline(), 2.0, None);
    assert_eq!(m.completed, 3);
    assert_eq!(m.failed, Some(1));
    assert_eq!(m.total_input_tokens, Some(60));
    assert_eq!(m.total_output_tokens, Some(7));
    assert_eq!(m.duration_s, Some(2.0));
    assert!(close(m.request_throughput.unwrap(), 1.5));
    assert!(close(m.output_throughput.unwrap(), 3.5));
    assert!(close(m.total_token_throughput.unwrap(), 33.5));
    assert_eq!(m.request_goodput, None);
    assert_eq!(m.good_requests, None);
    // Expected values: numpy mean, median, percentile(90), percentile(99), std, min, max.
    assert_stats(
        m.ttft_ms.as_ref().unwrap(),
        [
            233.333_333_333_333_34,
            200.0,
            360.0,
            396.0,
            124.721_912_892_464_72,
            100.0,
            400.0,
        ],
    );
    assert_stats(
        m.tpot_ms.as_ref().unwrap(),
        [
            83.333_333_333_333_34,
            83.333_333_333_333_34,
            96.666_666_666_666_67,
            99.666_666_666_666_67,
            16.666_666_666_666_664,
            66.666_666_666_666_67,
            100.0,
        ],
    );
    assert_stats(
        m.itl_ms.as_ref().unwrap(),
        [75.0, 75.0, 100.0, 100.0, 25.0, 50.0, 100.0],
    );
    assert_stats(
        m.e2el_ms.as_ref().unwrap(),
        [
            333.333_333_333_333_3,
            300.0,
            380.0,
            398.0,
            47.140_452_079_103_17,
            300.0,
            400.0,
        ],
    );
}

#[test]
fn goodput_counts_requests_meeting_every_slo() {
    let t = timeline();
    let good = |slo: &str| {
        let m = compute(&t, 2.0, Some(&Slo::parse(slo).unwrap()));
        (m.good_requests.unwrap(), m.request_goodput.unwrap())
    };
    // TTFTs 100, 200, 400 ms.
    assert_eq!(good("ttft:250"), (2, 1.0));
    // TPOTs 66.7, 100, and 0 for the one-token request (vLLM's rule).
    assert_eq!(good("tpot:80"), (2, 1.0));
    assert_eq!(good("ttft:250,tpot:80"), (1, 0.5));
    // E2Es 300, 300, 400 ms.
    assert_eq!(good("e2el:350"), (2, 1.0));
    assert_eq!(good("ttft:1000,tpot:1000,e2e:1000"), (3, 1.5));
    // Equal counts as met (vLLM: slo >= value): request 1's TTFT is exactly 100 ms.
    assert_eq!(good("ttft:100"), (1, 0.5));
    assert_eq!(good("ttft:1"), (0, 0.0));
    // An empty SLO is no SLO.
    let m = compute(&t, 2.0, Some(&Slo::default()));
    assert_eq!(m.request_goodput, None);
}

#[test]
fn empty_and_degenerate_inputs_do_not_panic() {
    let m = compute(&[], 10.0, Some(&Slo::parse("ttft:1").unwrap()));
    assert_eq!(m.completed, 0);
    assert_eq!(m.failed, Some(0));
    assert_eq!(m.ttft_ms, None);
    assert_eq!(m.tpot_ms, None);
    assert_eq!(m.itl_ms, None);
    assert_eq!(m.e2el_ms, None);
    assert_eq!(m.output_throughput, Some(0.0));
    assert_eq!(m.request_goodput, Some(0.0));
    // No duration: no throughputs, but still counts.
    let m = compute(&timeline(), 0.0, None);
    assert_eq!(m.completed, 3);
    assert_eq!(m.request_throughput, None);
    assert_eq!(m.output_throughput, None);
    // Only failures.
    let failed: Vec<_> = timeline().into_iter().filter(|r| !r.ok).collect();
    let m = compute(&failed, 1.0, None);
    assert_eq!((m.completed, m.failed), (0, Some(1)));
    assert_eq!(m.total_output_tokens, Some(0));
    assert_eq!(m.e2el_ms, None);
    // A non-streamed success: E2E only.
    let m = compute(&[req(0.0, &[], 0.5, 3, 4)], 1.0, None);
    assert_eq!(m.ttft_ms, None);
    assert_eq!(m.tpot_ms, None);
    assert_eq!(m.e2el_ms.unwrap().mean, 500.0);
    // The report survives serialization even when empty.
    let json = serde_json::to_string(&compute(&[], 0.0, None)).unwrap();
    assert!(json.contains("\"ttft_ms\":null"));
}

fn limits() -> MachineLimits {
    MachineLimits {
        mem_read_gbps: 20.0,
        fma_peak_gflops: 400.0,
        threads: 2,
        simd: "avx2+fma".into(),
        amx_bf16_peak_gflops: None,
    }
}

fn sample_report() -> Report {
    let mut config = RunConfig::new(Mode::Offline);
    config.preset = Some("tiny-llama".into());
    config.backend = Some("cpu".into());
    config.dtype = Some("bf16".into());
    config.batch = Some(4);
    config.input_len = Some(128);
    config.output_len = Some(64);
    config.warmup = Some(1);
    config.seed = Some(7);
    config.slo = Some(Slo::parse("ttft:500,tpot:50").unwrap());
    let machine = Machine {
        host: Some(HostInfo {
            cpu_model: "Test CPU".into(),
            logical_cores: 2,
            memory_bytes: 24 << 30,
            os: "linux".into(),
            arch: "x86_64".into(),
        }),
        instance_type: Some("inf2.xlarge".into()),
        instance_source: InstanceSource::Flag,
        accelerator: None,
    };
    let model = ModelInfo {
        name: "tiny-llama".into(),
        architecture: Some("LlamaForCausalLM".into()),
        params: Some(1_000_000_000),
        dtype: Some("bf16".into()),
        weight_bytes_per_token: Some(2_000_000_000),
    };
    let mut r = Report::new(Source::Silica, config, machine, model);
    r.limits = Some(limits());
    r.metrics.serving = Some(compute(&timeline(), 2.0, r.config.slo.as_ref()));
    r.metrics.offline = Some(OfflineMetrics {
        prefill_tok_s: Some(50.0),
        decode_tok_s: Some(30.0),
        output_tok_s: Some(25.0),
        total_tok_s: Some(75.0),
        load_s: Some(0.5),
        compile_s: Some(0.0),
        peak_rss_bytes: Some(123_456_789),
        ..OfflineMetrics::default()
    });
    assert!(r.fill_roofline());
    let price = Instances::embedded()
        .resolve_price(Some("inf2.xlarge"), None)
        .unwrap();
    r.set_cost(&price);
    r
}

#[test]
fn roofline_and_cost_arithmetic() {
    let r = sample_report();
    let rf = r.roofline.as_ref().unwrap();
    // 20 GB/s / 2 GB per step × batch 4 = 40 tok/s; measured 30 → 75 %.
    assert!(close(rf.decode_limit_tok_s, 40.0));
    assert!(close(rf.decode_fraction.unwrap(), 0.75));
    // 400 GFLOP/s / (2 × 1e9 FLOP/token) = 200 tok/s; measured 50 → 25 %.
    assert!(close(rf.prefill_flops_per_token, 2e9));
    assert!(close(rf.prefill_limit_tok_s, 200.0));
    assert!(close(rf.prefill_fraction.unwrap(), 0.25));
    // The same run's products on AMX: 2,000 GFLOP/s → a 1,000 tok/s limit, 5 %.
    let amx = rf.clone().with_compute_peak(2000.0, "AMX-BF16");
    assert!(close(amx.prefill_limit_tok_s, 1000.0));
    assert!(close(amx.prefill_fraction.unwrap(), 0.05));
    assert_eq!(amx.decode_fraction, rf.decode_fraction);
    assert_eq!(amx.compute_peak, "AMX-BF16");
    assert_eq!(rf.compute_peak, "f32 FMA");
    let direct = Roofline::new(&limits(), 1_000_000_000, 2_000_000_000, 0);
    assert_eq!(direct.batch, 1);
    assert!(close(direct.decode_limit_tok_s, 10.0));
    assert_eq!(direct.decode_fraction, None);

    // Serving output throughput 3.5 tok/s wins over offline output_tok_s for cost.
    let c = r.cost.as_ref().unwrap();
    assert_eq!(c.price_per_hour, 0.7582);
    assert!(c
        .price_source
        .contains("AWS Pricing API snapshot 2026-07-20"));
    assert_eq!(c.instance_type.as_deref(), Some("inf2.xlarge"));
    assert!(close(
        c.usd_per_1m_output_tokens.unwrap(),
        0.7582 / (3.5 * 0.0036)
    ));
    assert!(close(
        c.usd_per_1m_total_tokens.unwrap(),
        0.7582 / (33.5 * 0.0036)
    ));

    // Without serving metrics the offline end-to-end rates are used.
    let mut off = r.clone();
    off.metrics.serving = None;
    off.set_cost(
        &Instances::embedded()
            .resolve_price(None, Some(1.0))
            .unwrap(),
    );
    let c = off.cost.unwrap();
    assert!(close(
        c.usd_per_1m_output_tokens.unwrap(),
        1.0 / (25.0 * 0.0036)
    ));
    assert_eq!(c.price_source, "--price-per-hour");

    // No rate → no $ figure (not infinity).
    let mut none = r.clone();
    none.metrics = Default::default();
    none.set_cost(
        &Instances::embedded()
            .resolve_price(None, Some(1.0))
            .unwrap(),
    );
    assert_eq!(none.cost.unwrap().usd_per_1m_output_tokens, None);
}

fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    (dir, p)
}

#[test]
fn report_round_trips_through_json() {
    let r = sample_report();
    assert_eq!(r.schema, SCHEMA);
    assert_eq!(r.schema_version, SCHEMA_VERSION);
    assert_eq!(r.silica_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(r.created_at.ends_with('Z') && r.created_at.len() == 20);
    let (_d, path) = tmp("sub/dir/report.json");
    r.save(&path).unwrap();
    let back = Report::load(&path).unwrap();
    assert_eq!(back, r);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"schema\": \"silica.bench.report\""));
    assert!(text.contains("\"schema_version\": 1"));
    assert!(text.contains("\"source\": \"silica\""));
    assert!(text.contains("\"mode\": \"offline\""));
    assert!(text.contains("\"instance_source\": \"flag\""));
    // load_any reads silica reports too.
    assert_eq!(load_any(&path, Some("g5.xlarge")).unwrap(), vec![r]);
}

#[test]
fn report_schema_errors_are_clear() {
    let r = sample_report();
    let mut v = serde_json::to_value(&r).unwrap();
    v["schema_version"] = 2.into();
    let (_d, path) = tmp("future.json");
    std::fs::write(&path, v.to_string()).unwrap();
    let e = Report::load(&path).unwrap_err().to_string();
    assert!(e.contains("schema_version 2 is not supported"), "{e}");
    assert!(e.contains("reads schema_version 1"), "{e}");
    assert!(e.contains("future.json"), "{e}");

    v["schema_version"] = "one".into();
    let e = Report::from_value(v.clone(), Path::new("x.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("schema_version"), "{e}");

    v["schema_version"] = 1.into();
    v["schema"] = "something.else".into();
    let e = Report::from_value(v.clone(), Path::new("x.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("something.else"), "{e}");

    v["schema"] = SCHEMA.into();
    v["metrics"] = "oops".into();
    let e = Report::from_value(v, Path::new("x.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match schema"), "{e}");

    let e = Report::load("/nonexistent/report.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/report.json"), "{e}");
    let (_d, bad) = tmp("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    assert!(Report::load(&bad)
        .unwrap_err()
        .to_string()
        .contains("not valid JSON"));
    let e = Report::from_json(r#"{"duration": 1}"#, Path::new("v.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a silica report"), "{e}");
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn vllm_result_imports_with_known_values() {
    let reports = load_any(data("vllm_bench_serve.json"), Some("inf2.xlarge")).unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.source, Source::Vllm);
    assert_eq!(r.silica_version, None);
    assert_eq!(r.source_date.as_deref(), Some("20260720-101500"));
    assert_eq!(r.config.mode, Mode::Online);
    assert_eq!(
        r.config.model.as_deref(),
        Some("meta-llama/Llama-3.1-8B-Instruct")
    );
    assert_eq!(r.model.name, "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(r.config.backend.as_deref(), Some("vllm"));
    assert_eq!(r.config.num_requests, Some(4));
    assert_eq!(r.config.concurrency, Some(4));
    assert_eq!(r.config.request_rate, None, "\"inf\" is unlimited");
    assert_eq!(r.config.input_len, Some(128));
    assert_eq!(r.config.output_len, Some(4)); // 11 tokens / 3 requests, rounded
    assert_eq!(r.machine.instance_type.as_deref(), Some("inf2.xlarge"));
    assert_eq!(r.machine.instance_source, InstanceSource::Flag);
    assert_eq!(r.machine.accelerator.as_deref(), Some("1 × Inferentia2"));
    assert_eq!(r.machine.host, None);
    assert_eq!(r.limits, None);
    let s = r.metrics.serving.as_ref().unwrap();
    assert_eq!(s.completed, 3);
    assert_eq!(s.failed, Some(1));
    assert_eq!(s.duration_s, Some(2.5));
    assert_eq!(s.total_input_tokens, Some(384));
    assert_eq!(s.total_output_tokens, Some(11));
    assert!(close(s.request_throughput.unwrap(), 1.2));
    assert!(close(s.output_throughput.unwrap(), 4.4));
    assert!(close(s.total_token_throughput.unwrap(), 158.0));
    assert_eq!(s.request_goodput, None, "null in the file");
    // Summary keys as written; p90/min/max from the per-request arrays (failed request excluded).
    assert_stats(
        s.ttft_ms.as_ref().unwrap(),
        [
            63.333_333_333_333_336,
            60.0,
            76.0,
            79.600_000_000_000_01,
            12.472_191_289_246_47,
            50.0,
            80.0,
        ],
    );
    assert_stats(
        s.tpot_ms.as_ref().unwrap(),
        [
            21.944_444_444_444_446,
            22.500_000_000_000_004,
            23.166_666_666_666_668,
            23.316_666_666_666_666,
            1.416_394_309_331_328,
            20.0,
            23.333_333_333_333_336,
        ],
    );
    assert_stats(
        s.itl_ms.as_ref().unwrap(),
        [22.5, 20.0, 26.5, 29.65, 3.535_533_905_932_737_8, 20.0, 30.0],
    );
    assert_stats(
        s.e2el_ms.as_ref().unwrap(),
        [
            123.333_333_333_333_34,
            130.0,
            138.0,
            139.8,
            16.996_731_711_975_95,
            100.0,
            140.0,
        ],
    );
    // Priced from the table: inf2.xlarge at 4.4 tok/s.
    let c = r.cost.as_ref().unwrap();
    assert!(close(
        c.usd_per_1m_output_tokens.unwrap(),
        0.7582 / (4.4 * 0.0036)
    ));
    assert!(close(
        c.usd_per_1m_total_tokens.unwrap(),
        0.7582 / (158.0 * 0.0036)
    ));
}

#[test]
fn vllm_summary_only_leaves_missing_fields_empty() {
    let text = std::fs::read_to_string(data("vllm_bench_serve.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let o = v.as_object_mut().unwrap();
    for k in [
        "input_lens",
        "output_lens",
        "ttfts",
        "itls",
        "latencies",
        "errors",
        "start_times",
        "failed",
        "mean_itl_ms",
    ] {
        o.remove(k);
    }
    o.insert("request_rate".into(), 2.5.into());
    o.insert("max_concurrency".into(), serde_json::Value::Null);
    let r = silica_bench::import_vllm(&v, None).unwrap();
    assert_eq!(r.config.request_rate, Some(2.5));
    assert_eq!(r.config.concurrency, None);
    assert_eq!(r.machine.instance_type, None);
    assert_eq!(r.machine.instance_source, InstanceSource::None);
    assert_eq!(r.cost, None, "no instance, no price");
    let s = r.metrics.serving.unwrap();
    assert_eq!(s.failed, None);
    let t = s.ttft_ms.unwrap();
    assert_eq!((t.p90, t.min, t.max), (None, None, None));
    assert!(close(t.p99.unwrap(), 79.600_000_000_000_01));
    assert_eq!(s.itl_ms, None, "no mean → no stats");
}

#[test]
fn vllm_append_result_files_hold_several_runs() {
    let text = std::fs::read_to_string(data("vllm_bench_serve.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let line = v.to_string();
    let (_d, path) = tmp("appended.json");
    std::fs::write(&path, format!("{line}\n{line}\n")).unwrap();
    let rs = load_any(&path, Some("trn2.48xlarge")).unwrap();
    assert_eq!(rs.len(), 2);
    // trn2 has no table price: no cost, but the accelerators are known.
    assert_eq!(rs[0].cost, None);
    assert_eq!(rs[0].machine.accelerator.as_deref(), Some("16 × Trainium2"));
}

#[test]
fn llmperf_summary_imports_with_known_values() {
    let rs = load_any(data("llmperf_summary.json"), Some("g5.xlarge")).unwrap();
    let r = &rs[0];
    assert_eq!(r.source, Source::Llmperf);
    assert_eq!(r.source_date.as_deref(), Some("2026-07-20T10:00:00Z"));
    assert_eq!(
        r.config.model.as_deref(),
        Some("meta-llama/Llama-3.1-8B-Instruct")
    );
    assert_eq!(r.config.concurrency, Some(4));
    assert_eq!(r.config.input_len, Some(550));
    assert_eq!(r.config.output_len, Some(150));
    assert_eq!(r.config.num_requests, Some(40));
    let s = r.metrics.serving.as_ref().unwrap();
    assert_eq!(s.completed, 40);
    assert_eq!(s.failed, Some(0));
    // 40 completed at 60 per minute → 40 s.
    assert!(close(s.duration_s.unwrap(), 40.0));
    assert!(close(s.output_throughput.unwrap(), 155.0));
    assert_eq!(s.total_output_tokens, Some(6200));
    assert_eq!(s.total_input_tokens, Some(22_000));
    assert!(close(s.total_token_throughput.unwrap(), 705.0));
    assert!(close(s.request_throughput.unwrap(), 1.0));
    assert_stats(
        s.ttft_ms.as_ref().unwrap(),
        [280.0, 250.0, 400.0, 600.0, 100.0, 100.0, 650.0],
    );
    assert_stats(
        s.tpot_ms.as_ref().unwrap(),
        [26.0, 25.0, 30.0, 35.0, 4.0, 20.0, 40.0],
    );
    assert_eq!(s.itl_ms, None);
    assert_stats(
        s.e2el_ms.as_ref().unwrap(),
        [3950.0, 3900.0, 4200.0, 4500.0, 200.0, 3500.0, 4600.0],
    );
    assert!(r.notes.iter().any(|n| n.contains("TPOT")));
    let c = r.cost.as_ref().unwrap();
    assert_eq!(c.price_per_hour, 1.006);
    assert!(close(
        c.usd_per_1m_output_tokens.unwrap(),
        1.006 / (155.0 * 0.0036)
    ));
}

#[test]
fn aiperf_export_captured_from_a_real_run_imports_with_its_values() {
    // Written by AIPerf 0.13.0 against `silica serve` (scripts/capture_imports.sh).
    let rs = load_any(
        data("aiperf_profile_export_aiperf.json"),
        Some("inf2.xlarge"),
    )
    .unwrap();
    assert_eq!(rs.len(), 1);
    let r = &rs[0];
    assert_eq!(r.source, Source::Aiperf);
    assert_eq!(r.source_date.as_deref(), Some("2026-12-04T21:14:30.573166"));
    assert_eq!(r.model.name, "silica-default");
    assert_eq!(r.config.backend.as_deref(), Some("completions"));
    assert_eq!(r.config.concurrency, Some(4));
    assert_eq!(r.config.request_rate, None);
    assert_eq!(r.config.num_requests, Some(24));
    assert_eq!(
        (r.config.input_len, r.config.output_len),
        (Some(64), Some(32))
    );
    let s = r.metrics.serving.as_ref().unwrap();
    assert_eq!(
        (s.completed, s.failed),
        (24, Some(0)),
        "error_summary is []"
    );
    // The profiling window, 21:14:30.573166 → 21:14:30.879403, not benchmark_duration
    // (0.30118272 s, first request → last response): AIPerf's throughputs use the window.
    assert!(close(s.duration_s.unwrap(), 0.306237));
    assert!(r.notes.iter().any(|n| n.contains("0.3012 s")));
    assert_eq!(
        (s.total_input_tokens, s.total_output_tokens),
        (Some(1536), Some(768))
    );
    assert!(close(s.request_throughput.unwrap(), 78.37087535552457));
    assert!(close(s.output_throughput.unwrap(), 2507.8680113767864));
    assert!(close(s.total_token_throughput.unwrap(), 7523.60403413036));
    // vLLM's output throughput is total output tokens / duration: AIPerf's agrees to the
    // microsecond rounding of its time stamps (1 µs in 0.306 s is 3.3e-6).
    assert!((768.0 / s.duration_s.unwrap() / s.output_throughput.unwrap() - 1.0).abs() < 1e-5);
    assert_stats(
        s.ttft_ms.as_ref().unwrap(),
        [
            20.991540625,
            19.813215,
            35.8898951,
            36.41431357,
            9.890717076987295,
            4.672378999999999,
            36.50607,
        ],
    );
    // AIPerf's inter_token_latency is vLLM's TPOT.
    assert_stats(
        s.tpot_ms.as_ref().unwrap(),
        [
            0.7148210833333334,
            0.6495526774193547,
            0.9759655645161289,
            1.069822033548387,
            0.15964129130212723,
            0.5208422580645161,
            1.0830570645161288,
        ],
    );
    assert_stats(
        s.itl_ms.as_ref().unwrap(),
        [
            0.7148210833333334,
            0.4284395,
            2.2218122000000027,
            6.902584440000072,
            1.3706555531990576,
            0.0,
            11.531676,
        ],
    );
    assert_stats(
        s.e2el_ms.as_ref().unwrap(),
        [
            43.15099420833334,
            44.100019499999995,
            56.21293109999999,
            58.287918049999995,
            10.564818362990176,
            21.299471,
            58.554319,
        ],
    );
    assert!(r.notes[0].contains("AIPerf 0.13.0") && r.notes[0].contains("TPOT"));
    // Priced from the table like every import.
    let c = r.cost.as_ref().unwrap();
    assert!(close(
        c.usd_per_1m_output_tokens.unwrap(),
        0.7582 / (2507.8680113767864 * 0.0036)
    ));
}

#[test]
fn guidellm_report_captured_from_a_real_run_gives_one_report_per_benchmark() {
    // Written by GuideLLM 0.8.1 against `silica serve`: concurrency 1, then 4, 24 requests each.
    let rs = load_any(data("guidellm_benchmarks.json"), None).unwrap();
    assert_eq!(rs.len(), 2);
    let want = [
        // concurrency, duration, TTFT, TPOT (GuideLLM's ITL), E2EL (s) as mean, median, p90, p99, std
        (
            1,
            0.4988739490509033,
            [
                10.343054930369059,
                8.190155029296875,
                16.259193420410156,
                46.895742416381836,
                8.441301500612985,
            ],
            [
                0.22752374731084352,
                0.22912794543850806,
                0.2760579509119834,
                0.3176966021137853,
                0.042131294428321794,
            ],
            [
                0.017697115739186604,
                0.015474557876586914,
                0.024635791778564453,
                0.0522313117980957,
                0.008013172350200765,
            ],
        ),
        (
            4,
            0.36676764488220215,
            [
                16.811231772104897,
                15.81573486328125,
                26.519298553466797,
                30.902624130249023,
                6.442329375662077,
            ],
            [
                1.1446155527586577,
                1.1934080431538243,
                1.4748188757127332,
                1.5728704390987274,
                0.25499464742588995,
            ],
            [
                0.0530827244122823,
                0.0554351806640625,
                0.06531953811645508,
                0.06977534294128418,
                0.009870918197804623,
            ],
        ),
    ];
    for (r, (conc, dur, ttft, tpot, e2el_s)) in rs.iter().zip(want) {
        assert_eq!(r.source, Source::Guidellm);
        assert_eq!(r.model.name, "silica-default");
        assert_eq!(r.config.concurrency, Some(conc));
        assert_eq!(
            r.config.backend.as_deref(),
            Some("openai_http /v1/completions")
        );
        assert_eq!(
            (r.config.input_len, r.config.output_len),
            (Some(64), Some(32))
        );
        let s = r.metrics.serving.as_ref().unwrap();
        assert_eq!((s.completed, s.failed), (24, Some(0)));
        assert_eq!(s.duration_s, Some(dur));
        assert_eq!(
            (s.total_input_tokens, s.total_output_tokens),
            (Some(1536), Some(768))
        );
        assert!(close(s.output_throughput.unwrap(), 768.0 / dur));
        assert!(close(s.request_throughput.unwrap(), 24.0 / dur));
        assert!(close(s.total_token_throughput.unwrap(), 2304.0 / dur));
        let five = |st: &Stats| {
            [
                st.mean,
                st.median,
                st.p90.unwrap(),
                st.p99.unwrap(),
                st.std.unwrap(),
            ]
        };
        assert_eq!(five(s.ttft_ms.as_ref().unwrap()), ttft);
        assert_eq!(five(s.tpot_ms.as_ref().unwrap()), tpot);
        let e2el = five(s.e2el_ms.as_ref().unwrap());
        for (g, w) in e2el.iter().zip(e2el_s) {
            assert!(close(*g, w * 1000.0), "{g} vs {w} s");
        }
        assert_eq!(s.itl_ms, None, "GuideLLM keeps no per-gap timings");
        assert!(r.notes[0].contains("GuideLLM 0.8.1"));
    }
    // A sweep reads as a series: throughput rises with concurrency here.
    let tput = |i: usize| {
        rs[i]
            .metrics
            .serving
            .as_ref()
            .unwrap()
            .output_throughput
            .unwrap()
    };
    assert!(tput(1) > tput(0));
    // …drawn as one measured line of two points, named once in the legend.
    let files = silica_bench::svg_files(&rs);
    let (_, svg) = files
        .iter()
        .find(|(k, _)| k == "measured-concurrency")
        .expect("a measured concurrency chart");
    assert_eq!(svg.matches("guidellm · silica-default").count(), 1, "{svg}");
    assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
}

#[test]
fn reports_export_in_vllms_shape_and_read_back() {
    let mut reports = load_any(
        data("aiperf_profile_export_aiperf.json"),
        Some("inf2.xlarge"),
    )
    .unwrap();
    reports.push(sample_report());
    let text = silica_bench::vllm_jsonl(&reports).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    // vLLM's `bench serve --save-result` key names (vllm/benchmarks/serve.py) and types.
    let a = &lines[0];
    for k in [
        "date",
        "backend",
        "label",
        "model_id",
        "tokenizer_id",
        "num_prompts",
        "request_rate",
        "max_concurrency",
        "duration",
        "completed",
        "failed",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "mean_ttft_ms",
        "median_ttft_ms",
        "std_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "median_tpot_ms",
        "std_tpot_ms",
        "p99_tpot_ms",
        "mean_itl_ms",
        "median_itl_ms",
        "std_itl_ms",
        "p99_itl_ms",
        "mean_e2el_ms",
        "median_e2el_ms",
        "std_e2el_ms",
        "p99_e2el_ms",
    ] {
        assert!(a.get(k).is_some(), "{k} missing from {a}");
    }
    assert_eq!(
        a["date"], "20261204-211430",
        "vLLM's %Y%m%d-%H%M%S of the run"
    );
    assert_eq!(a["request_rate"], "inf");
    assert_eq!(a["completed"], 24);
    assert_eq!(a["model_id"], "silica-default");
    assert_eq!(a["mean_tpot_ms"], 0.7148210833333334);
    assert_eq!(a["silica"]["source"], "aiperf");
    assert!(
        a.get("request_goodput").is_none(),
        "not measured: left out, not 0"
    );
    // Read back with the vLLM importer: the same serving metrics.
    // vLLM's result has no min/max keys; everything else comes back as it was.
    let back = silica_bench::import_vllm(a, Some("inf2.xlarge")).unwrap();
    let mut want = reports[0].metrics.serving.clone().unwrap();
    for st in [
        &mut want.ttft_ms,
        &mut want.tpot_ms,
        &mut want.itl_ms,
        &mut want.e2el_ms,
    ] {
        let st = st.as_mut().unwrap();
        (st.min, st.max) = (None, None);
    }
    assert_eq!(back.metrics.serving, Some(want));
    assert_eq!(back.config.concurrency, Some(4));
    // The silica sample report has serving metrics too.
    assert_eq!(lines[1]["label"], "silica");
    // An offline-only report takes `bench throughput --output-json`'s shape.
    let mut off = sample_report();
    off.metrics.serving = None;
    let m = off.metrics.offline.as_mut().unwrap();
    (m.prompt_tokens, m.output_tokens) = (Some(400), Some(200));
    let o = silica_bench::vllm_json(&off).unwrap();
    for k in [
        "elapsed_time",
        "num_requests",
        "total_num_tokens",
        "requests_per_second",
        "tokens_per_second",
    ] {
        assert!(o.get(k).is_some(), "{k} missing from {o}");
    }
    assert_eq!(o["total_num_tokens"], 600);
    assert_eq!(o["elapsed_time"], 8.0, "600 tokens at 75 tok/s");
    let (_d, path) = tmp("throughput.json");
    std::fs::write(&path, o.to_string()).unwrap();
    let back = load_any(&path, None).unwrap();
    assert_eq!(back[0].config.mode, Mode::Offline);
    assert_eq!(
        back[0].metrics.offline.as_ref().unwrap().total_tok_s,
        off.metrics.offline.as_ref().unwrap().total_tok_s
    );
    // Nothing measured: an error, not an empty object.
    off.metrics.offline = None;
    assert!(silica_bench::vllm_json(&off).is_err());
}

#[test]
fn unknown_files_are_rejected_with_a_hint() {
    let (_d, path) = tmp("other.json");
    std::fs::write(&path, r#"{"hello": "world"}"#).unwrap();
    let e = load_any(&path, None).unwrap_err().to_string();
    assert!(
        e.contains("unrecognized JSON") && e.contains("llmperf"),
        "{e}"
    );
    std::fs::write(&path, "").unwrap();
    assert!(load_any(&path, None)
        .unwrap_err()
        .to_string()
        .contains("empty file"));
}

fn all_reports() -> Vec<Report> {
    let mut v = vec![sample_report()];
    v.extend(load_any(data("vllm_bench_serve.json"), Some("inf2.xlarge")).unwrap());
    v.extend(load_any(data("llmperf_summary.json"), Some("g5.xlarge")).unwrap());
    v
}

#[test]
fn markdown_table_has_the_expected_rows() {
    let md = markdown(&all_reports());
    let lines: Vec<&str> = md.lines().collect();
    assert!(
        lines[0].starts_with("| # | kind | instance | backend | model | dtype | batch / conc. |")
    );
    assert!(lines[0].contains("TTFT p50 / p99 (ms)") && lines[0].contains("$/1M total tok"));
    // silica: serving TTFT 200/396, TPOT 83.3/99.7, 3.50 tok/s, $0.7582/(3.5×0.0036) = $60.175.
    assert_eq!(
        lines[2],
        "| 1 | measured | inf2.xlarge | cpu | tiny-llama | bf16 | 4 / – | 3.50 | 200 / 396 | 83.3 / 99.7 | $60.175 | $6.287 | silica |"
    );
    // vLLM: 4.4 tok/s → $47.866; 158 tok/s → $1.333.
    assert_eq!(
        lines[3],
        "| 2 | measured | inf2.xlarge | vllm | meta-llama/Llama-3.1-8B-Instruct | – | – / 4 | 4.40 | 60.0 / 79.6 | 22.5 / 23.3 | $47.866 | $1.333 | vllm |"
    );
    // llmperf on g5.xlarge: 155 tok/s → $1.803; 705 tok/s → $0.396.
    assert_eq!(
        lines[4],
        "| 3 | measured | g5.xlarge | – | meta-llama/Llama-3.1-8B-Instruct | – | – / 4 | 155 | 250 / 600 | 25.0 / 35.0 | $1.803 | $0.396 | llmperf |"
    );
    assert!(
        md.contains("decode 30.0 tok/s = 75.0% of the 40.0 tok/s bandwidth limit"),
        "{md}"
    );
    assert!(md.contains("prefill 50.0 tok/s = 25.0% of the 200 tok/s compute limit"));
}

#[test]
fn html_is_self_contained_with_table_and_charts() {
    let h = html(&all_reports());
    assert!(h.starts_with("<!DOCTYPE html>"));
    assert!(h.trim_end().ends_with("</html>"));
    // Latency scatter, cost bars, and measured throughput vs concurrency (vLLM and llmperf ran
    // at concurrency 4).
    assert_eq!(h.matches("<svg").count(), 3, "three charts");
    assert!(h.contains("Throughput vs concurrency (measured)"));
    assert_eq!(h.matches("<svg").count(), h.matches("</svg>").count());
    assert!(h.contains("<table>") && h.contains("</table>"));
    assert_eq!(h.matches("<tr>").count(), 4, "header + 3 rows");
    assert!(h.contains("<td class=\"n\">$47.866</td>"));
    assert!(h.contains("Throughput vs latency"));
    assert!(h.contains("$ per 1M output tokens"));
    // No external assets.
    for bad in ["<script", "<link", "src=\"http", "href=\"http", "@import"] {
        assert!(!h.contains(bad), "{bad}");
    }
    // Report text is escaped.
    let mut r = sample_report();
    r.model.name = "<b>&evil</b>".into();
    let h = html(&[r]);
    assert!(h.contains("&lt;b&gt;&amp;evil&lt;/b&gt;") && !h.contains("<b>&evil"));
    // Charts say why they are empty rather than failing.
    let mut bare = sample_report();
    bare.cost = None;
    bare.metrics.serving = None;
    let h = html(&[bare]);
    assert!(h.contains("no report has a price"));
    assert!(h.contains("no report has both"));
    assert!(
        !h.contains("Throughput vs concurrency (measured)"),
        "an offline run has no concurrency series"
    );
}

#[test]
fn schema_doc_example_parses_and_every_field_is_documented() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/report-schema.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let start = doc.find("```json\n").expect("a JSON example") + "```json\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let example = Report::from_json(&doc[start..end], &doc_path).unwrap();
    assert_eq!(example.schema_version, SCHEMA_VERSION);
    // Every key a report can contain is described in the doc.
    let mut full = sample_report();
    full.source_date = Some("x".into());
    full.notes.push("x".into());
    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(o) = v.as_object() {
            for (k, v) in o {
                out.push(k.clone());
                keys(v, out);
            }
        }
    }
    let mut all = vec![];
    keys(&serde_json::to_value(&full).unwrap(), &mut all);
    for k in all {
        assert!(
            doc.contains(&format!("`{k}`")),
            "field `{k}` is not documented in docs/report-schema.md"
        );
    }
}

#[test]
fn machine_detection_with_a_flag_needs_no_network() {
    // The flag wins before DMI or IMDS are consulted (IMDS is never reached off EC2 anyway).
    let m = Machine::detect(Some("inf2.xlarge"));
    assert_eq!(m.instance_type.as_deref(), Some("inf2.xlarge"));
    assert_eq!(m.instance_source, InstanceSource::Flag);
    assert!(m.host.unwrap().logical_cores >= 1);
}

/// A report of a Llama-3.1-8B-shaped model carries published and projected rows beside the
/// measured one: in the JSON (a round trip keeps them), in the tables (each row says its kind)
/// and in the cost chart (bars labelled measured / published / projected).
#[test]
fn reports_carry_published_and_projected_rows_labelled() {
    use silica_bench::projection::{Comparison, Shape};
    let cfg = silica_models::presets::preset("llama-3.1-8b").unwrap();
    let mut r = sample_report();
    r.model.name = "llama-3.1-8b".into();
    let shape = Shape {
        input_len: 128,
        output_len: 128,
    };
    r.comparison = Some(Comparison::for_model("llama-3.1-8b", &cfg, shape));
    let c = r.comparison.as_ref().unwrap();
    assert_eq!(c.published.len(), 10);
    // Every priced instance with a hardware row, for each weight format that fits.
    assert!(c
        .projected
        .iter()
        .any(|p| p.projection.instance == "inf2.48xlarge"));
    assert!(c
        .projected
        .iter()
        .any(|p| p.projection.instance == "p5.48xlarge"));
    let back = Report::from_json(&r.to_json(), Path::new("mem")).unwrap();
    assert_eq!(back, r);
    // An older report without the field still reads.
    let mut old: serde_json::Value = serde_json::from_str(&sample_report().to_json()).unwrap();
    assert!(old.get("comparison").is_none());
    old.as_object_mut().unwrap().remove("comparison");
    assert!(Report::from_value(old, Path::new("old"))
        .unwrap()
        .comparison
        .is_none());

    let md = markdown(std::slice::from_ref(&r));
    assert!(
        md.lines().nth(2).unwrap().starts_with("| 1 | measured |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| published | Llama-3-8B | inf2.48xlarge | 24 | 8 | 128 / 3968 | int8 | 859 |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| projected | llama-3.1-8b | inf2.48xlarge |"),
        "{md}"
    );
    let html = html(std::slice::from_ref(&r));
    assert!(html.contains("<td>published</td>") && html.contains("<td>projected</td>"));
    // The cost chart: the measured bar and published and projected ones, never empty.
    assert!(html.contains("measured #1"), "no measured bar");
    assert!(html.contains("published inf2.48xlarge Llama-3-8B"));
    assert!(html.contains("projected p5.48xlarge llama-3.1-8b"));
    assert!(!html.contains("no report has a price"));
    // The projection charts, in the page and as files: the Pareto front of $/1M vs TPOT and
    // throughput vs concurrency per instance.
    assert!(html.contains("vs TPOT (projected)") && html.contains("Pareto front"));
    assert!(html.contains("throughput vs concurrency (projected)"));
    let files = silica_bench::svg_files(std::slice::from_ref(&r));
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names, ["cost", "latency", "pareto", "concurrency"]);
    for (name, svg) in &files {
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{name}");
        assert!(!svg.contains("chart failed"), "{name}");
    }
    assert!(files[3].1.contains("inf2.48xlarge") && files[3].1.contains("p5.48xlarge"));
}
