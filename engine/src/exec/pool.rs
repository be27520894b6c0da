//! The `pool` executor: `run.jobs` long-lived worker processes on this machine
//! (`c2i worker serve`), sharing the cache directory. Each keeps its model loaded
//! between actions; actions are handed to whichever worker is free. A worker that dies
//! (killed, out of memory) is replaced and its action tried again, up to `run.retries`
//! times; an action that fails by itself ends the run at once.

use super::{fetch_result, Executor, FailClass, Ran, WorkerConfig, WorkerReport};
use crate::action::Action;
use crate::ctx::{Ctx, Miss, RanOn};
use crate::spec::ExecutorKind;
use crate::EngineError;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    hint_sent: Option<Vec<usize>>,
}

impl Worker {
    fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.write_all(b"\n")?;
        self.stdin.flush()
    }

    fn stop(mut self) {
        drop(self.stdin);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Pool {
    jobs: usize,
    retries: u32,
    command: PathBuf,
    config: WorkerConfig,
    workers: Vec<Option<Worker>>,
    hint: Vec<usize>,
}

impl Pool {
    pub fn new(jobs: usize, retries: u32, config: WorkerConfig) -> Result<Pool, EngineError> {
        let command = std::env::current_exe().map_err(|source| EngineError::Io {
            path: "(the c2i executable)".into(),
            source,
        })?;
        Ok(Pool {
            jobs: jobs.max(1),
            retries,
            command,
            config,
            workers: (0..jobs.max(1)).map(|_| None).collect(),
            hint: Vec::new(),
        })
    }

    fn spawn(command: &PathBuf, config: &WorkerConfig) -> Result<Worker, EngineError> {
        let mut child = Command::new(command)
            .arg("worker")
            .arg("serve")
            .args(config.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| EngineError::Io {
                path: command.clone(),
                source,
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(EngineError::Executor(
                "a pool worker started without pipes".into(),
            ));
        };
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            hint_sent: None,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for w in self.workers.iter_mut().filter_map(Option::take) {
            w.stop();
        }
    }
}

/// A worker's report of a computed action, and the attempt that succeeded.
type Done = (WorkerReport, u32);

impl Executor for Pool {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Pool
    }

    fn hint_prefix_layers(&mut self, ctx: &Ctx, layers: &[usize]) {
        ctx.set_prefix_layers(layers.to_vec());
        self.hint = layers.to_vec();
    }

    fn run(&mut self, ctx: &Ctx, todo: &[(Action, Miss)]) -> Result<Vec<Ran>, EngineError> {
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        let queue: Mutex<VecDeque<(usize, u32)>> =
            Mutex::new((0..todo.len()).map(|i| (i, 1)).collect());
        let done: Mutex<Vec<Option<Done>>> = Mutex::new((0..todo.len()).map(|_| None).collect());
        let failure: Mutex<Option<String>> = Mutex::new(None);
        let (command, config, hint, retries) =
            (&self.command, &self.config, &self.hint, self.retries);
        let slots = self.jobs.min(todo.len());
        std::thread::scope(|s| {
            for slot in self.workers.iter_mut().take(slots) {
                let (queue, done, failure) = (&queue, &done, &failure);
                s.spawn(move || loop {
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let Some((i, attempt)) = queue.lock().ok().and_then(|mut q| q.pop_front())
                    else {
                        return;
                    };
                    let action = &todo[i].0;
                    let what = format!(
                        "{} {} (key {})",
                        action.stage,
                        action.instance,
                        action.key().short()
                    );
                    let fail = |msg: String| {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(msg);
                        }
                    };
                    if slot.is_none() {
                        match Pool::spawn(command, config) {
                            Ok(w) => *slot = Some(w),
                            Err(e) => return fail(format!("cannot start a pool worker: {e}")),
                        }
                    }
                    let Some(w) = slot.as_mut() else { return };
                    let mut answer = String::new();
                    let mut talk = || -> std::io::Result<usize> {
                        if w.hint_sent.as_ref() != Some(hint) {
                            w.send(&serde_json::json!({ "prefix_layers": hint }).to_string())?;
                            w.hint_sent = Some(hint.clone());
                        }
                        w.send(&serde_json::json!({ "run": action.key().to_hex() }).to_string())?;
                        w.stdout.read_line(&mut answer)
                    };
                    let got = talk();
                    let report: Option<WorkerReport> = match got {
                        Ok(n) if n > 0 => serde_json::from_str(&answer).ok(),
                        _ => None,
                    };
                    let retry = |why: String| {
                        if attempt <= retries {
                            tracing::warn!(
                                "{what}: {why}; trying again (attempt {} of {})",
                                attempt + 1,
                                retries + 1
                            );
                            if let Ok(mut q) = queue.lock() {
                                q.push_back((i, attempt + 1));
                            }
                        } else {
                            fail(format!(
                                "{what} failed on the pool {attempt} times; the last time: {why}"
                            ));
                        }
                    };
                    match report {
                        Some(r) if r.ok => {
                            if let Ok(mut d) = done.lock() {
                                d[i] = Some((r, attempt));
                            }
                        }
                        Some(r) => {
                            let class = r.class.unwrap_or(FailClass::Transient);
                            let err = r.error.unwrap_or_default();
                            if class.retryable() {
                                retry(format!("worker pid {} failed: {err}", r.pid));
                            } else {
                                fail(format!(
                                    "{what} failed in pool worker pid {} ({}; not retried): {err}",
                                    r.pid,
                                    match class {
                                        FailClass::Action => "the stage itself failed",
                                        _ => "the worker refused it",
                                    }
                                ));
                            }
                        }
                        None => {
                            // The worker died (or answered nonsense): replace it.
                            let mut dead = slot.take();
                            let status = dead
                                .as_mut()
                                .map(|w| {
                                    let _ = w.child.kill();
                                    w.child.wait().map(|s| s.to_string()).unwrap_or_default()
                                })
                                .unwrap_or_default();
                            let pid = dead.as_ref().map(|w| w.child.id()).unwrap_or(0);
                            retry(format!(
                                "pool worker pid {pid} ended ({status}) while computing it"
                            ));
                        }
                    }
                });
            }
        });
        if let Some(msg) = failure.into_inner().map_err(|_| EngineError::Poisoned)? {
            return Err(EngineError::Executor(msg));
        }
        let done = done.into_inner().map_err(|_| EngineError::Poisoned)?;
        let mut out = Vec::with_capacity(todo.len());
        for ((action, _), d) in todo.iter().zip(done) {
            let Some((r, attempts)) = d else {
                return Err(EngineError::Executor(format!(
                    "{} {}: no pool worker computed it",
                    action.stage, action.instance
                )));
            };
            let job = format!("pid {}", r.pid);
            let entry = fetch_result(ctx, action, &format!("pool worker {job}"))?;
            out.push(Ran {
                entry,
                on: RanOn {
                    executor: "pool".into(),
                    host: r.host,
                    job: Some(job),
                    attempts,
                    seconds: Some(r.seconds),
                },
            });
        }
        Ok(out)
    }
}
