//! The Runner against an in-process gateway: the codec's session server answering Matrix
//! requests the way `lowband serve` maps them (lb options, packed bodies, block-wise bodies),
//! over the serial framing, in virtual time.

extern crate alloc;

use alloc::collections::VecDeque;

use lowband_codec::coap::{
    self, BlockOpt, Code, Opt, Options, Received, Request, TransmissionParams,
};
use lowband_codec::lb::dev::{self, Op};
use lowband_codec::lb::{opt, Auth};
use lowband_codec::noise::link::{
    InitiatorConfig, LinkPattern, LinkVersion, ResponderConfig, RetransmitConfig, TransportConfig,
};
use lowband_codec::noise::Keypair;
use lowband_codec::session::{DeviceClient, Server};
use lowband_codec::{frame, pack, route};
use lowband_device::runner::{
    Runner, RunnerConfig, SerialLink, INFLATE_DICT_LEN, PUSH_REFRESH_MS, RUNNER_SIZE,
};
use lowband_device::{DefaultSyncState, EphemeralRng};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const ROOM: &str = "!room:example.org";
const TOKEN: &str = "syt_ZGV2aWNl_tokenAbCdEfGhIjKl_0a1b2c";
const VERSION: LinkVersion = LinkVersion {
    protocol: 1,
    dict: 1,
};

/// An in-memory serial line: what the device writes, what the gateway writes.
#[derive(Default)]
struct Wire {
    to_gw: Vec<u8>,
    to_dev: VecDeque<u8>,
}

impl embedded_io::ErrorType for Wire {
    type Error = embedded_io::ErrorKind;
}
impl embedded_io::Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = buf.len().min(self.to_dev.len());
        for b in buf.iter_mut().take(n) {
            *b = self.to_dev.pop_front().unwrap();
        }
        Ok(n)
    }
}
impl embedded_io::ReadReady for Wire {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(!self.to_dev.is_empty())
    }
}
impl embedded_io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.to_gw.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// One request as the gateway decoded it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    auth: Option<Vec<u8>>,
    json: Option<String>,
    /// Framed bytes of the request on the line.
    wire_bytes: usize,
}

/// The gateway end: session server, Matrix answers, framed bytes counted.
struct Gateway {
    server: Server<u8, 2, 3, 64, 1, 1400>,
    keys: Keypair,
    allowed: [lowband_codec::noise::PublicKey; 1],
    rng: ChaCha20Rng,
    deframer: frame::Deframer<1400>,
    seen: Vec<Seen>,
    /// Sync bodies to answer with, in order (JSON); an empty sync after they run out.
    syncs: VecDeque<String>,
    /// Messages the homeserver stored: (txn, body); a txn seen again is not stored again.
    room: Vec<(String, String)>,
    /// Framed bytes the gateway sent.
    sent_bytes: usize,
    /// Bytes of the last response frame.
    last_response_bytes: usize,
    next_batch: u32,
    /// Bodies kept for block-wise fetching.
    kept: Vec<(u32, Vec<u8>)>,
    /// Session aliases the device defined (slot = index).
    aliases: Vec<String>,
    /// Pushed-sync registrations (device profile): the DEVICE option's operation, the AUTH
    /// option, framed bytes on the line.
    registrations: Vec<(Vec<u8>, Option<Vec<u8>>, usize)>,
    /// Responses to the gateway's own requests (wakes): code, payload, framed bytes.
    responses: Vec<(Code, Vec<u8>, usize)>,
}

fn coap_cfg(seed: u64) -> coap::Config {
    coap::Config {
        params: TransmissionParams::default(),
        seed,
        token_len: 1,
        extra_options: &[],
    }
}

impl Gateway {
    fn new(device: &Keypair) -> Self {
        let keys = Keypair::from_secret([9; 32]);
        Gateway {
            server: Server::new(coap::Config {
                // The device profile's operation option, as serve's endpoint knows it.
                extra_options: &[opt::DEVICE],
                ..coap_cfg(7)
            }),
            keys,
            allowed: [device.public()],
            rng: ChaCha20Rng::seed_from_u64(3),
            deframer: frame::Deframer::for_packets(),
            seen: Vec::new(),
            syncs: VecDeque::new(),
            room: Vec::new(),
            sent_bytes: 0,
            last_response_bytes: 0,
            next_batch: 1,
            kept: Vec::new(),
            aliases: Vec::new(),
            registrations: Vec::new(),
            responses: Vec::new(),
        }
    }

