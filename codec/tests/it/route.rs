//! route tests: the generated table is fresh and covers the spec, every route round-trips,
//! version variants, literal fallback, byte budgets, malformed input.
use core::fmt::Write as _;
use lowband_codec::route::{
    self, by_name, decode_target, decode_target_with, encode_target, encode_target_with, expand,
    lookup, routes, Api, Error, Method, RouteId, VERSIONS,
};
use proptest::prelude::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
const TABLE_RS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/route/table.rs");

fn tsv(name: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(format!("{DATA}/{name}")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn api_variant(api: &str) -> &'static str {
    match api {
        "client-server" => "ClientServer",
        "server-server" => "ServerServer",
        "application-service" => "ApplicationService",
        "identity" => "Identity",
        "push-gateway" => "PushGateway",
        other => panic!("unknown api {other}"),
    }
}

fn method_variant(m: &str) -> &'static str {
    match m {
        "GET" => "Get",
        "PUT" => "Put",
        "POST" => "Post",
        "DELETE" => "Delete",
        "HEAD" => "Head",
        "OPTIONS" => "Options",
        "PATCH" => "Patch",
        other => panic!("unknown method {other}"),
    }
}

/// Generates `src/route/table.rs` from the data files.
fn generate() -> String {
    let routes_text = std::fs::read_to_string(format!("{DATA}/routes.tsv")).unwrap();
    let version: u16 = routes_text
        .lines()
        .find_map(|l| l.strip_prefix("#version\t"))
        .expect("#version line")
        .trim()
        .parse()
        .unwrap();
    let keys: Vec<String> = tsv("routes-query-keys.tsv")
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r[0], i.to_string(), "query keys numbered in order");
            r[1].clone()
        })
        .collect();
    let strings: Vec<String> = tsv("routes-strings.tsv")
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r[0], i.to_string(), "strings numbered in order");
            r[1].clone()
        })
        .collect();
    let rows = tsv("routes.tsv");
    let mut o = String::new();
    o.push_str(
        "//! Route table, generated from `data/routes.tsv`, `data/routes-query-keys.tsv` and\n\
         //! `data/routes-strings.tsv` (Matrix specification, Apache-2.0, see\n\
         //! `data/routes-NOTICE.md`) by `tests/it/route.rs`; regenerate with\n\
         //! `LOWBAND_BLESS=1 cargo test -p lowband-codec --test it route_table_is_fresh`.\n\
         //! Do not edit.\n\
         use super::{Api, Method, Route, RouteId};\n\n\
         /// Version of the route table (routes, query keys, strings, version and prefix lists):\n\
         /// both ends of a link must use the same. Bumped whenever a row is appended.\n",
    );
    writeln!(o, "pub const VERSION: u16 = {version};\n").unwrap();
    writeln!(o, "pub(super) static ROUTES: [Route; {}] = [", rows.len()).unwrap();
    let mut seen: Vec<(String, String)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let [id, api, method, template, name, alt, qk, source] = &r[..] else {
            panic!("routes.tsv row {i}: 8 columns expected")
        };
        assert_eq!(*id, i.to_string(), "route ids are row numbers");
        let key = (method.clone(), template.clone());
        assert!(!seen.contains(&key), "duplicate {method} {template}");
        seen.push(key);
        let segs: Vec<&str> = template.split('/').collect();
        let params = segs.iter().filter(|s| s.starts_with('{')).count();
        assert!(params <= route::MAX_PARAMS);
        let version = if template.starts_with("/_matrix/") {
            segs.get(3)
                .and_then(|s| VERSIONS.iter().position(|v| v == s))
        } else {
            None
        };
        let version = version.map_or("None".to_owned(), |v| format!("Some({v})"));
        let alt: Vec<String> = alt
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| format!("{s:?}"))
            .collect();
        let qk: Vec<String> = qk
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|k| {
                let p = keys
                    .iter()
                    .position(|g| g == k)
                    .unwrap_or_else(|| panic!("key {k}"));
                p.to_string()
            })
            .collect();
        writeln!(
            o,
            "    Route {{ id: RouteId({id}), method: Method::{}, template: {template:?}, name: {name:?}, \
             alt_names: &[{}], api: Api::{}, query_keys: &[{}], params: {params}, segments: {}, \
             version: {version}, source: {source:?} }},",
            method_variant(method),
            alt.join(", "),
            api_variant(api),
            qk.join(", "),
            segs.len(),
        )
        .unwrap();
    }
    o.push_str("];\n\n");
    writeln!(
        o,
        "pub(super) static QUERY_KEYS: [&str; {}] = [",
        keys.len()
    )
    .unwrap();
    for k in &keys {
        writeln!(o, "    {k:?},").unwrap();
    }
    o.push_str("];\n\n");
    writeln!(
        o,
        "pub(super) static STRINGS: [&str; {}] = [",
        strings.len()
    )
    .unwrap();
    for s in &strings {
        writeln!(o, "    {s:?},").unwrap();
    }
    o.push_str("];\n");
    o
}

