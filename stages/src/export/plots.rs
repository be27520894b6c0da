//! Hand-written SVG charts of a run's report.
//!
//! - [`scores_by_layer_svg`]: the gradient scores of the matrices against their layer,
//!   one line per matrix kind, for the smallest K and keep in the report.
//! - [`accuracy_vs_keep_svg`]: the selection accuracy of the evaluated candidates
//!   against keep (rho), one line per (matrix, K), with the baseline and the
//!   always-the-majority-answer accuracy as horizontal references.
//!
//! Output is deterministic: the same report gives byte-identical SVG (no hash-map
//! iteration, every coordinate printed with two decimals).

use super::report::{fmt_keep, short_matrix_name};
use super::schema::Report;
use std::fmt::Write as _;

/// Line colors (Tableau 10), in order.
pub(crate) const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The matrix kinds in a llama layer, in the order their colors are assigned.
const KIND_ORDER: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

/// Escapes text and attribute values for SVG (`&`, `<`, `>`, `"`).
pub(crate) fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A coordinate with two decimals (never `-0.00`).
fn c2(v: f64) -> String {
    let s = format!("{v:.2}");
    if s == "-0.00" {
        "0.00".to_string()
    } else {
        s
    }
}

/// Axis ticks: the axis's extent and the tick values with their labels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ticks {
    pub lo: f64,
    pub hi: f64,
    pub values: Vec<f64>,
    pub labels: Vec<String>,
}

/// `m * 10^e`, computed so that decimal values come out correctly rounded
/// (`6 / 10` rather than `6 * 0.1`).
fn scaled(m: i64, e: i32) -> f64 {
    if e >= 0 {
        m as f64 * 10f64.powi(e)
    } else {
        m as f64 / 10f64.powi(-e)
    }
}

/// A round step (1, 2 or 5 times a power of ten) near `raw`, as (mantissa, exponent).
fn nice_step(raw: f64) -> (i64, i32) {
    let e = raw.log10().floor() as i32;
    let f = raw / 10f64.powi(e);
    match f {
        f if f < 1.5 => (1, e),
        f if f < 3.0 => (2, e),
        f if f < 7.0 => (5, e),
        _ => (1, e + 1),
    }
}

/// About `target` round ticks covering `[lo, hi]` (the axis extends to the outer
/// ticks); labels have as many decimals as the step needs. A degenerate range is
/// widened.
pub(crate) fn nice_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    nice_ticks_with(lo, hi, target, false)
}

/// [`nice_ticks`] for data in `[lo, hi]`, padded by 4% of the range on each side so
/// that no marker or label sits on the frame.
fn padded_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let pad = (hi - lo).abs() * 0.04;
    nice_ticks(lo - pad, hi + pad, target)
}

/// [`nice_ticks`], with whole-number steps only when `integer` is set.
fn nice_ticks_with(lo: f64, hi: f64, target: usize, integer: bool) -> Ticks {
    let (mut lo, mut hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo <= 1e-12 * lo.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        let pad = if integer { pad.max(1.0) } else { pad };
        lo -= pad;
        hi += pad;
    }
    let raw = (hi - lo) / (target.max(2) - 1) as f64;
    let (mut m, mut e) = nice_step(raw);
    if integer && e < 0 {
        (m, e) = (1, 0);
    }
    let step = scaled(m, e);
    let kmin = (lo / step + 1e-9).floor() as i64;
    let kmax = (hi / step - 1e-9).ceil() as i64;
    let decimals = (-e).max(0) as usize;
    let values: Vec<f64> = (kmin..=kmax).map(|k| scaled(k * m, e)).collect();
    let labels = values.iter().map(|v| label(*v, decimals)).collect();
    Ticks {
        lo: scaled(kmin * m, e),
        hi: scaled(kmax * m, e),
        values,
        labels,
    }
}