    /// Sends a request of its own to the device (`serve` restarted: a wake); the framed
    /// bytes it takes on the line are counted in `sent_bytes`.
    fn request(&mut self, now: u64, code: Code, opts: &[Opt<'_>], payload: &[u8]) {
        let s = self.server.session(0).unwrap();
        s.coap()
            .request(now, Request::con(code, Options::List(opts), payload))
            .unwrap();
    }

    /// Takes what the device wrote, answers, writes the answers back.
    fn step(&mut self, now: u64, wire: &mut Wire) {
        let input = core::mem::take(&mut wire.to_gw);
        let mut frame_start = 0;
        let mut rest = &input[..];
        while !rest.is_empty() {
            let used = self.deframer.handle_bytes(rest);
            let consumed_to = input.len() - rest.len() + used;
            rest = &rest[used..];
            let Some(Ok(p)) = self.deframer.poll_frame() else {
                continue;
            };
            // serve's fragmentation layer: a lone packet starting >= 0xC0 is escaped by 0xC1.
            let p = p.strip_prefix(&[frame::frag::SINGLE]).unwrap_or(p);
            let packet = p.to_vec();
            let wire_bytes = consumed_to - frame_start;
            frame_start = consumed_to;
            self.handle(now, &packet, wire_bytes);
        }
        let mut out = vec![0u8; 1500];
        let mut framed = vec![0u8; 3100];
        while let Some((_, n)) = self.server.poll_transmit(now, &mut out) {
            let mut pkt = Vec::with_capacity(n + 1);
            if out[0] >= 0xC0 {
                pkt.push(frame::frag::SINGLE);
            }
            pkt.extend_from_slice(&out[..n]);
            let m = frame::encode_packet(&pkt, false, &mut framed).unwrap();
            self.sent_bytes += m;
            self.last_response_bytes = m;
            wire.to_dev.extend(&framed[..m]);
        }
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
    }

    fn handle(&mut self, now: u64, packet: &[u8], wire_bytes: usize) {
        let versions = [VERSION];
        let cfg = ResponderConfig {
            local: &self.keys,
            versions: &versions,
            known_versions: &[],
            allowed: &self.allowed,
            accept_ik: true,
            accept_kk: false,
            transport: TransportConfig::default(),
        };
        let mut scratch = vec![0u8; 1500];
        let got = self
            .server
            .handle_packet(now, &cfg, &mut self.rng, 0, packet, &mut scratch);
        if let Some((_, Some(Received::Response(r)))) = &got {
            self.responses
                .push((r.code, r.payload.to_vec(), wire_bytes));
            return;
        }
        let Some((i, Some(Received::Request(req)))) = got else {
            if std::env::var_os("RUNNER_DEBUG").is_some() {
                let what = format!("{:?}", got.map(|g| g.0));
                let drop = self.server.poll_drop();
                let st = self.server.session(0).map(|s| s.stats());
                eprintln!(
                    "gw: {now} packet {} -> {what} drop {drop:?} {st:?}",
                    packet.len()
                );
            }
            return;
        };
        let responder = req.responder;
        // A block of a kept body.
        if let Some(id) = req.options.uint(opt::BODY) {
            let want = BlockOpt::from_options(&req.options, opt::BLOCK2).unwrap();
            let body = &self.kept.iter().find(|(k, _)| *k == id).unwrap().1;
            let (b, slice) = coap::block_slice(body, want, 4).unwrap();
            let slice = slice.to_vec();
            let o = [Opt::uint(opt::BLOCK2, b.to_uint())];
            let s = self.server.session(i).unwrap();
            s.coap()
                .respond(now, &responder, Code::CONTENT, Options::List(&o), &slice)
                .unwrap();
            return;
        }
        // A registration for pushed sync (device profile): accepted as an observation.
        if let Some(op) = req.options.first(opt::DEVICE).and_then(|o| o.as_bytes()) {
            let auth = req
                .options
                .first(opt::AUTH)
                .and_then(|o| o.as_bytes())
                .map(<[u8]>::to_vec);
            self.registrations.push((op.to_vec(), auth, wire_bytes));
            let ep = self.server.session(i).unwrap().coap();
            ep.drop_observers(dev::RESOURCE);
            ep.respond_observe(
                now,
                &responder,
                dev::RESOURCE,
                Code::CONTENT,
                Options::NONE,
                &[],
            )
            .unwrap();
            return;
        }
        let target = req.options.first(opt::TARGET).unwrap().as_bytes().unwrap();
        let mut m = [0u8; 16];
        let mut pq = [0u8; 1024];
        for d in req.options.iter().filter(|o| o.number == opt::ALIAS) {
            let d = d.as_bytes().unwrap();
            let i = usize::from(d[0]);
            if self.aliases.len() <= i {
                self.aliases.resize(i + 1, "\0".to_owned());
            }
            self.aliases[i] = String::from_utf8(d[1..].to_vec()).unwrap();
        }
        let session: Vec<&str> = self.aliases.iter().map(String::as_str).collect();
        let (method, n) = route::decode_target_with(&session, target, &mut m, &mut pq).unwrap();
        let path = String::from_utf8(pq[..n].to_vec()).unwrap();
        let method = method.as_str().unwrap().to_owned();
        let auth = req
            .options
            .first(opt::AUTH)
            .and_then(|o| o.as_bytes())
            .map(<[u8]>::to_vec);
        let json = (!req.payload.is_empty())
            .then(|| String::from_utf8(pack::unpack_vec(req.payload).unwrap()).unwrap());
        self.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            auth,
            json: json.clone(),
            wire_bytes,
        });
        let reply: String = if path.contains("/send/m.room.message/") {
            let txn = path.rsplit('/').next().unwrap().to_owned();
            let body: serde_json::Value = serde_json::from_str(json.as_deref().unwrap()).unwrap();
            if !self.room.iter().any(|(t, _)| *t == txn) {
                let b = body["body"].as_str().unwrap().to_owned();
                self.room.push((txn.clone(), b));
            }
            let k = self.room.iter().position(|(t, _)| *t == txn).unwrap();
            format!(r#"{{"event_id":"$ev{k}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}"#)
        } else if path.contains("/join/") {
            format!(r#"{{"room_id":"{ROOM}"}}"#)
        } else if path.contains("/sync") {
            let s = self.syncs.pop_front().unwrap_or_else(|| {
                r#"{"next_batch":"NB","device_one_time_keys_count":{"signed_curve25519":0}}"#
                    .to_owned()
            });
            let nb = format!("s{}_1", self.next_batch);
            self.next_batch += 1;
            s.replace("NB", &nb)
        } else {
            r#"{"errcode":"M_UNRECOGNIZED"}"#.to_owned()
        };
        let packed = pack::pack_vec(reply.as_bytes()).unwrap();
        let s = self.server.session(i).unwrap();
        if packed.len() <= 64 {
            s.coap()
                .respond(now, &responder, Code::new(2, 0), Options::NONE, &packed)
                .unwrap();
        } else {
            // Block-wise like serve (64-byte blocks here, to exercise reassembly).
            let id = self.kept.len() as u32 + 1;
            let first = BlockOpt::new(0, true, 2);
            let o = [
                Opt::uint(opt::BLOCK2, first.to_uint()),
                Opt::uint(opt::SIZE2, packed.len() as u32),
                Opt::uint(opt::BODY, id),
            ];
            s.coap()
                .respond(
                    now,
                    &responder,
                    Code::new(2, 0),
                    Options::List(&o),
                    &packed[..64],
                )
                .unwrap();
            self.kept.push((id, packed));
        }
    }
}

struct Device {
    runner: Box<Runner<EphemeralRng>>,
    link: SerialLink<Wire>,
}

fn device(keys: &Keypair, gw: &Keypair, state: DefaultSyncState, boot_seed: u8) -> Device {
    let init = InitiatorConfig {
        pattern: LinkPattern::IK,
        version: VERSION,
        local: keys.clone(),
        remote: gw.public(),
        retransmit: RetransmitConfig::for_link_rate(9600, 0),
        transport: TransportConfig::default(),
    };
    let rng = EphemeralRng::with_entropy(&[1; 32], boot_counter(state.boot()), &[boot_seed; 32]);
    let client = DeviceClient::new(init, coap_cfg(u64::from(boot_seed)), rng).unwrap();
    let cfg = RunnerConfig {
        access_token: TOKEN,
        sync_timeout_ms: 0,
        sync_interval_ms: 500,
        filter: "0",
    };
    let mut runner = Box::new(Runner::new(client, state, &cfg).unwrap());
    // This fake gateway speaks the polling profile (HTTP routes, /sync); the pushed device
    // profile is tested against the real `serve` in tests/it/device_e2e.rs.
    runner.set_push(None);
    Device {
        runner,
        link: SerialLink::new(Wire::default()),
    }
}

/// A boot counter value for `boot` (advanced on RAM pages).
fn boot_counter(boot: u32) -> lowband_device::BootCounter {
    let mut pages = lowband_device::AbStore::new(Ram::default());
    lowband_device::BootCounter::advance(&mut pages, boot - 1).unwrap()
}

#[derive(Clone)]
struct Ram(Vec<Vec<u8>>);
impl Default for Ram {
    fn default() -> Self {
        Ram(vec![vec![0xff; 6144]; 2])
    }
}
impl lowband_device::Flash for Ram {
    type Error = ();
    const WRITE_SIZE: usize = 4;
    fn page_len(&self) -> usize {
        6144
    }
    fn read(&mut self, p: lowband_device::Page, off: usize, buf: &mut [u8]) -> Result<(), ()> {
        buf.copy_from_slice(&self.0[p as usize][off..off + buf.len()]);
        Ok(())
    }
    fn erase(&mut self, p: lowband_device::Page) -> Result<(), ()> {
        self.0[p as usize].fill(0xff);
        Ok(())
    }
    fn program(&mut self, p: lowband_device::Page, off: usize, data: &[u8]) -> Result<(), ()> {
        for (d, s) in self.0[p as usize][off..].iter_mut().zip(data) {
            *d &= *s;
        }
        Ok(())
    }
}

/// Runs both ends for `ms` of virtual time in 5 ms steps, or until `done`.
fn run(
    dev: &mut Device,
    gw: &mut Gateway,
    now: &mut u64,
    ms: u64,
    mut done: impl FnMut(&mut Device, &Gateway) -> bool,
) -> bool {
    let mut inflate = vec![0u8; INFLATE_DICT_LEN + 4096];
    let end = *now + ms;
    while *now < end {
        dev.runner
            .poll(*now, &mut dev.link, &mut inflate)
            .expect("link");
        gw.step(*now, dev.link.io_mut());
        if done(dev, gw) {
            return true;
        }
        *now += 5;
    }
    false
}

fn sync_with(events: &str) -> String {
    format!(
        r#"{{"next_batch":"NB","rooms":{{"join":{{"{ROOM}":{{"timeline":{{"events":[{events}],"limited":false}},"unread_notifications":{{"highlight_count":0,"notification_count":1}}}}}}}}}}"#
    )
}

fn message(id: &str, sender: &str, body: &str, txn: Option<&str>) -> String {
    let unsigned = txn.map_or(String::new(), |t| {
        format!(r#","unsigned":{{"transaction_id":"{t}"}}"#)
    });
    format!(
        r#"{{"type":"m.room.message","sender":"{sender}","content":{{"msgtype":"m.text","body":"{body}"}},"event_id":"{id}","origin_server_ts":1700000000000{unsigned}}}"#
    )
}

#[test]
fn runner_joins_posts_syncs_and_survives_a_reboot() {
    eprintln!("size_of::<Runner<EphemeralRng>>() = {RUNNER_SIZE}");
    let dev_keys = Keypair::from_secret([5; 32]);
    let mut gw = Gateway::new(&dev_keys);
    let gw_keys = Keypair::from_secret([9; 32]);
    let mut state = DefaultSyncState::new(0);
    state.begin_boot(1).unwrap();
    let join = state.join(ROOM).unwrap();
    let post = state.send_text(ROOM, "t=21.5C").unwrap();
    let mut dev = device(&dev_keys, &gw_keys, state, 1);
    let mut now = 0;

    // Join and post go out; the homeserver stores the message once.
    assert!(run(&mut dev, &mut gw, &mut now, 20_000, |d, _| d
        .runner
        .state()
        .next_outgoing()
        .is_none()));
    let s = dev.runner.stats();
    assert_eq!((s.sent, s.refused), (2, 0), "{s:?}");
    let join_req = gw.seen.iter().find(|r| r.path.contains("/join/")).unwrap();
    assert_eq!(join_req.method, "POST");
    assert_eq!(join_req.path, format!("/_matrix/client/v3/join/{ROOM}"));
    assert_eq!(join_req.json.as_deref(), Some("{}"));
    let send_req = gw.seen.iter().find(|r| r.path.contains("/send/")).unwrap();
    assert_eq!(send_req.method, "PUT");
    assert_eq!(
        send_req.path,
        format!("/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/{post}")
    );
    assert_eq!(
        send_req.json.as_deref(),
        Some(r#"{"msgtype":"m.text","body":"t=21.5C"}"#)
    );
    assert_eq!(
        (join.to_string(), post.to_string()),
        ("d1.0".into(), "d1.1".into())
    );
    assert_eq!(gw.room, vec![(post.to_string(), "t=21.5C".to_owned())]);
    // The token is registered with the first request, then referred to by number.
    let mut reg = [0u8; 64];
    let n = Auth::Register(0, TOKEN).write(&mut reg).unwrap();
    assert_eq!(gw.seen[0].auth.as_deref(), Some(&reg[..n]));
    assert!(
        gw.seen
            .iter()
            .skip(2)
            .all(|r| r.auth.as_deref() == Some(&[0][..])),
        "{:?}",
        gw.seen.iter().map(|r| &r.auth).collect::<Vec<_>>()
    );
    // Syncs ask with the filter and the since token of the last batch.
    let syncs: Vec<_> = gw
        .seen
        .iter()
        .filter(|r| r.path.contains("/sync"))
        .collect();
    assert!(!syncs.is_empty());
    assert_eq!(syncs[0].path, "/_matrix/client/v3/sync?filter=0");
    // The room id was defined as alias 0 with the first request naming it, then one byte.
    assert_eq!(gw.aliases, [ROOM]);

    // A command from Alice arrives (a body bigger than one block: reassembled), with the echo of
    // our own message: the echo is recognised, the command is the one new event.
    let ours = message(
        "$ev0AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "@dev:example.org",
        "t=21.5C",
        Some(&post.to_string()),
    );
    let cmd = message(
        "$cmdAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "@alice:example.org",
        "!status",
        None,
    );
    gw.syncs.push_back(sync_with(&format!("{ours},{cmd}")));
    let before = dev.runner.stats().syncs;
    assert!(run(&mut dev, &mut gw, &mut now, 20_000, |d, _| d
        .runner
        .stats()
        .syncs
        > before + 1));
    let mut bodies = Vec::new();
    while let Some((room, ev)) = dev.runner.state_mut().next_event() {
        assert_eq!(room.id(), ROOM);
        bodies.push((ev.sender().to_owned(), ev.body().unwrap_or("").to_owned()));
    }
    assert!(
        bodies.contains(&("@alice:example.org".to_owned(), "!status".to_owned())),
        "{bodies:?}"
    );
    assert!(gw.kept.iter().any(|(_, b)| b.len() > 64), "went block-wise");

    // Reboot with an unsent reply in the outbox: saved, restored, sent exactly once with the
    // same transaction id; a resend of the already-stored post is deduplicated.
    let reply = dev.runner.state_mut().send_text(ROOM, "boot 1 ok").unwrap();
    let mut pages = lowband_device::AbStore::new(Ram::default());
    dev.runner.state().save_to(&mut pages).unwrap();
    let mut scratch = vec![0u8; lowband_device::DEFAULT_RECORD_MAX];
    let mut restored = DefaultSyncState::load_from(&mut pages, &mut scratch)
        .unwrap()
        .unwrap();
    let since_before = restored.since().map(str::to_owned);
    restored.begin_boot(2).unwrap();
    let mut dev = device(&dev_keys, &gw_keys, restored, 2);
    // The gateway forgot the session (as after a restart of the device: a new handshake).
    let mut gw2 = Gateway::new(&dev_keys);
    gw2.room = gw.room.clone();
    gw2.next_batch = gw.next_batch;
    assert!(run(&mut dev, &mut gw2, &mut now, 20_000, |d, _| d
        .runner
        .state()
        .next_outgoing()
        .is_none()));
    let sends: Vec<_> = gw2
        .seen
        .iter()
        .filter(|r| r.path.contains("/send/"))
        .collect();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert!(sends[0].path.ends_with(&format!("/{reply}")));
    assert_eq!(
        gw2.room.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        ["t=21.5C", "boot 1 ok"]
    );
    // The first sync after the reboot continues from the saved since token.
    assert!(run(&mut dev, &mut gw2, &mut now, 5_000, |_, g| g
        .seen
        .iter()
        .any(|r| r.path.contains("/sync"))));
    let first_sync = gw2.seen.iter().find(|r| r.path.contains("/sync")).unwrap();
    assert!(
        first_sync
            .path
            .ends_with(&format!("?filter=0&since={}", since_before.unwrap())),
        "{}",
        first_sync.path
    );
}

#[test]
fn link_bytes_of_a_post_and_of_syncs() {
    let dev_keys = Keypair::from_secret([5; 32]);
    let gw_keys = Keypair::from_secret([9; 32]);
    let mut gw = Gateway::new(&dev_keys);
    let mut state = DefaultSyncState::new(0);
    state.begin_boot(1).unwrap();
    let mut dev = device(&dev_keys, &gw_keys, state, 1);
    let mut now = 0;
    // Settle: handshake, token registered, first (initial) sync done.
    assert!(run(&mut dev, &mut gw, &mut now, 20_000, |d, _| d
        .runner
        .stats()
        .syncs
        >= 2));
    // An empty sync: request + response on the line.
    let n0 = gw.seen.len();
    let s0 = dev.runner.stats().syncs;
    let sent0 = gw.sent_bytes;
    assert!(run(&mut dev, &mut gw, &mut now, 5_000, |d, _| d
        .runner
        .stats()
        .syncs
        > s0));
    let req = gw.seen[n0].wire_bytes;
    let empty = req + (gw.sent_bytes - sent0);
    eprintln!(
        "empty sync: {req} B request + {} B response = {empty} B",
        gw.sent_bytes - sent0
    );

    // A post: request + acknowledgement (piggy-backed response).
    dev.runner.state_mut().send_text(ROOM, "t=21.5C").unwrap();
    let n1 = gw.seen.len();
    let sent1 = gw.sent_bytes;
    assert!(run(&mut dev, &mut gw, &mut now, 5_000, |d, _| d
        .runner
        .stats()
        .sent
        >= 1));
    let post_req = gw
        .seen
        .iter()
        .skip(n1)
        .find(|r| r.path.contains("/send/"))
        .unwrap()
        .wire_bytes;
    let post = post_req + (gw.sent_bytes - sent1);
    eprintln!(
        "post: {post_req} B request + {} B response = {post} B",
        gw.sent_bytes - sent1
    );

    // A sync bringing one command.
    let cmd = message(
        "$cmdAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "@alice:example.org",
        "!status",
        None,
    );
    gw.syncs.push_back(sync_with(&cmd));
    let s2 = dev.runner.stats().syncs;
    let sent2 = gw.sent_bytes;
    let n2 = gw.seen.len();
    let ok = run(&mut dev, &mut gw, &mut now, 5_000, |d, _| {
        d.runner.stats().syncs > s2
    });
    assert!(
        ok,
        "{:?} {:?}",
        dev.runner.stats(),
        gw.seen.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    let up: usize = gw.seen[n2..].iter().map(|r| r.wire_bytes).sum();
    let cmd_sync = up + (gw.sent_bytes - sent2);
    eprintln!(
        "sync with one command: {up} B up + {} B down = {cmd_sync} B",
        gw.sent_bytes - sent2
    );
    // Regression bounds at the figures measured against this test gateway (82, 111, 130 B).
    // The budgets (post <= 64, command sync <= 96, empty sync <= 24) are NOT met yet: the
    // request target and the Noise and CoAP headers alone are over 24 B.
    assert!(empty <= 90, "empty sync {empty}");
    assert!(post <= 120, "post {post}");
    assert!(cmd_sync <= 140, "command sync {cmd_sync}");
}

#[test]
fn a_wake_is_answered_2_04_and_the_device_registers_again_with_its_token() {
    let dev_keys = Keypair::from_secret([5; 32]);
    let gw_keys = Keypair::from_secret([9; 32]);
    let mut gw = Gateway::new(&dev_keys);
    let mut state = DefaultSyncState::new(0);
    state.begin_boot(1).unwrap();
    let mut dev = device(&dev_keys, &gw_keys, state, 1);
    // The device profile: registered for pushed sync at boot, with the token.
    dev.runner.set_push(Some(PUSH_REFRESH_MS));
    let mut now = 0;
    assert!(run(&mut dev, &mut gw, &mut now, 20_000, |d, _| d
        .runner
        .push_registered()));
    let mut auth = [0u8; 64];
    let an = Auth::Register(0, TOKEN).write(&mut auth).unwrap();
    let mut op = [0u8; 11];
    let on = Op::Sync {
        last: 0,
        keep: false,
    }
    .write(&mut op)
    .unwrap();
    assert_eq!(gw.registrations.len(), 1);
    assert_eq!(gw.registrations[0].0, &op[..on]);
    assert_eq!(gw.registrations[0].1.as_deref(), Some(&auth[..an]));

    // Idle: the device sends nothing (a wake-capable device is not chattier).
    let wire_idle = dev.link.io_mut().to_gw.len();
    let sent_idle = dev.runner.stats().packets_out;
    assert!(!run(&mut dev, &mut gw, &mut now, 60_000, |_, _| false));
    assert_eq!(dev.runner.stats().packets_out, sent_idle);
    assert_eq!(dev.link.io_mut().to_gw.len(), wire_idle);

    // serve restarted: it wakes the device (POST, the WAKE op as the whole payload).
    let mut wake = [0u8; 1];
    assert_eq!(Op::Wake.write(&mut wake), Ok(1));
    let sent0 = gw.sent_bytes;
    gw.request(now, Code::POST, &[], &wake);
    gw.step(now, dev.link.io_mut());
    let wake_bytes = gw.sent_bytes - sent0;
    assert!(run(&mut dev, &mut gw, &mut now, 10_000, |_, g| g
        .registrations
        .len()
        >= 2
        && !g.responses.is_empty()));
    let (code, payload, ack_bytes) = gw.responses[0].clone();
    assert_eq!(code, Code::CHANGED);
    assert!(payload.is_empty());
    // Link protocol 1 here (16-byte tags): 12 more each way than the device link version's
    // 15 + 13 (lb::dev); the ACK has the leading delimiter of an idle line.
    eprintln!("wake: {wake_bytes} B request + {ack_bytes} B ack");
    assert_eq!((wake_bytes, ack_bytes), (15 + 12, 13 + 12 + 1));
    // Registered again at once: with the token (serve lost its number), no kept numbers.
    assert_eq!(gw.registrations[1].0, &op[..on]);
    assert_eq!(gw.registrations[1].1.as_deref(), Some(&auth[..an]));
    assert!(run(&mut dev, &mut gw, &mut now, 5_000, |d, _| d
        .runner
        .push_registered()));
    assert_eq!(gw.registrations.len(), 2, "one registration per wake");

    // Anything else the gateway asks is answered 4.04 and changes nothing.
    gw.request(now, Code::GET, &[], &[]);
    gw.request(now, Code::POST, &[], &[0x61]);
    assert!(run(&mut dev, &mut gw, &mut now, 10_000, |_, g| g
        .responses
        .len()
        >= 3));
    assert_eq!(gw.responses[1].0, Code::NOT_FOUND);
    assert_eq!(gw.responses[2].0, Code::NOT_FOUND);
    assert!(!run(&mut dev, &mut gw, &mut now, 5_000, |_, g| g
        .registrations
        .len()
        > 2));
    assert!(dev.runner.push_registered());
}
