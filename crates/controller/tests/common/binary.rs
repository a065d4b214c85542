//! The controller binary as its own process, as a Deployment runs it: its output captured
//! line by line, its HTTP endpoints on a port of its own.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// A running `metal3-fakenode run`.
pub struct Binary {
    pub child: Child,
    pub port: u16,
    /// Every line it wrote to stdout and stderr, in arrival order per stream.
    pub output: Arc<Mutex<Vec<String>>>,
    /// Its stdout alone (with `--log-format json`, one record per line).
    pub stdout: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Binary {
    /// Starts `metal3-fakenode run` with the management `kubeconfig` (YAML), `args`, and
    /// `RUST_LOG` as given; nothing else is inherited.
    pub fn spawn(kubeconfig: &str, args: &[&str], rust_log: &str) -> Self {
        Self::spawn_with_env(kubeconfig, args, rust_log, &[])
    }

    /// As [`Binary::spawn`], with these environment variables too (e.g. `POD_NAME`).
    pub fn spawn_with_env(
        kubeconfig: &str,
        args: &[&str],
        rust_log: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, kubeconfig).unwrap();
        let port = metal3_fakenode_testkit::envtest::free_port().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_metal3-fakenode"))
            .arg("run")
            .args(args)
            .arg("--metrics-bind-address")
            .arg(format!("127.0.0.1:{port}"))
            .env_clear()
            .env("KUBECONFIG", &path)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        collect(
            child.stdout.take().unwrap(),
            vec![output.clone(), stdout.clone()],
        );
        collect(child.stderr.take().unwrap(), vec![output.clone()]);
        Self {
            child,
            port,
            output,
            stdout,
            _dir: dir,
        }
    }

    /// The status code and body of `GET path`, or None while nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        metal3_fakenode_testkit::probe::get(&format!("127.0.0.1:{}", self.port), path)
            .await
            .ok()
    }

    /// Whether `/readyz` answers 200.
    pub async fn ready(&self) -> bool {
        self.get("/readyz")
            .await
            .is_some_and(|(code, _)| code == 200)
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The output so far.
    pub fn lines(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id().expect("still running")).unwrap();
        // SAFETY: kill(2) on our own child, not reaped before `wait`.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the exit for at most `limit`: its exit code, or None if it still runs.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<Option<i32>> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|status| status.unwrap().code())
    }
}

fn collect(stream: impl AsyncRead + Unpin + Send + 'static, into: Vec<Arc<Mutex<Vec<String>>>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            for lines in &into {
                lines.lock().unwrap().push(line.clone());
            }
        }
    });
}

/// The value of the sample `name` with exactly `labels` in an exposition.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metal3_fakenode_testkit::exposition::metric_value_with(exposition, name, labels)
}
