//! The comparison's output: `compare.json` (every trial's raw figures and the run's conditions),
//! `compare.md` (medians with min-max over repeats, and the targets as ratios within the run) and
//! three SVG plots against the offered flood rate, one line per defence.
use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use plotters::{coord::types::RangedCoordf64, prelude::*};

use crate::{
    Trial,
    defence::{Defence, ServerOptions},
};

/// One whole run.
#[derive(Debug, serde::Serialize)]
pub struct Run {
    pub started_unix: u64,
    pub seconds_total: f64,
    pub kernel: String,
    pub cpus: usize,
    /// `/proc/loadavg` before and after: other work on the machine shows here.
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub seed: u64,
    pub repeats: usize,
    pub flood_seconds: f64,
    pub requests_per_trial: usize,
    pub rates: Vec<u64>,
    pub defences: Vec<Defence>,
    /// SYN/s of the generator unpaced for 2 s (kernel cookies answering).
    pub generator_max_rate: f64,
    pub server: ServerOptions,
    pub trials: Vec<Trial>,
}

/// A rate as the tables name it.
#[must_use]
pub fn rate_name(rate: u64) -> String {
    match rate {
        0 => "0".to_owned(),
        u64::MAX => "max".to_owned(),
        r if r % 1000 == 0 => format!("{}k", r / 1000),
        r => r.to_string(),
    }
}

/// Median, min and max of a metric over the repeats of one (defence, rate).
#[derive(Debug, Clone, Copy)]
struct Spread {
    med: f64,
    min: f64,
    max: f64,
}

fn spread(mut v: Vec<f64>) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    };
    Some(Spread {
        med,
        min: v[0],
        max: v[n - 1],
    })
}

/// The `p`th percentile (nearest rank) of `v`, or `None` if empty.
fn pct(mut v: Vec<f64>, p: usize) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[(v.len() * p).div_ceil(100).saturating_sub(1)])
}

impl Run {
    /// The `p`th percentile of a latency over every request of every repeat of (d, rate).
    fn pooled(&self, d: Defence, rate: u64, p: usize, f: fn(&Trial) -> &Vec<f64>) -> Option<f64> {
        pct(
            self.of(d, rate)
                .flat_map(|t| f(t).iter().copied())
                .collect(),
            p,
        )
    }

    fn of(&self, d: Defence, rate: u64) -> impl Iterator<Item = &Trial> {
        self.trials
            .iter()
            .filter(move |t| t.defence == d && t.rate == rate)
    }

    fn metric(&self, d: Defence, rate: u64, f: impl Fn(&Trial) -> f64) -> Option<Spread> {
        spread(self.of(d, rate).map(f).collect())
    }

    fn top_rate(&self) -> u64 {
        self.rates.iter().copied().max().unwrap_or(0)
    }
}

fn cell(s: Option<Spread>, digits: usize) -> String {
    match s {
        None => "-".to_owned(),
        Some(s) if (s.max - s.min).abs() < f64::EPSILON => format!("{:.digits$}", s.med),
        Some(s) => format!("{:.digits$} ({:.digits$}-{:.digits$})", s.med, s.min, s.max),
    }
}

fn kilo(s: Option<Spread>) -> Option<Spread> {
    s.map(|s| Spread {
        med: s.med / 1e3,
        min: s.min / 1e3,
        max: s.max / 1e3,
    })
}