fn label(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// Ticks for a log axis over positive `[lo, hi]`: 1, 2 and 5 times the powers of ten
/// (only the powers of ten when that makes more than 12), the axis extending to the
/// nearest tick outside the data.
pub(crate) fn log_ticks(lo: f64, hi: f64) -> Ticks {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let e_lo = (lo.log10() + 1e-9).floor() as i32;
    let e_hi = (hi.log10() - 1e-9).ceil() as i32;
    let mut all: Vec<(i64, i32)> = Vec::new();
    for e in e_lo..=e_hi {
        for m in [1, 2, 5] {
            all.push((m, e));
        }
    }
    all.push((1, e_hi + 1));
    let value = |&(m, e): &(i64, i32)| scaled(m, e);
    let eps = 1e-9;
    let first = all
        .iter()
        .rposition(|t| value(t) <= lo * (1.0 + eps))
        .unwrap_or(0);
    let last = all
        .iter()
        .position(|t| value(t) >= hi * (1.0 - eps))
        .unwrap_or(all.len() - 1);
    let mut chosen: Vec<(i64, i32)> = all[first..=last].to_vec();
    if chosen.len() > 12 {
        chosen = (e_lo..=e_hi).map(|e| (1, e)).collect();
    }
    let values: Vec<f64> = chosen.iter().map(value).collect();
    let labels = chosen
        .iter()
        .map(|&(m, e)| label(scaled(m, e), (-e).max(0) as usize))
        .collect();
    Ticks {
        lo: values[0],
        hi: values[values.len() - 1],
        values,
        labels,
    }
}

struct Axis {
    ticks: Ticks,
    log: bool,
}

impl Axis {
    /// Where `v` falls along the axis, 0 at its start and 1 at its end.
    fn frac(&self, v: f64) -> f64 {
        let (lo, hi) = (self.ticks.lo, self.ticks.hi);
        if self.log {
            (v.ln() - lo.ln()) / (hi.ln() - lo.ln())
        } else {
            (v - lo) / (hi - lo)
        }
    }
}

/// How a legend entry or a line is drawn.
#[derive(Clone, Copy)]
enum Stroke {
    /// Solid with round markers.
    Marked,
    Dashed,
    Dotted,
}

impl Stroke {
    fn dash(self) -> &'static str {
        match self {
            Stroke::Marked => "",
            Stroke::Dashed => " stroke-dasharray=\"6 4\"",
            Stroke::Dotted => " stroke-dasharray=\"2 3\"",
        }
    }
}

