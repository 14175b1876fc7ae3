//! A tiny authoritative DNS server on loopback UDP, for server discovery tests.
//!
//! It answers A, AAAA and SRV questions from a fixed table (RFC 1035 §4 message format, RFC 2782
//! SRV data): the records of the name asked, NOERROR with no answer when the name has records
//! of other types only, NXDOMAIN otherwise. Every question is logged, so a test can check which
//! lookups a resolver made. Nothing else (no TCP, no EDNS, no compression in questions).

use alloc::sync::Arc;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use std::net::UdpSocket;
use std::sync::Mutex;

/// One resource record of a [`TestDns`] table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsRecord {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// A service location.
    Srv {
        /// Priority (lower first).
        priority: u16,
        /// Weight.
        weight: u16,
        /// Port.
        port: u16,
        /// Target host name.
        target: String,
    },
}

impl DnsRecord {
    fn rtype(&self) -> u16 {
        match self {
            DnsRecord::A(_) => 1,
            DnsRecord::Aaaa(_) => 28,
            DnsRecord::Srv { .. } => 33,
        }
    }
}

const TTL: u32 = 5;

/// A running test DNS server; stops when dropped.
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<(String, u16)>>>,
    stop: Arc<AtomicBool>,
}

impl TestDns {
    /// Serve `records` (name without trailing dot, case-insensitive) on 127.0.0.1, a free port.
    pub fn start(records: &[(&str, DnsRecord)]) -> anyhow::Result<TestDns> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sock.local_addr()?;
        let table: Vec<(String, DnsRecord)> = records
            .iter()
            .map(|(n, r)| (n.trim_end_matches('.').to_ascii_lowercase(), r.clone()))
            .collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some((name, qtype, answer)) = respond(&table, &buf[..n]) else {
                    continue;
                };
                if let Ok(mut l) = log2.lock() {
                    l.push((name, qtype));
                }
                let _ = sock.send_to(&answer, from);
            }
        });
        Ok(TestDns { addr, log, stop })
    }

    /// Where it listens (give it to `serve --dns`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Questions asked so far: name (lowercase, no trailing dot) and type (1 A, 28 AAAA, 33 SRV).
    pub fn questions(&self) -> Vec<(String, u16)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Type number of SRV questions, for [`TestDns::questions`].
pub const SRV: u16 = 33;

/// The answer to one query datagram: the name and type asked, and the response bytes.
fn respond(table: &[(String, DnsRecord)], q: &[u8]) -> Option<(String, u16, Vec<u8>)> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let name = labels.join(".");
    let known = table.iter().any(|(n, _)| *n == name);
    let answers: Vec<&DnsRecord> = table
        .iter()
        .filter(|(n, r)| *n == name && r.rtype() == qtype)
        .map(|(_, r)| r)
        .collect();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[..2]);
    // QR, AA, RD copied; RA; RCODE NOERROR or NXDOMAIN.
    out.push(0x84 | (q[2] & 0x01));
    out.push(0x80 | if known { 0 } else { 3 });
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::try_from(answers.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for r in answers {
        // The name: a pointer to the question's (offset 12).
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&r.rtype().to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        let data = match r {
            DnsRecord::A(ip) => ip.octets().to_vec(),
            DnsRecord::Aaaa(ip) => ip.octets().to_vec(),
            DnsRecord::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                let mut d = Vec::new();
                d.extend_from_slice(&priority.to_be_bytes());
                d.extend_from_slice(&weight.to_be_bytes());
                d.extend_from_slice(&port.to_be_bytes());
                for l in target
                    .trim_end_matches('.')
                    .split('.')
                    .filter(|l| !l.is_empty())
                {
                    d.push(u8::try_from(l.len()).ok()?);
                    d.extend_from_slice(l.as_bytes());
                }
                d.push(0);
                d
            }
        };
        out.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some((name, qtype, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `_x._tcp.a.test` SRV, id 0xbeef, RD set (as a stub resolver sends it).
    const QUERY: &[u8] = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
        \x02_x\x04_tcp\x01a\x04test\x00\x00\x21\x00\x01";

    #[test]
    fn answers_srv_and_nxdomain() {
        let t = [(
            "_x._tcp.a.test".to_owned(),
            DnsRecord::Srv {
                priority: 1,
                weight: 2,
                port: 8448,
                target: "h.test.".into(),
            },
        )];
        let (name, ty, r) = respond(&t, QUERY).unwrap();
        assert_eq!((name.as_str(), ty), ("_x._tcp.a.test", SRV));
        assert_eq!(
            &r[..12],
            b"\xbe\xef\x85\x80\x00\x01\x00\x01\x00\x00\x00\x00"
        );
        assert_eq!(&r[12..12 + QUERY.len() - 12], &QUERY[12..]);
        let rr = &r[QUERY.len()..];
        assert_eq!(
            rr,
            b"\xc0\x0c\x00\x21\x00\x01\x00\x00\x00\x05\x00\x0e\
              \x00\x01\x00\x02\x21\x00\x01h\x04test\x00"
        );
        let (_, _, r) = respond(&[], QUERY).unwrap();
        assert_eq!(r[3], 0x83, "NXDOMAIN");
        assert_eq!(&r[6..8], &[0, 0]);
        assert!(respond(&[], &QUERY[..20]).is_none());
    }

    #[test]
    fn serves_on_udp() {
        let dns = TestDns::start(&[("a.test", DnsRecord::A(Ipv4Addr::new(127, 0, 0, 9)))]).unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut q = QUERY[..12].to_vec();
        q.extend_from_slice(b"\x01a\x04test\x00\x00\x01\x00\x01");
        s.send_to(&q, dns.addr()).unwrap();
        let mut b = [0u8; 512];
        let n = s.recv(&mut b).unwrap();
        assert_eq!(&b[n - 4..n], &[127, 0, 0, 9]);
        assert_eq!(dns.questions(), vec![("a.test".to_owned(), 1)]);
    }
}
