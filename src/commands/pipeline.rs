//! `c2i run`, `c2i sweep` and `c2i status`: a pipeline through the engine.

use super::Output;
use crate::resources::{mib, peak_rss_bytes};
use anyhow::{Context, Result};
use c2i_cache::{ObjectStoreRemote, RemoteBackend, RemoteOptions, SigningKey, TrustedKeys};
use c2i_engine::ctx::{Ctx, Progress, Silent, Trust};
use c2i_engine::exec::local::Local;
use c2i_engine::exec::pool::Pool;
use c2i_engine::exec::slurm::Slurm;
use c2i_engine::exec::{Executor, WorkerConfig};
use c2i_engine::lock::{lock_path, LockBook, LockChange};
use c2i_engine::runner::{run as run_pipeline, write_atomic, write_run_json, RunResult, Until};
use c2i_engine::spec::{ExecutorKind, Pipeline};
use c2i_engine::status::status as pipeline_status;
use c2i_stages::export::report::fmt_keep;
use indicatif::ProgressBar;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Override a key, TOML syntax: --set search.top_k=3 --set 'search.keep=[0.1, 0.2]'.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Stop after this stage: gradients, factors, scores, evaluate.
    #[arg(long)]
    pub until: Option<Until>,
    /// Cache directory (default: [cache] dir of the pipeline, else $C2I_HOME/cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Remote cache to read through and write back to: s3://BUCKET/PREFIX,
    /// file:///PATH or /PATH; "" for none. Wins over $C2I_CACHE_REMOTE, which wins
    /// over the pipeline's [cache] remote.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// Where stage instances are computed: local (in this process), pool (worker
    /// processes on this machine) or slurm (job arrays); default [run] executor.
    #[arg(long)]
    pub executor: Option<ExecutorKind>,
    /// Worker processes of the pool executor (default [run] jobs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Never write to the remote cache (a reader: "CI writes, everyone reads").
    #[arg(long)]
    pub no_push: bool,
    /// Check the run against PIPELINE.lock: fail, naming the stage and both digests,
    /// if an output differs or the pipeline no longer matches it; the lock is not
    /// rewritten.
    #[arg(long)]
    pub frozen: bool,
    /// Replace PIPELINE.lock even when the same stage instances gave other bytes here
    /// (by default such a lock is left as it was, and the run says which output differs).
    #[arg(long, conflicts_with = "frozen")]
    pub update_lock: bool,
}

#[derive(clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub base: RunArgs,
    /// One variant: overrides separated by `;`, e.g. --variant 'search.keep=[0.1];search.top_k=2'.
    /// Variants run in order in one process, so each reuses what the earlier ones computed.
    #[arg(long = "variant", value_name = "OVERRIDES", required = true)]
    pub variants: Vec<String>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    pub pipeline: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Cache directory (default: [cache] dir of the pipeline, else $C2I_HOME/cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Also list what is cached (by default only what would run, and why).
    #[arg(long)]
    pub all: bool,
}

/// The cache directory: --cache, else the pipeline's [cache] dir, else $C2I_HOME/cache.
pub fn cache_dir(flag: Option<&Path>, p: Option<&Pipeline>) -> Result<PathBuf> {
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    if let Some(d) = p.and_then(|p| p.spec.cache.dir.clone()) {
        return Ok(d);
    }
    Ok(c2i_stages::assets::c2i_home()?.join("cache"))
}

/// Progress on stderr: bars for long stages on a terminal; otherwise (CI logs, a
/// file) one line per finished stage instance, the way cargo prints `Compiling ...`.
struct Bars {
    hidden: bool,
    /// Plain lines instead of bars (stderr is not a terminal).
    lines: bool,
    bar: Mutex<Option<ProgressBar>>,
    wave: Mutex<Wave>,
}

/// The wave being reported: instances done of total, and the seconds of those computed.
#[derive(Default)]
struct Wave {
    total: usize,
    done: usize,
    computed: usize,
    computed_seconds: f64,
}

