//! The report's SVG charts (plotters' SVG backend): throughput against TPOT, and $ per 1M output
//! tokens; log axes where the values span more than a decade.

use super::{html_escape, label, usd};
use crate::report::Report;
use plotters::prelude::*;

const W: u32 = 640;
const H: u32 = 420;
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A placeholder SVG with a message.
fn empty_svg(title: &str, message: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} 120\" width=\"{W}\" height=\"120\">\
         <text x=\"{}\" y=\"30\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"18\">{}</text>\
         <text x=\"{}\" y=\"75\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"14\" fill=\"#59636e\">{}</text></svg>\n",
        W / 2,
        html_escape(title),
        W / 2,
        html_escape(message)
    )
}

/// An axis range over `values` (all finite, positive when `log`), padded, in plot space
/// (log10 when `log`).
fn axis(values: &[f64], log: bool) -> (f64, f64) {
    let t = |v: f64| if log { v.log10() } else { v };
    let lo = values.iter().copied().map(t).fold(f64::INFINITY, f64::min);
    let hi = values
        .iter()
        .copied()
        .map(t)
        .fold(f64::NEG_INFINITY, f64::max);
    if log {
        let pad = ((hi - lo) * 0.15).max(0.15);
        (lo - pad, hi + pad)
    } else {
        let pad = ((hi - lo) * 0.15).max(hi.abs() * 0.15).max(1e-9);
        ((lo - pad).max(0.0), hi + pad)
    }
}

/// A log2 axis range over positive `values` (powers of two land on whole numbers), padded by
/// a third of an octave at least.
fn axis_log2(values: &[f64]) -> (f64, f64) {
    let lo = values
        .iter()
        .map(|v| v.log2())
        .fold(f64::INFINITY, f64::min);
    let hi = values
        .iter()
        .map(|v| v.log2())
        .fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.08).max(0.35);
    (lo - pad, hi + pad)
}

/// Whether values spread over enough decades to want a log axis.
fn wants_log(values: &[f64]) -> bool {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    lo > 0.0 && hi / lo > 30.0
}

fn tick(v: f64, log: bool) -> String {
    short(if log { 10f64.powf(v) } else { v })
}

/// An axis tick: at most three significant digits, no trailing zeros, `k` for thousands.
pub(super) fn short(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    if v.abs() >= 1_000_000.0 {
        return format!("{}M", short(v / 1e6));
    }
    if v.abs() >= 10_000.0 {
        return format!("{}k", short(v / 1000.0));
    }
    let digits = if v == 0.0 {
        0
    } else {
        (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Output tok/s (x) against TPOT p50 (y), one labelled point per report that has both.
pub(super) fn scatter_svg(reports: &[Report]) -> String {
    let title = "Throughput vs latency";
    let pts: Vec<(usize, f64, f64)> = reports
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let x = r.output_tok_s()?;
            let y = r.metrics.serving.as_ref()?.tpot_ms.as_ref()?.median;
            (x.is_finite() && y.is_finite() && x > 0.0 && y > 0.0).then_some((i, x, y))
        })
        .collect();
    if pts.is_empty() {
        return empty_svg(title, "no report has both output tok/s and TPOT p50");
    }
    let xs: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let ys: Vec<f64> = pts.iter().map(|p| p.2).collect();
    let (xlog, ylog) = (wants_log(&xs), wants_log(&ys));
    let (x0, x1) = axis(&xs, xlog);
    let (y0, y1) = axis(&ys, ylog);
    let tx = |v: f64| if xlog { v.log10() } else { v };
    let ty = |v: f64| if ylog { v.log10() } else { v };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 22))
                .margin(14)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            chart
                .configure_mesh()
                .x_desc(if xlog {
                    "output tokens/s (log scale)"
                } else {
                    "output tokens/s"
                })
                .y_desc(if ylog {
                    "TPOT p50, ms (log scale)"
                } else {
                    "TPOT p50, ms"
                })
                .x_label_formatter(&|v| tick(*v, xlog))
                .y_label_formatter(&|v| tick(*v, ylog))
                .x_labels(7)
                .y_labels(7)
                .light_line_style(RGBColor(240, 242, 245))
                .bold_line_style(RGBColor(218, 222, 228))
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 15))
                .draw()?;
            for &(i, x, y) in &pts {
                let color = PALETTE[i % PALETTE.len()];
                let text = format!("#{} {}", i + 1, label(&reports[i]));
                // Labels of points in the right half go to their left, so they stay inside.
                let right_half = tx(x) > (x0 + x1) / 2.0;
                let width = (text.len() as f64 * 15.0 * 0.46) as i32;
                let dx = if right_half { -10 - width } else { 10 };
                chart.draw_series(std::iter::once(
                    EmptyElement::at((tx(x), ty(y)))
                        + Circle::new((0, 0), 6, color.filled())
                        + Text::new(
                            text,
                            (dx, -18),
                            ("sans-serif", 15).into_font().color(&color),
                        ),
                ))?;
            }
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            let msg = e.to_string();
            drop(root);
            return empty_svg(title, &format!("chart failed: {msg}"));
        }
    }
    svg
}

