//! Observe (RFC 7641): notification ordering and the server's observer table.
//!
//! The gateway pushes sync results to a device as notifications of an observed resource;
//! notifications may cross on the link, so the client keeps the newest by the rule of
//! RFC 7641 §3.4 ([`Freshness`]). The server side ([`Observers`]) remembers which tokens
//! observe which resource and numbers notifications with a 24-bit sequence.
//! <https://www.rfc-editor.org/rfc/rfc7641>

use super::msg::Token;

/// Observe option value 0: register (RFC 7641 §2).
pub const REGISTER: u32 = 0;
/// Observe option value 1: deregister.
pub const DEREGISTER: u32 = 1;

/// The resource of notifications sent with `Endpoint::notify_token` (observations the
/// application tracks itself, outside the observer table).
pub const UNTRACKED: u16 = u16::MAX;

/// Notification traffic counted by the endpoint: CoAP bytes and messages (notifications sent,
/// retransmissions included, and the empty ACKs that acknowledged them). A link's per-message
/// overhead is the caller's to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushTraffic {
    /// CoAP bytes.
    pub bytes: u32,
    /// CoAP messages.
    pub messages: u32,
}

impl PushTraffic {
    /// Nothing counted.
    pub const ZERO: PushTraffic = PushTraffic {
        bytes: 0,
        messages: 0,
    };
    /// Counts one message of `n` bytes.
    pub fn add(&mut self, n: usize) {
        self.bytes = self
            .bytes
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        self.messages = self.messages.saturating_add(1);
    }
}

/// How long a sequence number stays comparable: 128 s (RFC 7641 §3.4).
pub const SEQ_WINDOW_MS: u64 = 128_000;

/// The client's record of the newest notification, for the §3.4 reordering rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Freshness {
    last: Option<(u32, u64)>,
}

impl Freshness {
    /// Nothing seen yet.
    pub const fn new() -> Self {
        Freshness { last: None }
    }
    /// Whether a notification with sequence `v2` received at `t2` (ms) is newer than the last
    /// one accepted; if so it is recorded. RFC 7641 §3.4:
    /// `(V1 < V2 and V2 - V1 < 2^23) or (V1 > V2 and V1 - V2 > 2^23) or T2 > T1 + 128 s`.
    pub fn accept(&mut self, v2: u32, t2: u64) -> bool {
        let v2 = v2 & 0xff_ffff;
        let fresh = match self.last {
            None => true,
            Some((v1, t1)) => {
                (v1 < v2 && v2 - v1 < 1 << 23)
                    || (v1 > v2 && v1 - v2 > 1 << 23)
                    || t2 > t1 + SEQ_WINDOW_MS
            }
        };
        if fresh {
            self.last = Some((v2, t2));
        }
        fresh
    }
}

/// One registered observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observer {
    /// The application's name for the observed resource.
    pub resource: u16,
    /// The token of the registering GET, used on every notification.
    pub token: Token,
    /// Send notifications confirmable (needed at least every 24 h, RFC 7641 §4.5).
    pub confirmable: bool,
}

/// The server's observer table with capacity `N`, and the notification sequence counter.
#[derive(Debug, Clone)]
pub struct Observers<const N: usize> {
    list: heapless::Vec<Observer, N>,
    seq: u32,
}

impl<const N: usize> Default for Observers<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Observers<N> {
    /// Empty table; sequence numbers start at 2 (0 and 1 would look like register/deregister
    /// to a human reading a trace, nothing more).
    pub const fn new() -> Self {
        Observers {
            list: heapless::Vec::new(),
            seq: 2,
        }
    }
    /// Register (or re-register: same token replaces) an observer.
    ///
    /// # Errors
    /// The observer, if the table is full.
    pub fn register(&mut self, o: Observer) -> Result<(), Observer> {
        if let Some(e) = self.list.iter_mut().find(|e| e.token == o.token) {
            *e = o;
            return Ok(());
        }
        self.list.push(o)
    }
    /// Remove the observer with `token`; true if there was one.
    pub fn deregister(&mut self, token: &Token) -> bool {
        let before = self.list.len();
        self.list.retain(|e| e.token != *token);
        self.list.len() != before
    }
    /// The observer with `token`.
    pub fn get(&self, token: &Token) -> Option<&Observer> {
        self.list.iter().find(|e| e.token == *token)
    }
    /// Observers of `resource`.
    pub fn of(&self, resource: u16) -> impl Iterator<Item = &Observer> {
        self.list.iter().filter(move |e| e.resource == resource)
    }
    /// All observers.
    pub fn iter(&self) -> impl Iterator<Item = &Observer> {
        self.list.iter()
    }
    /// The next notification sequence number (24 bits, wrapping).
    pub fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = (self.seq + 1) & 0xff_ffff;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reordering_rule() {
        let mut f = Freshness::new();
        assert!(f.accept(10, 0));
        assert!(!f.accept(9, 1));
        assert!(!f.accept(10, 1));
        assert!(f.accept(11, 2));
        // wrap-around: 0xffffff then 3 is newer
        let mut f = Freshness::new();
        assert!(f.accept(0xff_fffe, 0));
        assert!(f.accept(3, 1));
        assert!(!f.accept(0xff_ffff, 2));
        // after 128 s anything is newer
        assert!(f.accept(1, 2 + 128_001));
    }

