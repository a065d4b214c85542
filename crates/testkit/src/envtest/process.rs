//! Control-plane child processes that never outlive the process that started them.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

type SpawnRequest = (Command, Sender<io::Result<Child>>);

/// The kernel's parent-death signal fires when the *thread* that forked exits, not the
/// process. Test runners end a thread per test, so every child is forked from one thread
/// that lives as long as the process: children then die with it however it ends (panic,
/// `static` fixtures that are never dropped, SIGKILL).
fn spawner() -> &'static Mutex<Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("envtest-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // Ignoring a send error is right: the requester gave up waiting.
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the envtest spawner thread");
        Mutex::new(tx)
    })
}

/// A running child whose output goes to a log file; killed and reaped on drop.
pub struct Supervised {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> io::Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    /// As [`Supervised::spawn`], with these environment variables added.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> io::Result<Self> {
        let out = File::create(&log)?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (tx, rx) = channel();
        spawner()
            .lock()
            .map_err(|_| io::Error::other("envtest spawner lock poisoned"))?
            .send((command, tx))
            .map_err(|_| io::Error::other("envtest spawner thread is gone"))?;
        let child = rx
            .recv()
            .map_err(|_| io::Error::other("envtest spawner thread dropped the request"))??;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited: {status}", self.name)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: cannot poll: {e}", self.name)),
        }
    }

    /// For error messages: the process's error lines (klog's `E`/`F` severities) and
    /// then its last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let errors: Vec<&str> = all
            .iter()
            .copied()
            .filter(|l| l.starts_with('E') || l.starts_with('F'))
            .collect();
        let errors = &errors[errors.len().saturating_sub(lines)..];
        let tail = &all[all.len().saturating_sub(lines)..];
        format!("{}\n...\n{}", errors.join("\n"), tail.join("\n"))
    }

    /// The path of the file its output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}
