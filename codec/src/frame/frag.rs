//! Fragmentation and reassembly for datagram links whose MTU is smaller than a packet.
//!
//! LoRaWAN's slowest data rate carries 51 bytes per frame; a Noise handshake or a CoAP message
//! with a block can be larger. CoAP block-wise transfer
//! ([RFC 7959](https://www.rfc-editor.org/rfc/rfc7959)) splits bodies, but not the packet that
//! carries the first block: this layer, below CoAP and Noise, splits such a packet into datagrams
//! and rebuilds it. It follows 6LoWPAN's dispatch idea
//! ([RFC 4944 §5.1, §5.3](https://www.rfc-editor.org/rfc/rfc4944#section-5.3)) with a much
//! smaller header.
//!
//! # Wire format
//!
//! The first byte of a datagram decides:
//!
//! ```text
//! 0x00..=0xBF   an unfragmented packet, this byte is its first byte      (0 bytes overhead)
//! 0b11TT_IIIL   a fragment header, followed by the fragment's bytes      (1 byte per datagram)
//!                 TT  packet tag (0..=3, in turn), keeps consecutive packets apart
//!                 III fragment index (0..=7)
//!                 L   1 on the last fragment of the packet
//! ```
//!
//! A packet that fits but starts with a byte `>= 0xC0` (or is empty) is sent as a single fragment
//! (index 0, last: header `0xC1`), costing 1 byte. Upper layers that keep their first byte below
//! `0xC0` (CoAP's version bits make its first byte `0x40..=0x7F`) never pay for it. A fragmented
//! packet of `k <= 8` datagrams costs `k` bytes. Fragments may have any sizes; the sender fills
//! each to the MTU.
//!
//! # Receiver behaviour
//!
//! Duplicated and reordered fragments are tolerated. A partial packet is dropped when no new
//! fragment arrived for the timeout (upper layers retransmit), or when its slot is needed and it
//! is the oldest. Integrity is not this layer's job: the link (LoRa's CRC, the serial FCS) drops
//! damaged datagrams and the Noise AEAD rejects anything mixed up by a tag collision; the
//! receiver still detects collisions it can see (a different fragment under an index already
//! held, a fragment past the last one) and restarts the slot, and it remembers a 16-bit check of
//! each fragment of the last packet completed under each tag, so late duplicates of a finished
//! packet are ignored rather than left to seed a stale partial. As tags are used in turn, a
//! partial packet is abandoned as soon as a packet two tags later starts, long before its tag
//! comes round again; so at most two fragmented packets per direction are reassembled
//! concurrently (reordering across more than one packet loses the older one).

/// Mask and value of the dispatch bits marking a fragment header.
pub const HEADER_MARK: u8 = 0b1100_0000;
/// Most fragments per packet (3 index bits).
pub const MAX_FRAGMENTS: usize = 8;
/// Number of distinct packet tags (2 tag bits).
pub const TAGS: u8 = 4;
/// Header of a packet sent whole behind a header (tag 0, index 0, last).
pub const SINGLE: u8 = HEADER_MARK | 1;

const fn header(tag: u8, index: u8, last: bool) -> u8 {
    HEADER_MARK | ((tag & 0b11) << 4) | ((index & 0b111) << 1) | last as u8
}

/// Why a packet could not be fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentError {
    /// The MTU is below 2 bytes: no room for a header and a byte.
    MtuTooSmall,
    /// The packet needs more than [`MAX_FRAGMENTS`] datagrams at this MTU.
    PacketTooLarge,
    /// The output buffer is shorter than the fragment.
    BufferTooSmall,
}

/// One datagram of a packet: an optional header byte and a slice of the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'p> {
    /// The fragment header, absent when the packet goes unfragmented and unescaped.
    pub header: Option<u8>,
    /// The packet bytes this datagram carries.
    pub body: &'p [u8],
}

impl Fragment<'_> {
    /// Bytes of this datagram on the link.
    pub fn len(&self) -> usize {
        usize::from(self.header.is_some()) + self.body.len()
    }

    /// Never true: even an empty packet gets a header. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the datagram into `out`, returns its length.
    ///
    /// # Errors
    ///
    /// [`FragmentError::BufferTooSmall`] if `out` is shorter than [`len`](Self::len).
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, FragmentError> {
        let n = self.len();
        let out = out.get_mut(..n).ok_or(FragmentError::BufferTooSmall)?;
        let body = match self.header {
            Some(h) => {
                out[0] = h;
                &mut out[1..]
            }
            None => out,
        };
        body.copy_from_slice(self.body);
        Ok(n)
    }
}