#[test]
fn route_table_is_fresh() {
    let want = generate();
    let have = std::fs::read_to_string(TABLE_RS).unwrap_or_default();
    if std::env::var_os("LOWBAND_BLESS").is_some() {
        if have != want {
            std::fs::write(TABLE_RS, &want).unwrap();
        }
        return;
    }
    assert!(
        have == want,
        "src/route/table.rs is stale: run with LOWBAND_BLESS=1"
    );
}

#[test]
fn route_numbers_are_stable() {
    // Pinned numbers of the most frequent operations: changing any of them breaks the wire.
    let pinned = [
        (0, Api::ClientServer, "sync"),
        (1, Api::ClientServer, "sendMessage"),
        (2, Api::ClientServer, "getRoomEvents"),
        (3, Api::ClientServer, "setTyping"),
        (4, Api::ClientServer, "postReceipt"),
        (5, Api::ClientServer, "setReadMarker"),
        (7, Api::ClientServer, "setRoomStateWithKey"),
        (10, Api::ClientServer, "login"),
        (11, Api::ClientServer, "createRoom"),
        (12, Api::ClientServer, "joinRoom"),
        (14, Api::ClientServer, "inviteUser"),
        (16, Api::ClientServer, "uploadContent"),
        (18, Api::ClientServer, "getContentAuthed"),
        (23, Api::ClientServer, "uploadKeys"),
        (24, Api::ClientServer, "queryKeys"),
        (28, Api::ServerServer, "sendTransaction"),
        (29, Api::ServerServer, "makeJoin"),
        (30, Api::ServerServer, "sendJoinV2"),
        (52, Api::ApplicationService, "sendTransaction"),
        (56, Api::PushGateway, "notify"),
    ];
    for (id, api, name) in pinned {
        let r = by_name(api, name).unwrap();
        assert_eq!(r.id, RouteId(id), "{name}");
    }
    // Appending rows changes these counts: bump VERSION (data/routes.tsv) and update them.
    let sizes = (
        routes().len(),
        route::query_keys().len(),
        route::strings().len(),
    );
    assert_eq!((route::VERSION, sizes), (1, (246, 63, 91)));
    for (i, r) in routes().iter().enumerate() {
        assert_eq!(usize::from(r.id.0), i);
    }
}

#[test]
fn every_spec_endpoint_has_a_route() {
    let spec = tsv("routes-spec.tsv");
    assert_eq!(spec.iter().filter(|r| r[0] == "client-server").count(), 168);
    assert_eq!(spec.iter().filter(|r| r[0] == "server-server").count(), 36);
    for r in &spec {
        let (api, method, path, op, pp, qp) = (&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]);
        let m = Method::from_name(method).unwrap();
        let route = routes()
            .iter()
            .find(|x| x.method == m && x.template == path.as_str())
            .unwrap_or_else(|| panic!("no route for {method} {path}"));
        assert_eq!(format!("{:?}", route.api), api_variant(api));
        if !op.is_empty() {
            assert!(
                route.name == op || route.alt_names.contains(&op.as_str()),
                "{op}"
            );
        }
        let mut names: Vec<&str> = route.param_names().collect();
        let mut want: Vec<&str> = pp.split(',').filter(|s| !s.is_empty()).collect();
        names.sort_unstable();
        want.sort_unstable();
        assert_eq!(names, want, "{op}");
        for q in qp.split(',').filter(|s| !s.is_empty()) {
            let keys = route::query_keys();
            assert!(
                route.query_keys.iter().any(|&k| keys[usize::from(k)] == q),
                "{op} {q}"
            );
        }
    }
}