    #[test]
    fn tracked_by_the_application() {
        use crate::coap::{Code, Endpoint, Event, Opt, Options, Received, Request};
        type Ep = Endpoint<2, 2, 1, 64>;
        let mut c = Ep::new(crate::coap::Config {
            seed: 3,
            token_len: 1,
            ..crate::coap::Config::default()
        });
        let mut s = Ep::new(crate::coap::Config {
            seed: 4,
            ..crate::coap::Config::default()
        });
        let reg = [Opt::uint(super::super::msg::opt::OBSERVE, REGISTER)];
        let h = c
            .request(0, Request::con(Code::GET, Options::List(&reg), &[]))
            .unwrap();
        let mut b = [0u8; 64];
        let n = c.poll_transmit(0, &mut b).unwrap();
        let Some(Received::Request(r)) = s.handle_datagram(1, &b[..n]) else {
            panic!()
        };
        assert_eq!(r.observe, Some(REGISTER));
        let tok = r.responder.token();
        s.respond_observe_seq(1, &r.responder, 0, Code::CONTENT, Options::NONE, &[])
            .unwrap();
        let n = s.poll_transmit(1, &mut b).unwrap();
        // ACK 2.05, token, Observe: 0 (empty value).
        assert_eq!(n, 4 + 1 + 1);
        let Some(Received::Response(a)) = c.handle_datagram(2, &b[..n]) else {
            panic!()
        };
        assert_eq!((a.handle, a.observe, a.last), (h, Some(0), false));
        // Two notifications, one at a time.
        for seq in 1..3u32 {
            s.notify_token(3, tok, seq, Code::CONTENT, Options::NONE, b"x")
                .unwrap();
            assert!(s.notification_pending(&tok));
            assert_eq!(
                s.notify_token(3, tok, seq, Code::CONTENT, Options::NONE, b"y"),
                Err(crate::coap::SendError::NoSlot)
            );
            let n = s.poll_transmit(3, &mut b).unwrap();
            // CON 2.05, token, Observe (1 byte), payload marker, "x".
            assert_eq!(n, 4 + 1 + 2 + 1 + 1);
            let Some(Received::Response(a)) = c.handle_datagram(4, &b[..n]) else {
                panic!()
            };
            assert_eq!((a.handle, a.observe, a.payload), (h, Some(seq), &b"x"[..]));
            let m = c.poll_transmit(4, &mut b).unwrap();
            assert_eq!(m, 4);
            assert!(s.handle_datagram(5, &b[..m]).is_none());
            assert!(!s.notification_pending(&tok));
        }
        assert_eq!(
            s.take_push_traffic(),
            PushTraffic {
                bytes: 2 * (9 + 4),
                messages: 4
            }
        );
        assert_eq!(s.take_push_traffic(), PushTraffic::ZERO);
        // The client forgets the observation: the next notification is reset and reported.
        assert!(c.cancel(h));
        s.notify_token(6, tok, 3, Code::CONTENT, Options::NONE, b"x")
            .unwrap();
        let n = s.poll_transmit(6, &mut b).unwrap();
        assert!(c.handle_datagram(7, &b[..n]).is_none());
        let m = c.poll_transmit(7, &mut b).unwrap();
        assert!(s.handle_datagram(8, &b[..m]).is_none());
        assert!(!s.notification_pending(&tok));
        assert_eq!(
            s.poll_event(),
            Some(Event::ObserverGone {
                resource: UNTRACKED,
                token: tok
            })
        );
    }

    #[test]
    fn table() {
        let mut t: Observers<1> = Observers::new();
        let tok = Token::new(&[1]).unwrap();
        let o = Observer {
            resource: 3,
            token: tok,
            confirmable: false,
        };
        t.register(o).unwrap();
        t.register(o).unwrap();
        assert!(t
            .register(Observer {
                token: Token::new(&[2]).unwrap(),
                ..o
            })
            .is_err());
        assert_eq!(t.of(3).count(), 1);
        assert_eq!(t.next_seq(), 2);
        assert!(t.deregister(&tok));
        assert!(!t.deregister(&tok));
    }
}
