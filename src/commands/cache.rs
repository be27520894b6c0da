//! `c2i cache ls|verify|gc|push|pull`: look after the content-addressed store and
//! share it through a remote.

use super::pipeline::{cache_dir, open_remote, remote_url};
use super::Output;
use anyhow::{bail, Context, Result};
use c2i_cache::{GcPolicy, Key, Store};
use c2i_engine::spec::Pipeline;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a remote is and how to reach it.
#[derive(clap::Args)]
pub struct RemoteArgs {
    /// s3://BUCKET/PREFIX, file:///PATH or /PATH (default $C2I_CACHE_REMOTE).
    /// S3 credentials, region and endpoint come from the usual AWS_* variables.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// S3 endpoint, e.g. http://127.0.0.1:9000 (AWS_ENDPOINT_URL wins).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Longest time one request may take, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

#[derive(clap::Args)]
pub struct Args {
    /// Cache directory (default $C2I_HOME/cache).
    #[arg(long, global = true)]
    pub cache: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// List action-cache entries and totals.
    Ls,
    /// Rehash every blob; report corrupt or truncated blobs and broken entries.
    Verify {
        /// Delete what is bad (and the entries that need it), so the next run rebuilds it.
        #[arg(long)]
        repair: bool,
    },
    /// Delete entries by policy, then blobs no remaining entry references. Only the
    /// local cache is touched: gc never deletes anything from a remote cache.
    Gc {
        /// Keep every entry the last run of this pipeline used (the stage keys in
        /// `run.json` of its output directory; run it first). Repeatable.
        #[arg(long, value_name = "PIPELINE.toml")]
        keep: Vec<PathBuf>,
        /// Keep only the N most recently used entries.
        #[arg(long)]
        keep_last: Option<usize>,
        /// Delete entries not used for this many days.
        #[arg(long)]
        max_age_days: Option<u64>,
        /// Cap the referenced bytes (least recently used go first).
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Show what would go, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Upload every usable local entry to a remote cache, blobs before the entry
    /// naming them; objects already there are left as they are (first writer wins).
    Push(RemoteArgs),
    /// Download every entry of a remote cache, rehashing each blob; damaged or
    /// incomplete remote entries are reported and not kept.
    Pull(RemoteArgs),
}

/// The stage keys recorded in `run.json` of a pipeline's output directory.
fn pipeline_keys(file: &Path) -> Result<BTreeSet<Key>> {
    let p = Pipeline::load(file, &[])?;
    let run_json = p.spec.output.dir.join("run.json");
    let text = std::fs::read(&run_json).with_context(|| {
        format!(
            "--keep {}: cannot read {} (run the pipeline first: gc pins the keys of its last run)",
            file.display(),
            run_json.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not JSON", run_json.display()))?;
    let Some(stages) = v["stages"].as_array() else {
        bail!(
            "{}: field `stages`: expected a list of stage records",
            run_json.display()
        );
    };
    let mut keys = BTreeSet::new();
    for (i, st) in stages.iter().enumerate() {
        let hex = st["key"].as_str().unwrap_or_default();
        let key = Key::from_hex(hex).with_context(|| {
            format!(
                "{}: field `stages[{i}].key`: expected 64 hex digits",
                run_json.display()
            )
        })?;
        keys.insert(key);
    }
    Ok(keys)
}

fn remote_of(a: &RemoteArgs) -> Result<Box<dyn c2i_cache::RemoteBackend>> {
    let Some(url) = remote_url(a.remote.as_deref(), None) else {
        bail!("no remote: pass --remote URL or set C2I_CACHE_REMOTE");
    };
    open_remote(&url, None, a.endpoint.clone(), Some(a.timeout_secs))
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let dir = cache_dir(args.cache.as_deref(), None)?;
    let store =
        Store::open(&dir).with_context(|| format!("opening the cache at {}", dir.display()))?;
    match args.command {
        CacheCommand::Ls => {
            let l = store.ls()?;
            let mut text = format!(
                "{}: {} entries, {} blobs, {} bytes in blobs ({} referenced)",
                dir.display(),
                l.entry_count,
                l.blob_count,
                l.blob_bytes,
                l.referenced_bytes
            );
            for e in &l.entries {
                text += &format!("\n  {}  {:<14} {:>12} bytes", e.key, e.stage, e.total_bytes);
            }
            out.result(&text, &serde_json::to_value(&l)?);
        }
        CacheCommand::Verify { repair } => {
            let r = store.verify(repair)?;
            let text = format!("{}\n{}", dir.display(), serde_json::to_string_pretty(&r)?);
            out.result(&text, &serde_json::to_value(&r)?);
            if !r.is_clean() && !repair {
                anyhow::bail!("the cache has problems; `c2i cache verify --repair` removes them so the next run rebuilds");
            }
        }
        CacheCommand::Gc {
            keep,
            keep_last,
            max_age_days,
            max_bytes,
            dry_run,
        } => {
            let mut pinned = BTreeSet::new();
            for file in &keep {
                pinned.extend(pipeline_keys(file)?);
            }
            let policy = GcPolicy {
                pinned,
                keep_last,
                max_age: max_age_days.map(|d| Duration::from_secs(d * 86_400)),
                max_total_bytes: max_bytes,
                dry_run,
                ..GcPolicy::default()
            };
            let r = store.gc(&policy)?;
            out.result(
                &serde_json::to_string_pretty(&r)?,
                &serde_json::to_value(&r)?,
            );
        }
        CacheCommand::Push(a) => {
            let remote = remote_of(&a)?;
            let r = store.push_all(remote.as_ref())?;
            let text = format!(
                "pushed {} to {}: {} entries uploaded, {} already there, {} skipped; \
                 {} blobs uploaded ({} bytes), {} already there, {} repaired",
                dir.display(),
                r.remote,
                r.entries_uploaded,
                r.entries_present,
                r.entries_skipped.len(),
                r.blobs_uploaded,
                r.bytes_uploaded,
                r.blobs_present,
                r.blobs_repaired
            );
            out.result(&text, &serde_json::to_value(&r)?);
        }
        CacheCommand::Pull(a) => {
            let remote = remote_of(&a)?;
            let r = store.pull_all(remote.as_ref())?;
            let mut text = format!(
                "pulled {} into {}: {} entries listed, {} pulled, {} already here, {} rejected",
                r.remote,
                dir.display(),
                r.entries_listed,
                r.entries_pulled,
                r.entries_present,
                r.rejected.len()
            );
            for x in &r.rejected {
                text += &format!("\n  rejected {}: {}", x.key, x.reason);
            }
            out.result(&text, &serde_json::to_value(&r)?);
        }
    }
    Ok(())
}