/// $/1M output tokens, horizontal bars: each measured report, then the published and
/// projected rows the reports carry (the cheapest projected option per instance), each bar's
/// label saying its kind; a log axis when the costs span more than 30×.
pub(super) fn cost_svg(reports: &[Report]) -> String {
    let title = "$ per 1M output tokens";
    const PUBLISHED: RGBColor = RGBColor(110, 110, 110);
    const PROJECTED: RGBColor = RGBColor(158, 202, 225);
    let mut bars: Vec<(String, f64, RGBColor)> = reports
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let c = r.cost.as_ref()?.usd_per_1m_output_tokens?;
            Some((
                format!("measured #{} {}", i + 1, label(r)),
                c,
                PALETTE[i % PALETTE.len()],
            ))
        })
        .collect();
    for (model, c) in super::comparisons(reports) {
        for ch in &c.published {
            if let Some(usd) = crate::projection::published_usd_per_m_output(&ch.published) {
                let r = &ch.published;
                bars.push((
                    format!(
                        "published {} {} {} tp{} b{}",
                        r.instance, r.model, r.dtype, r.tp, r.batch
                    ),
                    usd,
                    PUBLISHED,
                ));
            }
        }
        let mut best: Vec<&crate::projection::Calibrated> = Vec::new();
        for p in &c.projected {
            let usd = p.usd_per_m_output.unwrap_or(f64::INFINITY);
            match best
                .iter_mut()
                .find(|b| b.projection.instance == p.projection.instance)
            {
                Some(b) if b.usd_per_m_output.unwrap_or(f64::INFINITY) > usd => *b = p,
                Some(_) => {}
                None => best.push(p),
            }
        }
        for p in best {
            if let Some(usd) = p.usd_per_m_output {
                bars.push((
                    format!(
                        "projected {} {model} {} tp{}×{}",
                        p.projection.instance,
                        p.projection.dtype.as_str(),
                        p.projection.tp,
                        p.projection.replicas
                    ),
                    usd,
                    PROJECTED,
                ));
            }
        }
    }
    bars.retain(|b| b.1.is_finite() && b.1 > 0.0);
    if bars.is_empty() {
        return empty_svg(
            title,
            "no report has a price (pass --instance or --price-per-hour)",
        );
    }
    let values: Vec<f64> = bars.iter().map(|b| b.1).collect();
    let log = wants_log(&values);
    let tx = |v: f64| if log { v.log10() } else { v };
    let (lo, hi) = axis(&values, log);
    let lo = if log { lo } else { 0.0 };
    let longest = bars.iter().map(|b| b.0.len()).max().unwrap_or(8) as u32;
    let n = bars.len();
    let height = (110 + 30 * n as u32).max(220);
    let width = W.max(longest * 7 + 420);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 22))
                .margin(14)
                .x_label_area_size(40)
                .y_label_area_size(longest * 7 + 16)
                .build_cartesian_2d(lo..hi + (hi - lo) * 0.12, -0.5..(n as f64 - 0.5))?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(n)
                .y_label_formatter(&|v| {
                    let k = v.round();
                    if (v - k).abs() < 1e-6 && k >= 0.0 && (k as usize) < n {
                        // Top to bottom in the order above.
                        bars[n - 1 - k as usize].0.clone()
                    } else {
                        String::new()
                    }
                })
                .x_label_formatter(&|v| format!("${}", tick(*v, log)))
                .x_desc(if log {
                    "USD per 1M output tokens (log scale)"
                } else {
                    "USD per 1M output tokens"
                })
                .light_line_style(RGBColor(240, 242, 245))
                .bold_line_style(RGBColor(218, 222, 228))
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 15))
                .draw()?;
            for (k, (_, c, color)) in bars.iter().enumerate() {
                let y = (n - 1 - k) as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(lo, y - 0.34), (tx(*c), y + 0.34)],
                    color.filled(),
                )))?;
                chart.draw_series(std::iter::once(Text::new(
                    usd(Some(*c)),
                    (tx(*c) + (hi - lo) * 0.012, y + 0.15),
                    ("sans-serif", 13).into_font().color(&BLACK),
                )))?;
            }
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            let msg = e.to_string();
            drop(root);
            return empty_svg(title, &format!("chart failed: {msg}"));
        }
    }
    svg
}