/// A chart's canvas: size, plot area, axes.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x: Axis,
    y: Axis,
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        self.left + self.x.frac(x) * (self.width - self.left - self.right)
    }

    fn py(&self, y: f64) -> f64 {
        self.top + (1.0 - self.y.frac(y)) * (self.height - self.top - self.bottom)
    }

    fn plot_right(&self) -> f64 {
        self.width - self.right
    }

    fn plot_bottom(&self) -> f64 {
        self.height - self.bottom
    }

    /// The opening tag, background, title and subtitle.
    fn open(&self, out: &mut String, title: &str, subtitle: &str) {
        let _ = writeln!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">",
            w = c2(self.width),
            h = c2(self.height)
        );
        let _ = writeln!(
            out,
            "<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>",
            c2(self.width),
            c2(self.height)
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>",
            c2(self.width / 2.0),
            escape_xml(title)
        );
        if !subtitle.is_empty() {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"40\" text-anchor=\"middle\" fill=\"#555555\">{}</text>",
                c2(self.width / 2.0),
                escape_xml(subtitle)
            );
        }
    }

    /// Grid lines, the axis lines, tick marks and labels, axis titles.
    fn axes(&self, out: &mut String, x_label: &str, y_label: &str) {
        let (l, r, t, b) = (self.left, self.plot_right(), self.top, self.plot_bottom());
        out.push_str("<g stroke=\"#e5e5e5\" stroke-width=\"1\">\n");
        for v in &self.y.ticks.values {
            let y = c2(self.py(*v));
            let _ = writeln!(
                out,
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
                c2(l),
                c2(r)
            );
        }
        for v in &self.x.ticks.values {
            let x = c2(self.px(*v));
            let _ = writeln!(
                out,
                "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>",
                c2(t),
                c2(b)
            );
        }
        out.push_str("</g>\n");
        out.push_str("<g stroke=\"#333333\" stroke-width=\"1\">\n");
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>",
            c2(l),
            c2(b),
            c2(r),
            c2(b)
        );
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>",
            c2(l),
            c2(t),
            c2(l),
            c2(b)
        );
        for v in &self.x.ticks.values {
            let x = c2(self.px(*v));
            let _ = writeln!(
                out,
                "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>",
                c2(b),
                c2(b + 5.0)
            );
        }
        for v in &self.y.ticks.values {
            let y = c2(self.py(*v));
            let _ = writeln!(
                out,
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
                c2(l - 5.0),
                c2(l)
            );
        }
        out.push_str("</g>\n");
        out.push_str("<g fill=\"#333333\" font-size=\"11\">\n");
        for (v, s) in self.x.ticks.values.iter().zip(&self.x.ticks.labels) {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                c2(self.px(*v)),
                c2(b + 18.0),
                escape_xml(s)
            );
        }
        for (v, s) in self.y.ticks.values.iter().zip(&self.y.ticks.labels) {
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                c2(l - 8.0),
                c2(self.py(*v) + 4.0),
                escape_xml(s)
            );
        }
        out.push_str("</g>\n");
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            c2((l + r) / 2.0),
            c2(b + 40.0),
            escape_xml(x_label)
        );
        let (yx, yy) = (c2(18.0), c2((t + b) / 2.0));
        let _ = writeln!(
            out,
            "<text x=\"{yx}\" y=\"{yy}\" text-anchor=\"middle\" transform=\"rotate(-90 {yx} {yy})\">{}</text>",
            escape_xml(y_label)
        );
    }

    /// One data series: a polyline through the points and a marker (with a tooltip)
    /// on each.
    fn series(&self, out: &mut String, color: &str, points: &[(f64, f64, String)]) {
        let coords: Vec<String> = points
            .iter()
            .map(|(x, y, _)| format!("{},{}", c2(self.px(*x)), c2(self.py(*y))))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            coords.join(" ")
        );
        for (x, y, tip) in points {
            let _ = writeln!(
                out,
                "<circle cx=\"{}\" cy=\"{}\" r=\"3.5\" fill=\"{color}\"><title>{}</title></circle>",
                c2(self.px(*x)),
                c2(self.py(*y)),
                escape_xml(tip)
            );
        }
    }

    /// A horizontal reference line across the plot with a label at its right end.
    fn reference(
        &self,
        out: &mut String,
        y: f64,
        color: &str,
        stroke: Stroke,
        text: &str,
        above: bool,
    ) {
        let py = self.py(y);
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{color}\" stroke-width=\"1.5\"{}/>",
            c2(self.left),
            c2(py),
            c2(self.plot_right()),
            c2(py),
            stroke.dash()
        );
        let ty = if above { py - 5.0 } else { py + 14.0 };
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"{color}\" font-size=\"11\">{}</text>",
            c2(self.plot_right() - 4.0),
            c2(ty),
            escape_xml(text)
        );
    }

    /// The legend, right of the plot area.
    fn legend(&self, out: &mut String, entries: &[(String, String, Stroke)]) {
        let x = self.plot_right() + 16.0;
        out.push_str("<g font-size=\"11\">\n");
        for (i, (name, color, stroke)) in entries.iter().enumerate() {
            let y = self.top + 8.0 + 18.0 * i as f64;
            let _ = writeln!(
                out,
                "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{color}\" stroke-width=\"2\"{}/>",
                c2(x),
                c2(y),
                c2(x + 22.0),
                c2(y),
                stroke.dash()
            );
            if matches!(stroke, Stroke::Marked) {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"3.5\" fill=\"{color}\"/>",
                    c2(x + 11.0),
                    c2(y)
                );
            }
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\">{}</text>",
                c2(x + 28.0),
                c2(y + 4.0),
                escape_xml(name)
            );
        }
        out.push_str("</g>\n");
    }
}

fn close(out: &mut String) {
    out.push_str("</svg>\n");
}

/// `task · model` for subtitles.
fn run_label(report: &Report) -> String {
    format!("{} · {}", report.task, report.model)
}

/// (color rank, kind): the canonical kinds first, others after by name.
fn kind_rank(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_ORDER.len())
}

