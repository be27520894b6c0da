//! Timings of the gradient pass on real BigBench epistemic-reasoning samples.
//!
//! `cargo run --release -p c2i-stages --example bench_grad -- [--samples N]
//!  [--micro-batch 8,16] [--path fast|autograd|both] [--gemm split,candle,candle-dw,faer,seq]
//!  [--parties 1,2] [--repeat R] [--data FILE] [--compare]`
//!
//! Loads the samples the way `c2i export-grads` does (calibration rows of LASER's
//! selection split, eval sample 100 / seed 1, calibration seed 0), then R times over
//! every (path, GEMM mode, parties, micro-batch), interleaved so that load from other processes
//! hits all alike, runs the pass and prints wall seconds, user+sys CPU seconds,
//! tokens per second and the peak RSS of that run (VmHWM, reset between runs through
//! /proc/self/clear_refs). `--compare` also prints the largest gradient difference
//! between the first two runs, relative to the largest gradient entry of each matrix.
//! `--check-f64` instead measures the f32 error of both paths against the fast pass in
//! f64 on the samples (use few: the autograd path in f32 runs too).
//! Set `C2I_SMOLLM2_GGUF` to use a local GGUF instead of the fetched asset.

use c2i_stages::data::split::{selection_samples, SampleSize, SampleSpec};
use c2i_stages::data::{self, Task};
use c2i_stages::grad::{
    gradient_pass_autograd, gradient_pass_fast_with, GradOptions, Gradients, LossSample,
};
use c2i_stages::model::ops::gemm::{set_mode, Mode};
use c2i_stages::model::tokenizer::encode;
use c2i_stages::model::Weights;
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn Error>>;

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Field `i` (0 = state) after the command name of /proc/self/stat.
fn stat_field(i: usize) -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    rest.split_whitespace()
        .nth(i)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// user + sys CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    (get(11) + get(12)) / tick
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn model_path() -> Res<PathBuf> {
    match std::env::var_os("C2I_SMOLLM2_GGUF") {
        Some(p) => Ok(PathBuf::from(p)),
        None => Ok(c2i_stages::assets::smollm2_gguf()?),
    }
}