/// Twelve distinguishable colors (matplotlib's tab10 and two more) for charts with a series
/// per instance.
const WIDE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(255, 187, 120),
];

/// A legend in its own panel beside the plot: `(label, color, line)` rows (a line sample, or a
/// dot).
fn side_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    rows: &[(String, RGBColor, bool)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    for (k, (text, color, line)) in rows.iter().enumerate() {
        let y = 60 + 22 * k as i32;
        if *line {
            area.draw(&PathElement::new(
                vec![(8, y), (30, y)],
                color.stroke_width(3),
            ))?;
        } else {
            area.draw(&Circle::new((19, y), 5, color.filled()))?;
        }
        area.draw(&Text::new(
            text.clone(),
            (38, y - 8),
            ("sans-serif", 14).into_font(),
        ))?;
    }
    Ok(())
}

/// The instance family of a projection (inf2, trn1, g6e, p5, …): one color per family.
fn family(instance: &str) -> &str {
    instance.split('.').next().unwrap_or(instance)
}

fn family_color(families: &[&str], f: &str) -> RGBColor {
    let i = families.iter().position(|x| *x == f).unwrap_or(0);
    WIDE[i % WIDE.len()]
}

/// The calibrated projections a chart draws: every instance × degree × batch × weight format
/// that fits, with a price.
fn projected_points(c: &crate::projection::Comparison) -> Vec<crate::projection::Calibrated> {
    crate::projection::sweep(&c.model, &crate::projection::WeightDtype::ALL, c.shape)
        .iter()
        .map(crate::projection::calibrate)
        .filter(|p| p.usd_per_m_output.is_some_and(|u| u.is_finite() && u > 0.0))
        .collect()
}

/// The plot area of a log-log chart: coordinates in log10 space.
type LogLog<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Axes of a log-log chart: ranges (log10 space; log2 for x when `x_base2`), descriptions, and
/// a prefix for y ticks.
struct LogAxes<'a> {
    x: (f64, f64),
    /// x in log2 space with a tick at each power of two (concurrency, batch sizes: 1, 2, 4, …),
    /// where log10 ticks would fall on 1.58, 2.51, ….
    x_base2: bool,
    y: (f64, f64),
    x_desc: &'a str,
    y_desc: &'a str,
    y_prefix: &'a str,
}