/// The targets, as ratios of ours (intercept and auto mode) to the kernel's cookies.
fn targets(run: &Run) -> String {
    let mut o = String::new();
    let ours = [
        Defence::OursIntercept,
        Defence::OursAuto,
        Defence::OursWatch,
    ];
    let k = Defence::KernelCookies;
    let med = |d, r, f: fn(&Trial) -> f64| run.metric(d, r, f).map(|s| s.med);
    let _ = writeln!(o, "| target | defence | figure | met? |\n|---|---|---|---|");
    for d in ours.into_iter().filter(|d| run.defences.contains(d)) {
        let worst = run
            .trials
            .iter()
            .filter(|t| t.defence == d)
            .map(|t| t.success_pct)
            .fold(f64::INFINITY, f64::min);
        if worst.is_finite() {
            let _ = writeln!(
                o,
                "| 100% legitimate success at every rate | {} | lowest trial {worst:.1}% | {} |",
                d.name(),
                if worst >= 100.0 { "yes" } else { "no" }
            );
        }
        for &r in &run.rates {
            if let (Some(a), Some(b)) = (
                run.pooled(d, r, 50, |t| &t.latencies_ms),
                run.pooled(k, r, 50, |t| &t.latencies_ms),
            ) && b > 0.0
            {
                let x = a / b;
                let _ = writeln!(
                    o,
                    "| request p50 <= 1.5x kernel cookies' | {} | {x:.2}x at {} SYN/s | {} |",
                    d.name(),
                    rate_name(r),
                    if x <= 1.5 { "yes" } else { "no" }
                );
            }
        }
        let top = run.top_rate();
        if let (Some(a), Some(b)) = (
            med(d, top, |t| t.syn_acks_per_s),
            med(k, top, |t| t.syn_acks_per_s),
        ) && b > 0.0
        {
            let x = a / b;
            let _ = writeln!(
                o,
                "| SYN-ACK/s >= 10x kernel cookies' at the top rate | {} | {x:.2}x ({a:.0} vs {b:.0}/s) | {} |",
                d.name(),
                if x >= 10.0 { "yes" } else { "no" }
            );
        }
        if let (Some(a), Some(b)) = (
            med(d, 200_000, |t| t.cpu_ns_per_syn),
            med(k, 200_000, |t| t.cpu_ns_per_syn),
        ) && b > 0.0
        {
            let x = a / b;
            let _ = writeln!(
                o,
                "| server CPU/SYN <= 1/12 (0.083x) of kernel cookies' at 200k SYN/s | {} | {x:.3}x ({a:.0} vs {b:.0} ns) | {} |",
                d.name(),
                if x <= 1.0 / 12.0 { "yes" } else { "no" }
            );
        }
    }
    o
}

#[allow(clippy::cast_precision_loss, reason = "counts in a table")]
fn markdown(run: &Run) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Defences compared under a spoofed SYN flood\n\n\
         Linux {}, {} CPUs; load average {} at the start, {} at the end (other work shares this \
         machine: compare within the run, not across runs). {} repeats of every (defence, rate) \
         trial in shuffled order (seed {:#x}), {} s floods, {} requests per trial; {:.0} s in all. \
         Generator maximum: {:.0} SYN/s (BPF live frames, one core). Latency percentiles pool \
         every request of every repeat (the per-repeat p50s' min-max in brackets); other figures: \
         median over repeats, (min-max) when they differ. Requests run one after another, so \
         under loss (a SYN lost waits 1 s for its retransmission) fewer are made.\n",
        run.kernel,
        run.cpus,
        run.loadavg_start,
        run.loadavg_end,
        run.repeats,
        run.seed,
        run.flood_seconds,
        run.requests_per_trial,
        run.seconds_total,
        run.generator_max_rate
    );
    let _ = writeln!(
        o,
        "| rate | defence | offered kSYN/s | success % (ok/made) | request p50 ms | request p99 ms | connect p50 ms | SYN-ACK k/s | server CPU ns/SYN | of which our program | server NAPI % | ring drops k | client retrans |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for &r in &run.rates {
        for &d in &run.defences {
            if run.of(d, r).next().is_none() {
                continue;
            }
            let m = |f: fn(&Trial) -> f64| run.metric(d, r, f);
            let ok: usize = run.of(d, r).map(|t| t.requests_ok).sum();
            let made: usize = run.of(d, r).map(|t| t.requests_attempted).sum();
            let pooled = |p, f| {
                run.pooled(d, r, p, f)
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} ({ok}/{made}) | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |",
                rate_name(r),
                d.name(),
                cell(kilo(m(|t| t.offered_rate)), 0),
                cell(m(|t| t.success_pct), 1),
                pooled(50, |t| &t.latencies_ms),
                cell(m(|t| t.request_p50_ms), 2)
                    .split_once(' ')
                    .map_or(String::new(), |(_, b)| format!(" {b}")),
                pooled(99, |t| &t.latencies_ms),
                pooled(50, |t| &t.connects_ms),
                cell(kilo(m(|t| t.syn_acks_per_s)), 1),
                cell(m(|t| t.cpu_ns_per_syn), 0),
                if d.ours() {
                    cell(m(|t| t.prog_ns_per_run), 0)
                } else {
                    "-".to_owned()
                },
                cell(m(|t| t.server_napi_util * 100.0), 0),
                cell(kilo(m(|t| t.ring_drops as f64)), 0),
                cell(m(|t| t.client_retrans_segs as f64), 0),
            );
        }
    }
    let _ = writeln!(
        o,
        "\n## Targets (ratios within this run)\n\n{}\n\
         Plots: `success.svg`, `latency.svg`, `synack.svg`; every raw figure (per trial: the \
         server's TCP counters, synproxy's, both veth ends', our program's) in `compare.json`.",
        targets(run)
    );
    o
}

