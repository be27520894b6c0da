//! The `slurm` executor: each wave of actions to compute is one Slurm job array
//! (`sbatch --parsable --array=0-N%M`), whose task i runs `c2i worker run KEY_i`.
//!
//! Workers reach the cache through the run's remote (a shared directory or S3; a
//! local-only cache is refused), and by default also through the coordinator's cache
//! directory, for clusters where it sits on a shared file system. The coordinator
//! follows the array with `squeue` and exit files (`sacct` needs an accounting
//! database many clusters lack): the job script writes the worker's exit code to
//! `exit/JOB_TASK`; a task that left the queue without one was cancelled or killed
//! with its node. Such tasks, and workers that died, are submitted again, up to
//! `run.retries` times; a task whose stage failed by itself (exit code 3) or whose
//! worker refused (exit code 4) ends the run at once, with the tail of its log, and
//! the rest of the array is cancelled. An interrupted coordinator (Ctrl-C, SIGTERM)
//! cancels its jobs (`scancel`) before it exits.

use super::{fetch_result, log_tail, Executor, FailClass, Ran, WorkerConfig, WorkerReport};
use crate::action::Action;
use crate::ctx::{Ctx, Miss, RanOn};
use crate::spec::{ExecutorKind, SlurmSpec};
use crate::EngineError;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Job ids this process has in the queue (cancelled on Ctrl-C / SIGTERM).
static ACTIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

fn install_handler() {
    HANDLER.call_once(|| {
        let r = ctrlc::set_handler(|| {
            let active = ACTIVE.lock().map(|a| a.clone()).unwrap_or_default();
            if active.is_empty() {
                eprintln!("interrupted");
                std::process::exit(130);
            }
            // The coordinator's wait loop sees this within 0.1 s, cancels its jobs and
            // ends the run; a second signal exits at once (after cancelling).
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                scancel(&active);
                std::process::exit(130);
            }
        });
        if let Err(e) = r {
            tracing::warn!(
                "cannot catch Ctrl-C ({e}): an interrupted run will leave its Slurm jobs queued"
            );
        }
    });
}

fn scancel(jobs: &[String]) {
    if jobs.is_empty() {
        return;
    }
    match Command::new("scancel").args(jobs).output() {
        Ok(o) if o.status.success() => {
            tracing::warn!("cancelled Slurm job(s) {}", jobs.join(", "))
        }
        Ok(o) => tracing::warn!(
            "scancel {} failed: {}",
            jobs.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!("cannot run scancel: {e}"),
    }
}

/// One submitted job array, for run.json.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub job: String,
    pub stage: String,
    pub tasks: usize,
    /// 1 for a first submission, 2 and more for resubmitted tasks.
    pub attempt: u32,
}

