//! `c2i cache ls|verify|gc|push|pull`: look after the content-addressed store and
//! share it through a remote.

use super::pipeline::{cache_dir, open_remote, remote_url, trusted_keys};
use super::Output;
use anyhow::{bail, Context, Result};
use c2i_cache::{GcPolicy, Key, SigningKey, Store, TrustedKeys};
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
    /// Take (pull) or pass (verify) only entries signed by one of these keys
    /// (comma-separated `ed25519:...`; default $C2I_TRUSTED_KEYS).
    #[arg(long, value_name = "KEYS")]
    pub trusted_keys: Option<String>,
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
    /// Rehash every blob; report corrupt or truncated blobs and broken entries. With
    /// --remote, check a remote cache instead (nothing is written): every entry and
    /// blob, and with trusted keys every signature.
    Verify {
        /// Delete what is bad (and the entries that need it), so the next run rebuilds it.
        #[arg(long)]
        repair: bool,
        /// Check this remote cache (s3://..., file:///..., /path) instead of the local one.
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
        /// S3 endpoint, e.g. http://127.0.0.1:9000 (AWS_ENDPOINT_URL wins).
        #[arg(long)]
        endpoint: Option<String>,
        /// Entries must be signed by one of these (comma-separated `ed25519:...`;
        /// default $C2I_TRUSTED_KEYS); without, the remote is unauthenticated.
        #[arg(long, value_name = "KEYS")]
        trusted_keys: Option<String>,
    },
    /// Make a signing key: writes the private key (PKCS#8 PEM, owner-only) to FILE and
    /// prints the public key to put in readers' [cache] trusted_keys.
    Keygen {
        /// Where to write the private key (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
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

/// Trusted keys from a flag, else $C2I_TRUSTED_KEYS.
fn trusted(flag: Option<&str>) -> Result<Option<TrustedKeys>> {
    let keys = match flag {
        Some(list) => {
            TrustedKeys::parse(&[list]).map_err(|e| anyhow::anyhow!("--trusted-keys: {e}"))?
        }
        None => return Ok(trusted_keys(None)?.map(|(_, t)| t)),
    };
    Ok(Some(keys).filter(|t| !t.is_empty()))
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let dir = cache_dir(args.cache.as_deref(), None)?;
    // Only `pull` may create a cache; every other command reads, repairs or deletes,
    // and refuses a directory that is not one.
    let open = |create: bool| -> Result<Store> {
        let s = if create {
            Store::open(&dir)
        } else {
            Store::open_existing(&dir)
        };
        s.with_context(|| format!("opening the cache at {}", dir.display()))
    };
    match args.command {
        CacheCommand::Keygen { out: file } => {
            let key = SigningKey::generate()?;
            key.save(&file)
                .with_context(|| format!("writing the private key to {}", file.display()))?;
            let public = key.public().to_string();
            out.result(
                &format!(
                    "{public}\n  private key written to {} (keep it secret: whoever has it can sign \
                     entries readers will trust); put the line above in readers' [cache] \
                     trusted_keys or C2I_TRUSTED_KEYS",
                    file.display()
                ),
                &serde_json::json!({ "public_key": public, "private_key_file": file }),
            );
            return Ok(());
        }
        CacheCommand::Verify {
            remote: Some(url),
            endpoint,
            trusted_keys: keys,
            repair,
        } => {
            if repair {
                bail!("--repair acts on the local cache only; a remote is checked, never changed");
            }
            let remote = open_remote(&url, None, endpoint, Some(300))?;
            let trusted = trusted(keys.as_deref())?;
            let r = c2i_cache::verify_remote(remote.as_ref(), trusted.as_ref())?;
            let mut text = format!(
                "{}: {} entries, {} blobs ({} bytes) rehashed; {} damaged{}",
                r.remote,
                r.entries_checked,
                r.blobs_checked,
                r.bytes_checked,
                r.bad_entries.len(),
                if r.authenticated {
                    format!(", {} not signed by a trusted key", r.untrusted.len())
                } else {
                    "; UNAUTHENTICATED: no trusted keys, so an intact but forged entry (anyone who \
                     can write the remote can make one) passes these checks"
                        .to_string()
                }
            );
            for x in r.bad_entries.iter().chain(&r.untrusted) {
                text += &format!("\n  {}: {}", x.key, x.reason);
            }
            out.result(&text, &serde_json::to_value(&r)?);
            if !r.is_clean() {
                bail!("the remote cache has entries a reader must not use");
            }
            return Ok(());
        }
        _ => {}
    }
    let create = matches!(args.command, CacheCommand::Pull(_));
    let store = open(create)?;
    match args.command {
        CacheCommand::Keygen { .. } => {}
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
        CacheCommand::Verify { repair, .. } => {
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
            let trusted = trusted(a.trusted_keys.as_deref())?;
            let r = store.pull_all(remote.as_ref(), trusted.as_ref())?;
            let mut text = format!(
                "pulled {} into {}: {} entries listed, {} pulled, {} already here, {} rejected, {} untrusted",
                r.remote,
                dir.display(),
                r.entries_listed,
                r.entries_pulled,
                r.entries_present,
                r.rejected.len(),
                r.untrusted.len()
            );
            for x in r.rejected.iter().chain(&r.untrusted) {
                text += &format!("\n  rejected {}: {}", x.key, x.reason);
            }
            out.result(&text, &serde_json::to_value(&r)?);
        }
    }
    Ok(())
}