/// `[done/total, eta 3m20s]`: the ETA from the mean of the instances computed so far.
fn wave_line(stage: &str, instance: &str, outcome: &str, seconds: f64, w: &Wave) -> String {
    let left = w.total.saturating_sub(w.done);
    let eta = if w.computed > 0 && left > 0 {
        let s = (w.computed_seconds / w.computed as f64 * left as f64).round() as u64;
        format!(", eta {}m{:02}s", s / 60, s % 60)
    } else {
        String::new()
    };
    format!(
        "{outcome:>9} {stage} {instance} ({seconds:.1}s) [{}/{}{eta}]",
        w.done, w.total
    )
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        if self.hidden || self.lines {
            return;
        }
        let out = Output {
            quiet: false,
            json: false,
        };
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(out.progress(total, stage));
        }
    }
    fn advance(&self, done: u64) {
        if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.set_position(done);
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
    }
    fn wave(&self, total: usize) {
        if let Ok(mut w) = self.wave.lock() {
            *w = Wave {
                total,
                ..Wave::default()
            };
        }
    }
    fn instance(&self, stage: &str, instance: &str, outcome: &str, seconds: f64) {
        if self.hidden || !self.lines {
            return;
        }
        if let Ok(mut w) = self.wave.lock() {
            w.done += 1;
            if outcome == "computed" {
                w.computed += 1;
                w.computed_seconds += seconds;
            }
            eprintln!("{}", wave_line(stage, instance, outcome, seconds, &w));
        }
    }
}

/// The remote cache URL: --remote, else $C2I_CACHE_REMOTE, else the pipeline's
/// [cache] remote; an empty value means none.
pub fn remote_url(flag: Option<&str>, p: Option<&Pipeline>) -> Option<String> {
    let chosen = match (flag, std::env::var("C2I_CACHE_REMOTE")) {
        (Some(f), _) => Some(f.to_string()),
        (None, Ok(env)) => Some(env),
        (None, Err(_)) => p.and_then(|p| p.spec.cache.remote.clone()),
    };
    chosen.filter(|u| !u.trim().is_empty())
}

/// Opens a remote cache, with the endpoint and timeout of the pipeline's [cache]
/// table when there is one. An endpoint given on the command line may be plain HTTP;
/// one from a pipeline file only with `allow_http = true`.
pub fn open_remote(
    url: &str,
    p: Option<&Pipeline>,
    endpoint: Option<String>,
    timeout_secs: Option<u64>,
) -> Result<Box<dyn RemoteBackend>> {
    let allow_http = endpoint.is_some() || p.is_some_and(|p| p.spec.cache.allow_http);
    let mut opts = RemoteOptions {
        endpoint: endpoint.or_else(|| p.and_then(|p| p.spec.cache.endpoint.clone())),
        allow_http,
        ..RemoteOptions::default()
    };
    if let Some(t) = timeout_secs.or_else(|| p.and_then(|p| p.spec.cache.timeout_secs)) {
        opts.timeout = std::time::Duration::from_secs(t.max(1));
    }
    let remote = ObjectStoreRemote::open_str(url, &opts)
        .with_context(|| format!("opening the remote cache {url}"))?;
    Ok(Box::new(remote))
}

fn progress(out: &Output) -> Box<dyn Progress> {
    if out.quiet || out.json {
        Box::new(Silent)
    } else {
        Box::new(Bars {
            hidden: false,
            lines: !std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
            wave: Mutex::new(Wave::default()),
        })
    }
}

/// The signing key: $C2I_SIGNING_KEY (a file), else the pipeline's [cache] signing_key.
pub fn signing_key(p: Option<&Pipeline>) -> Result<Option<(PathBuf, SigningKey)>> {
    let path = match std::env::var_os("C2I_SIGNING_KEY").filter(|v| !v.is_empty()) {
        Some(v) => Some(PathBuf::from(v)),
        None => p.and_then(|p| p.spec.cache.signing_key.clone()),
    };
    match path {
        Some(path) => {
            let key = SigningKey::load(&path)?;
            Ok(Some((path, key)))
        }
        None => Ok(None),
    }
}

/// The trusted keys: $C2I_TRUSTED_KEYS (comma-separated), else the pipeline's
/// [cache] trusted_keys; `None` when neither is set (or empty).
pub fn trusted_keys(p: Option<&Pipeline>) -> Result<Option<(Vec<String>, TrustedKeys)>> {
    let list: Vec<String> = match std::env::var("C2I_TRUSTED_KEYS") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Err(_) => p
            .and_then(|p| p.spec.cache.trusted_keys.clone())
            .unwrap_or_default(),
    };
    if list.is_empty() {
        return Ok(None);
    }
    let keys = TrustedKeys::parse(&list).map_err(|e| {
        anyhow::anyhow!("trusted keys (C2I_TRUSTED_KEYS or [cache] trusted_keys): {e}")
    })?;
    Ok(Some((list, keys)))
}