/// The datagrams of one packet, in order. Made by [`Fragmenter::fragment`].
#[derive(Debug, Clone)]
pub struct Fragments<'p> {
    rest: &'p [u8],
    /// Body bytes per datagram.
    chunk: usize,
    /// None: unfragmented (0-byte header). Some(tag): fragment headers with this tag.
    tag: Option<u8>,
    index: u8,
    count: u8,
    done: bool,
}

impl Fragments<'_> {
    /// Number of datagrams.
    pub fn datagrams(&self) -> usize {
        usize::from(self.count)
    }
}

impl<'p> Iterator for Fragments<'p> {
    type Item = Fragment<'p>;

    fn next(&mut self) -> Option<Fragment<'p>> {
        if self.done {
            return None;
        }
        let take = self.chunk.min(self.rest.len());
        let (body, rest) = self.rest.split_at(take);
        self.rest = rest;
        let last = self.index + 1 == self.count;
        let header = self.tag.map(|t| header(t, self.index, last));
        self.index += 1;
        self.done = last;
        Some(Fragment { header, body })
    }
}

/// Splits packets into datagrams of at most `mtu` bytes; remembers the next packet tag.
///
/// ```
/// # use lowband_codec::frame::Fragmenter;
/// let mut f = Fragmenter::new();
/// let packet = [0x42u8; 120];
/// let mut out = [0u8; 51];
/// let mut sent = 0;
/// for frag in f.fragment(&packet, 51).unwrap() {
///     let n = frag.emit(&mut out).unwrap();
///     assert!(n <= 51);
///     sent += n;
/// }
/// assert_eq!(sent, 120 + 3); // 3 datagrams, 1 header byte each
/// ```
#[derive(Debug, Clone, Default)]
pub struct Fragmenter {
    next_tag: u8,
}

impl Fragmenter {
    /// A fragmenter starting at tag 0.
    pub const fn new() -> Self {
        Self { next_tag: 0 }
    }

    /// Link bytes `packet` costs beyond its own length at `mtu` (0, 1, or one per datagram).
    ///
    /// # Errors
    ///
    /// As [`fragment`](Self::fragment).
    pub fn overhead(packet: &[u8], mtu: usize) -> Result<usize, FragmentError> {
        let f = Self::new().fragment(packet, mtu)?;
        Ok(f.map(|d| usize::from(d.header.is_some())).sum())
    }

    /// The datagrams carrying `packet` over a link of MTU `mtu`.
    ///
    /// Consumes a tag only when the packet is really fragmented.
    ///
    /// # Errors
    ///
    /// [`FragmentError::MtuTooSmall`] if `mtu < 2` (and the packet does not fit unescaped);
    /// [`FragmentError::PacketTooLarge`] beyond [`MAX_FRAGMENTS`] datagrams.
    pub fn fragment<'p>(
        &mut self,
        packet: &'p [u8],
        mtu: usize,
    ) -> Result<Fragments<'p>, FragmentError> {
        // An empty packet is escaped too: an empty datagram is refused by the receiver.
        let escape = packet
            .first()
            .is_none_or(|&b| b & HEADER_MARK == HEADER_MARK);
        let whole = |tag| Fragments {
            rest: packet,
            chunk: packet.len(),
            tag,
            index: 0,
            count: 1,
            done: false,
        };
        if !escape && packet.len() <= mtu {
            return Ok(whole(None));
        }
        if mtu < 2 {
            return Err(FragmentError::MtuTooSmall);
        }
        if packet.len() < mtu {
            // Escaped single fragment: header 0xC1 (tag 0, index 0, last).
            return Ok(whole(Some(0)));
        }
        let chunk = mtu - 1;
        let count = packet.len().div_ceil(chunk);
        if count > MAX_FRAGMENTS {
            return Err(FragmentError::PacketTooLarge);
        }
        let tag = self.next_tag;
        self.next_tag = (self.next_tag + 1) % TAGS;
        Ok(Fragments {
            rest: packet,
            chunk,
            tag: Some(tag),
            index: 0,
            // INVARIANT: count <= MAX_FRAGMENTS = 8 fits a u8.
            count: count as u8,
            done: false,
        })
    }
}

