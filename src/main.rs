//! `c2i`: Compress to Impress as a content-addressed build. This file only parses the
//! command line and dispatches; each command lives in `commands/`.

mod commands;
mod resources;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "c2i",
    version,
    about = "Gradient-guided rank reduction of LLM weight matrices, run as a cached build"
)]
struct Cli {
    /// Only errors on stderr.
    #[arg(long, global = true)]
    quiet: bool,
    /// Machine-readable output: one JSON object on stdout, no progress bars.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and verify a model or data package into $C2I_HOME/assets (no-op when present).
    Fetch(commands::fetch::Args),
    /// Run the gradient pass and write dLoss/dW of every matrix as safetensors.
    ExportGrads(commands::export_grads::Args),
    /// Run a pipeline: only what is not cached is computed.
    Run(commands::pipeline::RunArgs),
    /// Run several variants of a pipeline in one process, reusing work between them.
    Sweep(commands::pipeline::SweepArgs),
    /// Show each stage instance as cached or to-run, and why.
    Status(commands::pipeline::StatusArgs),
    /// Measure whether the score rules predict real gains: every MLP matrix evaluated
    /// (the oracle) against each rule's ranking, and the sample sizes.
    Study(commands::study::Args),
    /// Inspect, verify or clean the cache.
    Cache(commands::cache::Args),
    /// Several runs' reports side by side: held-out figures, search cost, speedup.
    Compare(commands::compare::Args),
    /// The GPU path against the CPU, and its timings at 7B scale (built with `cuda`).
    #[cfg(feature = "cuda")]
    Gpu(commands::gpu::Args),
    /// Check a task file and its rows without a model (`c2i task check TASK.toml`).
    Task(commands::task::Args),
    /// Compute stage instances from their keys (what the pool and slurm executors run).
    Worker(commands::worker::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.quiet { "error" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("C2I_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs captured to a file or a pipe stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let out = commands::Output {
        quiet: cli.quiet,
        json: cli.json,
    };
    if let Command::Worker(a) = cli.command {
        return match commands::worker::run(a, &out) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match cli.command {
        Command::Fetch(a) => commands::fetch::run(a, &out),
        Command::ExportGrads(a) => commands::export_grads::run(a, &out),
        Command::Run(a) => commands::pipeline::run(a, &out),
        Command::Sweep(a) => commands::pipeline::sweep(a, &out),
        Command::Status(a) => commands::pipeline::status(a, &out),
        Command::Study(a) => commands::study::run(a, &out),
        Command::Cache(a) => commands::cache::run(a, &out),
        Command::Compare(a) => commands::compare::run(a, &out),
        #[cfg(feature = "cuda")]
        Command::Gpu(a) => commands::gpu::run(a, &out),
        Command::Task(a) => commands::task::run(a, &out),
        Command::Worker(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