/// The context of a run (cache, remote, trust) and the settings its workers get.
pub(crate) fn context(
    p: &Pipeline,
    cache_flag: Option<&Path>,
    remote_flag: Option<&str>,
    no_push: bool,
    out: &Output,
) -> Result<(Ctx, WorkerConfig)> {
    let dir = cache_dir(cache_flag, Some(p))?;
    let url = remote_url(remote_flag, Some(p));
    let remote = match &url {
        Some(u) => Some(open_remote(u, Some(p), None, None)?),
        None => None,
    };
    let signing = signing_key(Some(p))?;
    let trusted = trusted_keys(Some(p))?;
    let push = !no_push && p.spec.cache.push;
    let config = WorkerConfig {
        cache: std::path::absolute(&dir).unwrap_or_else(|_| dir.clone()),
        remote: url.clone(),
        endpoint: p.spec.cache.endpoint.clone(),
        allow_http: p.spec.cache.allow_http,
        timeout_secs: p.spec.cache.timeout_secs,
        signing_key: signing
            .as_ref()
            .map(|(path, _)| std::path::absolute(path).unwrap_or_else(|_| path.clone())),
        trusted_keys: trusted.as_ref().map(|(l, _)| l.clone()).unwrap_or_default(),
        push,
        quiet: out.quiet,
    };
    let ctx = Ctx::new(&dir, progress(out))
        .with_context(|| format!("opening the cache at {}", dir.display()))?
        .with_remote(remote)
        .with_trust(Trust {
            signing_key: signing.map(|(_, k)| k),
            trusted: trusted.map(|(_, t)| t),
            push,
        });
    Ok((ctx, config))
}

/// The executor a run asked for (--executor, else [run] executor).
pub(crate) fn executor(
    p: &Pipeline,
    kind: Option<ExecutorKind>,
    jobs: Option<usize>,
    ctx: &Ctx,
    config: WorkerConfig,
) -> Result<Box<dyn Executor>> {
    let run = &p.spec.run;
    Ok(match kind.unwrap_or(run.executor) {
        ExecutorKind::Local => Box::new(Local),
        ExecutorKind::Pool => Box::new(Pool::new(jobs.unwrap_or(run.jobs), run.retries, config)?),
        ExecutorKind::Slurm => Box::new(Slurm::new(
            run.slurm.clone(),
            run.retries,
            config,
            &p.spec.output.dir,
            ctx.has_remote(),
            ctx.trust().push,
        )?),
    })
}

