//! Side-by-side comparisons of reports: a Markdown table, and a self-contained HTML page (inline
//! CSS, inline SVG charts drawn with plotters; no external assets, no scripts).

use crate::report::Report;
use std::fmt::Write as _;

mod charts;
use charts::{concurrency_svg, cost_svg, measured_concurrency_svg, pareto_svg, scatter_svg};

/// A dash for values a report does not have.
const NONE: &str = "–";

/// One row of the comparison table, formatted.
struct Row {
    instance: String,
    backend: String,
    model: String,
    dtype: String,
    batch_conc: String,
    out_tok_s: String,
    ttft: String,
    tpot: String,
    usd_out: String,
    usd_total: String,
    source: String,
}

const HEADERS: [&str; 12] = [
    "kind",
    "instance",
    "backend",
    "model",
    "dtype",
    "batch / conc.",
    "output tok/s",
    "TTFT p50 / p99 (ms)",
    "TPOT p50 / p99 (ms)",
    "$/1M output tok",
    "$/1M total tok",
    "source",
];

impl Row {
    fn of(r: &Report) -> Row {
        let serving = r.metrics.serving.as_ref();
        let pair = |s: Option<&crate::metrics::Stats>| match s {
            Some(s) => format!("{} / {}", num(Some(s.median)), num(s.p99)),
            None => NONE.into(),
        };
        let cost = r.cost.as_ref();
        Row {
            instance: r
                .machine
                .instance_type
                .clone()
                .unwrap_or_else(|| NONE.into()),
            backend: match (&r.config.backend, r.config.tensor_parallel) {
                (Some(b), Some(tp)) if tp > 1 => format!("{b} tp{tp}"),
                (Some(b), _) => b.clone(),
                (None, _) => NONE.into(),
            },
            model: model_name(r),
            dtype: r
                .config
                .dtype
                .clone()
                .or_else(|| r.model.dtype.clone())
                .unwrap_or_else(|| NONE.into()),
            batch_conc: format!(
                "{} / {}",
                r.config.batch.map_or(NONE.into(), |b| b.to_string()),
                r.config.concurrency.map_or(NONE.into(), |c| c.to_string())
            ),
            out_tok_s: num(r.output_tok_s()),
            ttft: pair(serving.and_then(|s| s.ttft_ms.as_ref())),
            tpot: pair(serving.and_then(|s| s.tpot_ms.as_ref())),
            usd_out: usd(cost.and_then(|c| c.usd_per_1m_output_tokens)),
            usd_total: usd(cost.and_then(|c| c.usd_per_1m_total_tokens)),
            source: r.source.as_str().into(),
        }
    }

    fn cells(&self) -> [&str; 12] {
        [
            // A report is a run someone measured (silica, or an imported vLLM/llmperf run);
            // published and projected rows come in their own tables.
            "measured",
            &self.instance,
            &self.backend,
            &self.model,
            &self.dtype,
            &self.batch_conc,
            &self.out_tok_s,
            &self.ttft,
            &self.tpot,
            &self.usd_out,
            &self.usd_total,
            &self.source,
        ]
    }
}

fn model_name(r: &Report) -> String {
    if r.model.name.is_empty() {
        r.config
            .model
            .clone()
            .or_else(|| r.config.preset.clone())
            .unwrap_or_else(|| NONE.into())
    } else {
        r.model.name.clone()
    }
}

/// A number with about three significant digits, grouped for readability: 1234.5 → `1235`,
/// 45.678 → `45.7`, 0.1234 → `0.123`.
fn num(v: Option<f64>) -> String {
    match v {
        None => NONE.into(),
        Some(v) if !v.is_finite() => NONE.into(),
        Some(v) => {
            let a = v.abs();
            if a >= 100.0 {
                format!("{v:.0}")
            } else if a >= 10.0 {
                format!("{v:.1}")
            } else if a >= 1.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.3}")
            }
        }
    }
}

fn usd(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            if v >= 100.0 {
                format!("${v:.0}")
            } else if v >= 0.01 || v == 0.0 {
                format!("${v:.3}")
            } else {
                // Projected costs of small models go far below a cent: two significant digits.
                let digits = (1 - v.log10().floor() as i32).clamp(3, 12) as usize;
                format!("${v:.digits$}")
            }
        }
        _ => NONE.into(),
    }
}

/// A short name for a report in charts and notes: `inf2.xlarge silica/neuron c8`.
pub fn label(r: &Report) -> String {
    let mut s = r
        .machine
        .instance_type
        .clone()
        .unwrap_or_else(|| "local".into());
    s.push(' ');
    s.push_str(r.source.as_str());
    if let Some(b) = r
        .config
        .backend
        .as_deref()
        .filter(|b| *b != r.source.as_str())
    {
        s.push('/');
        s.push_str(b);
    }
    if let Some(c) = r.config.concurrency {
        let _ = write!(s, " c{c}");
    } else if let Some(b) = r.config.batch {
        let _ = write!(s, " b{b}");
    }
    s
}