pub struct Slurm {
    spec: SlurmSpec,
    retries: u32,
    config: WorkerConfig,
    dir: PathBuf,
    command: String,
    arrays: u32,
    jobs: Vec<JobRecord>,
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Why following an array stopped early.
enum Stopped {
    /// Task t failed in a way not worth retrying.
    Task(usize, End),
    /// Interrupted, or the queue cannot be read.
    Error(Box<EngineError>),
}

/// How one array task ended.
#[derive(Debug, Clone)]
enum End {
    /// The job script wrote the worker's exit code.
    Exit(i32),
    /// It left the queue without an exit code (cancelled, killed with its node).
    Vanished,
}

impl Slurm {
    /// Checks that the run can use Slurm and prepares the job directory.
    pub fn new(
        spec: SlurmSpec,
        retries: u32,
        config: WorkerConfig,
        output_dir: &Path,
        has_remote: bool,
        push: bool,
    ) -> Result<Slurm, EngineError> {
        if !has_remote {
            return Err(EngineError::Executor(format!(
                "the slurm executor needs a cache its workers can reach: set [cache] remote to a \
                 shared directory (file:///shared/c2i-cache) or an S3 prefix (s3://bucket/c2i); \
                 the local cache {} alone stays on this machine",
                config.cache.display()
            )));
        }
        if !push {
            return Err(EngineError::Executor(
                "the slurm executor needs to write to the remote (its workers return results \
                 through it), but pushing is off ([cache] push = false / --no-push)"
                    .into(),
            ));
        }
        match Command::new("sbatch").arg("--version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(EngineError::Executor(format!(
                    "sbatch --version failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )))
            }
            Err(e) => {
                return Err(EngineError::Executor(format!(
                    "cannot run sbatch ({e}): the slurm executor runs on a Slurm submission host \
                     (see deploy/slurm/ for a single-node cluster to try it)"
                )))
            }
        }
        let dir = spec
            .log_dir
            .clone()
            .unwrap_or_else(|| output_dir.join("slurm"));
        for d in [dir.clone(), dir.join("exit"), dir.join("reports")] {
            std::fs::create_dir_all(&d).map_err(|source| EngineError::Io { path: d, source })?;
        }
        let command = match &spec.worker_command {
            Some(c) => c.clone(),
            None => {
                let exe = std::env::current_exe().map_err(|source| EngineError::Io {
                    path: "(the c2i executable)".into(),
                    source,
                })?;
                sh_quote(&exe.display().to_string())
            }
        };
        let mut config = config;
        if let Some(c) = &spec.worker_cache {
            config.cache = c.clone();
        }
        // A worker's log is a file, not the user's terminal: it always says what the
        // worker is doing.
        config.quiet = false;
        install_handler();
        Ok(Slurm {
            spec,
            retries,
            config,
            dir,
            command,
            arrays: 0,
            jobs: Vec::new(),
        })
    }

