//! The Markdown report of a run, made from its typed report ([`markdown`], over
//! [`super::schema::Report`]): missing optional parts (no baseline, no best, a
//! generation task without classes) print as `—` or a sentence saying why.
//!
//! Every table cell goes through one escaper (`|` → `\|`, line breaks → spaces), so
//! a matrix name or a path cannot break a table.

use super::schema::{Evaluated, Figures, MetricsKind, Outcome, Report, SearchMode};
use std::fmt::Write as _;

/// What is shown in place of a missing figure.
pub(crate) const MISSING: &str = "—";

/// `model.layers.27.mlp.down_proj.weight` → `layers.27.mlp.down_proj`.
pub(crate) fn short_matrix_name(name: &str) -> &str {
    let s = name.strip_prefix("model.").unwrap_or(name);
    s.strip_suffix(".weight").unwrap_or(s)
}

/// `model.layers.27.mlp.down_proj.weight` → 27.
pub(crate) fn layer_of(name: &str) -> Option<u64> {
    let rest = &name[name.find("layers.")? + "layers.".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `model.layers.27.mlp.down_proj.weight` → `down`; `...self_attn.q_proj...` → `q`.
pub(crate) fn kind_of(name: &str) -> Option<String> {
    let s = name.strip_suffix(".weight").unwrap_or(name);
    let last = s.rsplit('.').next()?;
    let kind = last.strip_suffix("_proj").unwrap_or(last);
    (!kind.is_empty() && !kind.chars().all(|c| c.is_ascii_digit())).then(|| kind.to_string())
}

/// A keep / rho value for people: at most 10 decimals, trailing zeros dropped (`0.1`,
/// `0.25`, and `0.005` for LASER's rate 9.95, which computes as 0.0050000000000000044).
/// Keys and report.json keep the exact value.
pub fn fmt_keep(v: f64) -> String {
    let s = format!("{v:.10}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Escapes a Markdown table cell: `|` would end the cell, a line break the row.
pub(crate) fn escape_cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Inline code, or plain text when the content itself has a backtick.
fn code(s: &str) -> String {
    if s.contains('`') {
        s.to_string()
    } else {
        format!("`{s}`")
    }
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{:.2}%", x * 100.0),
        _ => MISSING.to_string(),
    }
}

pub(crate) fn fixed(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => MISSING.to_string(),
    }
}

/// A score: fixed point in the usual range, scientific otherwise.
fn fmt_score(v: Option<f64>) -> String {
    match v {
        Some(0.0) => "0".to_string(),
        Some(x) if x.is_finite() && (1e-3..1e5).contains(&x.abs()) => format!("{x:.4}"),
        Some(x) if x.is_finite() => format!("{x:.3e}"),
        _ => MISSING.to_string(),
    }
}

pub(crate) fn fmt_hist(h: Option<&[usize]>) -> String {
    match h {
        Some(h) => {
            let parts: Vec<String> = h.iter().map(usize::to_string).collect();
            format!("[{}]", parts.join(", "))
        }
        None => MISSING.to_string(),
    }
}

/// `+3.00 points` (a difference of two fractions, in percentage points).
fn fmt_points(delta: f64) -> String {
    let p = delta * 100.0;
    let s = format!("{p:+.2}");
    if s == "-0.00" {
        "+0.00 points".to_string()
    } else {
        format!("{s} points")
    }
}

/// `538000000` → `538,000,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or(""))
        .collect();
    groups.join(",")
}

/// `538000000` → `513.1 MiB (538,000,000 bytes)`.
fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {} ({} bytes)", UNITS[unit], thousands(n))
}