/// A log-log chart with its legend in a panel on the right; `draw` puts the series in (points
/// already in log10 space). A drawing error becomes a placeholder naming it.
fn log_log_svg(
    title: &str,
    legend: &[(String, RGBColor, bool)],
    axes: LogAxes<'_>,
    draw: impl FnOnce(&mut LogLog<'_, '_>) -> Result<(), DrawingAreaErrorKind<std::io::Error>>,
) -> String {
    let mut svg = String::new();
    {
        // The legend panel is as wide as its longest name needs (sans-serif 14 px: under 8.5 px
        // a character), 200 px at least.
        let longest = legend
            .iter()
            .map(|l| l.0.chars().count())
            .max()
            .unwrap_or(0);
        let side = (48 + (longest as u32 * 85).div_ceil(10)).max(200);
        let root = SVGBackend::with_string(&mut svg, (W + 60 + side, H + 80)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let (plot, side) = root.split_horizontally(W + 60);
            side_legend(&side, legend)?;
            let mut chart = ChartBuilder::on(&plot)
                .caption(title, ("sans-serif", 20))
                .margin(14)
                .x_label_area_size(50)
                .y_label_area_size(80)
                .build_cartesian_2d(axes.x.0..axes.x.1, axes.y.0..axes.y.1)?;
            chart
                .configure_mesh()
                .x_desc(axes.x_desc)
                .y_desc(axes.y_desc)
                .x_label_formatter(&|v| {
                    if axes.x_base2 {
                        short(2f64.powf(*v))
                    } else {
                        tick(*v, true)
                    }
                })
                .y_label_formatter(&|v| format!("{}{}", axes.y_prefix, tick(*v, true)))
                .x_labels(if axes.x_base2 {
                    // One label per power of two (plotters picks the step 1 in log2 space).
                    ((axes.x.1 - axes.x.0).floor() as usize + 1).clamp(2, 12)
                } else {
                    8
                })
                .y_labels(8)
                .light_line_style(RGBColor(240, 242, 245))
                .bold_line_style(RGBColor(218, 222, 228))
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 14))
                .draw()?;
            draw(&mut chart)?;
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            let msg = e.to_string();
            drop(root);
            return empty_svg(title, &format!("chart failed: {msg}"));
        }
    }
    svg
}