fn main() -> Res<()> {
    let mut samples_n = 100usize;
    let mut micro = vec![8usize];
    let mut path = "fast".to_string();
    let mut gemm = "candle".to_string();
    let mut repeat = 1usize;
    let mut parties = vec![1usize];
    let mut compare = false;
    let mut check_f64 = false;
    let mut data_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/bigbench/epistemic_reasoning/task.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--samples" => samples_n = val()?.parse()?,
            "--micro-batch" => {
                micro = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--path" => path = val()?,
            "--gemm" => gemm = val()?,
            "--repeat" => repeat = val()?.parse()?,
            "--parties" => {
                parties = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--data" => data_path = PathBuf::from(val()?),
            "--compare" => compare = true,
            "--check-f64" => check_f64 = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let modes: Vec<(String, Mode)> = gemm
        .split(',')
        .map(|g| {
            let m = match g {
                "split" => Mode::Split,
                "candle" => Mode::Candle,
                "candle-dw" => Mode::CandleDw,
                "faer" => Mode::Faer,
                "seq" => Mode::Seq,
                other => {
                    return Err(format!(
                        "--gemm {other}: split, candle, candle-dw, faer or seq"
                    ))
                }
            };
            Ok((g.to_string(), m))
        })
        .collect::<Result<_, String>>()?;
    let paths: Vec<&str> = match path.as_str() {
        "both" => vec!["fast", "autograd"],
        "fast" | "autograd" => vec![path.as_str()],
        other => return Err(format!("--path {other}: fast, autograd or both").into()),
    };

    let loaded = Weights::load(&model_path()?)?;
    let task = Task::builtin("epistemic_reasoning").ok_or("no built-in epistemic_reasoning")?;
    let examples = data::load(&task, &data_path)?.examples;
    let picked = selection_samples(
        examples.len(),
        SampleSpec::new(SampleSize::N(100), 1),
        SampleSpec::new(SampleSize::N(samples_n), 0),
    )?;
    let samples: Vec<LossSample> = picked
        .calibration
        .iter()
        .map(|&r| {
            let e = &examples[r];
            Ok(LossSample {
                prompt: encode(&loaded.tokenizer, &e.prompt)?,
                answer: encode(&loaded.tokenizer, &e.answer.gold_continuation())?,
            })
        })
        .collect::<Res<_>>()?;
    let tokens: usize = samples
        .iter()
        .map(|s| s.prompt.len() + s.answer.len())
        .sum();
    let answer: usize = samples.iter().map(|s| s.answer.len()).sum();
    println!(
        "{} samples, {tokens} tokens, {answer} answer tokens; rayon threads {}; RSS after load {} MiB",
        samples.len(),
        rayon::current_num_threads(),
        status_kib("VmRSS:").unwrap_or(0) / 1024
    );
    if check_f64 {
        set_mode(modes[0].1);
        let opts = GradOptions { micro_batch: 8 };
        let w64 = loaded.weights.to_dtype(candle_core::DType::F64)?;
        let truth = gradient_pass_fast_with::<f64>(&w64, &samples, &[], &opts, 1, &mut |_, _| {})?;
        let fast = gradient_pass_fast_with::<f32>(
            &loaded.weights,
            &samples,
            &[],
            &opts,
            1,
            &mut |_, _| {},
        )?;
        let auto = gradient_pass_autograd(&loaded.weights, &samples, &[], &opts, &mut |_, _| {})?;
        for (name, g) in [("fast f32", &fast), ("autograd f32", &auto)] {
            let (mut worst, mut sum) = (0f64, 0f64);
            let mut all = Vec::new();
            for (id, t) in &truth.grads {
                let t = t.to_dtype(candle_core::DType::F32)?;
                let scale = t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
                let d = c2i_stages::model::decoder::max_abs_diff(&g.grads[id], &t)? as f64 / scale;
                worst = worst.max(d);
                sum += d;
                all.push((d, id.hf_name()));
            }
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            println!("{name} worst: {:?}", &all[..5]);
            println!(
                "{name}: loss {:.9} (f64 {:.9}); max |g - g64| / max |g64| per matrix: worst {worst:.2e}, mean {:.2e}",
                g.loss,
                truth.loss,
                sum / truth.grads.len() as f64
            );
        }
        return Ok(());
    }
    println!(
        "{:<9} {:<7} {:>3} {:>5} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12}",
        "path", "gemm", "par", "mb", "wall s", "cpu s", "tok/s", "faults", "peak MiB", "loss"
    );
    let mut results: Vec<Gradients> = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..repeat {
        for p in &paths {
            for (gname, gmode) in &modes {
                for &par in &parties {
                    for &mb in &micro {
                        runs.push((*p, gname.as_str(), *gmode, par, mb));
                    }
                }
            }
        }
    }
    for (p, gname, gmode, par, mb) in runs {
        set_mode(gmode);
        let opts = GradOptions { micro_batch: mb };
        reset_peak();
        let (c0, f0, t0) = (cpu_seconds(), stat_field(7), Instant::now());
        let g = match p {
            "fast" => gradient_pass_fast_with::<f32>(
                &loaded.weights,
                &samples,
                &[],
                &opts,
                par,
                &mut |_, _| {},
            )?,
            _ => gradient_pass_autograd(&loaded.weights, &samples, &[], &opts, &mut |_, _| {})?,
        };
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c0;
        let faults = stat_field(7) - f0;
        println!(
            "{:<9} {:<7} {:>3} {:>5} {:>9.2} {:>9.2} {:>9.1} {:>9} {:>10} {:>12.6}",
            p,
            gname,
            par,
            mb,
            wall,
            cpu,
            tokens as f64 / wall,
            faults,
            status_kib("VmHWM:").unwrap_or(0) / 1024,
            g.loss
        );
        if compare && results.len() < 2 {
            results.push(g);
        }
    }
    if compare && results.len() == 2 {
        let mut worst = (0f64, String::new());
        for (id, a) in &results[0].grads {
            let b = &results[1].grads[id];
            let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
            let d = c2i_stages::model::decoder::max_abs_diff(a, b)? as f64 / scale.max(1e-30);
            if d > worst.0 {
                worst = (d, id.hf_name());
            }
        }
        println!(
            "largest gradient difference between the first two runs: {:.2e} of the matrix's max |g| ({}); losses {:.6} vs {:.6}",
            worst.0, worst.1, results[0].loss, results[1].loss
        );
    }
    Ok(())
}