/// A one-line count of outcomes per stage, e.g. `gradients hit 1; factors computed 3`.
fn outcome_line(r: &RunResult) -> String {
    r.outcomes()
        .iter()
        .map(|(stage, o)| {
            let parts: Vec<String> = o.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("{stage} {}", parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn summary(p: &Pipeline, r: &RunResult) -> String {
    let mut s = format!(
        "{} on {}: {:.1} s\n  {}",
        p.file.display(),
        r.report.task,
        r.report.seconds,
        outcome_line(r)
    );
    if let Some(rem) = &r.remote {
        s += &format!(
            "\n  remote {}: {}; pulled {}, pushed {} ({} bytes{}), rejected {}, untrusted {}{}, repaired {}",
            rem.url,
            rem.status,
            rem.pulled_entries,
            rem.pushed_entries,
            rem.uploaded_bytes,
            if rem.push { "" } else { "; pushing off" },
            rem.rejected.len(),
            rem.untrusted.len(),
            if rem.authenticated { "" } else { " (unauthenticated: no trusted keys)" },
            rem.repaired_blobs
        );
    }
    if let Some(b) = &r.report.baseline {
        for (which, f) in [("heldout", &b.heldout), ("selection", &b.selection)] {
            s += &format!(
                "\n  baseline {which}: accuracy {:.3}, log-loss {:.4} ({} samples)",
                f.accuracy, f.log_loss, f.samples
            );
        }
    }
    for c in &r.report.candidates {
        let collapsed = c.selection.is_collapsed();
        s += &format!(
            "\n  candidate {} K={} keep={}: score {} accuracy {:.3} log-loss {:.4}{}",
            c.matrix,
            c.blocks,
            fmt_keep(c.keep),
            c.score.map_or("-".to_string(), |v| format!("{v:.4e}")),
            c.selection.accuracy,
            c.selection.log_loss,
            if collapsed {
                "  COLLAPSED to one answer"
            } else {
                ""
            }
        );
        if let Some(round) = c.stopped_after_round {
            s += &format!(
                "  (partial: stopped after round {round}, {} rows)",
                c.rows_evaluated
            );
        }
    }
    if let Some(race) = &r.report.race {
        s += &format!(
            "\n  racing {}: {} of {} candidate-rows evaluated ({:.1}% saved)",
            race.racing,
            race.candidate_rows,
            race.candidate_rows_full,
            100.0 * race.saved_share
        );
    }
    if let Some(b) = &r.report.best {
        s += &format!(
            "\n  best ({}): {} K={} keep={}: selection accuracy {:.3}, held-out accuracy {:.3} (log-loss {:.4})",
            r.report.selection_metric, b.matrix, b.blocks, fmt_keep(b.keep), b.selection.accuracy, b.heldout.accuracy, b.heldout.log_loss
        );
        if let Some(note) = c2i_stages::export::report::no_gain_on_selection(&r.report) {
            s += &format!("\n  NO GAIN: {note}");
        }
    }
    s
}

/// run.json, report.json, report.md and the plots, in the pipeline's output directory.
fn write_outputs(p: &Pipeline, r: &RunResult) -> Result<()> {
    use c2i_stages::export::{plots, report};
    let dir = &p.spec.output.dir;
    write_run_json(dir, r, None)?;
    let rep = &r.report;
    write_atomic(&dir.join("report.json"), &serde_json::to_vec_pretty(rep)?)?;
    write_atomic(&dir.join("report.md"), report::markdown(rep).as_bytes())?;
    for (name, svg) in [
        ("scores_by_layer.svg", plots::scores_by_layer_svg(rep)),
        ("accuracy_vs_keep.svg", plots::accuracy_vs_keep_svg(rep)),
    ] {
        let path = dir.join(name);
        match svg {
            Some(svg) => write_atomic(&path, svg.as_bytes())?,
            // A stale plot from an earlier run must not outlive the data it showed.
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

pub fn run(args: RunArgs, out: &Output) -> Result<()> {
    let p = Pipeline::load(&args.pipeline, &args.set)?;
    let (ctx, config) = context(
        &p,
        args.cache.as_deref(),
        args.remote.as_deref(),
        args.no_push,
        out,
    )?;
    let mut exec = executor(&p, args.executor, args.jobs, &ctx, config)?;
    let lock_file = lock_path(&p.file);
    let mut book = if args.frozen {
        LockBook::frozen(&lock_file, &p.device)?
    } else {
        LockBook::collect(&p.device)
    };
    let started = std::time::Instant::now();
    let log_start = ctx.log_len();
    let r = match run_pipeline(&ctx, exec.as_mut(), &mut book, &p, args.until) {
        Ok(r) => r,
        Err(e) => {
            // run.json still says what was done, where, and why the run stopped.
            let partial = RunResult::partial(
                &p,
                &ctx,
                exec.as_ref(),
                log_start,
                started.elapsed().as_secs_f64(),
            );
            let _ = write_run_json(&p.spec.output.dir, &partial, Some(&e.to_string()));
            return Err(e.into());
        }
    };
    write_outputs(&p, &r)?;
    let mut wrote_lock = false;
    // A run with --set overrides is a variant, not the pipeline file: its lock would
    // overwrite the file's own (and a later --frozen run of the file would fail).
    let overridden = !args.set.is_empty();
    let mut lock_note = String::new();
    // What happened to the lock, for --json: state and, when outputs differ, why.
    let mut lock_state: Option<(&str, Option<String>)> = None;
    if let (Some(lock), false, None, false) = (&r.lock, args.frozen, args.until, overridden) {
        let change =
            c2i_engine::lock::read(&lock_file).map(|old| c2i_engine::lock::compare(&old, lock));
        match change {
            Some(LockChange::Same) => {
                lock_note = format!("; {} matches this run", lock_file.display());
                lock_state = Some(("matches", None));
            }
            Some(LockChange::Outputs(why)) if !args.update_lock => {
                lock_note = format!(
                    "; {} left as it was: this machine computed other bytes than it records \
                     ({why}); `c2i run --update-lock` replaces it",
                    lock_file.display()
                );
                tracing::warn!(lock = %lock_file.display(), "lock left as it was: {why}");
                lock_state = Some(("kept", Some(why)));
            }
            other => {
                c2i_engine::lock::write(&lock_file, lock)?;
                wrote_lock = true;
                (lock_note, lock_state) = match other {
                    None => (
                        format!(", and {}", lock_file.display()),
                        Some(("written", None)),
                    ),
                    Some(LockChange::Outputs(why)) => (
                        format!(
                            ", and replaced {} (--update-lock; it differed: {why})",
                            lock_file.display()
                        ),
                        Some(("replaced", Some(why))),
                    ),
                    _ => (
                        format!(
                            ", and rewrote {} (the pipeline's stage instances changed)",
                            lock_file.display()
                        ),
                        Some(("rewritten", None)),
                    ),
                };
            }
        }
    }
    let peak = peak_rss_bytes();
    out.result(
        &format!(
            "{}\n  wrote run.json, report.json, report.md and plots to {}{}; peak RSS {}",
            summary(&p, &r),
            p.spec.output.dir.display(),
            if !lock_note.is_empty() {
                lock_note
            } else if args.frozen {
                format!("; every output matches {}", lock_file.display())
            } else if overridden && r.lock.is_some() && args.until.is_none() {
                format!(
                    "; {} left as it was (--set overrides: this run is a variant of the file)",
                    lock_file.display()
                )
            } else {
                String::new()
            },
            peak.map(mib).unwrap_or_default()
        ),
        &serde_json::json!({
            "seconds": r.report.seconds,
            "outcomes": r.outcomes(),
            "best": r.report.best,
            "output": p.spec.output.dir,
            "remote": r.remote,
            "executor": r.executor,
            "lock": if wrote_lock || args.frozen { Some(&lock_file) } else { None },
            "lock_state": lock_state.map(|(state, why)| serde_json::json!({
                "file": lock_file,
                "state": state,
                "differs": why,
            })),
            "peak_rss_bytes": peak,
        }),
    );
    Ok(())
}

pub fn sweep(args: SweepArgs, out: &Output) -> Result<()> {
    let first = Pipeline::load(&args.base.pipeline, &args.base.set)?;
    let (ctx, config) = context(
        &first,
        args.base.cache.as_deref(),
        args.base.remote.as_deref(),
        args.base.no_push,
        out,
    )?;
    let mut exec = executor(&first, args.base.executor, args.base.jobs, &ctx, config)?;
    let mut rows = Vec::new();
    for (i, v) in args.variants.iter().enumerate() {
        let mut set = args.base.set.clone();
        set.extend(
            v.split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        let p = Pipeline::load(&args.base.pipeline, &set)?;
        let mut book = LockBook::collect(&p.device);
        let r = run_pipeline(&ctx, exec.as_mut(), &mut book, &p, args.base.until)?;
        write_outputs(&p, &r)?;
        if !out.quiet && !out.json {
            println!("variant {} [{v}]\n{}", i + 1, summary(&p, &r));
            println!("  (`memo`: reused from an earlier variant in this process's memory)");
        }
        rows.push(serde_json::json!({
            "variant": v,
            "seconds": r.report.seconds,
            "outcomes": r.outcomes(),
            "best": r.report.best,
        }));
    }
    if out.json {
        println!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}

pub fn status(args: StatusArgs, out: &Output) -> Result<()> {
    let p = Pipeline::load(&args.pipeline, &args.set)?;
    let dir = cache_dir(args.cache.as_deref(), Some(&p))?;
    let ctx = Ctx::new(&dir, progress(out))
        .with_context(|| format!("opening the cache at {}", dir.display()))?;
    let lines = pipeline_status(&ctx, &p)?;
    if out.json {
        println!("{}", serde_json::to_string(&lines)?);
        return Ok(());
    }
    let cached = lines.iter().filter(|l| l.cached).count();
    println!(
        "{}: {} stage instances, {cached} cached, {} to run",
        p.file.display(),
        lines.len(),
        lines.len() - cached
    );
    for l in &lines {
        if l.cached && !args.all {
            continue;
        }
        let state = if l.cached { "cached" } else { "to-run" };
        let key = if l.key.len() >= 12 {
            &l.key[..12]
        } else if l.key.is_empty() {
            "(unknown yet)"
        } else {
            &l.key
        };
        println!("  {state:<7} {:<10} {:<48} {key}", l.stage, l.instance);
        for w in &l.why {
            println!("            why: {w}");
        }
    }
    Ok(())
}
