//! A real S3 server for tests: moto, installed once into a virtual environment under
//! `$C2I_HOME` (default `~/.cache/c2i`) and started on 127.0.0.1 on a free port.
//! The server stops when the [`Moto`] is dropped, and by itself if the test process
//! dies (its watchdog exits when its parent pid changes or its stdin closes).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The pinned server package.
pub const MOTO_SPEC: &str = "moto[server]==5.2.5";

fn c2i_home() -> PathBuf {
    if let Some(h) = std::env::var_os("C2I_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").expect("HOME or C2I_HOME must be set");
    PathBuf::from(home).join(".cache/c2i")
}

fn harness() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for p in [
        dir.join("tests/e2e/support/moto_harness.py"),
        dir.join("../tests/e2e/support/moto_harness.py"),
    ] {
        if p.exists() {
            return p;
        }
    }
    panic!(
        "tests/e2e/support/moto_harness.py not found from {}",
        dir.display()
    );
}

/// The virtual environment with moto, created (once, under a lock) if missing.
pub fn ensure_venv() -> PathBuf {
    let venv = c2i_home().join("venvs/moto-5.2.5");
    if venv.join(".ready").exists() {
        return venv;
    }
    let st = Command::new("python3")
        .arg(harness())
        .arg("ensure")
        .arg(&venv)
        .arg(MOTO_SPEC)
        .status()
        .expect("run python3 (needed to install moto for the S3 tests)");
    assert!(
        st.success(),
        "installing {MOTO_SPEC} into {} failed",
        venv.display()
    );
    venv
}

/// A running moto S3 server with one bucket.
pub struct Moto {
    child: Child,
    _stdin: Option<ChildStdin>,
    pub port: u16,
    pub bucket: String,
    log: PathBuf,
}

impl Moto {
    /// Starts a server and creates `bucket` (3-63 lowercase characters).
    pub fn start(bucket: &str) -> Moto {
        let venv = ensure_venv();
        let log =
            std::env::temp_dir().join(format!("c2i-moto-{}-{}.log", std::process::id(), bucket));
        let err = std::fs::File::create(&log).expect("create moto log");
        let mut child = Command::new(venv.join("bin/python"))
            .arg(harness())
            .arg("serve")
            .arg(bucket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("start moto");
        let stdout = child.stdout.take().expect("moto stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "moto did not start (got {line:?}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let stdin = child.stdin.take();
        Moto {
            child,
            _stdin: stdin,
            port,
            bucket: bucket.to_string(),
            log,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Environment for a `c2i` process talking to this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }

    /// The same as `object_store` settings, for in-process use.
    pub fn s3_config(&self) -> Vec<(String, String)> {
        vec![
            ("aws_access_key_id".into(), "testing".into()),
            ("aws_secret_access_key".into(), "testing".into()),
            ("aws_region".into(), "us-east-1".into()),
        ]
    }
}

/// An HTTP server that answers every request the way S3 answers a bad signature
/// (403 SignatureDoesNotMatch, echoing the credentials), from the same harness.
pub struct Echo403 {
    child: Child,
    _stdin: Option<ChildStdin>,
    pub port: u16,
}

impl Echo403 {
    pub fn start() -> Echo403 {
        let mut child = Command::new("python3")
            .arg(harness())
            .arg("serve-403")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the 403 server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the 403 server did not start: {line:?}"));
        let stdin = child.stdin.take();
        Echo403 {
            child,
            _stdin: stdin,
            port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Echo403 {
    fn drop(&mut self) {
        self._stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self._stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