/// Roofline, price and note lines for one report.
fn detail_lines(r: &Report) -> Vec<String> {
    let mut out = vec![];
    if let Some(rf) = &r.roofline {
        if let Some(d) = rf.decode_tok_s {
            out.push(format!(
                "decode {} tok/s = {} of the {} tok/s bandwidth limit ({} GB/s measured, {} MB read per step, batch {})",
                num(Some(d)),
                pct(rf.decode_fraction),
                num(Some(rf.decode_limit_tok_s)),
                num(Some(rf.mem_read_gbps)),
                num(Some(rf.decode_bytes_per_token / 1e6)),
                rf.batch
            ));
        }
        if let Some(p) = rf.prefill_tok_s {
            out.push(format!(
                "prefill {} tok/s = {} of the {} tok/s compute limit ({} GFLOP/s {} peak measured)",
                num(Some(p)),
                pct(rf.prefill_fraction),
                num(Some(rf.prefill_limit_tok_s)),
                num(Some(rf.fma_peak_gflops)),
                rf.compute_peak
            ));
        }
    }
    if let Some(c) = &r.cost {
        out.push(format!(
            "price ${}/h ({})",
            c.price_per_hour, c.price_source
        ));
    }
    out.extend(r.notes.iter().cloned());
    out
}

fn pct(f: Option<f64>) -> String {
    f.map_or(NONE.into(), |f| format!("{:.1}%", f * 100.0))
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The comparisons the reports carry, once per model (several runs of one model share theirs).
fn comparisons(reports: &[Report]) -> Vec<(&str, &crate::projection::Comparison)> {
    let mut out: Vec<(&str, &crate::projection::Comparison)> = Vec::new();
    for r in reports {
        if let Some(c) = &r.comparison {
            if !out.iter().any(|(n, _)| *n == r.model.name) {
                out.push((r.model.name.as_str(), c));
            }
        }
    }
    out
}

const PUBLISHED_HEADERS: [&str; 12] = [
    "kind",
    "model",
    "instance",
    "tp",
    "batch",
    "in / out",
    "weights",
    "output tok/s",
    "TPOT (ms)",
    "$/1M output tok",
    "engine, date",
    "projected / published",
];

fn published_cells(c: &crate::projection::Check) -> Vec<String> {
    let r = &c.published;
    vec![
        "published".into(),
        r.model.clone(),
        r.instance.clone(),
        if r.replicas > 1 {
            format!("{} × {}", r.tp, r.replicas)
        } else {
            r.tp.to_string()
        },
        if r.batch == 0 {
            "max".into()
        } else {
            r.batch.to_string()
        },
        format!("{} / {}", r.input_len, r.output_len),
        r.dtype.clone(),
        num(Some(r.output_tok_s)),
        num(r.tpot_ms),
        usd(crate::projection::published_usd_per_m_output(r)),
        format!("{}, {}", r.engine, r.date),
        c.ratio.map_or(NONE.into(), |x| format!("{x:.2}×")),
    ]
}

const PROJECTED_HEADERS: [&str; 12] = [
    "kind",
    "model",
    "instance",
    "weights",
    "tp × replicas",
    "batch (max)",
    "TPOT (ms)",
    "TTFT (ms)",
    "output tok/s",
    "$/1M output tok",
    "$/1M total tok",
    "roofline $/1M output, efficiency",
];

fn projected_cells(model: &str, c: &crate::projection::Calibrated) -> Vec<String> {
    let p = &c.projection;
    vec![
        "projected".into(),
        model.to_string(),
        p.instance.clone(),
        p.dtype.as_str().into(),
        format!("{} × {}", p.tp, p.replicas),
        format!("{} ({})", p.batch, p.max_batch),
        num(Some(c.tpot_ms)),
        num(Some(c.ttft_ms)),
        num(Some(c.output_tok_s)),
        usd(c.usd_per_m_output),
        usd(c.usd_per_m_total),
        format!("{}, {:.3}", usd(p.usd_per_m_output), c.efficiency.factor),
    ]
}

fn md_table(s: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(s, "| {} |", headers.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(headers.len()));
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| md_escape(c)).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
}