/// Why a datagram did not complete a packet in the [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReassemblyError {
    /// The packet being reassembled exceeds the reassembler's capacity; it is dropped.
    TooLarge,
    /// The datagram was empty (no header, no packet byte).
    Empty,
}

/// Counters of a [`Reassembler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Datagrams handled.
    pub datagrams: u64,
    /// Packets delivered (whole or reassembled).
    pub packets: u64,
    /// Packets delivered that had been fragmented.
    pub reassembled: u64,
    /// Fragments ignored as exact duplicates.
    pub duplicates: u64,
    /// Partial packets dropped after the timeout.
    pub timed_out: u64,
    /// Partial packets dropped to free a slot for a newer packet.
    pub evicted: u64,
    /// Partial packets restarted because a fragment contradicted them (tag reuse).
    pub collisions: u64,
    /// Packets dropped for exceeding the capacity.
    pub too_large: u64,
    /// Partial packets abandoned because a packet two tags later started.
    pub superseded: u64,
}

#[derive(Debug, Clone)]
struct Slot<const N: usize> {
    used: bool,
    tag: u8,
    /// Time of the last new fragment.
    touched: u64,
    /// Bit i set: fragment i held.
    seen: u8,
    /// Index of the last fragment, once seen.
    last: Option<u8>,
    /// (offset, length) in `buf` of each held fragment, in arrival order.
    frags: [(u16, u16); MAX_FRAGMENTS],
    fill: usize,
    buf: [u8; N],
}

impl<const N: usize> Slot<N> {
    const EMPTY: Self = Self {
        used: false,
        tag: 0,
        touched: 0,
        seen: 0,
        last: None,
        frags: [(0, 0); MAX_FRAGMENTS],
        fill: 0,
        buf: [0; N],
    };

    fn start(&mut self, tag: u8, now: u64) {
        self.used = true;
        self.tag = tag;
        self.touched = now;
        self.seen = 0;
        self.last = None;
        self.fill = 0;
    }

    fn body(&self, index: u8) -> &[u8] {
        let (off, len) = self.frags[usize::from(index)];
        &self.buf[usize::from(off)..usize::from(off) + usize::from(len)]
    }

    /// Whether fragment `index` (last or not) fits what the slot already holds.
    fn consistent(&self, index: u8, last: bool) -> bool {
        match (self.last, last) {
            (Some(l), true) => l == index,
            (Some(l), false) => index < l,
            // No fragment held beyond the one claiming to be last.
            (None, true) => u16::from(self.seen) >> (index + 1) == 0,
            (None, false) => true,
        }
    }

    fn complete(&self) -> bool {
        self.last
            .is_some_and(|l| u16::from(self.seen) == (1u16 << (l + 1)) - 1)
    }

    /// Moves the fragments into index order at the start of `buf`; returns the packet length.
    fn assemble(&mut self) -> usize {
        let count = self.last.map_or(0, |l| usize::from(l) + 1);
        let mut w = 0usize;
        for i in 0..count {
            let (off, len) = self.frags[i];
            let (off, len) = (usize::from(off), usize::from(len));
            if len == 0 {
                // An empty fragment has nothing to move (and its offset may lie behind `w`).
                continue;
            }
            // Fragments not yet placed all lie at or after `w`; rotating brings fragment i to
            // `w` and shifts those between right by `len`.
            self.buf[w..off + len].rotate_right(len);
            for f in self.frags[i + 1..count].iter_mut() {
                if usize::from(f.0) < off {
                    // INVARIANT: offsets stay below fill <= N, and N fits u16 (checked in new()).
                    f.0 += len as u16;
                }
            }
            w += len;
        }
        w
    }
}

