//! Plain CoAP interop on loopback: libcoap's and aiocoap's clients against our server, and our
//! client against `coap-server-notls` and `aiocoap-fileserver`, block-wise and Observe included.
//!
//! Peers: `coap-client-notls`/`coap-server-notls` from PATH (Debian `libcoap3-bin`), aiocoap
//! from the venv in `LOWBAND_VENV` (default `<workspace>/.venv`, made by scripts/setup.sh).
//! A test whose peer is missing prints why and passes without running.
// The test binary has std and no `extern crate alloc`.
#![allow(clippy::std_instead_of_alloc)]

use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use lowband_codec::coap::Code;
use lowband_gateway::plaincoap::{big_body, Client, Insecure, Server};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

fn insecure() -> Insecure {
    Insecure::i_understand_this_is_unauthenticated()
}

type Stop = std::sync::Arc<AtomicBool>;

struct Running {
    addr: SocketAddr,
    stop: Stop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn our_server(obs_ms: u64) -> Running {
    let s = Server::bind(
        insecure(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(obs_ms),
    )
    .unwrap();
    let addr = s.local_addr().unwrap();
    let stop = s.stopper();
    let thread = Some(std::thread::spawn(move || s.run().unwrap()));
    Running { addr, stop, thread }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(tool))
        .find(|p| p.is_file())
}

fn libcoap(tool: &str) -> Option<PathBuf> {
    let p = on_path(tool);
    if p.is_none() {
        println!("SKIP: {tool} not found on PATH (apt-get install libcoap3-bin)");
    }
    p
}

fn aiocoap(tool: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("LOWBAND_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let p = venv.join("bin").join(tool);
    if p.is_file() {
        Some(p)
    } else {
        println!(
            "SKIP: {} not found (set LOWBAND_VENV or run scripts/setup.sh)",
            p.display()
        );
        None
    }
}

fn run(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tmpfile(name: &str, body: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("lowband-coap-{}-{name}", std::process::id()));
    std::fs::write(&p, body).unwrap();
    p
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn upload_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'A' + (i % 26) as u8).collect()
}

#[test]
fn libcoap_client_against_our_server() {
    let Some(cc) = libcoap("coap-client-notls") else {
        return;
    };
    let srv = our_server(300);
    let uri = |p: &str| format!("coap://{}/{p}", srv.addr);
    // echo
    let o = run(
        Command::new(&cc).args(["-m", "post", "-e", "hello lowband", &uri("echo")]),
        20,
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        "hello lowband"
    );
    // Block2: 3000 bytes in 64-byte blocks
    let o = run(Command::new(&cc).args(["-b", "64", &uri("big")]), 30);
    let got = String::from_utf8_lossy(&o.stdout);
    assert_eq!(got.trim_end().as_bytes(), &big_body()[..], "{}", text(&o));
    // Block1: 3000 bytes up in 64-byte blocks, then read back with our client
    let body = upload_body(3000);
    let f = tmpfile("up", &body);
    let o = run(
        Command::new(&cc)
            .args(["-m", "post", "-b", "64", "-f"])
            .arg(&f)
            .arg(uri("upload")),
        30,
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        "3000",
        "{}",
        text(&o)
    );
    let mut c = Client::connect(insecure(), srv.addr).unwrap();
    let r = c.request(Code::GET, "/upload", &[]).unwrap();
    assert_eq!(r.body, body);
    // too large: 4.13
    let f2 = tmpfile("huge", &upload_body(5000));
    let o = run(
        Command::new(&cc)
            .args(["-m", "post", "-b", "64", "-f"])
            .arg(&f2)
            .arg(uri("upload")),
        30,
    );
    assert!(text(&o).contains("4.13"), "{}", text(&o));
    // Observe: several notifications, increasing
    let o = run(
        Command::new(&cc).args(["-s", "3", "-B", "5", &uri("obs")]),
        10,
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let digits: Vec<char> = out.chars().filter(|c| c.is_ascii_digit()).collect();
    assert!(digits.len() >= 4, "notifications: {out:?} {}", text(&o));
    let _ = std::fs::remove_file(f);
    let _ = std::fs::remove_file(f2);
}

#[test]
fn aiocoap_client_against_our_server() {
    let Some(ac) = aiocoap("aiocoap-client") else {
        return;
    };
    let srv = our_server(300);
    let uri = |p: &str| format!("coap://{}/{p}", srv.addr);
    let o = run(
        Command::new(&ac).args(["-m", "POST", "--payload", "hello aiocoap", &uri("echo")]),
        30,
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        "hello aiocoap",
        "{}",
        text(&o)
    );
    let o = run(Command::new(&ac).arg(uri("big")), 30);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end().as_bytes(),
        &big_body()[..],
        "{}",
        text(&o)
    );
    // aiocoap sends Block1 for bodies above its 1024-byte block size
    let body = upload_body(3000);
    let f = tmpfile("aio-up", &body);
    let o = run(
        Command::new(&ac)
            .args(["-m", "POST", "--payload"])
            .arg(format!("@{}", f.display()))
            .arg(uri("upload")),
        30,
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        "3000",
        "{}",
        text(&o)
    );
    let mut c = Client::connect(insecure(), srv.addr).unwrap();
    assert_eq!(c.request(Code::GET, "/upload", &[]).unwrap().body, body);
    // --observe prints only the first notification (upstream bug); it must be a number and
    // the observation must have been registered
    let o = run(Command::new(&ac).args(["--observe", &uri("obs")]), 4);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.trim()
            .lines()
            .next()
            .is_some_and(|l| l.trim().parse::<u32>().is_ok()),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_file(f);
}

#[test]
fn our_client_against_libcoap_server() {
    let Some(cs) = libcoap("coap-server-notls") else {
        return;
    };
    let port = free_port();
    let _srv = Proc(
        Command::new(cs)
            .args(["-A", "127.0.0.1", "-p", &port.to_string(), "-d", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Client::connect(insecure(), addr).unwrap();
    let r = c.request(Code::GET, "/", &[]).unwrap();
    assert_eq!(r.code, Code::CONTENT);
    assert!(
        String::from_utf8_lossy(&r.body).contains("libcoap"),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    // Block1 up in 64-byte blocks, Block2 down (server chooses the size)
    let body = upload_body(3000);
    let up = c.request(Code::PUT, "/example_data", &body).unwrap();
    assert!(up.code.class() == 2, "{:?}", up.code);
    assert_eq!(up.exchanges, 3000usize.div_ceil(64));
    let down = c.request(Code::GET, "/example_data", &[]).unwrap();
    assert_eq!(down.body, body);
    assert!(down.exchanges > 1, "block-wise download");
    // Observe /time: notifications once a second
    let notes = c.observe("/time", 3).unwrap();
    assert_eq!(notes.len(), 3);
}

#[test]
fn our_client_against_aiocoap_fileserver() {
    let Some(fs) = aiocoap("aiocoap-fileserver") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("lowband-coap-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = upload_body(3000);
    std::fs::write(dir.join("big.txt"), &body).unwrap();
    let port = free_port();
    let _srv = Proc(
        Command::new(fs)
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Client::connect(insecure(), addr).unwrap();
    let mut r = None;
    for _ in 0..50 {
        // the Python server takes a moment to start
        match c.request(Code::GET, "/big.txt", &[]) {
            Ok(x) => {
                r = Some(x);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let r = r.expect("aiocoap-fileserver answered");
    assert_eq!(r.body, body);
    assert!(r.exchanges >= 3, "Block2: {}", r.exchanges);
    let _ = std::fs::remove_dir_all(dir);
}