/// Encodes `method` + `target`, decodes it back, asserts the exact text; returns the encoding.
fn round_trip(method: &str, target: &str) -> Vec<u8> {
    round_trip_with(&[], method, target)
}

fn round_trip_with(session: &[&str], method: &str, target: &str) -> Vec<u8> {
    let mut enc = vec![0u8; 2 * (method.len() + target.len()) + 16];
    let n = encode_target_with(session, method, target, &mut enc)
        .unwrap_or_else(|e| panic!("encode {method} {target}: {e:?}"));
    enc.truncate(n);
    let mut m = [0u8; 255];
    let mut out = vec![0u8; 8 * target.len() + 64];
    let (dm, len) = decode_target_with(session, &enc, &mut m, &mut out)
        .unwrap_or_else(|e| panic!("decode {target}: {e:?}"));
    let name = match dm {
        Method::Other(n) => core::str::from_utf8(&m[..usize::from(n)])
            .unwrap()
            .to_owned(),
        dm => dm.as_str().unwrap().to_owned(),
    };
    assert_eq!(name, method);
    assert_eq!(core::str::from_utf8(&out[..len]).unwrap(), target);
    enc
}

const SAMPLES: [&str; 8] = [
    "!abc:example.org",
    "%21room%3Aexample.org",
    "m.room.message",
    "txn1",
    "1234",
    "caf%C3%A9",
    "@alice:example.org",
    "caf\u{e9}-\u{1f600}",
];

#[test]
fn every_route_round_trips() {
    let keys = route::query_keys();
    for (i, r) in routes().iter().enumerate() {
        for s in 0..SAMPLES.len() {
            let params: Vec<&str> = (0..usize::from(r.params))
                .map(|p| SAMPLES[(s + p) % SAMPLES.len()])
                .collect();
            let mut path = vec![0u8; 512];
            let n = expand(r.id, &params, &mut path).unwrap();
            let path = core::str::from_utf8(&path[..n]).unwrap().to_owned();
            let m = lookup(r.method.as_str().unwrap(), &path).unwrap();
            assert_eq!(m.params(), &params[..], "{path}");
            // A more specific template may win (query/{queryType} vs query/directory).
            assert!(m.route().params <= r.params, "{path}");
            let mut target = path.clone();
            for (j, &k) in r.query_keys.iter().enumerate() {
                target.push(if j == 0 { '?' } else { '&' });
                target.push_str(keys[usize::from(k)]);
                target.push('=');
                target.push_str(
                    [
                        "30000",
                        "true",
                        "s72594_4483_1934",
                        "b",
                        "%7B%22a%22%3A1%7D",
                    ][(i + j) % 5],
                );
            }
            let enc = round_trip(r.method.as_str().unwrap(), &target);
            assert!(enc.len() < target.len(), "{target}: {} bytes", enc.len());
        }
    }
}

