//! A real single-node Slurm for the tests: `deploy/slurm/cluster.sh` installs
//! `slurm-wlm` and `munge` with apt-get when they are missing (once per machine),
//! then starts munged, slurmctld and slurmd on 127.0.0.1 with their config, keys, state
//! and logs in a private directory and free ports. The cluster stops when the
//! [`Cluster`] is dropped, and by itself (the script's watchdog) if the test process
//! dies.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm/cluster.sh")
}

/// A running cluster.
pub struct Cluster {
    state: tempfile::TempDir,
    pub conf: PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        let state = tempfile::Builder::new()
            .prefix("c2i-slurm-")
            .tempdir()
            .expect("state dir");
        let out = Command::new(script())
            .arg("start")
            .arg(state.path())
            .env("C2I_SLURM_WATCH_PID", std::process::id().to_string())
            .output()
            .expect("run deploy/slurm/cluster.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cluster.sh start failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SLURM_CONF="))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("cluster.sh printed no SLURM_CONF: {stdout}"));
        Cluster { state, conf }
    }

    /// Environment for `c2i` and the Slurm client commands.
    pub fn env(&self) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        vec![
            ("SLURM_CONF".into(), self.conf.display().to_string()),
            ("PATH".into(), format!("{path}:/usr/sbin:/sbin")),
        ]
    }

    /// A Slurm client command against this cluster.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for (k, v) in self.env() {
            c.env(k, v);
        }
        c
    }

    /// The array tasks (`JOB_TASK`) now running.
    pub fn running(&self) -> Vec<String> {
        let out = self
            .cmd("squeue")
            .args(["-h", "-r", "-t", "RUNNING", "-o", "%i"])
            .output()
            .expect("squeue");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub fn state(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.state.path())
            .output();
    }
}
