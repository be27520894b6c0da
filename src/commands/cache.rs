//! `c2i cache ls|verify|gc`: look after the content-addressed store.

use super::pipeline::cache_dir;
use super::Output;
use anyhow::{Context, Result};
use c2i_cache::{GcPolicy, Store};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Delete entries by policy, then blobs no remaining entry references.
    Gc {
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
            keep_last,
            max_age_days,
            max_bytes,
            dry_run,
        } => {
            let policy = GcPolicy {
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
    }
    Ok(())
}