#[test]
fn lookup_finds_params_and_names() {
    let m = lookup(
        "PUT",
        "/_matrix/client/v3/rooms/!abc:example.org/send/m.room.message/txn1",
    )
    .unwrap();
    assert_eq!(m.route().name, "sendMessage");
    assert_eq!(m.params(), &["!abc:example.org", "m.room.message", "txn1"]);
    assert_eq!(m.variant, None);
    // Same path, other method: other route.
    let g = lookup("GET", "/_matrix/client/v3/rooms/!r:x/state/m.room.name/").unwrap();
    let p = lookup("PUT", "/_matrix/client/v3/rooms/!r:x/state/m.room.name/").unwrap();
    assert_eq!(
        (g.route().name, p.route().name),
        ("getRoomStateWithKey", "setRoomStateWithKey")
    );
    assert_eq!(g.params(), &["!r:x", "m.room.name", ""]);
    // A literal segment beats a parameter.
    let d = lookup("GET", "/_matrix/federation/v1/query/directory").unwrap();
    assert_eq!(d.route().name, "queryRoomDirectory");
    let q = lookup("GET", "/_matrix/federation/v1/query/other").unwrap();
    assert_eq!(q.route().name, "queryInfo");
    // The exact version beats a variant.
    let v1 = lookup("PUT", "/_matrix/federation/v1/invite/!r:x/$e").unwrap();
    assert_eq!((v1.route().name, v1.variant), ("sendInviteV1", None));
    assert!(lookup("get", "/_matrix/client/v3/sync").is_none());
    assert!(lookup("GET", "/_matrix/client/v3/sync/").is_none());
    assert!(lookup("GET", "/_matrix/client/v9/sync").is_none());
    let mut out = [0u8; 128];
    let n = m.expand(&mut out).unwrap();
    assert_eq!(
        &out[..n],
        b"/_matrix/client/v3/rooms/!abc:example.org/send/m.room.message/txn1"
    );
}

#[test]
fn expand_checks_params() {
    let sync = by_name(Api::ClientServer, "sync").unwrap().id;
    let send = by_name(Api::ClientServer, "sendMessage").unwrap().id;
    let mut out = [0u8; 128];
    assert_eq!(expand(sync, &["x"], &mut out), Err(Error::ParamCount));
    assert_eq!(
        expand(send, &["a/b", "t", "x"], &mut out),
        Err(Error::BadParam)
    );
    assert_eq!(
        expand(send, &["a?b", "t", "x"], &mut out),
        Err(Error::BadParam)
    );
    assert_eq!(
        expand(RouteId(9999), &[], &mut out),
        Err(Error::UnknownRoute)
    );
    assert_eq!(
        expand(send, &["!a:b", "t", "x"], &mut out[..10]),
        Err(Error::BufferTooSmall)
    );
}

#[test]
fn byte_budgets() {
    let sync = round_trip(
        "GET",
        "/_matrix/client/v3/sync?since=s72594_4483_1934&timeout=30000",
    );
    println!("sync target: {} bytes {:02x?}", sync.len(), sync);
    assert!(sync.len() <= 22, "sync: {} bytes", sync.len());
    let send = round_trip(
        "PUT",
        "/_matrix/client/v3/rooms/!abc:example.org/send/m.room.message/txn1",
    );
    println!("send target: {} bytes {:02x?}", send.len(), send);
    assert!(send.len() <= 40, "send: {} bytes", send.len());
    // Route number in one byte: the head is a single LEB128 byte.
    assert!(sync[0] < 0x80 && send[0] < 0x80);
    assert_eq!(round_trip("GET", "/_matrix/client/v3/sync").len(), 1);
    // Percent-encoded room id: carried decoded, one byte more than raw.
    let enc = round_trip(
        "PUT",
        "/_matrix/client/v3/rooms/%21abc%3Aexample.org/send/m.room.message/txn1",
    );
    assert_eq!(enc.len(), send.len());
    // Federation send and its transaction id.
    let fed = round_trip("PUT", "/_matrix/federation/v1/send/1718000000000");
    println!("federation send: {} bytes", fed.len());
    assert!(fed.len() <= 9);
}

