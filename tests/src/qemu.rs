//! The QEMU firmware on an emulated Cortex-M3 (`lm3s6965evb`), driven over its UART0.
//!
//! [`build_firmware`] builds `boards/qemu-lm3s6965`'s `firmware` binary (release,
//! `thumbv7m-none-eabi`, in `<target>/firmware`, like `scripts/firmware.sh`); [`Qemu::start`]
//! boots it with UART0 on a loopback TCP port (QEMU waits for this harness to connect before
//! the CPU runs, so no byte is lost) and semihosting on, so the board's emulated flash
//! (`lowband-flash.bin`) and provisioning (`lowband-provision.bin`) are files in the run
//! directory and survive a restart. The firmware's diagnostics (semihosting stdout) are
//! collected line by line; stderr (QEMU's `-d guest_errors` log and panic reports) goes to
//! `qemu.stderr` in the run directory.
//!
//! Env: `LOWBAND_QEMU` names another QEMU binary; `LOWBAND_TRACE_PEERS=1` echoes the firmware's
//! diagnostics; without QEMU the tests skip unless `LOWBAND_REQUIRE_PEERS` is set.

use alloc::sync::Arc;
use core::net::Ipv4Addr;
use core::time::Duration;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use lowband_codec::frame::{self, Deframer};

use crate::env::workspace_root;
use crate::net::free_port;
use crate::proc::ChildGuard;

/// The QEMU binary: env `LOWBAND_QEMU`, else `qemu-system-arm` on the PATH.
pub fn qemu_bin() -> String {
    std::env::var("LOWBAND_QEMU")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "qemu-system-arm".to_string())
}

/// Lines QEMU writes to stderr on every run that are not guest errors.
const BENIGN_STDERR: &[&str] = &[
    "QEMU waiting for connection",
    // Printed by QEMU 7.2 while resetting lm3s6965evb, before the first guest instruction.
    "Timer with period zero, disabling",
    "terminating on signal",
];

