//! `coap-peer`: plain CoAP over loopback UDP for interop tests (no Noise; insecure).
//!
//! ```text
//! coap-peer --insecure-plain-coap serve [127.0.0.1:5683] [obs-interval-ms]
//! coap-peer --insecure-plain-coap get|post|put 127.0.0.1:5683 /path [payload]
//! coap-peer --insecure-plain-coap observe 127.0.0.1:5683 /path count
//! ```
use core::time::Duration;
use lowband_codec::coap::Code;
use lowband_gateway::plaincoap::{Client, Insecure, Server};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("--insecure-plain-coap") {
        anyhow::bail!("plain CoAP is unauthenticated: pass --insecure-plain-coap first");
    }
    let insecure = Insecure::i_understand_this_is_unauthenticated();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(1) {
        Some("serve") => {
            let addr = arg(2).unwrap_or("127.0.0.1:5683").parse()?;
            let interval = Duration::from_millis(arg(3).unwrap_or("1000").parse()?);
            let s = Server::bind(insecure, addr, interval)?;
            println!("listening on {}", s.local_addr()?);
            std::io::stdout().flush()?;
            s.run()?;
        }
        Some(m @ ("get" | "post" | "put")) => {
            let mut c = Client::connect(insecure, arg(2).unwrap_or("127.0.0.1:5683").parse()?)?;
            let code = match m {
                "get" => Code::GET,
                "post" => Code::POST,
                _ => Code::PUT,
            };
            let r = c.request(code, arg(3).unwrap_or("/"), arg(4).unwrap_or("").as_bytes())?;
            eprintln!("{:?} ({} exchanges)", r.code, r.exchanges);
            std::io::stdout().write_all(&r.body)?;
        }
        Some("observe") => {
            let mut c = Client::connect(insecure, arg(2).unwrap_or("127.0.0.1:5683").parse()?)?;
            for p in c.observe(arg(3).unwrap_or("/"), arg(4).unwrap_or("3").parse()?)? {
                println!("{}", String::from_utf8_lossy(&p));
            }
        }
        _ => anyhow::bail!("usage: coap-peer --insecure-plain-coap serve|get|post|put|observe ..."),
    }
    Ok(())
}