#[test]
fn version_variants() {
    let v3 = round_trip("GET", "/_matrix/client/v3/sync?timeout=0");
    let r0 = round_trip("GET", "/_matrix/client/r0/sync?timeout=0");
    assert_eq!(r0.len(), v3.len() + 1, "a variant costs one byte");
    let m = lookup("GET", "/_matrix/client/r0/sync").unwrap();
    assert_eq!((m.route().name, m.variant), ("sync", Some(0)));
    round_trip("PUT", "/_matrix/client/r0/rooms/!a:b/send/m.room.message/1");
    round_trip("GET", "/_matrix/client/unstable/room_keys/version");
    round_trip("GET", "/_matrix/media/r0/download/example.org/abcDEF");
    round_trip("GET", "/_matrix/media/v1/download/example.org/abcDEF");
    round_trip(
        "GET",
        "/_matrix/client/v1/media/download/example.org/abcDEF?timeout_ms=20000",
    );
    round_trip(
        "GET",
        "/_matrix/media/v3/thumbnail/example.org/abc?width=64&height=64&method=crop",
    );
    let m = lookup("PUT", "/_matrix/federation/v1/send_join/!r:x/$e").unwrap();
    assert_eq!((m.route().name, m.variant), ("sendJoinV2", Some(1)));
    round_trip(
        "PUT",
        "/_matrix/federation/v1/send_join/!r:x/$e?omit_members=true",
    );
    // Legacy application-service paths are routes of their own.
    let m = lookup("PUT", "/transactions/42").unwrap();
    assert_eq!(m.route().name, "sendTransactionLegacy");
    round_trip("PUT", "/transactions/42");
}

#[test]
fn unknown_paths_and_methods_fall_back_to_literal() {
    let msc = "/_matrix/client/unstable/org.matrix.msc4108/rendezvous";
    assert!(lookup("POST", msc).is_none());
    let enc = round_trip("POST", msc);
    assert_eq!(enc[0], 0, "literal marker");
    assert!(
        enc.len() <= 2 + 1 + "msc4108/rendezvous".len(),
        "{} bytes",
        enc.len()
    );
    round_trip("GET", "/_synapse/admin/v1/users/@a:b/joined_rooms?limit=10");
    round_trip("GET", "/some/where/else");
    round_trip("GET", "");
    round_trip("OPTIONS", "*");
    // Unknown method: its text rides along.
    let enc = round_trip("PROPFIND", "/_matrix/client/v3/sync?since=x");
    assert_eq!(enc[0], 0);
    round_trip("get", "/_matrix/client/v3/sync");
    // Known path with a method it does not have.
    round_trip("DELETE", "/_matrix/client/v3/sync");
    let mut out = [0u8; 64];
    assert_eq!(encode_target("", "/x", &mut out), Err(Error::BadMethod));
    let long = "X".repeat(256);
    assert_eq!(encode_target(&long, "/x", &mut out), Err(Error::BadMethod));
    // method_out too small for the method text.
    let n = encode_target("PROPFIND", "/x", &mut out).unwrap();
    let (mut m, mut o) = ([0u8; 4], [0u8; 64]);
    assert_eq!(
        decode_target(&out[..n], &mut m, &mut o),
        Err(Error::BufferTooSmall)
    );
}

#[test]
fn query_edge_cases() {
    for t in [
        "/_matrix/client/v3/sync?",
        "/_matrix/client/v3/sync?&",
        "/_matrix/client/v3/sync?full_state",
        "/_matrix/client/v3/sync?full_state=",
        "/_matrix/client/v3/sync?a=b=c&&=x&since=1&since=2",
        "/_matrix/client/v3/sync?access_token=syt_YWxpY2U_abcdefghijklmnop_123456&timeout=0",
        "/_matrix/client/v3/sync?timeout=-1&limit=007&x=18446744073709551615&y=18446744073709551616",
        "/_matrix/client/v3/sync?filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A10%7D%7D%7D",
        "/_matrix/client/v3/sync?filter={\"room\":1}&set_presence=offline",
        "/_matrix/client/v3/sync?since=s1_2_3%2B&q=a+b&r=%7e&s=%",
    ] {
        round_trip("GET", t);
    }
    // access_token is just a key: its value is carried whole.
    let t = "/_matrix/client/v3/sync?access_token=secret123";
    let enc = round_trip("GET", t);
    assert!(enc.windows(6).any(|w| w == b"secret"));
}