/// $/1M output tokens (y) against TPOT (x) for every projected option, one color per instance
/// family, and the Pareto front (no option both faster and cheaper) as a line with its points
/// named. Log axes: both span decades.
pub(super) fn pareto_svg(model: &str, c: &crate::projection::Comparison) -> String {
    let title = format!("{model}: $ per 1M output tokens vs TPOT (projected)");
    let pts = projected_points(c);
    if pts.is_empty() {
        return empty_svg(&title, "the model fits no priced instance");
    }
    let xy: Vec<(f64, f64)> = pts
        .iter()
        .map(|p| (p.tpot_ms, p.usd_per_m_output.unwrap_or(f64::NAN)))
        .collect();
    let xs: Vec<f64> = xy.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = xy.iter().map(|p| p.1).collect();
    let (x0, x1) = axis(&xs, true);
    let (y0, y1) = axis(&ys, true);
    // The front: sorted by TPOT, each point cheaper than every faster one.
    let mut order: Vec<usize> = (0..pts.len()).collect();
    order.sort_by(|&a, &b| {
        xy[a]
            .0
            .total_cmp(&xy[b].0)
            .then(xy[a].1.total_cmp(&xy[b].1))
    });
    let mut front: Vec<usize> = Vec::new();
    let mut best = f64::INFINITY;
    for i in order {
        if xy[i].1 < best {
            best = xy[i].1;
            front.push(i);
        }
    }
    let mut families: Vec<&str> = pts.iter().map(|p| family(&p.projection.instance)).collect();
    families.sort_unstable();
    families.dedup();
    let mut legend: Vec<(String, RGBColor, bool)> = families
        .iter()
        .map(|f| (f.to_string(), family_color(&families, f), false))
        .collect();
    legend.push(("Pareto front".into(), BLACK, true));
    let axes = LogAxes {
        x: (x0, x1),
        x_base2: false,
        y: (y0, y1),
        x_desc: "TPOT, ms (log scale; calibrated projection)",
        y_desc: "USD per 1M output tokens (log scale)",
        y_prefix: "$",
    };
    log_log_svg(&title, &legend, axes, |chart| {
        for f in &families {
            let color = family_color(&families, f);
            let mine: Vec<(f64, f64)> = pts
                .iter()
                .zip(&xy)
                .filter(|(p, _)| family(&p.projection.instance) == *f)
                .map(|(_, &(x, y))| (x.log10(), y.log10()))
                .collect();
            chart.draw_series(
                mine.iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.mix(0.55).filled())),
            )?;
        }
        let line: Vec<(f64, f64)> = front
            .iter()
            .map(|&i| (xy[i].0.log10(), xy[i].1.log10()))
            .collect();
        chart.draw_series(std::iter::once(PathElement::new(
            line,
            BLACK.stroke_width(2),
        )))?;
        // Name the front's points where an instance or format changes along it.
        let mut last = String::new();
        for &i in &front {
            let p = &pts[i].projection;
            let name = format!(
                "{} {} tp{} b{}",
                p.instance,
                p.dtype.as_str(),
                p.tp,
                p.batch
            );
            let key = format!("{} {}", p.instance, p.dtype.as_str());
            if key == last {
                continue;
            }
            last = key;
            chart.draw_series(std::iter::once(
                EmptyElement::at((xy[i].0.log10(), xy[i].1.log10()))
                    + Circle::new((0, 0), 4, BLACK.filled())
                    + Text::new(name, (8, -14), ("sans-serif", 12).into_font()),
            ))?;
        }
        Ok(())
    })
}

/// Output tok/s (y) against concurrency (x, the batch each replica decodes) per instance: at
/// each batch the best degree and format; log axes.
pub(super) fn concurrency_svg(model: &str, c: &crate::projection::Comparison) -> String {
    let title = format!("{model}: throughput vs concurrency (projected)");
    let pts = projected_points(c);
    if pts.is_empty() {
        return empty_svg(&title, "the model fits no priced instance");
    }
    let mut instances: Vec<&str> = pts.iter().map(|p| p.projection.instance.as_str()).collect();
    instances.sort_unstable();
    instances.dedup();
    // Per instance: batch → best instance tok/s.
    let lines: Vec<(&str, Vec<(f64, f64)>)> = instances
        .iter()
        .map(|inst| {
            let mut by_batch: Vec<(usize, f64)> = Vec::new();
            for p in pts.iter().filter(|p| p.projection.instance == *inst) {
                let b = p.projection.batch;
                match by_batch.iter_mut().find(|x| x.0 == b) {
                    Some(x) => x.1 = x.1.max(p.output_tok_s),
                    None => by_batch.push((b, p.output_tok_s)),
                }
            }
            by_batch.sort_by_key(|x| x.0);
            (
                *inst,
                by_batch.into_iter().map(|(b, t)| (b as f64, t)).collect(),
            )
        })
        .collect();
    let xs: Vec<f64> = lines.iter().flat_map(|l| l.1.iter().map(|p| p.0)).collect();
    let ys: Vec<f64> = lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)).collect();
    let (x0, x1) = axis_log2(&xs);
    let (y0, y1) = axis(&ys, true);
    let legend: Vec<(String, RGBColor, bool)> = lines
        .iter()
        .enumerate()
        .map(|(k, (inst, _))| (inst.to_string(), WIDE[k % WIDE.len()], true))
        .collect();
    let axes = LogAxes {
        x: (x0, x1),
        x_base2: true,
        y: (y0, y1),
        x_desc: "concurrent sequences per replica (log scale)",
        y_desc: "output tokens/s per instance (log scale; calibrated)",
        y_prefix: "",
    };
    log_log_svg(&title, &legend, axes, |chart| {
        for (k, (_, line)) in lines.iter().enumerate() {
            let color = WIDE[k % WIDE.len()];
            let pts: Vec<(f64, f64)> = line.iter().map(|&(x, y)| (x.log2(), y.log10())).collect();
            chart.draw_series(std::iter::once(PathElement::new(
                pts.clone(),
                color.stroke_width(2),
            )))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        Ok(())
    })
}