/// Rebuilds packets from datagrams: up to `SLOTS` packets in flight, each up to `N` bytes.
///
/// # Call protocol
///
/// * [`handle_datagram`](Self::handle_datagram) for every datagram received; it returns a
///   complete packet when the datagram finishes one (an unfragmented packet is returned as a
///   slice of the datagram itself, without copying).
/// * [`poll_timeout`](Self::poll_timeout) tells when the oldest partial packet expires;
///   call [`handle_timeout`](Self::handle_timeout) then (expiry also happens lazily on the next
///   datagram). `now` is in milliseconds of any monotonic clock, virtual in tests.
///
/// Memory: `SLOTS * (N + about 48)` bytes.
#[derive(Debug, Clone)]
pub struct Reassembler<const SLOTS: usize, const N: usize> {
    slots: [Slot<N>; SLOTS],
    timeout_ms: u64,
    stats: ReassemblyStats,
    /// Per tag, a digest ([`digest`]) of each fragment of the last packet completed under it, so late
    /// duplicates of a finished packet are recognised instead of seeding a stale partial that a
    /// later packet with the same tag could complete with foreign bytes.
    done_fcs: [[u32; MAX_FRAGMENTS]; TAGS as usize],
    /// Per tag, which entries of `done_fcs` are valid.
    done_mask: [u8; TAGS as usize],
}

impl<const SLOTS: usize, const N: usize> Reassembler<SLOTS, N> {
    const CHECK: () = assert!(
        N <= u16::MAX as usize && SLOTS > 0,
        "N must fit u16, SLOTS > 0"
    );

    /// A reassembler dropping partial packets idle for `timeout_ms`.
    pub const fn new(timeout_ms: u64) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CHECK;
        Self {
            slots: [Slot::EMPTY; SLOTS],
            done_fcs: [[0; MAX_FRAGMENTS]; TAGS as usize],
            done_mask: [0; TAGS as usize],
            timeout_ms,
            stats: ReassemblyStats {
                datagrams: 0,
                packets: 0,
                reassembled: 0,
                duplicates: 0,
                timed_out: 0,
                evicted: 0,
                collisions: 0,
                too_large: 0,
                superseded: 0,
            },
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Partial packets currently held.
    pub fn in_progress(&self) -> usize {
        self.slots.iter().filter(|s| s.used).count()
    }

    /// When the next partial packet expires, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| s.used)
            .map(|s| s.touched.saturating_add(self.timeout_ms))
            .min()
    }

    /// Drops partial packets whose timeout has passed at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        for s in self.slots.iter_mut() {
            if s.used && s.touched.saturating_add(self.timeout_ms) <= now {
                s.used = false;
                self.stats.timed_out += 1;
            }
        }
    }

    /// Takes one datagram; returns the packet it completes, if any.
    ///
    /// # Errors
    ///
    /// [`ReassemblyError::Empty`] for a 0-byte datagram; [`ReassemblyError::TooLarge`] when the
    /// packet outgrows `N` (its partial state is dropped). Neither needs action.
    pub fn handle_datagram<'a>(
        &'a mut self,
        now: u64,
        datagram: &'a [u8],
    ) -> Result<Option<&'a [u8]>, ReassemblyError> {
        self.stats.datagrams += 1;
        self.handle_timeout(now);
        let (&first, body) = datagram.split_first().ok_or(ReassemblyError::Empty)?;
        if first & HEADER_MARK != HEADER_MARK {
            self.stats.packets += 1;
            return Ok(Some(datagram));
        }
        let tag = (first >> 4) & 0b11;
        let index = (first >> 1) & 0b111;
        let last = first & 1 == 1;
        if index == 0 && last {
            self.stats.packets += 1;
            return Ok(Some(body));
        }
        let fcs = digest(body);
        let t = usize::from(tag);
        let has_slot = self.slots.iter().any(|s| s.used && s.tag == tag);
        if self.done_mask[t] & (1 << index) != 0 && self.done_fcs[t][usize::from(index)] == fcs {
            let held = self
                .slots
                .iter()
                .any(|s| s.used && s.tag == tag && s.seen & (1 << index) != 0);
            if !has_slot || !held {
                // A late copy of a fragment of the packet last completed under this tag.
                self.stats.duplicates += 1;
                return Ok(None);
            }
        }
        let i = self.slot_for(tag, now);
        let stats = &mut self.stats;
        let slot = &mut self.slots[i];
        let bit = 1u8 << index;
        if slot.seen & bit != 0 {
            if slot.body(index) == body && slot.consistent(index, last) {
                stats.duplicates += 1;
                return Ok(None);
            }
            stats.collisions += 1;
            slot.start(tag, now);
        } else if !slot.consistent(index, last) {
            stats.collisions += 1;
            slot.start(tag, now);
        }
        let Some(dst) = slot.buf.get_mut(slot.fill..slot.fill + body.len()) else {
            slot.used = false;
            stats.too_large += 1;
            return Err(ReassemblyError::TooLarge);
        };
        dst.copy_from_slice(body);
        // INVARIANT: fill + body.len() <= N <= u16::MAX (CHECK).
        slot.frags[usize::from(index)] = (slot.fill as u16, body.len() as u16);
        slot.fill += body.len();
        slot.seen |= bit;
        slot.touched = now;
        if last {
            slot.last = Some(index);
        }
        if !slot.complete() {
            return Ok(None);
        }
        slot.used = false;
        stats.packets += 1;
        stats.reassembled += 1;
        let mut mask = 0u8;
        for k in 0..=slot.last.unwrap_or(0) {
            self.done_fcs[t][usize::from(k)] = digest(slot.body(k));
            mask |= 1 << k;
        }
        self.done_mask[t] = mask;
        let len = slot.assemble();
        Ok(Some(&slot.buf[..len]))
    }

    /// The slot holding `tag`, or a fresh one (evicting the stalest partial packet if full).
    fn slot_for(&mut self, tag: u8, now: u64) -> usize {
        if let Some(i) = self.slots.iter().position(|s| s.used && s.tag == tag) {
            return i;
        }
        // Tags are used in turn: once a packet two tags on starts, a partial packet still under
        // the tag two behind it has been overtaken by two others and is abandoned before its tag
        // comes round again (which would let the next packet complete it with foreign bytes).
        let behind = (tag + TAGS - 2) % TAGS;
        for s in self.slots.iter_mut() {
            if s.used && s.tag == behind {
                s.used = false;
                self.stats.superseded += 1;
            }
        }
        let i = match self.slots.iter().position(|s| !s.used) {
            Some(i) => i,
            None => {
                self.stats.evicted += 1;
                // INVARIANT: SLOTS > 0 (CHECK), so min_by_key finds a slot.
                (0..SLOTS)
                    .min_by_key(|&i| self.slots[i].touched)
                    .unwrap_or(0)
            }
        };
        self.slots[i].start(tag, now);
        i
    }
}