#[test]
fn long_queries_and_params() {
    let value = "v".repeat(300);
    let t = format!(
        "/_matrix/client/v3/sync?since={value}&filter={}",
        "%22".repeat(100)
    );
    let enc = round_trip("GET", &t);
    assert!(enc.len() < t.len());
    let t = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/1",
        "r".repeat(70000)
    );
    round_trip("PUT", &t);
    let key = "k".repeat(400);
    round_trip("GET", &format!("/_matrix/client/v3/sync?{key}={key}"));
}

#[test]
fn unicode_params() {
    round_trip(
        "GET",
        "/_matrix/client/v3/directory/room/#caf\u{e9}:example.org",
    );
    round_trip(
        "GET",
        "/_matrix/client/v3/directory/room/%23caf%C3%A9%3Aexample.org",
    );
    round_trip(
        "GET",
        "/_matrix/client/v3/profile/@\u{1f600}:example.org/displayname",
    );
    round_trip(
        "GET",
        "/_matrix/client/v3/sync?since=\u{1f600}&x=\u{e9}=\u{e9}",
    );
    // Percent-encoded non-UTF-8 bytes are fine too.
    round_trip("GET", "/_matrix/client/v3/directory/room/%FF%FE");
    let enc = round_trip(
        "GET",
        "/_matrix/client/v3/directory/room/%23caf%C3%A9%3Aexample.org",
    );
    assert!(enc.len() <= 1 + 1 + "#café:example.org".len());
}

#[test]
fn malformed_bytes_are_errors() {
    let (mut m, mut out) = ([0u8; 16], [0u8; 256]);
    let mut dec = |b: &[u8]| decode_target(b, &mut m, &mut out).map(|(_, n)| n);
    assert_eq!(dec(&[]), Err(Error::Truncated));
    assert_eq!(dec(&[0x80]), Err(Error::Truncated));
    assert_eq!(dec(&[8 + 200, 0x7f]), Err(Error::UnknownRoute));
    // sendMessage with one of three params.
    assert_eq!(dec(&[9, 0x61, b'a']), Err(Error::Truncated));
    // Non-minimal varint head for sync.
    assert_eq!(dec(&[0x88, 0x00]), Err(Error::NonCanonical));
    // Variant equal to the template's own version.
    assert_eq!(dec(&[4, 0]), Err(Error::NonCanonical));
    // Variant on a route without a version segment (getWellknown is unversioned).
    let wk = by_name(Api::ClientServer, "getWellknown").unwrap().id.0;
    assert_eq!(dec(&[1, wk as u8]), Err(Error::BadVersion));
    assert!(dec(&[8 + wk as u8]).is_ok());
    // Reserved variant marker.
    assert_eq!(dec(&[7, 0]), Err(Error::BadHeader));
    // "txn1" as text where... fine; text "5" where an integer is the form.
    assert_eq!(
        dec(&[9, 0x61, b'r', 0xc0, 0x61, b'5']),
        Err(Error::NonCanonical)
    );
    assert_eq!(dec(&[9, 0x61, b'r', 0xc0, 0x05]), Ok(48));
    // Invalid UTF-8 text.
    assert_eq!(dec(&[9, 0x61, 0xff, 0xc0, 0x05]), Err(Error::BadText));
    // Null as a path parameter.
    assert_eq!(dec(&[9, 0xf6, 0xc0, 0x05]), Err(Error::BadHeader));
    // Unknown query key number and unknown string number.
    assert_eq!(dec(&[8, 0x18, 0xff, 0x05]), Err(Error::BadHeader));
    assert_eq!(dec(&[9, 0xd8, 0xff, 0xc0, 0x05]), Err(Error::BadHeader));
    // Output too small.
    let mut small = [0u8; 4];
    assert_eq!(
        decode_target(&[8], &mut m, &mut small),
        Err(Error::BufferTooSmall)
    );
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let (mut m, mut out) = ([0u8; 255], [0u8; 2048]);
        if let Ok((dm, n)) = decode_target(&bytes, &mut m, &mut out) {
            // Whatever decodes re-encodes to exactly the same bytes.
            let name = match dm {
                Method::Other(k) => core::str::from_utf8(&m[..usize::from(k)]).unwrap().to_owned(),
                dm => dm.as_str().unwrap().to_owned(),
            };
            let text = core::str::from_utf8(&out[..n]).unwrap().to_owned();
            let mut enc = vec![0u8; 2 * (name.len() + text.len()) + 16];
            let k = encode_target(&name, &text, &mut enc).unwrap();
            prop_assert_eq!(&enc[..k], &bytes[..]);
        }
    }

    #[test]
    fn plausible_prefixes_never_panic(id in 0u8..120, tail in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut bytes = vec![8 + id];
        bytes.extend_from_slice(&tail);
        let (mut m, mut out) = ([0u8; 255], [0u8; 4096]);
        let _ = decode_target(&bytes, &mut m, &mut out);
    }

    #[test]
    fn arbitrary_targets_round_trip(
        route in 0usize..246,
        params in proptest::collection::vec("[a-zA-Z0-9%!:@._~=&$#+ \u{e9}-]{0,12}", 4),
        query in "[a-z0-9%=&_A-F.+-]{0,40}",
    ) {
        let r = &routes()[route];
        let params: Vec<String> = params.into_iter().take(usize::from(r.params)).collect();
        let refs: Vec<&str> = params.iter().map(String::as_str).collect();
        let mut path = vec![0u8; 512];
        let n = expand(r.id, &refs, &mut path).unwrap();
        let mut target = core::str::from_utf8(&path[..n]).unwrap().to_owned();
        if !query.is_empty() {
            target.push('?');
            target.push_str(&query);
        }
        round_trip(r.method.as_str().unwrap(), &target);
    }

    #[test]
    fn arbitrary_literals_round_trip(method in "[A-Z]{1,8}", pq in "\\PC{0,60}") {
        round_trip(&method, &pq);
    }
}