pub(crate) fn fmt_seconds(s: f64) -> String {
    if s.is_finite() {
        format!("{s:.1}")
    } else {
        MISSING.to_string()
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A Markdown table; every cell is escaped when rendered.
pub(crate) struct Table {
    header: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[(&'static str, Align)]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self, out: &mut String) {
        let n = self.header.len();
        out.push('|');
        for (h, _) in &self.header {
            let _ = write!(out, " {} |", escape_cell(h));
        }
        out.push_str("\n|");
        for (_, a) in &self.header {
            out.push_str(match a {
                Align::Left => " --- |",
                Align::Right => " ---: |",
            });
        }
        out.push('\n');
        for r in &self.rows {
            out.push('|');
            for i in 0..n {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                let cell = if cell.trim().is_empty() {
                    MISSING.to_string()
                } else {
                    escape_cell(cell)
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out.push('\n');
    }
}

const FIGURE_COLUMNS: [(&str, Align); 9] = [
    ("Set", Align::Left),
    ("Samples", Align::Right),
    ("Accuracy", Align::Right),
    ("Balanced accuracy", Align::Right),
    ("Macro-F1", Align::Right),
    ("Majority-class rate", Align::Right),
    ("Log-loss", Align::Right),
    ("Predictions", Align::Left),
    ("Collapsed", Align::Left),
];

fn collapsed_cell(f: &Figures) -> String {
    match f.collapsed() {
        Some(true) => "**COLLAPSED**".to_string(),
        Some(false) => "no".to_string(),
        None => MISSING.to_string(),
    }
}

fn figure_row(label: &str, f: &Figures) -> Vec<String> {
    vec![
        label.to_string(),
        f.samples.to_string(),
        pct(Some(f.accuracy)),
        pct(f.balanced_accuracy()),
        pct(f.macro_f1()),
        match (f.majority_class_rate(), f.chance()) {
            (None, Some(c)) => format!("chance {}", pct(Some(c))),
            (m, _) => pct(m),
        },
        fixed(Some(f.log_loss), 4),
        fmt_hist(f.predicted_histogram()),
        collapsed_cell(f),
    ]
}

/// A table of evaluations (one row each) plus, when any is a generation task, a
/// second table of the generation figures.
fn figures_tables(out: &mut String, rows: &[(&str, &Figures)]) {
    let mut t = Table::new(&FIGURE_COLUMNS);
    for (label, f) in rows {
        t.row(figure_row(label, f));
    }
    t.render(out);
    if rows
        .iter()
        .any(|(_, f)| f.kind() == MetricsKind::Generation)
    {
        let mut g = Table::new(&[
            ("Set", Align::Left),
            ("Exact match", Align::Right),
            ("Token F1", Align::Right),
            ("Empty answers", Align::Right),
            ("Copies prompt", Align::Right),
        ]);
        for (label, f) in rows {
            g.row(vec![
                label.to_string(),
                pct(f.exact_match()),
                pct(f.token_f1()),
                pct(f.empty_rate()),
                pct(f.prompt_copy_rate()),
            ]);
        }
        g.render(out);
    }
}

fn section_header(out: &mut String, report: &Report) {
    let _ = writeln!(out, "# c2i report: {} on {}\n", report.task, report.model);
    let mode_note = match report.mode {
        SearchMode::Gradient => " (Compress to Impress: one gradient pass scores every matrix; the top ones are evaluated)",
        SearchMode::Laser => " (LASER's exhaustive search over the grid)",
    };
    let _ = writeln!(out, "- Search mode: **{}**{mode_note}", report.mode.name());
    let _ = writeln!(out, "- Selection metric: **{}**", report.selection_metric);
    let scores = &report.scores;
    if !scores.is_empty() {
        let mut blocks: Vec<usize> = scores.iter().map(|s| s.blocks).collect();
        blocks.sort_unstable();
        blocks.dedup();
        let mut keeps: Vec<f64> = scores.iter().map(|s| s.keep).collect();
        keeps.sort_by(f64::total_cmp);
        keeps.dedup();
        let mut matrices: Vec<&str> = scores.iter().map(|s| s.matrix.as_str()).collect();
        matrices.sort_unstable();
        matrices.dedup();
        let blocks: Vec<String> = blocks.iter().map(usize::to_string).collect();
        let keeps: Vec<String> = keeps.iter().map(|k| fmt_keep(*k)).collect();
        let _ = writeln!(
            out,
            "- Scored: {} entries ({} matrices × K ∈ {{{}}} × keep ∈ {{{}}})",
            scores.len(),
            matrices.len(),
            blocks.join(", "),
            keeps.join(", ")
        );
    }
    let _ = writeln!(out, "- Candidates evaluated: {}", report.candidates.len());
    let _ = writeln!(out, "- Run time: {} s", fmt_seconds(report.seconds));
    out.push('\n');
}

fn section_baseline(out: &mut String, report: &Report) {
    out.push_str("## Baseline (unmodified model)\n\n");
    match &report.baseline {
        Some(b) => {
            figures_tables(
                out,
                &[("selection", &b.selection), ("held-out", &b.heldout)],
            );
            if let Some(gold) = b.selection.gold_histogram() {
                let _ = writeln!(
                    out,
                    "Gold labels on the selection samples: {}.\n",
                    fmt_hist(Some(gold))
                );
            }
        }
        None => out.push_str("No baseline was evaluated (the run stopped before evaluation).\n\n"),
    }
}

/// Why the best candidate should not be trusted, if it should not.
fn best_warnings(sel: &Figures, held: &Figures, base_held: Option<&Figures>) -> Vec<String> {
    let mut reasons = Vec::new();
    for (set, f) in [("selection", sel), ("held-out", held)] {
        if f.is_collapsed() {
            let share = f
                .max_predicted_share()
                .map(|s| format!(" (one answer takes {} of the predictions)", pct(Some(s))))
                .unwrap_or_default();
            reasons.push(format!(
                "it is flagged COLLAPSED on the {set} samples{share}"
            ));
        }
    }
    if let (Some(b), Some(base)) = (
        held.balanced_accuracy(),
        base_held.and_then(Figures::balanced_accuracy),
    ) {
        if b.partial_cmp(&base) != Some(std::cmp::Ordering::Greater) {
            reasons.push(format!(
                "its held-out balanced accuracy ({}) is not above the baseline's ({})",
                pct(Some(b)),
                pct(Some(base))
            ));
        }
    }
    reasons
}

fn gain_line(what: &str, best: Option<f64>, base: Option<f64>) -> Option<String> {
    let (b, a) = (best?, base?);
    (a.is_finite() && b.is_finite()).then(|| {
        format!(
            "{} of {what} ({} → {})",
            fmt_points(b - a),
            pct(Some(a)),
            pct(Some(b))
        )
    })
}

fn section_best(out: &mut String, report: &Report) {
    out.push_str("## Best candidate\n\n");
    let Some(best) = &report.best else {
        out.push_str(
            "No best candidate: the run stopped before selection, or no candidate was evaluated.\n\n",
        );
        return;
    };
    let matrix = best.matrix.as_str();
    let mut about = Vec::new();
    if let Some(l) = layer_of(matrix) {
        about.push(format!("layer {l}"));
    }
    if let Some(k) = kind_of(matrix) {
        about.push(format!("kind {k}"));
    }
    let about = if about.is_empty() {
        String::new()
    } else {
        format!(" ({})", about.join(", "))
    };
    let _ = writeln!(out, "- Matrix: {}{about}", code(matrix));
    let _ = writeln!(out, "- Blocks K: {}", best.blocks);
    let _ = writeln!(
        out,
        "- Keep (share of singular values kept, rho): {}",
        fmt_keep(best.keep)
    );
    out.push('\n');

    let (sel, held) = (&best.selection, &best.heldout);
    let base = report.baseline.as_ref();
    let mut rows: Vec<(&str, &Figures)> = Vec::new();
    if let Some(b) = base {
        rows.push(("selection, baseline", &b.selection));
    }
    rows.push(("selection, best", sel));
    if let Some(b) = base {
        rows.push(("held-out, baseline", &b.heldout));
    }
    rows.push(("held-out, best", held));
    figures_tables(out, &rows);

    match gain_line(
        "accuracy",
        Some(held.accuracy),
        base.map(|b| b.heldout.accuracy),
    ) {
        Some(acc) => {
            let mut line = format!("**Held-out gain over the baseline:** {acc}");
            if let Some(ba) = gain_line(
                "balanced accuracy",
                held.balanced_accuracy(),
                base.and_then(|b| b.heldout.balanced_accuracy()),
            ) {
                let _ = write!(line, "; {ba}");
            }
            let _ = writeln!(out, "{line}.\n");
        }
        None => out
            .push_str("Held-out gain over the baseline: not available (no held-out baseline).\n\n"),
    }
    if let Some(acc) = gain_line(
        "accuracy",
        Some(sel.accuracy),
        base.map(|b| b.selection.accuracy),
    ) {
        let _ = writeln!(out, "Selection gain over the baseline: {acc}.\n");
    }
    let reasons = best_warnings(sel, held, base.map(|b| &b.heldout));
    if !reasons.is_empty() {
        let _ = writeln!(
            out,
            "> **Warning:** do not trust this candidate's gain: {}. Its accuracy may come from answering the majority class rather than from a better model.\n",
            reasons.join("; ")
        );
    }
    if let Some(s) = no_gain_on_selection(report) {
        let _ = writeln!(
            out,
            "> **No gain:** {s}. The exported model is this candidate all the same.\n"
        );
    }
}

/// When the best candidate does not beat the unmodified model on the selection
/// samples under the run's selection metric (balanced accuracy when that is the metric
/// and both figures have it, else accuracy; a tie does not beat): a sentence saying so,
/// with both values. `None` when it does beat it, or when there is no best or baseline.
pub fn no_gain_on_selection(report: &Report) -> Option<String> {
    let sel = &report.best.as_ref()?.selection;
    let base = &report.baseline.as_ref()?.selection;
    let balanced = report.selection_metric == "balanced_accuracy";
    let (name, b, a) = match (balanced, sel.balanced_accuracy(), base.balanced_accuracy()) {
        (true, Some(b), Some(a)) => ("balanced accuracy", b, a),
        _ => ("accuracy", sel.accuracy, base.accuracy),
    };
    (b <= a).then(|| {
        format!(
            "no candidate beats the unmodified model on the selection samples: the best has \
             {name} {} against the baseline's {}, so the unmodified model is the better choice",
            pct(Some(b)),
            pct(Some(a))
        )
    })
}

fn section_candidates(out: &mut String, report: &Report) {
    out.push_str("## Candidates\n\n");
    let rows: &[Evaluated] = &report.candidates;
    if rows.is_empty() {
        out.push_str("No candidates were evaluated.\n\n");
        return;
    }
    out.push_str(
        "Evaluated on the selection samples, in the order the search gave them. \
         *Predictions* is the histogram of predicted classes (class 0, class 1, …); \
         COLLAPSED marks a candidate whose most frequent answer takes more than the \
         collapse threshold of the predictions.\n\n",
    );
    let mut t = Table::new(&[
        ("#", Align::Right),
        ("Matrix", Align::Left),
        ("K", Align::Right),
        ("Keep", Align::Right),
        ("Score", Align::Right),
        ("Accuracy", Align::Right),
        ("Balanced accuracy", Align::Right),
        ("Log-loss", Align::Right),
        ("Predictions", Align::Left),
        ("Collapsed", Align::Left),
    ]);
    for (i, c) in rows.iter().enumerate() {
        let best = report.best.as_ref().is_some_and(|b| b.is(c));
        let index = match (best, c.stopped_after_round) {
            (true, _) => format!("{} (best)", i + 1),
            (false, Some(r)) => format!(
                "{} (partial: stopped after round {r}, {} rows)",
                i + 1,
                c.rows()
            ),
            (false, None) => (i + 1).to_string(),
        };
        t.row(vec![
            index,
            code(&c.matrix),
            c.blocks.to_string(),
            fmt_keep(c.keep),
            fmt_score(c.score),
            pct(Some(c.selection.accuracy)),
            pct(c.selection.balanced_accuracy()),
            fixed(Some(c.selection.log_loss), 4),
            fmt_hist(c.selection.predicted_histogram()),
            collapsed_cell(&c.selection),
        ]);
    }
    t.render(out);
    if let Some(race) = &report.race {
        let _ = writeln!(
            out,
            "Racing `{}` ({}): {} of {} candidate-rows evaluated ({} saved); candidates \
             left after each round: {:?}. A partial candidate's figures are those of the \
             rows it saw.\n",
            race.racing,
            race.guarantee,
            race.candidate_rows,
            race.candidate_rows_full,
            pct(Some(race.saved_share)),
            race.alive_after_round,
        );
    }
    let n_collapsed = rows.iter().filter(|c| c.selection.is_collapsed()).count();
    if n_collapsed > 0 {
        let _ = writeln!(
            out,
            "{n_collapsed} of {} candidates are COLLAPSED.\n",
            rows.len()
        );
    }
}

fn section_selection_note(out: &mut String, report: &Report) {
    out.push_str("## Selection metric\n\n");
    let metric = report.selection_metric.as_str();
    let _ = writeln!(
        out,
        "The best candidate is the one with the highest **{metric}** on the selection \
         samples (ties go to the lower log-loss, then to the earlier candidate).\n"
    );
    let base = report.baseline.as_ref();
    let held_rate = base.and_then(|b| b.heldout.majority_class_rate());
    match report.majority_rate() {
        Some(rate) => {
            let held = held_rate
                .map(|r| format!(" ({} on the held-out samples)", pct(Some(r))))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "Accuracy on an unbalanced task can rise just by collapse to the majority \
                 answer: always giving the majority answer scores **{}** on the selection \
                 samples{held}, whatever the model knows (the majority-class rate). A gain \
                 in accuracy means little unless balanced accuracy (which scores any \
                 constant answer at 1/k for k classes) and macro-F1 rise too and the \
                 prediction histogram stays spread.\n",
                pct(Some(rate))
            );
            if metric == "balanced_accuracy" {
                out.push_str(
                    "This run selects by balanced accuracy, which a collapsed candidate \
                     cannot game.\n\n",
                );
            }
        }
        None => match base.and_then(|b| b.selection.chance()) {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "Each row has its own choices (multiple choice), so there are no classes \
                     and no majority-class rate: the floor is chance, the accuracy of a \
                     uniformly random choice (the mean of 1/choices: **{}** on the selection \
                     samples). Ties between choices are broken without regard to their \
                     order, so a task that lists the gold answer first gains nothing from it.\n",
                    pct(Some(c))
                );
            }
            None => out.push_str(
                "Accuracy on an unbalanced task can rise by collapse to the majority answer; \
                 this report has no majority-class rate (a generation task, or no \
                 classification metrics), so compare with the baseline instead.\n\n",
            ),
        },
    }
}

fn section_export(out: &mut String, report: &Report) {
    let Some(export) = &report.export else {
        return;
    };
    out.push_str("## Export\n\n");
    let mut t = Table::new(&[
        ("Artifact", Align::Left),
        ("Path", Align::Left),
        ("Size", Align::Right),
        ("Parameters", Align::Left),
    ]);
    if let Some(d) = &export.dense {
        t.row(vec![
            "dense model".to_string(),
            code(&d.path.display().to_string()),
            fmt_bytes(d.bytes),
            MISSING.to_string(),
        ]);
    }
    if let Some(f) = &export.factored {
        let params = if f.dense_params > 0 {
            format!(
                "{} of {} dense ({:.2}%)",
                thousands(f.params as u64),
                thousands(f.dense_params as u64),
                f.params as f64 / f.dense_params as f64 * 100.0
            )
        } else {
            thousands(f.params as u64)
        };
        t.row(vec![
            "factored matrix".to_string(),
            code(&f.path.display().to_string()),
            fmt_bytes(f.bytes),
            params,
        ]);
    }
    if t.rows.is_empty() {
        out.push_str("Nothing was exported.\n\n");
    } else {
        t.render(out);
    }
}

#[derive(Default)]
struct StageTotals {
    count: usize,
    hit: usize,
    computed: usize,
    memo: usize,
    seconds: f64,
}

fn section_stages(out: &mut String, report: &Report) {
    out.push_str("## Stage timings\n\n");
    // In order of first appearance, which is the order the DAG ran them.
    let mut totals: Vec<(&str, StageTotals)> = Vec::new();
    for r in &report.stages {
        let name = r.stage.as_str();
        let i = match totals.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                totals.push((name, StageTotals::default()));
                totals.len() - 1
            }
        };
        let t = &mut totals[i].1;
        t.count += 1;
        match r.outcome {
            Outcome::Hit => t.hit += 1,
            Outcome::Computed => t.computed += 1,
            Outcome::Memo => t.memo += 1,
            _ => {}
        }
        if r.seconds.is_finite() {
            t.seconds += r.seconds;
        }
    }
    if totals.is_empty() {
        out.push_str("No stage records.\n\n");
    } else {
        let mut t = Table::new(&[
            ("Stage", Align::Left),
            ("Instances", Align::Right),
            ("Hit", Align::Right),
            ("Computed", Align::Right),
            ("Memo", Align::Right),
            ("Seconds", Align::Right),
        ]);
        let mut sum = StageTotals::default();
        for (name, s) in &totals {
            t.row(vec![
                name.to_string(),
                s.count.to_string(),
                s.hit.to_string(),
                s.computed.to_string(),
                s.memo.to_string(),
                fmt_seconds(s.seconds),
            ]);
            sum.count += s.count;
            sum.hit += s.hit;
            sum.computed += s.computed;
            sum.memo += s.memo;
            sum.seconds += s.seconds;
        }
        t.row(vec![
            "**total**".to_string(),
            sum.count.to_string(),
            sum.hit.to_string(),
            sum.computed.to_string(),
            sum.memo.to_string(),
            fmt_seconds(sum.seconds),
        ]);
        t.render(out);
    }
    let _ = writeln!(out, "Total run time: {} s.\n", fmt_seconds(report.seconds));
}

fn section_parameters(out: &mut String, report: &Report) {
    if report.resolved.is_null() {
        return;
    }
    let Ok(json) = serde_json::to_string_pretty(&report.resolved) else {
        return;
    };
    let fence = if json.contains("```") { "~~~~" } else { "```" };
    let _ = writeln!(
        out,
        "## Parameters\n\nThe pipeline as resolved for this run:\n\n{fence}json\n{json}\n{fence}"
    );
}

/// The run's report as Markdown: title, baseline, best candidate (with a warning line
/// when it is collapsed or its held-out balanced accuracy does not beat the
/// baseline's), every candidate with its prediction histogram, a note on the selection
/// metric and the majority-class rate, export sizes, stage timings and the resolved
/// parameters.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    section_header(&mut out, report);
    section_baseline(&mut out, report);
    section_best(&mut out, report);
    section_candidates(&mut out, report);
    section_selection_note(&mut out, report);
    section_export(&mut out, report);
    section_stages(&mut out, report);
    section_parameters(&mut out, report);
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// A hand-written report in the engine's format, shared by the tests of this module
/// and of [`super::plots`].
#[cfg(test)]
pub(crate) mod fixture {
    use super::Report;
    use serde_json::{json, Value};

    fn classification(
        correct: u64,
        n: u64,
        balanced: f64,
        predicted: [u64; 2],
        gold: [u64; 2],
        log_loss: f64,
    ) -> Value {
        let accuracy = correct as f64 / n as f64;
        let share = predicted[0].max(predicted[1]) as f64 / n as f64;
        json!({
            "samples": n,
            "accuracy": accuracy,
            "log_loss": log_loss,
            "metrics": {
                "kind": "classification",
                "n": n, "n_classes": 2, "correct": correct,
                "accuracy": accuracy, "balanced_accuracy": balanced, "macro_f1": balanced - 0.05,
                "confusion": [[gold[0] / 2, gold[0] - gold[0] / 2], [gold[1] / 2, gold[1] - gold[1] / 2]],
                "predicted_histogram": predicted, "gold_histogram": gold,
                "majority_class_rate": gold[0].max(gold[1]) as f64 / n as f64,
                "max_predicted_share": share, "collapse_threshold": 0.95,
                "collapsed": share > 0.95
            },
            "selection": {"accuracy": accuracy, "balanced_accuracy": balanced, "log_loss": log_loss}
        })
    }

    fn name(layer: u64, kind: &str) -> String {
        let module = match kind {
            "q" | "k" | "v" | "o" => format!("self_attn.{kind}_proj"),
            _ => format!("mlp.{kind}_proj"),
        };
        format!("model.layers.{layer}.{module}.weight")
    }

    /// A gradient-mode run: scores for 3 layers × 7 kinds × K ∈ {1, 2} × keep ∈
    /// {0.01, 0.1, 0.5}, five candidates (one collapsed, which is also the best).
    pub(crate) fn report() -> Report {
        serde_json::from_value(report_json()).expect("the fixture follows the schema")
    }

    /// [`report`] as report.json holds it.
    pub(crate) fn report_json() -> Value {
        let kinds = ["q", "k", "v", "o", "gate", "up", "down"];
        let mut scores = Vec::new();
        for layer in [25u64, 26, 27] {
            for (ki, kind) in kinds.iter().enumerate() {
                for blocks in [1u64, 2] {
                    for keep in [0.01, 0.1, 0.5] {
                        let score = (layer as f64 - 24.0) * 0.31 + ki as f64 * 0.17
                            - blocks as f64 * 0.05
                            + keep;
                        scores.push(json!({
                            "matrix": name(layer, kind), "layer": layer, "kind": kind,
                            "blocks": blocks, "keep": keep, "score": score
                        }));
                    }
                }
            }
        }
        let down27 = name(27, "down");
        let up26 = name(26, "up");
        let candidates = json!([
            {"matrix": down27, "layer": 27, "blocks": 2, "keep": 0.01, "score": 1.62,
             "selection": classification(62, 100, 0.5, [0, 100], [38, 62], 6.9)},
            {"matrix": down27, "layer": 27, "blocks": 2, "keep": 0.1, "score": 1.5,
             "selection": classification(58, 100, 0.54, [12, 88], [38, 62], 6.1)},
            {"matrix": down27, "layer": 27, "blocks": 2, "keep": 0.5, "score": 1.41,
             "selection": classification(57, 100, 0.53, [20, 80], [38, 62], 6.2)},
            {"matrix": up26, "layer": 26, "blocks": 1, "keep": 0.1, "score": 1.3,
             "selection": classification(55, 100, 0.52, [30, 70], [38, 62], 6.3)},
            {"matrix": "model.layers.9.weird|name.weight", "layer": 9, "blocks": 1, "keep": 0.5,
             "score": null, "selection": classification(50, 100, 0.48, [45, 55], [38, 62], 6.4)}
        ]);
        json!({
            "task": "epistemic_reasoning",
            "model": "smollm2",
            "mode": "gradient",
            "selection_metric": "accuracy",
            "scores": scores,
            "baseline": {
                "selection": classification(57, 100, 0.52, [25, 75], [38, 62], 6.2),
                "heldout": classification(560, 1000, 0.51, [240, 760], [400, 600], 6.3)
            },
            "candidates": candidates,
            "best": {"matrix": down27, "blocks": 2, "keep": 0.01,
                     "selection": classification(62, 100, 0.5, [0, 100], [38, 62], 6.9),
                     "heldout": classification(600, 1000, 0.5, [0, 1000], [400, 600], 7.0)},
            "stages": [
                {"stage": "gradients", "instance": "all matrices", "key": "ab12", "outcome": "computed", "seconds": 12.3},
                {"stage": "factors", "instance": "layers.27.mlp.down_proj K=1", "key": "cd34", "outcome": "hit", "seconds": 0.5},
                {"stage": "factors", "instance": "layers.27.mlp.down_proj K=2", "key": "cd35", "outcome": "computed", "seconds": 3.0},
                {"stage": "evaluate", "instance": "baseline selection", "key": "ef56", "outcome": "memo", "seconds": 0.0},
                {"stage": "evaluate", "instance": "candidate 1", "key": "ef57", "outcome": "computed", "seconds": 20.0}
            ],
            "seconds": 123.4,
            "export": {
                "dense": {"path": "out/model.safetensors", "bytes": 538000000u64},
                "factored": {"path": "out/factored.safetensors", "bytes": 1234, "params": 100, "dense_params": 884736}
            },
            "resolved": {"task": "epistemic_reasoning", "search": {"top_k": 5, "blocks": [1, 2]}}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn typed(v: &Value) -> Report {
        serde_json::from_value(v.clone()).expect("a report that follows the schema")
    }

    #[test]
    fn keep_values_print_without_float_noise() {
        assert_eq!(fmt_keep(1.0 - 0.1 * 9.95), "0.005");
        assert_eq!(fmt_keep(1.0 - 0.1 * 8.0), "0.2");
        assert_eq!(fmt_keep(0.6), "0.6");
        assert_eq!(fmt_keep(0.25), "0.25");
        assert_eq!(fmt_keep(1.0), "1");
        assert_eq!(fmt_keep(0.02), "0.02");
    }

    #[test]
    fn a_best_candidate_that_does_not_beat_the_baseline_is_called_out() {
        // The fixture's best beats the baseline on selection accuracy (62% vs 57%).
        let mut r = fixture::report_json();
        assert_eq!(no_gain_on_selection(&typed(&r)), None);
        assert!(!markdown(&typed(&r)).contains("No gain"));
        // 57 correct of 100 ties the baseline: a tie does not beat it.
        r["best"]["selection"]["accuracy"] = json!(0.57);
        let s = no_gain_on_selection(&typed(&r)).unwrap();
        assert!(
            s.contains("accuracy 57.00% against the baseline's 57.00%"),
            "{s}"
        );
        assert!(markdown(&typed(&r)).contains("> **No gain:** no candidate beats"));
        // Under balanced accuracy the best's 0.5 loses to the baseline's 0.52 even
        // though its accuracy is higher.
        let mut r = fixture::report_json();
        r["selection_metric"] = json!("balanced_accuracy");
        let s = no_gain_on_selection(&typed(&r)).unwrap();
        assert!(
            s.contains("balanced accuracy 50.00% against the baseline's 52.00%"),
            "{s}"
        );
        // No baseline, no verdict.
        r.as_object_mut().unwrap().remove("baseline");
        assert_eq!(no_gain_on_selection(&typed(&r)), None);
    }

    #[test]
    fn markdown_has_sections_tables_and_figures() {
        let md = markdown(&fixture::report());
        assert!(md.starts_with("# c2i report: epistemic_reasoning on smollm2\n"));
        for header in [
            "| Set | Samples | Accuracy | Balanced accuracy | Macro-F1 | Majority-class rate | Log-loss | Predictions | Collapsed |",
            "| # | Matrix | K | Keep | Score | Accuracy | Balanced accuracy | Log-loss | Predictions | Collapsed |",
            "| Stage | Instances | Hit | Computed | Memo | Seconds |",
            "| Artifact | Path | Size | Parameters |",
        ] {
            assert!(md.contains(header), "missing header {header}\n{md}");
        }
        assert!(md.contains("`model.layers.27.mlp.down_proj.weight` (layer 27, kind down)"));
        assert!(md.contains("[12, 88]"));
        assert!(md.contains("[0, 100]"));
        assert!(md.contains("**COLLAPSED**"));
        assert!(md.contains("1 (best)"));
        assert!(md.contains("> **Warning:**"));
        assert!(md.contains("COLLAPSED on the held-out samples (one answer takes 100.00%"));
        assert!(md.contains("balanced accuracy (50.00%) is not above the baseline's (51.00%)"));
        assert!(md.contains(
            "**Held-out gain over the baseline:** +4.00 points of accuracy (56.00% → 60.00%)"
        ));
        assert!(md.contains("always giving the majority answer scores **62.00%**"));
        assert!(md.contains("513.1 MiB (538,000,000 bytes)"));
        assert!(md.contains("100 of 884,736 dense (0.01%)"));
        assert!(md.contains("| factors | 2 | 1 | 1 | 0 | 3.5 |"));
        assert!(md.contains("| **total** | 5 | 1 | 3 | 1 | 35.8 |"));
        assert!(md.contains("Total run time: 123.4 s."));
        assert!(md.contains("```json"));
        // Every candidate's histogram is visible.
        for h in ["[0, 100]", "[12, 88]", "[20, 80]", "[30, 70]", "[45, 55]"] {
            assert!(md.contains(h), "{h}");
        }
        assert_eq!(markdown(&fixture::report()), md);
    }

    /// Every table line has the same number of unescaped `|` as its header.
    #[test]
    fn tables_are_well_formed_and_escape_pipes() {
        let md = markdown(&fixture::report());
        assert!(md.contains("`model.layers.9.weird\\|name.weight`"));
        let pipes = |line: &str| {
            let b = line.as_bytes();
            (0..b.len())
                .filter(|&i| b[i] == b'|' && (i == 0 || b[i - 1] != b'\\'))
                .count()
        };
        let mut expected: Option<usize> = None;
        let mut tables = 0;
        for line in md.lines() {
            if line.starts_with('|') {
                match expected {
                    None => {
                        expected = Some(pipes(line));
                        tables += 1;
                    }
                    Some(n) => assert_eq!(pipes(line), n, "{line}"),
                }
            } else {
                expected = None;
            }
        }
        assert_eq!(tables, 5);
        assert_eq!(escape_cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn no_warning_for_a_sound_best_candidate() {
        let mut r = fixture::report_json();
        let good = r["candidates"][1]["selection"].clone();
        r["best"]["keep"] = json!(0.1);
        r["best"]["selection"] = good.clone();
        let mut held = good;
        held["metrics"]["balanced_accuracy"] = json!(0.6);
        r["best"]["heldout"] = held;
        let md = markdown(&typed(&r));
        assert!(!md.contains("Warning"), "{md}");
        assert!(md.contains("2 (best)"));
        assert!(md.contains("+9.00 points of balanced accuracy (51.00% → 60.00%)"));
    }

    #[test]
    fn missing_parts_render_and_a_missing_field_is_named() {
        // A run that stopped before the evaluations, from a binary before racing: no
        // baseline, no best, no `race`, no `rows_evaluated`.
        let mut r = fixture::report_json();
        r["baseline"] = Value::Null;
        r["best"] = Value::Null;
        r["mode"] = json!("laser");
        r["candidates"] = json!([r["candidates"][3].clone()]);
        let md = markdown(&typed(&r));
        assert!(md.contains("No baseline was evaluated"));
        assert!(md.contains("No best candidate"));
        assert!(md.contains("[30, 70]"));
        assert!(md.contains("scores **62.00%**"), "{md}");
        assert_eq!(typed(&r).candidates[0].rows(), 100);
        r.as_object_mut().unwrap().remove("export");
        assert!(!markdown(&typed(&r)).contains("## Export"));
        // A field every version wrote, missing: the error names it.
        r.as_object_mut().unwrap().remove("candidates");
        let e = serde_json::from_value::<Report>(r).unwrap_err().to_string();
        assert!(e.contains("missing field `candidates`"), "{e}");
        // So does Report::read, with the file.
        let dir = std::env::temp_dir().join(format!("c2i-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("report.json"), br#"{"task": "t"}"#).unwrap();
        let e = Report::read(&dir).unwrap_err().to_string();
        assert!(
            e.contains("report.json: not a c2i report") && e.contains("missing field"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The baseline's two evaluations replaced by `fig`, no candidates, no best.
    fn only_baseline(fig: Value) -> Report {
        let mut r = fixture::report_json();
        r["baseline"] = json!({"selection": fig, "heldout": fig});
        r["best"] = Value::Null;
        r["candidates"] = json!([]);
        typed(&r)
    }

    #[test]
    fn generation_metrics_render() {
        let fig = json!({
            "samples": 4, "accuracy": 0.25, "log_loss": 3.0,
            "metrics": {"kind": "generation", "n": 4, "correct": 1, "accuracy": 0.25,
                        "exact_match": 0.25, "token_f1": 0.5, "empty_rate": 0.0, "prompt_copy_rate": 0.25},
            "selection": {"accuracy": 0.25, "balanced_accuracy": null, "log_loss": 3.0}
        });
        let r = only_baseline(fig);
        let f = &r.baseline.as_ref().unwrap().selection;
        assert_eq!(f.kind(), MetricsKind::Generation);
        assert_eq!(f.balanced_accuracy(), None);
        let md = markdown(&r);
        assert!(md.contains("| Set | Exact match | Token F1 | Empty answers | Copies prompt |"));
        assert!(md.contains("| held-out | 25.00% | 50.00% | 0.00% | 25.00% |"));
        assert!(md.contains("no majority-class rate"));
    }

    #[test]
    fn multiple_choice_shows_chance_not_a_majority_rate() {
        let fig = json!({
            "samples": 60, "accuracy": 0.25, "log_loss": 9.0,
            "metrics": {"kind": "multiple_choice", "n": 60, "correct": 15, "accuracy": 0.25,
                        "chance": 0.2, "min_choices": 5, "max_choices": 5},
            "selection": {"accuracy": 0.25, "balanced_accuracy": null, "log_loss": 9.0}
        });
        let r = only_baseline(fig);
        let f = &r.baseline.as_ref().unwrap().selection;
        assert_eq!(f.kind(), MetricsKind::MultipleChoice);
        assert_eq!((f.chance(), f.majority_class_rate()), (Some(0.2), None));
        let md = markdown(&r);
        assert!(
            md.contains("| held-out | 60 | 25.00% | — | — | chance 20.00% |"),
            "{md}"
        );
        assert!(
            md.contains("the floor is chance") && md.contains("**20.00%**"),
            "{md}"
        );
    }

    #[test]
    fn names_and_formats() {
        assert_eq!(layer_of("model.layers.27.mlp.down_proj.weight"), Some(27));
        assert_eq!(
            kind_of("model.layers.27.mlp.down_proj.weight").as_deref(),
            Some("down")
        );
        assert_eq!(
            kind_of("model.layers.3.self_attn.q_proj.weight").as_deref(),
            Some("q")
        );
        assert_eq!(
            short_matrix_name("model.layers.3.self_attn.q_proj.weight"),
            "layers.3.self_attn.q_proj"
        );
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(fmt_bytes(1000), "1000 B");
        assert_eq!(fmt_points(-0.0000001), "+0.00 points");
        assert_eq!(fmt_score(Some(1.5e-6)), "1.500e-6");
        assert_eq!(fmt_keep(0.25), "0.25");
    }
}