fn html_table(s: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    s.push_str("<div class=\"tw\"><table>\n<thead><tr>");
    for h in headers {
        let _ = write!(s, "<th>{}</th>", html_escape(h));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let class = if c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '$') {
                " class=\"n\""
            } else {
                ""
            };
            let _ = write!(s, "<td{class}>{}</td>", html_escape(c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody>\n</table></div>\n");
}

/// One table of published or projected rows, with its title and a note on where they come from.
struct Section {
    title: String,
    headers: &'static [&'static str],
    rows: Vec<Vec<String>>,
    note: String,
}

/// The comparison sections, per model.
fn comparison_sections(reports: &[Report]) -> Vec<Section> {
    let mut out = Vec::new();
    for (model, c) in comparisons(reports) {
        if !c.published.is_empty() {
            out.push(Section {
                title: format!("Published measurements of a model the size of {model}"),
                headers: &PUBLISHED_HEADERS[..],
                rows: c.published.iter().map(published_cells).collect(),
                note: "Sources in crates/bench/published.toml; $/1M at the instance's on-demand \
                       price with as many replicas as the instance holds at that degree; \
                       projected / published: the roofline over the measurement."
                    .to_string(),
            });
        }
        if !c.projected.is_empty() {
            out.push(Section {
                title: format!(
                    "Projected: {model} on every instance ({} in / {} out per request)",
                    c.shape.input_len, c.shape.output_len
                ),
                headers: &PROJECTED_HEADERS[..],
                rows: c
                    .projected
                    .iter()
                    .map(|p| projected_cells(model, p))
                    .collect(),
                note: c.method.clone(),
            });
        }
    }
    out
}

/// A Markdown comparison: one table with a row per report (in order, numbered), then a line per
/// report with decode/prefill speed against the measured limits, the price used, and notes.
pub fn markdown(reports: &[Report]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| # | {} |", HEADERS.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(HEADERS.len()));
    for (i, r) in reports.iter().enumerate() {
        let row = Row::of(r);
        let cells: Vec<String> = row.cells().iter().map(|c| md_escape(c)).collect();
        let _ = writeln!(s, "| {} | {} |", i + 1, cells.join(" | "));
    }
    let mut first = true;
    for (i, r) in reports.iter().enumerate() {
        let lines = detail_lines(r);
        if lines.is_empty() {
            continue;
        }
        if std::mem::take(&mut first) {
            s.push('\n');
        }
        let _ = writeln!(s, "- #{} {}", i + 1, md_escape(&label(r)));
        for l in lines {
            let _ = writeln!(s, "  - {}", md_escape(&l));
        }
    }
    // Measured rows above; published and projected ones here, each row saying its kind.
    for sec in comparison_sections(reports) {
        let _ = writeln!(s, "\n### {}\n", sec.title);
        md_table(&mut s, sec.headers, &sec.rows);
        let _ = writeln!(s, "\n{}", md_escape(&sec.note));
    }
    s
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1f2328;background:#fff}
h1{font-size:1.5rem;margin-bottom:.25rem}
h2{font-size:1.15rem;margin-top:2rem}
p.sub{color:#59636e;margin-top:0}
div.tw{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.85rem}
th,td{border:1px solid #d1d9e0;padding:.3rem .5rem;text-align:left;white-space:nowrap}
th{background:#f6f8fa;white-space:normal;vertical-align:bottom}
td.w{white-space:normal;overflow-wrap:anywhere;min-width:10rem}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fbfcfd}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem}
.chart{flex:1 1 540px;border:1px solid #d1d9e0;border-radius:6px;padding:.5rem}
.chart svg{width:100%;height:auto}
ul.details{font-size:.9rem;color:#333}
ul.details ul{margin:.2rem 0 .6rem}
.empty{color:#59636e;font-style:italic;padding:2rem}
";

/// A self-contained HTML page: the comparison table, a throughput-vs-TPOT scatter and a
/// $/1M-output-token bar chart (inline SVG), and the per-report details.
pub fn html(reports: &[Report]) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    s.push_str("<title>silica benchmark report</title>\n<style>");
    s.push_str(CSS);
    s.push_str("</style>\n</head>\n<body>\n<h1>silica benchmark report</h1>\n");
    let _ = writeln!(
        s,
        "<p class=\"sub\">{} report{}; serving metrics use vLLM's definitions (TPOT excludes the \
         first token); $/1M = price per hour / (tokens/s &times; 3600 / 10<sup>6</sup>).</p>",
        reports.len(),
        if reports.len() == 1 { "" } else { "s" }
    );
    s.push_str("<div class=\"tw\"><table>\n<thead><tr><th>#</th>");
    for h in HEADERS {
        let _ = write!(s, "<th>{}</th>", html_escape(h));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for (i, r) in reports.iter().enumerate() {
        let row = Row::of(r);
        let _ = write!(s, "<tr><td class=\"n\">{}</td>", i + 1);
        for (j, c) in row.cells().iter().enumerate() {
            let class = match j {
                3 => " class=\"w\"",
                6..=10 => " class=\"n\"",
                _ => "",
            };
            let _ = write!(s, "<td{class}>{}</td>", html_escape(c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody>\n</table></div>\n");

    for sec in comparison_sections(reports) {
        let _ = writeln!(s, "<h2>{}</h2>", html_escape(&sec.title));
        html_table(&mut s, sec.headers, &sec.rows);
        let _ = writeln!(s, "<p class=\"sub\">{}</p>", html_escape(&sec.note));
    }

    s.push_str("<h2>Charts</h2>\n<div class=\"charts\">\n<div class=\"chart\">\n");
    s.push_str(&scatter_svg(reports));
    s.push_str("</div>\n<div class=\"chart\">\n");
    s.push_str(&cost_svg(reports));
    s.push_str("</div>\n");
    if has_concurrency_series(reports) {
        s.push_str("<div class=\"chart\">\n");
        s.push_str(&measured_concurrency_svg(reports));
        s.push_str("</div>\n");
    }
    for (model, c) in comparisons(reports) {
        s.push_str("<div class=\"chart\">\n");
        s.push_str(&pareto_svg(model, c));
        s.push_str("</div>\n<div class=\"chart\">\n");
        s.push_str(&concurrency_svg(model, c));
        s.push_str("</div>\n");
    }
    s.push_str("</div>\n");

    let details: Vec<(usize, &Report, Vec<String>)> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r, detail_lines(r)))
        .filter(|(_, _, l)| !l.is_empty())
        .collect();
    if !details.is_empty() {
        s.push_str("<h2>Details</h2>\n<ul class=\"details\">\n");
        for (i, r, lines) in details {
            let _ = write!(s, "<li><b>#{} {}</b><ul>", i + 1, html_escape(&label(r)));
            for l in lines {
                let _ = write!(s, "<li>{}</li>", html_escape(&l));
            }
            s.push_str("</ul></li>\n");
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</body>\n</html>\n");
    s
}

/// Whether any report ran at a set concurrency with a measured throughput (the measured
/// throughput-vs-concurrency chart is drawn only then: an offline run has nothing to put there).
fn has_concurrency_series(reports: &[Report]) -> bool {
    reports.iter().any(|r| {
        r.config.concurrency.is_some()
            && r.metrics
                .serving
                .as_ref()
                .and_then(|s| s.output_throughput)
                .is_some()
    })
}

/// The charts as standalone SVG files: `(file suffix, svg)`: `cost`, `latency`,
/// `measured-concurrency` when a report ran at a set concurrency, and per model with
/// projections `pareto` and `concurrency` (a model index after the first).
pub fn svg_files(reports: &[Report]) -> Vec<(String, String)> {
    let mut out = vec![
        ("cost".to_string(), cost_svg(reports)),
        ("latency".to_string(), scatter_svg(reports)),
    ];
    if has_concurrency_series(reports) {
        out.push((
            "measured-concurrency".to_string(),
            measured_concurrency_svg(reports),
        ));
    }
    for (k, (model, c)) in comparisons(reports).into_iter().enumerate() {
        let n = if k == 0 {
            String::new()
        } else {
            format!("-{}", k + 1)
        };
        out.push((format!("pareto{n}"), pareto_svg(model, c)));
        out.push((format!("concurrency{n}"), concurrency_svg(model, c)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::charts::short;
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(Some(1234.56)), "1235");
        assert_eq!(num(Some(45.678)), "45.7");
        assert_eq!(num(Some(2.1061)), "2.11");
        assert_eq!(num(Some(0.12345)), "0.123");
        assert_eq!(num(None), NONE);
        assert_eq!(num(Some(f64::NAN)), NONE);
        assert_eq!(usd(Some(2.106111)), "$2.106");
        assert_eq!(usd(Some(210.6)), "$211");
        assert_eq!(usd(Some(f64::INFINITY)), NONE);
        assert_eq!(usd(Some(0.000_312)), "$0.00031");
        assert_eq!(usd(Some(0.0123)), "$0.012");
        assert_eq!(short(10.0), "10");
        assert_eq!(short(5.0), "5");
        assert_eq!(short(0.0), "0");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(1000.0), "1000");
        assert_eq!(short(31.622_776), "31.6");
        assert_eq!(short(0.012_34), "0.0123");
        assert_eq!(short(20_000.0), "20k");
        assert_eq!(short(1_000_000.0), "1M");
        assert_eq!(short(316_227.8), "316k");
    }

    #[test]
    fn empty_inputs_render() {
        let m = markdown(&[]);
        assert!(m.starts_with("| # | kind | instance |"));
        let h = html(&[]);
        assert!(h.contains("<svg") && h.contains("<table>") && h.ends_with("</html>\n"));
    }
}