/// Typical request lines of a client and a server, with their encoded sizes.
const TYPICAL: [(&str, &str); 16] = [
    ("GET", "/_matrix/client/v3/sync?since=s72594_4483_1934&timeout=30000"),
    ("GET", "/_matrix/client/v3/sync?filter=0&since=s72594_4483_1934_6_15_1_1_2_17_1&timeout=30000&set_presence=online"),
    ("PUT", "/_matrix/client/v3/rooms/!abc:example.org/send/m.room.message/txn1"),
    ("PUT", "/_matrix/client/v3/rooms/%21abcDEFghiJKL%3Aexample.org/send/m.room.encrypted/m1718000000000.0"),
    ("PUT", "/_matrix/client/v3/rooms/!abc:example.org/typing/@alice:example.org"),
    ("POST", "/_matrix/client/v3/rooms/!abc:example.org/receipt/m.read/$ev1:example.org"),
    ("POST", "/_matrix/client/v3/rooms/!abc:example.org/read_markers"),
    ("GET", "/_matrix/client/v3/rooms/!abc:example.org/messages?from=t47-72594_4483_1934&dir=b&limit=20"),
    ("POST", "/_matrix/client/v3/login"),
    ("POST", "/_matrix/client/v3/join/%23room%3Aexample.org?via=example.org"),
    ("POST", "/_matrix/media/v3/upload?filename=cat.png"),
    ("GET", "/_matrix/client/v1/media/download/example.org/AbCdEfGhIjKlMnOp"),
    ("POST", "/_matrix/client/v3/keys/query"),
    ("PUT", "/_matrix/federation/v1/send/1718000000000"),
    ("GET", "/_matrix/federation/v1/make_join/!abc:example.org/@alice:example.org?ver=10&ver=11"),
    ("GET", "/_matrix/client/r0/sync?since=s72594_4483_1934&timeout=30000"),
];