/// The matrix scores against their layer, one polyline (with markers) per matrix kind
/// present, for the smallest K and the smallest keep in `scores` (named in the title).
/// `None` when the report has no finite scores (LASER mode, or a run stopped early).
pub fn scores_by_layer_svg(report: &Report) -> Option<String> {
    struct Entry<'a> {
        kind: &'a str,
        layer: f64,
        blocks: usize,
        keep: f64,
        score: f64,
    }
    let entries: Vec<Entry> = report
        .scores
        .iter()
        .filter(|s| s.score.is_finite())
        .map(|s| Entry {
            kind: &s.kind,
            layer: s.layer as f64,
            blocks: s.blocks,
            keep: s.keep,
            score: s.score,
        })
        .collect();
    let blocks = entries.iter().map(|e| e.blocks).min()?;
    let keep = entries
        .iter()
        .filter(|e| e.blocks == blocks)
        .map(|e| e.keep)
        .min_by(f64::total_cmp)?;
    let chosen: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.blocks == blocks && e.keep == keep)
        .collect();

    // Kinds in color order: canonical first, then unknown ones by name.
    let mut kinds: Vec<(usize, &str)> =
        chosen.iter().map(|e| (kind_rank(e.kind), e.kind)).collect();
    kinds.sort_unstable();
    kinds.dedup();

    let (xmin, xmax) = min_max(chosen.iter().map(|e| e.layer))?;
    let (ymin, ymax) = min_max(chosen.iter().map(|e| e.score))?;
    let frame = Frame {
        width: 760.0,
        height: 440.0,
        left: 72.0,
        right: 130.0,
        top: 64.0,
        bottom: 56.0,
        x: Axis {
            ticks: nice_ticks_with(xmin, xmax, 8, true),
            log: false,
        },
        y: Axis {
            ticks: padded_ticks(ymin, ymax, 6),
            log: false,
        },
    };
    let mut out = String::new();
    frame.open(
        &mut out,
        &format!(
            "Matrix scores by layer (K = {blocks}, keep = {})",
            fmt_keep(keep)
        ),
        &format!(
            "{} · {} matrices · smallest K and keep scored",
            run_label(report),
            chosen.len()
        ),
    );
    frame.axes(&mut out, "layer", "score");
    if frame.y.ticks.lo < 0.0 && frame.y.ticks.hi > 0.0 {
        let y = c2(frame.py(0.0));
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#999999\" stroke-width=\"1\"/>",
            c2(frame.left),
            c2(frame.plot_right())
        );
    }
    let mut legend = Vec::new();
    let mut unknown = 0;
    for (rank, kind) in &kinds {
        let color_index = if *rank < KIND_ORDER.len() {
            *rank
        } else {
            unknown += 1;
            KIND_ORDER.len() + unknown - 1
        };
        let color = PALETTE[color_index % PALETTE.len()];
        let mut points: Vec<(f64, f64, String)> = chosen
            .iter()
            .filter(|e| e.kind == *kind)
            .map(|e| {
                (
                    e.layer,
                    e.score,
                    format!("layer {} {kind}: {:.6}", e.layer, e.score),
                )
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        frame.series(&mut out, color, &points);
        legend.push((kind.to_string(), color.to_string(), Stroke::Marked));
    }
    frame.legend(&mut out, &legend);
    close(&mut out);
    Some(out)
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Selection accuracy against keep (rho) for the top candidate groups: candidates
/// grouped by (matrix, K), the 6 groups with the highest best accuracy drawn, one line
/// each; the baseline's selection accuracy as a dashed line and the majority-class
/// rate as a dotted one ("always majority answer"). Keep is on a log scale when its
/// values span more than 10×. `None` when there is no candidate with an accuracy.
pub fn accuracy_vs_keep_svg(report: &Report) -> Option<String> {
    struct Group<'a> {
        matrix: &'a str,
        blocks: usize,
        points: Vec<(f64, f64)>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for c in &report.candidates {
        let (matrix, blocks) = (c.matrix.as_str(), c.blocks);
        let i = match groups
            .iter()
            .position(|g| g.matrix == matrix && g.blocks == blocks)
        {
            Some(i) => i,
            None => {
                groups.push(Group {
                    matrix,
                    blocks,
                    points: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let (keep, acc) = (c.keep, c.selection.accuracy);
        if keep.is_finite() && acc.is_finite() {
            groups[i].points.push((keep, acc * 100.0));
        }
    }
    let n_groups = groups.len();
    let all_keeps: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.points.iter().map(|p| p.0))
        .collect();
    let (kmin, kmax) = min_max(all_keeps.iter().copied())?;
    let log = kmin > 0.0 && kmax / kmin > 10.0;

    // The top groups by their best accuracy, ties to the earlier group.
    let best_of = |g: &Group| {
        g.points
            .iter()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let mut order: Vec<usize> = (0..groups.len())
        .filter(|&i| !groups[i].points.is_empty())
        .collect();
    order.sort_by(|&a, &b| {
        best_of(&groups[b])
            .total_cmp(&best_of(&groups[a]))
            .then(a.cmp(&b))
    });
    order.truncate(6);
    if order.is_empty() {
        return None;
    }

    let base_acc = report
        .baseline
        .as_ref()
        .map(|b| b.selection.accuracy)
        .filter(|a| a.is_finite())
        .map(|a| a * 100.0);
    let majority = report
        .majority_rate()
        .filter(|a| a.is_finite())
        .map(|a| a * 100.0);
    let shown = order
        .iter()
        .flat_map(|&i| groups[i].points.iter().map(|p| p.1))
        .chain(base_acc)
        .chain(majority);
    let (ymin, ymax) = min_max(shown)?;
    let (xmin, xmax) = min_max(
        order
            .iter()
            .flat_map(|&i| groups[i].points.iter().map(|p| p.0)),
    )?;
    let x_ticks = if log {
        log_ticks(xmin, xmax)
    } else {
        nice_ticks(xmin, xmax, 6)
    };
    let frame = Frame {
        width: 880.0,
        height: 460.0,
        left: 72.0,
        right: 250.0,
        top: 64.0,
        bottom: 56.0,
        x: Axis {
            ticks: x_ticks,
            log,
        },
        y: Axis {
            ticks: padded_ticks(ymin, ymax, 6),
            log: false,
        },
    };
    let mut out = String::new();
    let scale = if log { " · log scale" } else { "" };
    frame.open(
        &mut out,
        "Selection accuracy against keep (rho)",
        &format!(
            "{} · top {} of {n_groups} (matrix, K) groups{scale}",
            run_label(report),
            order.len()
        ),
    );
    frame.axes(
        &mut out,
        "keep (share of singular values kept)",
        "selection accuracy (%)",
    );
    let mut legend = Vec::new();
    if let Some(b) = base_acc {
        let above = majority.is_none_or(|m| b >= m);
        frame.reference(
            &mut out,
            b,
            "#333333",
            Stroke::Dashed,
            &format!("baseline ({b:.1}%)"),
            above,
        );
        legend.push((
            "baseline".to_string(),
            "#333333".to_string(),
            Stroke::Dashed,
        ));
    }
    if let Some(m) = majority {
        let above = base_acc.is_none_or(|b| m > b);
        frame.reference(
            &mut out,
            m,
            "#888888",
            Stroke::Dotted,
            &format!("always majority answer ({m:.1}%)"),
            above,
        );
        legend.push((
            "always majority answer".to_string(),
            "#888888".to_string(),
            Stroke::Dotted,
        ));
    }
    let best = report.best.as_ref();
    for (rank, &i) in order.iter().enumerate() {
        let g = &groups[i];
        let color = PALETTE[rank % PALETTE.len()];
        let name = format!("{} K={}", short_matrix_name(g.matrix), g.blocks);
        let mut points: Vec<(f64, f64, String)> = g
            .points
            .iter()
            .map(|&(k, a)| (k, a, format!("{name} keep={}: {a:.2}%", fmt_keep(k))))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        frame.series(&mut out, color, &points);
        if let Some(b) = best {
            if b.matrix == g.matrix && b.blocks == g.blocks {
                if let Some(&(k, a, _)) = points.iter().find(|p| p.0 == b.keep) {
                    let _ = writeln!(
                        out,
                        "<circle cx=\"{}\" cy=\"{}\" r=\"7\" fill=\"none\" stroke=\"#000000\" stroke-width=\"1.5\"><title>best candidate</title></circle>",
                        c2(frame.px(k)),
                        c2(frame.py(a))
                    );
                }
            }
        }
        legend.push((name, color.to_string(), Stroke::Marked));
    }
    frame.legend(&mut out, &legend);
    close(&mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::report::fixture;
    use super::*;
    use serde_json::{json, Value};

    fn typed(v: &Value) -> Report {
        serde_json::from_value(v.clone()).expect("a report that follows the schema")
    }

    /// A small well-formedness check: tags balance and nest, attributes are quoted,
    /// text and attribute values contain no raw `<` and only known entities.
    fn check_xml(s: &str) -> Result<usize, String> {
        fn check_text(t: &str) -> Result<(), String> {
            let mut rest = t;
            while let Some(i) = rest.find('&') {
                let after = &rest[i + 1..];
                let end = after.find(';').ok_or_else(|| format!("bare & in {t:?}"))?;
                if !["amp", "lt", "gt", "quot", "apos"].contains(&&after[..end]) {
                    return Err(format!("unknown entity in {t:?}"));
                }
                rest = &after[end + 1..];
            }
            if t.contains('>') {
                return Err(format!("raw > in {t:?}"));
            }
            Ok(())
        }
        let mut stack: Vec<String> = Vec::new();
        let mut elements = 0;
        let mut rest = s;
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open])?;
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack.pop().ok_or("close without open")?;
                if top != name.trim() {
                    return Err(format!("</{name}> closes <{top}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')
            {
                return Err(format!("bad tag name in <{tag}>"));
            }
            // Attributes: name="value" pairs.
            let mut attrs = body[name.len()..].trim();
            while !attrs.is_empty() {
                let eq = attrs
                    .find("=\"")
                    .ok_or_else(|| format!("bad attribute in <{tag}>"))?;
                let value_end = attrs[eq + 2..].find('"').ok_or("unterminated attribute")? + eq + 2;
                let value = &attrs[eq + 2..value_end];
                if value.contains('<') {
                    return Err(format!("raw < in attribute of <{tag}>"));
                }
                check_text(value)?;
                attrs = attrs[value_end + 1..].trim_start();
            }
            elements += 1;
            if stack.is_empty() && elements > 1 {
                return Err("more than one root element".into());
            }
            if !self_closing {
                stack.push(name);
            }
        }
        check_text(rest)?;
        if let Some(top) = stack.pop() {
            return Err(format!("<{top}> is never closed"));
        }
        Ok(elements)
    }

    #[test]
    fn checker_catches_bad_xml() {
        assert!(check_xml("<svg><g></svg>").is_err());
        assert!(check_xml("<svg><text>a & b</text></svg>").is_err());
        assert!(check_xml("<svg x=1/>").is_err());
        assert_eq!(
            check_xml("<svg a=\"1\"><g/><text>&lt;</text></svg>\n"),
            Ok(3)
        );
    }

    #[test]
    fn nice_ticks_hand_cases() {
        let t = nice_ticks(0.0, 1.0, 6);
        assert_eq!(t.values, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(t.labels, vec!["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!((t.lo, t.hi), (0.0, 1.0));
        let t = nice_ticks(0.0, 97.0, 6);
        assert_eq!(t.values, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(t.labels[5], "100");
        let t = nice_ticks(0.43, 0.61, 5);
        assert_eq!(t.values, vec![0.4, 0.45, 0.5, 0.55, 0.6, 0.65]);
        assert_eq!(t.labels[1], "0.45");
        let t = nice_ticks(-3.0, 7.0, 5);
        assert_eq!(t.values, vec![-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(t.labels[2], "0");
        let t = nice_ticks(0.6, 1.2, 4);
        assert_eq!(t.values, vec![0.6, 0.8, 1.0, 1.2]);
        // Degenerate range: widened; layers keep whole-number steps.
        let t = nice_ticks_with(27.0, 27.0, 8, true);
        assert!(t.values.contains(&27.0) && t.values.iter().all(|v| v.fract() == 0.0));
        let t = nice_ticks(0.0, 0.0, 5);
        assert!(t.lo < 0.0 && t.hi > 0.0);
        let t = log_ticks(0.01, 0.5);
        assert_eq!(t.values, vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.5]);
        assert_eq!(t.labels, vec!["0.01", "0.02", "0.05", "0.1", "0.2", "0.5"]);
        let t = log_ticks(0.03, 0.9);
        assert_eq!(t.values, vec![0.02, 0.05, 0.1, 0.2, 0.5, 1.0]);
        assert_eq!(t.labels[5], "1");
        let t = log_ticks(1e-4, 10.0);
        assert_eq!(t.values.len(), 6);
    }

    #[test]
    fn escapes_xml_text() {
        assert_eq!(escape_xml("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
    }

    #[test]
    fn scores_by_layer_is_well_formed_and_deterministic() {
        let r = fixture::report();
        let svg = scores_by_layer_svg(&r).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        check_xml(&svg).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 7);
        assert!(svg.contains("Matrix scores by layer (K = 1, keep = 0.01)"));
        // 3 layers × 7 kinds markers, plus 7 legend markers.
        assert_eq!(svg.matches("<circle").count(), 21 + 7);
        for kind in KIND_ORDER {
            assert!(svg.contains(&format!(">{kind}</text>")), "{kind}");
        }
        assert_eq!(scores_by_layer_svg(&r).unwrap(), svg);
    }

    #[test]
    fn scores_by_layer_counts_kinds_present() {
        let mut r = fixture::report_json();
        r["scores"] = json!([
            {"matrix": "model.layers.1.mlp.up_proj.weight", "layer": 1, "kind": "up", "blocks": 2, "keep": 0.1, "score": 0.5},
            {"matrix": "model.layers.2.mlp.up_proj.weight", "layer": 2, "kind": "up", "blocks": 2, "keep": 0.1, "score": -0.5},
            {"matrix": "model.layers.2.self_attn.q_proj.weight", "layer": 2, "kind": "q", "blocks": 2, "keep": 0.1, "score": 0.25},
            {"matrix": "model.layers.2.self_attn.q_proj.weight", "layer": 2, "kind": "q", "blocks": 4, "keep": 0.05, "score": 9.0}
        ]);
        let svg = scores_by_layer_svg(&typed(&r)).unwrap();
        check_xml(&svg).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("(K = 2, keep = 0.1)"));
    }

    #[test]
    fn accuracy_vs_keep_is_well_formed_and_deterministic() {
        let r = fixture::report();
        let svg = accuracy_vs_keep_svg(&r).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        check_xml(&svg).unwrap();
        // Groups: down_proj K=2 (3 points), up_proj K=1, weird|name K=1.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("always majority answer (62.0%)"));
        assert!(svg.contains("baseline (57.0%)"));
        assert!(svg.contains("stroke-dasharray=\"6 4\""));
        assert!(svg.contains("stroke-dasharray=\"2 3\""));
        assert!(svg.contains("log scale"));
        assert!(svg.contains("best candidate"));
        assert!(svg.contains("layers.27.mlp.down_proj K=2"));
        assert_eq!(accuracy_vs_keep_svg(&r).unwrap(), svg);
    }

    #[test]
    fn accuracy_vs_keep_keeps_top_six_groups() {
        let base = fixture::report_json();
        let candidates: Vec<Value> = (0..9)
            .map(|i| {
                let mut c = base["candidates"][4].clone();
                c["matrix"] = json!(format!("model.layers.{i}.mlp.down_proj.weight"));
                c["selection"]["accuracy"] = json!(0.5 + i as f64 / 100.0);
                c
            })
            .collect();
        let mut r = base;
        r["candidates"] = json!(candidates);
        r["baseline"] = Value::Null;
        r["best"] = Value::Null;
        // No classification metrics anywhere: no majority line.
        for c in r["candidates"].as_array_mut().unwrap() {
            c["selection"]["metrics"] = json!({"kind": "generation", "n": 100, "correct": 50,
                "accuracy": 0.5, "exact_match": 0.5, "token_f1": 0.5, "empty_rate": 0.0,
                "prompt_copy_rate": 0.0});
        }
        let svg = accuracy_vs_keep_svg(&typed(&r)).unwrap();
        check_xml(&svg).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert!(svg.contains("layers.8.mlp.down_proj K=1"));
        assert!(!svg.contains("layers.2.mlp.down_proj K=1"));
        assert!(!svg.contains("log scale"));
        assert!(!svg.contains("always majority answer"));
    }

    #[test]
    fn none_for_empty_inputs() {
        let mut r = fixture::report_json();
        r["scores"] = json!([]);
        r["candidates"] = json!([]);
        assert_eq!(scores_by_layer_svg(&typed(&r)), None);
        assert_eq!(accuracy_vs_keep_svg(&typed(&r)), None);
        // Scores that are not finite draw nothing.
        r["scores"] = json!([{"matrix": "m", "layer": 0, "kind": "up", "blocks": 1, "keep": 0.1,
                              "score": 1.0}]);
        let mut typed_r = typed(&r);
        typed_r.scores[0].score = f64::NAN;
        assert_eq!(scores_by_layer_svg(&typed_r), None);
    }
}