/// Measured output tok/s (y) against concurrency (x) for the reports that ran at a set
/// concurrency (online runs, imported sweeps such as a GuideLLM run over several stream counts):
/// one line per instance × tool × backend × model, points in concurrency order; log axes. Only
/// what was measured: the projected curves are in [`concurrency_svg`].
pub(super) fn measured_concurrency_svg(reports: &[Report]) -> String {
    let title = "Throughput vs concurrency (measured)";
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in reports {
        let (Some(c), Some(t)) = (
            r.config.concurrency,
            r.metrics.serving.as_ref().and_then(|s| s.output_throughput),
        ) else {
            continue;
        };
        if c == 0 || !(t.is_finite() && t > 0.0) {
            continue;
        }
        let name = series_name(r);
        match series.iter_mut().find(|s| s.0 == name) {
            Some(s) => s.1.push((c as f64, t)),
            None => series.push((name, vec![(c as f64, t)])),
        }
    }
    if series.is_empty() {
        return empty_svg(
            title,
            "no report ran at a set concurrency (online runs, imported sweeps)",
        );
    }
    for s in &mut series {
        s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .collect();
    let (x0, x1) = axis_log2(&xs);
    let (y0, y1) = axis(&ys, true);
    let legend: Vec<(String, RGBColor, bool)> = series
        .iter()
        .enumerate()
        .map(|(k, (name, _))| (name.clone(), WIDE[k % WIDE.len()], true))
        .collect();
    let axes = LogAxes {
        x: (x0, x1),
        x_base2: true,
        y: (y0, y1),
        x_desc: "concurrent requests (log scale)",
        y_desc: "output tokens/s (log scale; measured)",
        y_prefix: "",
    };
    log_log_svg(title, &legend, axes, |chart| {
        for (k, (_, line)) in series.iter().enumerate() {
            let color = WIDE[k % WIDE.len()];
            let pts: Vec<(f64, f64)> = line.iter().map(|&(x, y)| (x.log2(), y.log10())).collect();
            chart.draw_series(std::iter::once(PathElement::new(
                pts.clone(),
                color.stroke_width(2),
            )))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        Ok(())
    })
}

/// A legend name for one measured series (the same for a run's several concurrencies):
/// instance (when known), tool, silica's backend when not the CPU, model; at most 40 characters.
fn series_name(r: &Report) -> String {
    let mut name = match r.machine.instance_type.as_deref() {
        Some(i) => format!("{i} {}", r.source.as_str()),
        None => r.source.as_str().to_string(),
    };
    if let Some(b) = r
        .config
        .backend
        .as_deref()
        .filter(|b| r.source == crate::report::Source::Silica && *b != "cpu")
    {
        name.push('/');
        name.push_str(b);
    }
    if !r.model.name.is_empty() {
        name.push_str(" · ");
        name.push_str(short_name(&r.model.name));
    }
    if name.chars().count() > 40 {
        name = name.chars().take(39).collect::<String>() + "…";
    }
    name
}

/// A model id's last path component (`meta-llama/Llama-3.1-8B` → `Llama-3.1-8B`), for legends.
fn short_name(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}
