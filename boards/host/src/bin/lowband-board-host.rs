//! Runs the firmware's loopback application on a Linux host, over a serial device or a new pty.
//!
//! ```text
//! lowband-board-host <device|pty> <state-dir>
//! ```
//!
//! `device` is a serial port (`/dev/ttyUSB0`, 115200 8N1). `pty` creates a pseudo-terminal pair
//! and prints the path of the far end for a gateway to open. `<state-dir>` holds the flash file
//! (`lowband-flash.bin`) and, if present, `lowband-provision.bin` (96 bytes). Runs until killed.

use core::sync::atomic::AtomicBool;
use core::time::Duration;
use std::path::PathBuf;
use std::process::ExitCode;

use lowband_board_host::{init, read_provisioning, run_loopback};
use lowband_firmware::Provisioned;
use serialport::SerialPort;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, dir] = &args[..] else {
        eprintln!("usage: lowband-board-host <device|pty> <state-dir>");
        return ExitCode::from(2);
    };
    match run(port, &PathBuf::from(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lowband-board-host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(port: &str, dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // The far end of a pty stays open here, or the near end reports hang-ups until a peer opens it.
    let mut _far = None;
    let link: Box<dyn SerialPort> = if port == "pty" {
        let (mut near, far) = serialport::TTYPort::pair()?;
        near.set_timeout(Duration::from_millis(50))?;
        println!("{}", far.name().unwrap_or_default());
        _far = Some(far);
        Box::new(near)
    } else {
        serialport::new(port, 115_200)
            .timeout(Duration::from_millis(50))
            .open()?
    };
    let prov_path = dir.join("lowband-provision.bin");
    let provisioned = if prov_path.exists() {
        read_provisioning(&prov_path)?
    } else {
        eprintln!(
            "lowband-board-host: no {}, using development keys",
            prov_path.display()
        );
        Provisioned::from_bytes(&[0x5A; Provisioned::LEN])
    };
    let parts = init(link, &dir.join("lowband-flash.bin"), provisioned)?;
    let stop = AtomicBool::new(false);
    let (boots, _) = run_loopback(parts, &stop)?;
    eprintln!("lowband-board-host: stopped after boot {boots}");
    Ok(())
}
