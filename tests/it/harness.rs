//! The harness's own pieces: ports, certificates, process cleanup.

use core::time::Duration;
use std::net::TcpListener;

use lowband_tests::{free_port, require_peers, wait_for_port, TempDir, TestCa};

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port().expect("port")).collect();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ports.len(), "{ports:?}");
    let l = TcpListener::bind(("127.0.0.1", ports[0])).expect("bind");
    wait_for_port(ports[0], Duration::from_secs(1)).expect("listening");
    drop(l);
    assert!(wait_for_port(ports[1], Duration::from_millis(200)).is_err());
}

#[test]
fn test_ca_issues_a_chain_for_localhost() {
    let Some(venv) = require_peers("test_ca_issues_a_chain_for_localhost") else {
        return;
    };
    let tmp = TempDir::new("ca").expect("tmp");
    let ca = TestCa::create(&venv, &tmp.path().join("ca")).expect("ca");
    let leaf = ca
        .issue(&tmp.path().join("leaf"), &["localhost"])
        .expect("leaf");
    let chain = std::fs::read_to_string(&leaf.cert_pem).expect("read cert");
    let ca_pem = std::fs::read_to_string(ca.ca_pem()).expect("read ca");
    assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    assert!(chain.ends_with(&ca_pem), "chain = leaf then CA");
    let key = std::fs::read_to_string(&leaf.key_pem).expect("read key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    // Verify with an independent TLS stack: Python's ssl (OpenSSL) must accept the chain for
    // "localhost" against the CA alone.
    let check = "import ssl,sys\n\
        c=ssl.create_default_context(cafile=sys.argv[1])\n\
        s=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); s.load_cert_chain(sys.argv[2], sys.argv[3])\n\
        a,b=ssl.MemoryBIO(),ssl.MemoryBIO(); x,y=ssl.MemoryBIO(),ssl.MemoryBIO()\n\
        cl=c.wrap_bio(a,b,server_hostname=sys.argv[4]); sv=s.wrap_bio(x,y,server_side=True)\n\
        for _ in range(10):\n\
        \x20   for o in (cl,sv):\n\
        \x20       try: o.do_handshake()\n\
        \x20       except ssl.SSLWantReadError: pass\n\
        \x20   x.write(b.read()); a.write(y.read())\n\
        print(cl.version())\n";
    let run = |host: &str| {
        venv.command()
            .args(["-c", check])
            .arg(ca.ca_pem())
            .arg(&leaf.cert_pem)
            .arg(&leaf.key_pem)
            .arg(host)
            .output()
            .expect("python")
    };
    let good = run("localhost");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).starts_with("TLS"));
    let bad = run("example.org");
    assert!(
        !bad.status.success(),
        "a name not in the certificate must fail"
    );
}
