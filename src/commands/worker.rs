//! `c2i worker run KEY...` and `c2i worker serve`: compute stage instances from their
//! keys alone, for the `pool` and `slurm` executors (and by hand).
//!
//! Exit codes of `worker run`: 0 every action done (or found cached); 3 an action's
//! stage failed by itself (a malformed input: computing it again would fail again);
//! 4 refused (described by another c2i version or environment, or no description);
//! 1 anything else (worth another try).

use super::pipeline::{open_remote, remote_url, signing_key, trusted_keys};
use super::Output;
use anyhow::{Context, Result};
use c2i_cache::{Key, SigningKey, TrustedKeys};
use c2i_engine::ctx::{Ctx, Silent, Trust};
use c2i_engine::exec::FailClass;
use c2i_engine::worker::{run_key, serve};
use std::path::PathBuf;

/// How a worker reaches the cache (the coordinator passes its own settings).
#[derive(clap::Args)]
pub struct Conn {
    /// Cache directory (default $C2I_HOME/cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Remote cache (s3://..., file:///..., /path); "" for none (default
    /// $C2I_CACHE_REMOTE).
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// S3 endpoint (AWS_ENDPOINT_URL wins).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Allow a plain-HTTP endpoint.
    #[arg(long)]
    pub allow_http: bool,
    /// Longest time one remote request may take, in seconds.
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// Sign what the worker writes with this key (default $C2I_SIGNING_KEY).
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Use remote entries only when signed by one of these (comma-separated
    /// `ed25519:...`; default $C2I_TRUSTED_KEYS).
    #[arg(long, value_name = "KEYS")]
    pub trusted_keys: Option<String>,
    /// Do not write to the remote.
    #[arg(long)]
    pub no_push: bool,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: WorkerCommand,
}

#[derive(clap::Subcommand)]
pub enum WorkerCommand {
    /// Compute the stage instances with these keys from their descriptions in the
    /// cache (local, else the remote), store and push the results.
    Run {
        /// Action keys (64 hex digits), as printed in run.json.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Write what happened (JSON) to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Read requests from stdin, one JSON object a line (`{"run": KEY}`), and answer
    /// each with a JSON report on stdout: one worker of the pool executor.
    Serve {
        #[command(flatten)]
        conn: Conn,
    },
}

fn context(c: &Conn) -> Result<Ctx> {
    let dir = super::pipeline::cache_dir(c.cache.as_deref(), None)?;
    let remote = match remote_url(c.remote.as_deref(), None) {
        // An endpoint passed by the coordinator was allowed there (plain HTTP only
        // with `allow_http`).
        Some(u) => Some(open_remote(&u, None, c.endpoint.clone(), c.timeout_secs)?),
        None => None,
    };
    let signing = match &c.signing_key {
        Some(p) => Some(SigningKey::load(p)?),
        None => signing_key(None)?.map(|(_, k)| k),
    };
    let trusted = match &c.trusted_keys {
        Some(list) => Some(
            TrustedKeys::parse(&[list.as_str()])
                .map_err(|e| anyhow::anyhow!("--trusted-keys: {e}"))?,
        ),
        None => trusted_keys(None)?.map(|(_, t)| t),
    };
    Ok(Ctx::new(&dir, Box::new(Silent))
        .with_context(|| format!("opening the cache at {}", dir.display()))?
        .with_remote(remote)
        .with_trust(Trust {
            signing_key: signing,
            trusted,
            push: !c.no_push,
        }))
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args, _out: &Output) -> Result<i32> {
    match args.command {
        WorkerCommand::Run { keys, report, conn } => {
            let ctx = match context(&conn) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(FailClass::Transient.exit_code());
                }
            };
            let mut reports = Vec::new();
            let mut code = 0;
            for k in &keys {
                let key = Key::from_hex(k).with_context(|| format!("worker run {k}"))?;
                let r = run_key(&ctx, &key);
                if code == 0 {
                    if let Some(class) = r.class {
                        code = class.exit_code();
                    }
                }
                reports.push(r);
            }
            if let Some(path) = report {
                let json = if reports.len() == 1 {
                    serde_json::to_vec_pretty(&reports[0])?
                } else {
                    serde_json::to_vec_pretty(&reports)?
                };
                c2i_engine::runner::write_atomic(&path, &json)?;
            }
            for r in &reports {
                match &r.error {
                    None => eprintln!("{} {} {}: {}", r.stage, r.instance, &r.key[..12], r.outcome),
                    Some(e) => eprintln!("error: {e}"),
                }
            }
            Ok(code)
        }
        WorkerCommand::Serve { conn } => {
            let ctx = context(&conn)?;
            let stdin = std::io::stdin();
            serve(&ctx, stdin.lock(), std::io::stdout().lock())?;
            Ok(0)
        }
    }
}