/// Digest of a fragment body that recognises late copies of the last completed packet's
/// fragments (FNV-1a, 32 bits, over the length and the bytes): a new packet's fragment under a
/// reused tag is taken for such a copy only on a 2^-32 collision (a 16-bit FCS made that about
/// one in 65 536 per fragment: proptest `frag_round_trip_shuffled_duplicated` found one).
fn digest(body: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in (body.len() as u32).to_le_bytes().iter().chain(body) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        assert_eq!(header(0, 0, true), 0xC1);
        assert_eq!(header(3, 7, true), 0xFF);
        assert_eq!(header(1, 2, false), 0b1101_0100);
        assert_eq!(SINGLE, 0xC1);
    }

    #[test]
    fn small_packet_costs_nothing() {
        let mut f = Fragmenter::new();
        let d: heapless::Vec<_, 4> = f.fragment(&[0x40, 0x01, 0x02], 51).unwrap().collect();
        assert_eq!(
            d.as_slice(),
            &[Fragment {
                header: None,
                body: &[0x40, 0x01, 0x02]
            }]
        );
        // First byte >= 0xC0: escaped with one byte.
        let d: heapless::Vec<_, 4> = f.fragment(&[0xC5, 0x01], 51).unwrap().collect();
        assert_eq!(
            d.as_slice(),
            &[Fragment {
                header: Some(0xC1),
                body: &[0xC5, 0x01]
            }]
        );
        assert_eq!(Fragmenter::overhead(&[0x10; 51], 51), Ok(0));
        assert_eq!(Fragmenter::overhead(&[0xD0; 50], 51), Ok(1));
        // Exactly MTU long but escaped: two datagrams.
        assert_eq!(Fragmenter::overhead(&[0xD0; 51], 51), Ok(2));
    }

    #[test]
    fn literal_fragments() {
        let mut f = Fragmenter::new();
        let packet = [1u8, 2, 3, 4, 5, 6, 7];
        let mut wire = [[0u8; 4]; 3];
        let mut lens = [0usize; 3];
        let frags = f.fragment(&packet, 4).unwrap();
        assert_eq!(frags.datagrams(), 3);
        for (i, d) in frags.enumerate() {
            lens[i] = d.emit(&mut wire[i]).unwrap();
        }
        assert_eq!(&wire[0][..lens[0]], &[0xC0, 1, 2, 3]);
        assert_eq!(&wire[1][..lens[1]], &[0xC2, 4, 5, 6]);
        assert_eq!(&wire[2][..lens[2]], &[0xC5, 7]);
        // Next packet uses tag 1.
        let d = f.fragment(&packet, 4).unwrap().next().unwrap();
        assert_eq!(d.header, Some(0xD0));

        // Reassemble in reverse order with a duplicate.
        let mut r = Reassembler::<2, 16>::new(1000);
        assert_eq!(r.handle_datagram(0, &wire[2][..lens[2]]), Ok(None));
        assert_eq!(r.handle_datagram(1, &wire[1][..lens[1]]), Ok(None));
        assert_eq!(r.handle_datagram(2, &wire[1][..lens[1]]), Ok(None));
        assert_eq!(
            r.handle_datagram(3, &wire[0][..lens[0]]),
            Ok(Some(&packet[..]))
        );
        assert_eq!(r.stats().duplicates, 1);
        assert_eq!(r.stats().reassembled, 1);
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn unfragmented_and_escaped_pass_through() {
        let mut r = Reassembler::<1, 8>::new(1000);
        assert_eq!(
            r.handle_datagram(0, &[0x41, 0x02]),
            Ok(Some(&[0x41, 0x02][..]))
        );
        assert_eq!(r.handle_datagram(0, &[0xC1, 0xC5]), Ok(Some(&[0xC5][..])));
        assert_eq!(r.handle_datagram(0, &[]), Err(ReassemblyError::Empty));
    }

    #[test]
    fn partial_times_out() {
        let mut r = Reassembler::<1, 16>::new(1000);
        assert_eq!(r.handle_datagram(10, &[0xC0, 1, 2]), Ok(None));
        assert_eq!(r.poll_timeout(), Some(1010));
        r.handle_timeout(1009);
        assert_eq!(r.in_progress(), 1);
        r.handle_timeout(1010);
        assert_eq!(r.in_progress(), 0);
        assert_eq!(r.stats().timed_out, 1);
        // The late last fragment alone does not make a packet.
        assert_eq!(r.handle_datagram(1020, &[0xC3, 3]), Ok(None));
    }

    #[test]
    fn tag_collision_restarts() {
        let mut r = Reassembler::<1, 16>::new(1000);
        assert_eq!(r.handle_datagram(0, &[0xC0, 1, 2]), Ok(None));
        // Same tag, index 0 again but different bytes: a new packet.
        assert_eq!(r.handle_datagram(1, &[0xC0, 9, 9]), Ok(None));
        assert_eq!(r.handle_datagram(2, &[0xC3, 8]), Ok(Some(&[9, 9, 8][..])));
        assert_eq!(r.stats().collisions, 1);
    }

    #[test]
    fn empty_fragments_reassemble() {
        // Found by the fuzzer: an empty fragment whose offset ends up behind the write cursor.
        let mut r = Reassembler::<1, 16>::new(1000);
        assert_eq!(r.handle_datagram(0, &[0xC2]), Ok(None));
        assert_eq!(r.handle_datagram(0, &[0xC0, 1, 2, 3]), Ok(None));
        assert_eq!(
            r.handle_datagram(0, &[0xC5, 4]),
            Ok(Some(&[1, 2, 3, 4][..]))
        );
        assert_eq!(r.handle_datagram(0, &[0xC5, 9]), Ok(None));
        assert_eq!(r.handle_datagram(0, &[0xC2, 8]), Ok(None));
        assert_eq!(r.handle_datagram(0, &[0xC0]), Ok(Some(&[8, 9][..])));
    }

    #[test]
    fn too_large_is_dropped() {
        let mut r = Reassembler::<1, 4>::new(1000);
        assert_eq!(r.handle_datagram(0, &[0xC0, 1, 2, 3]), Ok(None));
        assert_eq!(
            r.handle_datagram(0, &[0xC3, 4, 5]),
            Err(ReassemblyError::TooLarge)
        );
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn fragment_limits() {
        let mut f = Fragmenter::new();
        assert_eq!(
            f.fragment(&[0u8; 9], 1).err(),
            Some(FragmentError::MtuTooSmall)
        );
        assert_eq!(
            f.fragment(&[0u8; 401], 51).err(),
            Some(FragmentError::PacketTooLarge)
        );
        assert_eq!(f.fragment(&[0u8; 400], 51).map(|d| d.datagrams()), Ok(8));
    }
}