/// Distinct colours per defence, in `Defence::ALL` order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn plot(
    run: &Run,
    path: &Path,
    title: &str,
    y_label: &str,
    y_of: impl Fn(Defence, u64) -> Option<f64>,
    log_y: bool,
) -> anyhow::Result<()> {
    // One point per (defence, rate): the median offered rate and the figure (none where there is
    // none, e.g. the latency of a defence that answered no request).
    let mut series = Vec::new();
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, 0.0f64);
    for &d in &run.defences {
        let mut pts = Vec::new();
        for &r in &run.rates {
            if let (Some(x), Some(y)) = (run.metric(d, r, |t| t.offered_rate / 1e3), y_of(d, r))
                && (!log_y || y > 0.0)
            {
                x_max = x_max.max(x.med);
                y_max = y_max.max(y);
                if y > 0.0 {
                    y_min = y_min.min(y);
                }
                pts.push((x.med, y));
            }
        }
        series.push((d, pts));
    }
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_range = 0.0..x_max * 1.05;
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60);
    if log_y {
        let lo = if y_min.is_finite() { y_min / 1.5 } else { 0.01 };
        let chart = b.build_cartesian_2d(x_range, (lo..y_max.max(lo * 2.0) * 1.5).log_scale())?;
        finish_chart(chart, &series, y_label, SeriesLabelPosition::UpperLeft)?;
    } else {
        let chart = b.build_cartesian_2d(x_range, 0.0..(y_max * 1.1).max(1.0))?;
        finish_chart(chart, &series, y_label, SeriesLabelPosition::LowerLeft)?;
    }
    root.present()?;
    Ok(())
}

/// Draws the axes, one line per defence and the legend.
fn finish_chart<'a, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    series: &[(Defence, Vec<(f64, f64)>)],
    y_label: &str,
    legend: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("offered flood rate (k SYN/s)")
        .y_desc(y_label)
        .draw()?;
    for (d, pts) in series {
        let i = Defence::ALL.iter().position(|a| a == d).unwrap_or(0);
        let c = COLOURS[i];
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(d.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Writes `compare.json`, `compare.md` and the plots into `dir`.
///
/// # Errors
/// If a file cannot be written.
pub fn write(run: &Run, dir: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(run)?;
    std::fs::write(dir.join("compare.json"), json + "\n").context("write compare.json")?;
    let md = markdown(run);
    std::fs::write(dir.join("compare.md"), &md).context("write compare.md")?;
    println!("{md}");
    let med = |f: fn(&Trial) -> f64| move |d, r| run.metric(d, r, f).map(|s| s.med);
    plot(
        run,
        &dir.join("success.svg"),
        "Legitimate requests answered",
        "success (%)",
        med(|t| t.success_pct),
        false,
    )?;
    plot(
        run,
        &dir.join("latency.svg"),
        "Request latency, p50 over all repeats (connect + request + echo)",
        "ms (log)",
        |d, r| run.pooled(d, r, 50, |t| &t.latencies_ms),
        true,
    )?;
    plot(
        run,
        &dir.join("synack.svg"),
        "SYN-ACKs sent",
        "k SYN-ACK/s",
        med(|t| t.syn_acks_per_s / 1e3),
        false,
    )?;
    Ok(())
}
