//! Child processes that never outlive their test.

use core::time::Duration;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Instant;

/// A child process, killed (SIGKILL) and reaped when this guard drops.
///
/// The child's stdin is a pipe held open by the guard: the Python helpers in `tests/py/` exit
/// when it closes, which also happens when the test process itself dies without running Drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl ChildGuard {
    /// Spawn `cmd` with a stdin pipe (stdout and stderr as configured on `cmd`).
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<ChildGuard> {
        cmd.stdin(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("{name}: cannot start {cmd:?}: {e}"))?;
        let stdin = child.stdin.take();
        Ok(ChildGuard {
            name: name.to_string(),
            child,
            stdin,
        })
    }

    /// Process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (e.g. to take its stdout).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The write end of the child's stdin, while the guard holds it.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// `Some(exit status)` if the child has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Close stdin and wait up to `timeout` for a clean exit; kill it after that.
    pub fn finish(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        drop(self.stdin.take());
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// Kill and reap the child (no-op if it has already been reaped).
    pub fn kill(&mut self) {
        drop(self.stdin.take());
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("LOWBAND_TRACE_PEERS").is_some() {
            eprintln!("stopped {} (pid {})", self.name, self.child.id());
        }
    }
}

/// The last `lines` lines of a text file (or a note that it cannot be read).
pub fn tail_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}