    /// Every array submitted so far.
    pub fn job_records(&self) -> Vec<JobRecord> {
        self.jobs.clone()
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
        move |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Writes the keys file and the job script, submits the array; returns the job id.
    fn submit(
        &mut self,
        keys: &[String],
        stage: &str,
        attempt: u32,
    ) -> Result<String, EngineError> {
        self.arrays += 1;
        let tag = format!("c2i-{}-{}", std::process::id(), self.arrays);
        let keys_path = self.dir.join(format!("{tag}.keys"));
        std::fs::write(&keys_path, format!("{}\n", keys.join("\n")))
            .map_err(Self::io(&keys_path))?;
        let d = |p: &str| sh_quote(&self.dir.join(p).display().to_string());
        let args: Vec<String> = self.config.args().iter().map(|a| sh_quote(a)).collect();
        let script = format!(
            "#!/bin/sh\n\
             # c2i worker array {tag}: task i computes the actions whose keys are on line i+1\n\
             # of {keys}; the worker's exit code goes to exit/JOB_TASK (0 done, 3 a stage\n\
             # failed, 4 refused, other: try again).\n\
             i=${{SLURM_ARRAY_TASK_ID:?not run as a Slurm array task}}\n\
             keys=$(sed -n \"$((i + 1))p\" {keys_q})\n\
             tag=\"${{SLURM_ARRAY_JOB_ID}}_$i\"\n\
             if [ -n \"${{SLURM_CPUS_PER_TASK:-}}\" ] && [ -z \"${{RAYON_NUM_THREADS:-}}\" ]; then\n\
             \x20   export RAYON_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"\n\
             fi\n\
             {command} worker run $keys --report {reports}/\"$tag.json\" {args}\n\
             rc=$?\n\
             echo \"$rc\" > {exits}/\"$tag.tmp\" && mv {exits}/\"$tag.tmp\" {exits}/\"$tag\"\n\
             exit \"$rc\"\n",
            keys = keys_path.display(),
            keys_q = sh_quote(&keys_path.display().to_string()),
            command = self.command,
            reports = d("reports"),
            exits = d("exit"),
            args = args.join(" "),
        );
        let script_path = self.dir.join(format!("{tag}.sh"));
        std::fs::write(&script_path, script).map_err(Self::io(&script_path))?;
        let mut array = format!("0-{}", keys.len() - 1);
        if let Some(m) = self.spec.max_parallel {
            array += &format!("%{m}");
        }
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable")
            .arg(format!("--array={array}"))
            .arg(format!("--job-name=c2i-{stage}"))
            .arg(format!("--output={}", self.dir.join("%A_%a.log").display()));
        if let Some(p) = &self.spec.partition {
            cmd.arg(format!("--partition={p}"));
        }
        if let Some(t) = &self.spec.time {
            cmd.arg(format!("--time={t}"));
        }
        if let Some(m) = &self.spec.mem {
            cmd.arg(format!("--mem={m}"));
        }
        if let Some(c) = self.spec.cpus_per_task {
            cmd.arg(format!("--cpus-per-task={c}"));
        }
        if let Some(g) = &self.spec.gres {
            cmd.arg(format!("--gres={g}"));
        }
        cmd.args(&self.spec.extra_args).arg(&script_path);
        let out = cmd
            .output()
            .map_err(|e| EngineError::Executor(format!("cannot run sbatch: {e}")))?;
        if !out.status.success() {
            return Err(EngineError::Executor(format!(
                "sbatch refused the job array ({} tasks of {stage}): {}",
                keys.len(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let job = text
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if job.is_empty() || !job.chars().all(|c| c.is_ascii_digit()) {
            return Err(EngineError::Executor(format!(
                "sbatch --parsable printed `{}`, expected a job id",
                text.trim()
            )));
        }
        tracing::info!(
            "submitted Slurm job array {job}: {} task(s) of {stage} (attempt {attempt}), logs in {}",
            keys.len(),
            self.dir.display()
        );
        self.jobs.push(JobRecord {
            job: job.clone(),
            stage: stage.to_string(),
            tasks: keys.len(),
            attempt,
        });
        Ok(job)
    }

    fn exit_code(&self, job: &str, task: usize) -> Option<i32> {
        let p = self.dir.join("exit").join(format!("{job}_{task}"));
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    /// What the worker of a task reported (one report per action it computed).
    fn reports(&self, job: &str, task: usize) -> Vec<WorkerReport> {
        let p = self.dir.join("reports").join(format!("{job}_{task}.json"));
        let Ok(bytes) = std::fs::read(p) else {
            return Vec::new();
        };
        serde_json::from_slice::<Vec<WorkerReport>>(&bytes)
            .or_else(|_| serde_json::from_slice::<WorkerReport>(&bytes).map(|r| vec![r]))
            .unwrap_or_default()
    }

    fn log_path(&self, job: &str, task: usize) -> PathBuf {
        self.dir.join(format!("{job}_{task}.log"))
    }

    /// Follows array `job` of `n` tasks until every task ended, or one failed in a way
    /// not worth retrying (then the rest is cancelled and that task's index returned
    /// as the error).
    fn follow(&self, job: &str, n: usize) -> Result<Vec<End>, Stopped> {
        let mut ends: Vec<Option<End>> = vec![None; n];
        let mut gone_since: BTreeMap<usize, Instant> = BTreeMap::new();
        let poll = Duration::from_secs_f64(self.spec.poll_secs);
        let mut last_poll: Option<Instant> = None;
        let mut squeue_failures = 0u32;
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                scancel(&[job.to_string()]);
                return Err(Stopped::Error(Box::new(EngineError::Interrupted(format!(
                    "interrupted: cancelled Slurm job {job}"
                )))));
            }
            for (t, end) in ends.iter_mut().enumerate() {
                if end.is_none() {
                    if let Some(code) = self.exit_code(job, t) {
                        *end = Some(End::Exit(code));
                        if let Some(class) = FailClass::from_exit_code(code) {
                            if !class.retryable() {
                                scancel(&[job.to_string()]);
                                return Err(Stopped::Task(t, End::Exit(code)));
                            }
                        }
                    }
                }
            }
            if ends.iter().all(Option::is_some) {
                return Ok(ends.into_iter().flatten().collect());
            }
            if last_poll.is_none_or(|t| t.elapsed() >= poll) {
                last_poll = Some(Instant::now());
                match queued_tasks(job) {
                    Ok(listed) => {
                        squeue_failures = 0;
                        for (t, end) in ends.iter_mut().enumerate() {
                            if end.is_some() || listed.contains(&t) {
                                gone_since.remove(&t);
                                continue;
                            }
                            // Out of the queue with no exit file: give the file a moment
                            // (it is written just before the task ends), then call it gone.
                            let since = *gone_since.entry(t).or_insert_with(Instant::now);
                            if since.elapsed() >= poll.max(Duration::from_secs(2)) {
                                *end = Some(End::Vanished);
                            }
                        }
                    }
                    Err(e) => {
                        squeue_failures += 1;
                        tracing::warn!("squeue failed ({squeue_failures} in a row): {e}");
                        if squeue_failures >= 20 {
                            scancel(&[job.to_string()]);
                            return Err(Stopped::Error(Box::new(EngineError::Executor(format!(
                                "cannot follow Slurm job {job}: squeue failed 20 times in a row: {e}"
                            )))));
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn failure_text(
        &self,
        action: &Action,
        job: &str,
        task: usize,
        end: &End,
        attempts: u32,
    ) -> String {
        let how = match end {
            End::Exit(3) => {
                "exit code 3: the stage itself failed, so it is not retried".to_string()
            }
            End::Exit(4) => "exit code 4: the worker refused it, so it is not retried".to_string(),
            End::Exit(c) => format!(
                "exit code {c}; {attempts} attempt(s), run.retries = {}",
                self.retries
            ),
            End::Vanished => format!(
                "it left the queue without an exit code (cancelled, or killed with its node); \
                 {attempts} attempt(s), run.retries = {}",
                self.retries
            ),
        };
        let log = self.log_path(job, task);
        format!(
            "{} {} (key {}) failed in Slurm job {job}_{task} ({how}). Last lines of {}:\n{}",
            action.stage,
            action.instance,
            action.key().short(),
            log.display(),
            log_tail(&log, 25)
        )
    }
}

/// The array tasks of `job` still in the queue (pending, running, completing...).
fn queued_tasks(job: &str) -> Result<BTreeSet<usize>, String> {
    let out = Command::new("squeue")
        .args(["-h", "-r", "-j", job, "-o", "%i"])
        .output()
        .map_err(|e| format!("cannot run squeue: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // A job that has left the controller's memory is not an error: nothing queued.
        if err.contains("Invalid job id") {
            return Ok(BTreeSet::new());
        }
        return Err(err.trim().to_string());
    }
    Ok(parse_queued(&String::from_utf8_lossy(&out.stdout), job))
}

/// Task indices in `squeue -r -o %i` output (`JOB_3`, or a range `JOB_[4-7%2]`).
fn parse_queued(text: &str, job: &str) -> BTreeSet<usize> {
    let mut set = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix(&format!("{job}_")) else {
            continue;
        };
        let rest = rest.trim_start_matches('[').trim_end_matches(']');
        let rest = rest.split('%').next().unwrap_or("");
        for part in rest.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                        set.extend(a..=b);
                    }
                }
                None => {
                    if let Ok(t) = part.parse() {
                        set.insert(t);
                    }
                }
            }
        }
    }
    set
}

impl Executor for Slurm {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Slurm
    }

    fn jobs(&self) -> serde_json::Value {
        serde_json::to_value(&self.jobs).unwrap_or_default()
    }

    fn run(&mut self, ctx: &Ctx, todo: &[(Action, Miss)]) -> Result<Vec<Ran>, EngineError> {
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        for (a, _) in todo {
            ctx.push_description(a)?;
        }
        let mut done: Vec<Option<(String, usize, u32)>> = vec![None; todo.len()];
        let mut pending: Vec<(usize, u32)> = (0..todo.len()).map(|i| (i, 1)).collect();
        let per_task = self.spec.actions_per_task.max(1) as usize;
        while !pending.is_empty() {
            // Each array task computes `per_task` actions, one after the other.
            let groups: Vec<Vec<(usize, u32)>> =
                pending.chunks(per_task).map(|c| c.to_vec()).collect();
            let lines: Vec<String> = groups
                .iter()
                .map(|g| {
                    g.iter()
                        .map(|(i, _)| todo[*i].0.key().to_hex())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            let mut stages: Vec<&str> = pending
                .iter()
                .map(|(i, _)| todo[*i].0.stage.as_str())
                .collect();
            stages.dedup();
            let attempt = pending.iter().map(|p| p.1).max().unwrap_or(1);
            let job = self.submit(&lines, &stages.join("+"), attempt)?;
            if let Ok(mut a) = ACTIVE.lock() {
                a.push(job.clone());
            }
            let followed = self.follow(&job, groups.len());
            if let Ok(mut a) = ACTIVE.lock() {
                a.retain(|j| *j != job);
            }
            let ends = match followed {
                Ok(ends) => ends,
                Err(Stopped::Error(e)) => return Err(*e),
                Err(Stopped::Task(t, end)) => {
                    // The action of the group that failed (its report says), else the first.
                    let reports = self.reports(&job, t);
                    let (i, attempts) = groups[t]
                        .iter()
                        .find(|(i, _)| {
                            let k = todo[*i].0.key().to_hex();
                            reports.iter().any(|r| r.key == k && !r.ok)
                        })
                        .copied()
                        .unwrap_or(groups[t][0]);
                    return Err(EngineError::Executor(
                        self.failure_text(&todo[i].0, &job, t, &end, attempts),
                    ));
                }
            };
            let mut next = Vec::new();
            for (t, (group, end)) in groups.iter().zip(ends).enumerate() {
                for (i, attempts) in group {
                    let action = &todo[*i].0;
                    match &end {
                        End::Exit(0) => done[*i] = Some((job.clone(), t, *attempts)),
                        end => {
                            if *attempts > self.retries {
                                return Err(EngineError::Executor(
                                    self.failure_text(action, &job, t, end, *attempts),
                                ));
                            }
                            tracing::warn!(
                                "{} {} in Slurm job {job}_{t} {}; submitting it again (attempt {} of {})",
                                action.stage,
                                action.instance,
                                match end {
                                    End::Exit(c) => format!("ended with exit code {c}"),
                                    End::Vanished => "was cancelled or killed".into(),
                                },
                                attempts + 1,
                                self.retries + 1
                            );
                            next.push((*i, attempts + 1));
                        }
                    }
                }
            }
            pending = next;
        }
        let mut out = Vec::with_capacity(todo.len());
        for ((action, _), d) in todo.iter().zip(done) {
            let Some((job, task, attempts)) = d else {
                return Err(EngineError::Executor(format!(
                    "{} {}: no Slurm task computed it",
                    action.stage, action.instance
                )));
            };
            let tag = format!("{job}_{task}");
            let key = action.key().to_hex();
            let report = self.reports(&job, task).into_iter().find(|r| r.key == key);
            let entry = fetch_result(ctx, action, &format!("Slurm task {tag}"))?;
            out.push(Ran {
                entry,
                on: RanOn {
                    executor: "slurm".into(),
                    host: report.as_ref().map(|r| r.host.clone()).unwrap_or_default(),
                    job: Some(tag),
                    attempts,
                    seconds: report.map(|r| r.seconds),
                },
            });
        }
        Ok(out)
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let mine: Vec<String> = self.jobs.iter().map(|j| j.job.clone()).collect();
        if let Ok(mut a) = ACTIVE.lock() {
            let left: Vec<String> = a.iter().filter(|j| mine.contains(j)).cloned().collect();
            scancel(&left);
            a.retain(|j| !mine.contains(j));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_tasks_from_squeue_lines() {
        let out = "17_0\n17_3\n17_[5-7%2]\n18_1\n";
        assert_eq!(
            parse_queued(out, "17").into_iter().collect::<Vec<_>>(),
            vec![0, 3, 5, 6, 7]
        );
        assert!(parse_queued("", "17").is_empty());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("/a b/c"), "'/a b/c'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
