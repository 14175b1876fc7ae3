//! A matrix-nio client session driven step by step from Rust.

use alloc::sync::Arc;
use core::time::Duration;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;

use serde_json::Value;

use crate::env::{py_script, Venv};
use crate::proc::ChildGuard;

/// Extra time allowed beyond a step's own `timeout_s` before the Rust side gives up.
const MARGIN: Duration = Duration::from_secs(15);
/// The Python side's default step bound (`timeout_s`).
const DEFAULT_STEP_TIMEOUT_S: f64 = 30.0;

/// One `tests/py/nio_client.py` process: one or more matrix-nio `AsyncClient`s (named by the
/// steps' `client` field) that run JSON steps and answer one JSON result per step.
///
/// The step language (ops `login`, `restore`, `whoami`, `create_room`, `invite`, `join`,
/// `leave`, `send`, `sync`, `wait_event`, `wait_invite`, `wait_ephemeral`, `typing`,
/// `receipt`, `read_markers`, `room_messages`, `upload`, `download`, `logout`, `sleep`;
/// `${label.field}` references to earlier results) is documented at the top of that script.
/// Every result has `ok` (bool), `op`, `index`, `ms` and on failure `error` (and
/// `status_code` if the server answered).
#[derive(Debug)]
pub struct Nio {
    child: ChildGuard,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Nio {
    /// Start a driver whose clients talk to `homeserver_url` unless a `login`/`restore` step
    /// gives its own `url`.
    pub fn start(venv: &Venv, homeserver_url: &str) -> anyhow::Result<Nio> {
        let mut cmd = venv.command();
        cmd.arg(py_script("nio_client.py"))
            .arg(homeserver_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn("nio_client", cmd)?;
        let out = child
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("nio_client: no stdout pipe"))?;
        let err = child
            .child_mut()
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("nio_client: no stderr pipe"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut v = keep.lock().unwrap_or_else(|e| e.into_inner());
                v.push(line);
                let excess = v.len().saturating_sub(200);
                v.drain(..excess);
            }
        });
        Ok(Nio {
            child,
            lines,
            stderr,
        })
    }

    /// Run one step and return its result (whether `ok` or not). Fails only if the driver
    /// does not answer within the step's `timeout_s` (default 30 s) plus 15 s, or has died.
    pub fn step(&mut self, step: &Value) -> anyhow::Result<Value> {
        let stdin = self
            .child
            .stdin()
            .ok_or_else(|| anyhow::anyhow!("nio_client: stdin already closed"))?;
        writeln!(stdin, "{step}")
            .and_then(|()| stdin.flush())
            .map_err(|e| {
                anyhow::anyhow!("nio_client: cannot send step ({e}){}", self.stderr_tail())
            })?;
        let bound = step
            .get("timeout_s")
            .and_then(Value::as_f64)
            .unwrap_or(DEFAULT_STEP_TIMEOUT_S);
        let wait = Duration::from_secs_f64(bound.max(0.0)) + MARGIN;
        match self.lines.recv_timeout(wait) {
            Ok(line) => serde_json::from_str(&line).map_err(|e| {
                anyhow::anyhow!(
                    "nio_client: bad result line {line:?}: {e}{}",
                    self.stderr_tail()
                )
            }),
            Err(RecvTimeoutError::Timeout) => anyhow::bail!(
                "nio_client: no answer to {step} within {wait:?}{}",
                self.stderr_tail()
            ),
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!(
                "nio_client exited before answering {step}{}",
                self.stderr_tail()
            ),
        }
    }

    /// Run one step and return its result, failing (with the result in the message) unless
    /// it is `ok`.
    pub fn step_ok(&mut self, step: &Value) -> anyhow::Result<Value> {
        let r = self.step(step)?;
        if r.get("ok") != Some(&Value::Bool(true)) {
            anyhow::bail!("nio step {step} failed: {r}");
        }
        Ok(r)
    }

    /// Run all `steps` in one fresh driver and return one result per step, in order (failed
    /// steps included: check each result's `ok`).
    pub fn run(venv: &Venv, homeserver_url: &str, steps: &[Value]) -> anyhow::Result<Vec<Value>> {
        let mut nio = Nio::start(venv, homeserver_url)?;
        let results = steps
            .iter()
            .map(|s| nio.step(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        nio.finish();
        Ok(results)
    }

    /// Close the clients (end of input) and wait briefly for the process to exit.
    pub fn finish(mut self) {
        self.child.finish(Duration::from_secs(5));
    }

    fn stderr_tail(&self) -> String {
        let v = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if v.is_empty() {
            String::new()
        } else {
            format!(
                "\n--- nio_client stderr ---\n{}",
                v[v.len().saturating_sub(30)..].join("\n")
            )
        }
    }
}
