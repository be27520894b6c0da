//! Several runs side by side ([`comparison`], what `c2i compare` prints): one row per
//! run with its task, search method and selection metric, the baseline and the winner
//! on the held-out rows (balanced accuracy, predictions and the collapse flag beside
//! accuracy), the number of candidates evaluated and what the search cost; then, for
//! every task with both a c2i (gradient-mode) and a LASER run under the same selection
//! metric, the speedup of c2i.
//!
//! # What "search seconds" counts
//!
//! The seconds of the stage instances this run **computed** (or pulled from a remote),
//! except the held-out evaluations, which only report: gradients, matrix digests, block
//! SVDs, singular-value gradients, and the selection evaluations of the baseline and of
//! every candidate. Instances found in the cache cost nothing in this run and are
//! counted in the `cached` column instead, so a warm run never passes for a fast
//! search: a speedup is printed as cold only when neither run had a cached search
//! stage.

use super::report::{
    fixed, fmt_hist, fmt_keep, fmt_seconds, no_gain_on_selection, short_matrix_name, Align, Table,
    MISSING,
};
use super::schema::{Figures, MetricsKind, Report};
use std::fmt::Write as _;

/// One run's line of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Where the report came from (its directory), as given.
    pub label: String,
    pub task: String,
    /// `gradient` (c2i) or `laser`.
    pub mode: String,
    pub selection_metric: String,
    pub baseline_heldout: Option<Figures>,
    /// The winner: short matrix name, K and keep.
    pub winner: Option<String>,
    /// The winner does not beat the unmodified model on the selection samples
    /// ([`no_gain_on_selection`]).
    pub no_gain: bool,
    pub best_heldout: Option<Figures>,
    pub candidates: usize,
    /// Seconds of the search stages computed in this run (see the module notes).
    pub search_seconds: f64,
    /// Search stage instances that were cache hits (0 for a cold run).
    pub search_cached: usize,
    /// Seconds of the held-out evaluations computed in this run.
    pub heldout_seconds: f64,
    /// The run's wall time, as the report states it.
    pub total_seconds: Option<f64>,
}

/// Reads the comparison line of one run from its report.
pub fn summarize(label: &str, report: &Report) -> RunSummary {
    let best = report.best.as_ref();
    let (search_seconds, search_cached, heldout_seconds) = report.search_cost();
    RunSummary {
        label: label.to_string(),
        task: report.task.clone(),
        mode: report.mode.name().to_string(),
        selection_metric: report.selection_metric.clone(),
        baseline_heldout: report.baseline.as_ref().map(|b| b.heldout.clone()),
        winner: best.map(|b| {
            format!(
                "{}, K={}, keep {}",
                short_matrix_name(&b.matrix),
                b.blocks,
                fmt_keep(b.keep)
            )
        }),
        no_gain: no_gain_on_selection(report).is_some(),
        best_heldout: best.map(|b| b.heldout.clone()),
        candidates: report.candidates.len(),
        search_seconds,
        search_cached,
        heldout_seconds,
        total_seconds: Some(report.seconds),
    }
}

fn method(mode: &str) -> &str {
    match mode {
        "gradient" => "c2i",
        "laser" => "LASER exhaustive",
        other => other,
    }
}

/// `0.5225 / 0.500 [400, 0] COLLAPSED`: accuracy, then for classification the balanced
/// accuracy, the predicted-class histogram and the collapse flag.
fn figures_cell(f: Option<&Figures>) -> String {
    let Some(f) = f else {
        return MISSING.to_string();
    };
    let mut s = fixed(Some(f.accuracy), 4);
    if f.kind() == MetricsKind::Classification {
        if let Some(b) = f.balanced_accuracy() {
            let _ = write!(s, " / {b:.3}");
        }
        if let Some(h) = f.predicted_histogram() {
            let _ = write!(s, " {}", fmt_hist(Some(h)));
        }
        if f.is_collapsed() {
            s.push_str(" COLLAPSED");
        }
    }
    s
}