/// Whether `qemu-system-arm` can be run.
pub fn qemu_available() -> bool {
    Command::new(qemu_bin())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `true` if QEMU is there. Without it: skips (prints why, returns `false`), or panics if env
/// `LOWBAND_REQUIRE_PEERS` is set, so CI cannot skip silently.
pub fn require_qemu(test: &str) -> bool {
    if qemu_available() {
        return true;
    }
    if std::env::var_os("LOWBAND_REQUIRE_PEERS").is_some() {
        panic!(
            "{test}: LOWBAND_REQUIRE_PEERS is set but {} is missing (run scripts/setup.sh)",
            qemu_bin()
        );
    }
    eprintln!(
        "SKIPPED {test}: {} is missing (run scripts/setup.sh); set LOWBAND_REQUIRE_PEERS=1 \
         to make this a failure",
        qemu_bin()
    );
    false
}

/// Builds the QEMU Matrix firmware (`matrix`) once per test process and returns the ELF path.
///
/// # Errors
///
/// If cargo fails or reports no executable.
pub fn build_matrix() -> anyhow::Result<PathBuf> {
    build_bin("matrix")
}

/// Builds the QEMU firmware once per test process and returns the ELF path.
///
/// # Errors
///
/// If cargo fails or reports no executable.
pub fn build_firmware() -> anyhow::Result<PathBuf> {
    build_bin("firmware")
}

/// Builds a binary of `boards/qemu-lm3s6965` (`firmware`, or the `stack-overflow` fixture)
/// once per test process and returns its ELF path.
///
/// # Errors
///
/// If cargo fails or reports no executable.
pub fn build_bin(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<Vec<(String, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    // Held across the build: one cargo at a time, each binary built once.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let r = match built.iter().find(|(n, _)| n == name) {
        Some((_, r)) => r.clone(),
        None => {
            let r = build(name).map_err(|e| format!("{e:#}"));
            built.push((name.to_string(), r.clone()));
            r
        }
    };
    r.map_err(|e| anyhow::anyhow!("building {name}: {e}"))
}

fn build(name: &str) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("firmware");
    let board = root.join("boards/qemu-lm3s6965");
    // `matrix` builds with nightly: core rebuilt with panic=immediate-abort (the board's
    // matrix.toml says why); the others with the toolchain running the tests.
    let mut cmd = if name == "matrix" {
        let mut c = Command::new("rustup");
        c.args(["run", "nightly", "cargo"])
            .arg("--config")
            .arg(board.join("matrix.toml"));
        c
    } else {
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
    };
    let out = cmd
        .args([
            "build",
            "-j",
            "2",
            "--release",
            "--target",
            "thumbv7m-none-eabi",
            "--bin",
            name,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(board.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "cargo build failed: {}", out.status);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    anyhow::bail!("cargo reported no {name} executable")
}

/// A running QEMU with the firmware, UART0 connected. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    /// Kills QEMU if the test process dies without dropping this (its stdin pipe closes).
    _watchdog: ChildGuard,
    uart: TcpStream,
    deframer: Deframer<512>,
    pending: Vec<Vec<u8>>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
}

impl Qemu {
    /// Boots `elf` with `dir` as QEMU's working directory (where the flash file lives) and
    /// connects to UART0, within `timeout`.
    ///
    /// # Errors
    ///
    /// If QEMU cannot be started or its UART does not accept a connection in time.
    pub fn start(elf: &Path, dir: &Path, timeout: Duration) -> anyhow::Result<Qemu> {
        let port = free_port()?;
        let stderr_path = dir.join("qemu.stderr");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)?;
        let mut child = Command::new(qemu_bin())
            .args(["-machine", "lm3s6965evb", "-nographic", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("tcp:127.0.0.1:{port},server=on,wait=on"))
            .args(["-semihosting-config", "enable=on,target=native"])
            .args(["-d", "guest_errors"])
            .arg("-kernel")
            .arg(elf)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", qemu_bin()))?;
        let mut watchdog_cmd = Command::new("sh");
        watchdog_cmd
            .arg("-c")
            .arg(format!(
                "cat >/dev/null; kill -9 {} 2>/dev/null",
                child.id()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let watchdog = match ChildGuard::spawn("qemu-watchdog", watchdog_cmd) {
            Ok(w) => w,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let stdout = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&stdout);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("LOWBAND_TRACE_PEERS").is_some() {
                        eprintln!("qemu: {line}");
                    }
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let end = Instant::now() + timeout;
        let uart = loop {
            match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                Ok(s) => break Ok(s),
                Err(e) if Instant::now() >= end => {
                    break Err(anyhow::anyhow!("QEMU UART on port {port}: {e}"))
                }
                Err(_) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        break Err(anyhow::anyhow!("QEMU exited with {st}"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let uart = match uart.and_then(|u| u.set_nodelay(true).map(|()| u).map_err(Into::into)) {
            Ok(u) => u,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(e.context(format!("stderr: {log}")));
            }
        };
        Ok(Qemu {
            child,
            _watchdog: watchdog,
            uart,
            deframer: Deframer::new(),
            pending: Vec::new(),
            stdout,
            stderr_path,
        })
    }

    /// Process id of QEMU.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// A second handle on UART0 (e.g. for a [`SerialLine`]); the harness's own frame
    /// functions must not be used while something else reads it.
    ///
    /// # Errors
    ///
    /// If the socket cannot be cloned.
    pub fn uart(&self) -> anyhow::Result<TcpStream> {
        Ok(self.uart.try_clone()?)
    }

    /// Sends one frame (with a leading delimiter) carrying `payload`.
    ///
    /// # Errors
    ///
    /// If the UART connection fails.
    pub fn send_frame(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let mut buf = vec![0u8; frame::max_encoded_len(payload.len(), true)];
        let n = frame::encode(payload, true, &mut buf).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        self.send_raw(&buf[..n])
    }

    /// Sends raw bytes on UART0 (for damaged frames and line noise).
    ///
    /// # Errors
    ///
    /// If the UART connection fails.
    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.uart.write_all(bytes)?;
        Ok(())
    }

    /// The next frame from UART0, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// On timeout, a closed connection or a damaged frame (the firmware must send none).
    pub fn recv_frame(&mut self, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        loop {
            if !self.pending.is_empty() {
                return Ok(self.pending.remove(0));
            }
            let left = end.saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "no frame from the firmware in {timeout:?}");
            self.uart.set_read_timeout(Some(left))?;
            let n = match self.uart.read(&mut buf) {
                Ok(0) => anyhow::bail!("UART connection closed; stderr: {}", self.stderr()),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            for &b in &buf[..n] {
                match self.deframer.handle_byte(b) {
                    Some(Ok(f)) => self.pending.push(f.to_vec()),
                    Some(Err(e)) => anyhow::bail!("damaged frame from the firmware: {e:?}"),
                    None => {}
                }
            }
        }
    }

    /// Sends `payload` and returns the next frame (within `timeout`).
    ///
    /// # Errors
    ///
    /// As [`send_frame`](Self::send_frame) and [`recv_frame`](Self::recv_frame).
    pub fn request(&mut self, payload: &[u8], timeout: Duration) -> anyhow::Result<Vec<u8>> {
        self.send_frame(payload)?;
        self.recv_frame(timeout)
    }

    /// Asserts that no byte arrives on UART0 for `quiet`.
    ///
    /// # Errors
    ///
    /// If a byte arrives.
    pub fn expect_silence(&mut self, quiet: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.pending.is_empty(),
            "unexpected frames: {:?}",
            self.pending
        );
        self.uart.set_read_timeout(Some(quiet))?;
        let mut b = [0u8; 64];
        match self.uart.read(&mut b) {
            Ok(0) => anyhow::bail!("UART connection closed"),
            Ok(n) => anyhow::bail!("unexpected bytes on the UART: {:02x?}", &b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The firmware's diagnostic lines (semihosting stdout) so far.
    pub fn diagnostics(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until a diagnostic line contains `needle`; returns that line.
    ///
    /// # Errors
    ///
    /// On timeout (the error lists the lines seen).
    pub fn wait_diagnostic(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let end = Instant::now() + timeout;
        loop {
            let lines = self.diagnostics();
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return Ok(l.clone());
            }
            anyhow::ensure!(
                Instant::now() < end,
                "no diagnostic line with {needle:?} in {timeout:?}; got {lines:?}; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// QEMU's stderr so far (guest errors, panic reports).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Lines of stderr that are not QEMU's usual chatter: guest errors, faults, panics.
    pub fn guest_errors(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| !l.trim().is_empty() && !BENIGN_STDERR.iter().any(|b| l.contains(b)))
            .map(str::to_string)
            .collect()
    }

    /// Waits up to `timeout` for QEMU to exit by itself.
    ///
    /// # Errors
    ///
    /// On timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            anyhow::ensure!(Instant::now() < end, "QEMU still running after {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills QEMU (SIGKILL, like pulling the power) and reaps it.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A serial line between QEMU's UART0 (end A, the device) and a pty master (end B; its slave is
/// what `lowband serve --listen-serial` opens), through linksim's [`StreamLink`] on real time:
/// the line's bit rate, latency and damage. A board that is powered off (QEMU killed) takes
/// nothing off the line; [`attach`](Self::attach) the next boot's UART.
///
/// [`StreamLink`]: lowband_linksim::StreamLink
#[derive(Debug)]
pub struct SerialLine {
    uart: std::sync::mpsc::Sender<TcpStream>,
    stop: Arc<core::sync::atomic::AtomicBool>,
    counters: Arc<Mutex<[lowband_linksim::StreamCounters; 2]>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SerialLine {
    /// Starts relaying between `pty` (a pty master, or any serial port) and the UARTs attached
    /// later, through `link`.
    ///
    /// # Errors
    ///
    /// If the pty's timeout cannot be set.
    pub fn start(
        mut pty: serialport::TTYPort,
        mut link: lowband_linksim::StreamLink,
    ) -> anyhow::Result<SerialLine> {
        use core::sync::atomic::Ordering;
        use lowband_linksim::Dir;
        use serialport::SerialPort as _;
        pty.set_timeout(Duration::from_millis(1))?;
        let (tx, rx) = std::sync::mpsc::channel::<TcpStream>();
        let stop = Arc::new(core::sync::atomic::AtomicBool::new(false));
        let counters = Arc::new(Mutex::new([lowband_linksim::StreamCounters::default(); 2]));
        let (stop2, counters2) = (Arc::clone(&stop), Arc::clone(&counters));
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut uart: Option<TcpStream> = None;
            let mut buf = [0u8; 1024];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(u) = rx.try_recv() {
                    let _ = u.set_nonblocking(true);
                    uart = Some(u);
                }
                let mut idle = true;
                if let Some(u) = uart.as_mut() {
                    match u.read(&mut buf) {
                        Ok(0) => uart = None,
                        Ok(n) => {
                            link.write(start.elapsed(), Dir::AtoB, &buf[..n]);
                            idle = false;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => uart = None,
                    }
                }
                match pty.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        link.write(start.elapsed(), Dir::BtoA, &buf[..n]);
                        idle = false;
                    }
                    _ => {}
                }
                while let Some((dir, bytes)) = link.poll_deliver(start.elapsed()) {
                    match dir {
                        Dir::AtoB => {
                            let _ = pty.write_all(&bytes);
                        }
                        // A powered-off board hears nothing.
                        Dir::BtoA => {
                            if let Some(u) = uart.as_mut() {
                                if u.write_all(&bytes).is_err() {
                                    uart = None;
                                }
                            }
                        }
                    }
                }
                *counters2.lock().unwrap_or_else(|e| e.into_inner()) =
                    [link.counters(Dir::AtoB), link.counters(Dir::BtoA)];
                if idle {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Ok(SerialLine {
            uart: tx,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// Connects a (re)booted board's UART to end A.
    pub fn attach(&self, uart: TcpStream) {
        let _ = self.uart.send(uart);
    }

    /// Line counters: device to gateway, gateway to device.
    pub fn counters(&self) -> [lowband_linksim::StreamCounters; 2] {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SerialLine {
    fn drop(&mut self) {
        self.stop.store(true, core::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