#[test]
fn typical_request_figures() {
    let (mut text_total, mut enc_total) = (0, 0);
    for (m, t) in TYPICAL {
        let enc = round_trip(m, t);
        let text = m.len() + 1 + t.len();
        println!("{:>4} -> {:>3} bytes  {m} {t}", text, enc.len());
        text_total += text;
        enc_total += enc.len();
        assert!(enc.len() < text, "{t}: {} bytes", enc.len());
    }
    println!("total: {text_total} bytes of request lines -> {enc_total} bytes");
    assert!(enc_total * 5 < text_total * 2);
}

#[test]
fn session_strings_shrink_identifiers() {
    let session = ["example.org", "@alice:example.org", "!abc:example.org"];
    let mut total = (0, 0);
    for (m, t) in TYPICAL {
        let plain = round_trip(m, t);
        let with = round_trip_with(&session, m, t);
        println!("{:>3} -> {:>3} bytes  {m} {t}", plain.len(), with.len());
        assert!(with.len() <= plain.len());
        total = (total.0 + plain.len(), total.1 + with.len());
    }
    println!(
        "total: {} -> {} bytes with a 3-string session",
        total.0, total.1
    );
    let typing = round_trip_with(
        &session,
        "PUT",
        "/_matrix/client/v3/rooms/!abc:example.org/typing/@alice:example.org",
    );
    assert_eq!(typing, [0x0b, 0xe2, 0xe1]);
    // Another user on the same server: prefix + server suffix.
    let send = round_trip_with(
        &session,
        "PUT",
        "/_matrix/client/v3/rooms/!xyz:example.org/send/m.room.message/txn1",
    );
    assert_eq!(send.len(), 1 + 2 + 1 + 5 + 1 + 5);
    // The session must match: another list decodes to other text or fails.
    let mut out = [0u8; 256];
    let mut m = [0u8; 8];
    let r = decode_target_with(&["x.org"], &typing, &mut m, &mut out);
    assert_eq!(r, Err(Error::BadHeader));
    let many = ["a"; 21];
    assert_eq!(
        encode_target_with(&many, "GET", "/", &mut out),
        Err(Error::Session)
    );
    assert_eq!(
        decode_target_with(&many, &[8], &mut m, &mut out),
        Err(Error::Session)
    );
}

proptest! {
    #[test]
    fn session_round_trips(
        session in proptest::collection::vec("[a-z.:!@]{0,6}", 0..5),
        pq in "/_matrix/client/v3/rooms/[a-z.:!@%0-9]{0,12}/send/[a-z.:!@]{0,8}/[a-z.:!@0-9]{0,8}(\\?[a-z.:!@=&]{0,20})?",
    ) {
        let session: Vec<&str> = session.iter().map(String::as_str).collect();
        round_trip_with(&session, "PUT", &pq);
    }

    #[test]
    fn random_bytes_with_session_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
        let session = ["example.org", "@alice:example.org"];
        let (mut m, mut out) = ([0u8; 255], [0u8; 2048]);
        if let Ok((dm, n)) = decode_target_with(&session, &bytes, &mut m, &mut out) {
            let name = match dm {
                Method::Other(k) => core::str::from_utf8(&m[..usize::from(k)]).unwrap().to_owned(),
                dm => dm.as_str().unwrap().to_owned(),
            };
            let text = core::str::from_utf8(&out[..n]).unwrap().to_owned();
            let mut enc = vec![0u8; 2 * (name.len() + text.len()) + 16];
            let k = encode_target_with(&session, &name, &text, &mut enc).unwrap();
            prop_assert_eq!(&enc[..k], &bytes[..]);
        }
    }
}

/// Encode + decode time of the typical targets (`cargo test --release -- --ignored route_timing`).
#[test]
#[ignore]
fn route_timing() {
    let mut enc = [0u8; 256];
    let (mut m, mut out) = ([0u8; 16], [0u8; 256]);
    let rounds = 2000;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        for (method, t) in TYPICAL {
            let n = encode_target(method, t, &mut enc).unwrap();
            decode_target(&enc[..n], &mut m, &mut out).unwrap();
        }
    }
    let per = start.elapsed() / (rounds * TYPICAL.len() as u32);
    println!("encode+decode: {per:?} per target");
}