/// The comparison of runs ([`summarize`]d) as Markdown: the table, then one speedup
/// line per task and selection metric that has both a c2i and a LASER run (the first
/// of each, in the order given).
pub fn comparison(rows: &[RunSummary]) -> String {
    let mut out = String::new();
    let mut t = Table::new(&[
        ("run", Align::Left),
        ("task", Align::Left),
        ("method (selection metric)", Align::Left),
        ("held-out rows", Align::Right),
        ("majority", Align::Right),
        ("baseline held-out acc. / bal.", Align::Left),
        ("winner", Align::Left),
        ("winner held-out acc. / bal.", Align::Left),
        ("candidates", Align::Right),
        ("search s", Align::Right),
        ("cached", Align::Right),
        ("held-out s", Align::Right),
        ("run s", Align::Right),
    ]);
    for r in rows {
        let held = r.best_heldout.as_ref().or(r.baseline_heldout.as_ref());
        t.row(vec![
            r.label.clone(),
            r.task.clone(),
            format!("{} ({})", method(&r.mode), r.selection_metric),
            held.map_or_else(|| MISSING.to_string(), |f| f.samples.to_string()),
            match held.map(|f| (f.majority_class_rate(), f.chance())) {
                Some((Some(m), _)) => format!("{m:.4}"),
                Some((None, Some(c))) => format!("chance {c:.4}"),
                _ => MISSING.to_string(),
            },
            figures_cell(r.baseline_heldout.as_ref()),
            match (&r.winner, r.no_gain) {
                (Some(w), true) => format!("{w} (no gain over the baseline on selection)"),
                (Some(w), false) => w.clone(),
                (None, _) => MISSING.to_string(),
            },
            figures_cell(r.best_heldout.as_ref()),
            r.candidates.to_string(),
            fmt_seconds(r.search_seconds),
            r.search_cached.to_string(),
            fmt_seconds(r.heldout_seconds),
            r.total_seconds
                .map_or_else(|| MISSING.to_string(), fmt_seconds),
        ]);
    }
    t.render(&mut out);
    let mut pairs = Vec::new();
    for c in rows.iter().filter(|r| r.mode == "gradient") {
        let key = (&c.task, &c.selection_metric);
        if pairs.iter().any(|(k, _, _)| *k == key) {
            continue;
        }
        if let Some(l) = rows
            .iter()
            .find(|r| r.mode == "laser" && (&r.task, &r.selection_metric) == key)
        {
            pairs.push((key, c, l));
        }
    }
    for ((task, metric), c, l) in pairs {
        let _ = write!(
            out,
            "- {task} ({metric}): LASER searched {} candidates in {} s, c2i {} in {} s",
            l.candidates,
            fmt_seconds(l.search_seconds),
            c.candidates,
            fmt_seconds(c.search_seconds),
        );
        if c.search_seconds > 0.0 {
            let _ = write!(out, ": **{:.1}x**", l.search_seconds / c.search_seconds);
        }
        let cached = c.search_cached + l.search_cached;
        if cached > 0 {
            let _ = write!(
                out,
                " (not a cold comparison: {cached} search stages were cache hits)"
            );
        }
        out.push_str(".\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::report::fixture;
    use super::*;
    use serde_json::{json, Value};

    fn stage(stage: &str, instance: &str, outcome: &str, seconds: f64) -> Value {
        json!({"stage": stage, "instance": instance, "outcome": outcome, "seconds": seconds, "key": "k"})
    }

    fn md(runs: &[(&str, Value)]) -> String {
        let rows: Vec<RunSummary> = runs.iter().map(|(l, r)| summarize(l, &typed(r))).collect();
        comparison(&rows)
    }

    fn typed(v: &Value) -> Report {
        serde_json::from_value(v.clone()).expect("a report that follows the schema")
    }

    fn run(mode: &str, stages: Vec<Value>) -> Value {
        let mut r = fixture::report_json();
        r["mode"] = json!(mode);
        r["stages"] = json!(stages);
        r
    }

    #[test]
    fn search_seconds_count_computed_stages_but_not_heldout_or_hits() {
        let r = run(
            "gradient",
            vec![
                stage("gradients", "all matrices", "computed", 30.0),
                stage("factors", "m K=1", "hit", 0.001),
                stage("sv-grads", "m K=1", "computed", 2.0),
                stage("evaluate", "base model, Selection", "computed", 10.0),
                stage("evaluate", "base model, Heldout", "computed", 40.0),
                stage("evaluate", "m K=1 keep=0.1, Selection", "pulled", 5.0),
                stage("evaluate", "m K=1 keep=0.1, Heldout", "hit", 0.0),
            ],
        );
        let s = summarize("out/x", &typed(&r));
        assert_eq!(s.search_seconds, 47.0);
        assert_eq!(s.heldout_seconds, 40.0);
        assert_eq!(
            s.search_cached, 1,
            "the factors hit; a held-out hit is not search"
        );
        assert_eq!(s.mode, "gradient");
        assert!(s.winner.is_some());
        assert!(!s.no_gain, "the fixture's best beats its baseline");
        let mut r = r;
        r["best"]["selection"]["accuracy"] = json!(0.5);
        assert!(summarize("out/x", &typed(&r)).no_gain);
        assert!(md(&[("x", r)]).contains("(no gain over the baseline on selection)"));
    }

    #[test]
    fn speedup_is_laser_over_c2i_and_flags_cached_runs() {
        let c = run(
            "gradient",
            vec![stage("gradients", "all matrices", "computed", 20.0)],
        );
        let l = run(
            "laser",
            vec![stage(
                "evaluate",
                "m K=1 keep=0.9, Selection",
                "computed",
                90.0,
            )],
        );
        let table = md(&[("c", c.clone()), ("l", l)]);
        assert!(table.contains(": **4.5x**."), "{table}");
        assert!(table.contains("| c2i ("), "{table}");
        assert!(table.contains("| LASER exhaustive ("), "{table}");
        let warm = run(
            "laser",
            vec![stage("evaluate", "m K=1 keep=0.9, Selection", "hit", 0.0)],
        );
        let table = md(&[("c", c), ("l", warm)]);
        assert!(
            table.contains("not a cold comparison: 1 search stages"),
            "{table}"
        );
    }

    #[test]
    fn no_speedup_line_without_a_pair_of_the_same_task_and_metric() {
        let c = run("gradient", vec![]);
        let mut l = run("laser", vec![]);
        l["selection_metric"] = json!("balanced_accuracy");
        let table = md(&[("c", c), ("l", l)]);
        assert!(!table.contains("searched"), "{table}");
    }

    #[test]
    fn collapsed_figures_say_so() {
        let r = fixture::report();
        let best = r.best.as_ref().unwrap();
        assert_eq!(
            figures_cell(Some(&best.heldout)),
            "0.6000 / 0.500 [0, 1000] COLLAPSED"
        );
        let mut g: Figures = serde_json::from_value(json!({
            "samples": 4, "accuracy": 0.19, "log_loss": 3.0,
            "metrics": {"kind": "generation", "n": 4, "correct": 1, "accuracy": 0.19,
                        "exact_match": 0.25, "token_f1": 0.5, "empty_rate": 0.0, "prompt_copy_rate": 0.25},
            "selection": {"accuracy": 0.19, "balanced_accuracy": null, "log_loss": 3.0}
        }))
        .unwrap();
        assert_eq!(figures_cell(Some(&g)), "0.1900");
        g.accuracy = f64::NAN;
        assert_eq!(figures_cell(Some(&g)), MISSING);
        assert_eq!(figures_cell(None), MISSING);
    }

    #[test]
    fn runs_stopped_before_the_evaluations_still_render() {
        let mut r = run("gradient", vec![]);
        r["best"] = Value::Null;
        r["baseline"] = Value::Null;
        let table = md(&[("early", r)]);
        assert!(table.contains("| early | epistemic_reasoning |"), "{table}");
    }
}
