//! `c2i run`, `c2i sweep` and `c2i status`: a pipeline through the engine.

use super::Output;
use crate::resources::{mib, peak_rss_bytes};
use anyhow::{Context, Result};
use c2i_cache::{ObjectStoreRemote, RemoteBackend, RemoteOptions};
use c2i_engine::ctx::{Ctx, Progress, Silent};
use c2i_engine::db::Database;
use c2i_engine::runner::{run as run_pipeline, write_atomic, write_run_json, RunResult, Until};
use c2i_engine::spec::Pipeline;
use c2i_engine::status::status as pipeline_status;
use c2i_stages::export::report::fmt_keep;
use indicatif::ProgressBar;
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

/// Progress bars on stderr for long stages.
struct Bars {
    hidden: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        if self.hidden {
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
/// table when there is one.
pub fn open_remote(
    url: &str,
    p: Option<&Pipeline>,
    endpoint: Option<String>,
    timeout_secs: Option<u64>,
) -> Result<Box<dyn RemoteBackend>> {
    let mut opts = RemoteOptions {
        endpoint: endpoint.or_else(|| p.and_then(|p| p.spec.cache.endpoint.clone())),
        ..RemoteOptions::default()
    };
    if let Some(t) = timeout_secs.or_else(|| p.and_then(|p| p.spec.cache.timeout_secs)) {
        opts.timeout = std::time::Duration::from_secs(t.max(1));
    }
    let remote = ObjectStoreRemote::open_str(url, &opts)
        .with_context(|| format!("opening the remote cache {url}"))?;
    Ok(Box::new(remote))
}

fn database(dir: &Path, out: &Output, remote: Option<Box<dyn RemoteBackend>>) -> Result<Database> {
    let progress: Box<dyn Progress> = if out.quiet || out.json {
        Box::new(Silent)
    } else {
        Box::new(Bars {
            hidden: false,
            bar: Mutex::new(None),
        })
    };
    let ctx = Ctx::new(dir, progress)
        .with_context(|| format!("opening the cache at {}", dir.display()))?
        .with_remote(remote);
    Ok(Database::new(ctx))
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

/// `report` is `r` as report.json holds it (from [`write_outputs`]).
fn summary(p: &Pipeline, r: &RunResult, report: &serde_json::Value) -> String {
    let mut s = format!(
        "{} on {}: {:.1} s\n  {}",
        p.file.display(),
        r.task,
        r.seconds,
        outcome_line(r)
    );
    if let Some(rem) = &r.remote {
        s += &format!(
            "\n  remote {}: {}; pulled {}, pushed {} ({} bytes), rejected {}, repaired {}",
            rem.url,
            rem.status,
            rem.pulled_entries,
            rem.pushed_entries,
            rem.uploaded_bytes,
            rem.rejected.len(),
            rem.repaired_blobs
        );
    }
    if let Some(b) = &r.baseline {
        for (which, f) in b {
            s += &format!(
                "\n  baseline {which}: accuracy {:.3}, log-loss {:.4} ({} samples)",
                f.accuracy, f.log_loss, f.samples
            );
        }
    }
    for c in &r.candidates {
        let collapsed = c.selection.metrics["collapsed"].as_bool().unwrap_or(false);
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
    }
    if let Some(b) = &r.best {
        s += &format!(
            "\n  best ({}): {} K={} keep={}: selection accuracy {:.3}, held-out accuracy {:.3} (log-loss {:.4})",
            r.selection_metric, b.matrix, b.blocks, fmt_keep(b.keep), b.selection.accuracy, b.heldout.accuracy, b.heldout.log_loss
        );
        if let Some(note) = c2i_stages::export::report::no_gain_on_selection(report) {
            s += &format!("\n  NO GAIN: {note}");
        }
    }
    s
}

/// run.json, report.json, report.md and the plots, in the pipeline's output directory.
/// Returns the report as written to report.json.
fn write_outputs(p: &Pipeline, r: &RunResult) -> Result<serde_json::Value> {
    use c2i_stages::export::{plots, report};
    let dir = &p.spec.output.dir;
    write_run_json(dir, r)?;
    let value = serde_json::to_value(r)?;
    write_atomic(
        &dir.join("report.json"),
        &serde_json::to_vec_pretty(&value)?,
    )?;
    write_atomic(&dir.join("report.md"), report::markdown(&value).as_bytes())?;
    for (name, svg) in [
        ("scores_by_layer.svg", plots::scores_by_layer_svg(&value)),
        ("accuracy_vs_keep.svg", plots::accuracy_vs_keep_svg(&value)),
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
    Ok(value)
}

pub fn run(args: RunArgs, out: &Output) -> Result<()> {
    let p = Pipeline::load(&args.pipeline, &args.set)?;
    let dir = cache_dir(args.cache.as_deref(), Some(&p))?;
    let remote = match remote_url(args.remote.as_deref(), Some(&p)) {
        Some(u) => Some(open_remote(&u, Some(&p), None, None)?),
        None => None,
    };
    let mut db = database(&dir, out, remote)?;
    let (_, r) = run_pipeline(&mut db, None, &p, args.until)?;
    let report = write_outputs(&p, &r)?;
    let peak = peak_rss_bytes();
    out.result(
        &format!(
            "{}\n  wrote run.json, report.json, report.md and plots to {}; peak RSS {}",
            summary(&p, &r, &report),
            p.spec.output.dir.display(),
            peak.map(mib).unwrap_or_default()
        ),
        &serde_json::json!({
            "seconds": r.seconds,
            "outcomes": r.outcomes(),
            "best": r.best,
            "output": p.spec.output.dir,
            "remote": r.remote,
            "peak_rss_bytes": peak,
        }),
    );
    Ok(())
}

pub fn sweep(args: SweepArgs, out: &Output) -> Result<()> {
    let first = Pipeline::load(&args.base.pipeline, &args.base.set)?;
    let dir = cache_dir(args.base.cache.as_deref(), Some(&first))?;
    let remote = match remote_url(args.base.remote.as_deref(), Some(&first)) {
        Some(u) => Some(open_remote(&u, Some(&first), None, None)?),
        None => None,
    };
    let mut db = database(&dir, out, remote)?;
    let mut prev = None;
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
        let (s, r) = run_pipeline(&mut db, prev, &p, args.base.until)?;
        prev = Some(s);
        let report = write_outputs(&p, &r)?;
        if !out.quiet && !out.json {
            println!("variant {} [{v}]\n{}", i + 1, summary(&p, &r, &report));
            println!("  (stage instances not listed above were reused from this process's memory)");
        }
        rows.push(serde_json::json!({
            "variant": v,
            "seconds": r.seconds,
            "outcomes": r.outcomes(),
            "best": r.best,
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
    let mut db = database(&dir, out, None)?;
    let (_, lines) = pipeline_status(&mut db, &p)?;
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
