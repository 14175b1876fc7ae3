//! Transmission parameters (RFC 7252 §4.8) derived from the link, not the RFC's defaults.
//!
//! The RFC's ACK_TIMEOUT of 2 s assumes a fast network. At 100 bit/s a 60-byte frame takes
//! 4.8 s to serialise, so a request and its piggybacked response need about 10 s of airtime
//! before any acknowledgement can arrive; a 2 s timer would retransmit every message several
//! times and congest the link it is meant to protect. [`TransmissionParams::for_link`] derives
//! ACK_TIMEOUT from the round trip airtime of two full frames, and every other parameter
//! from ACK_TIMEOUT the way RFC 7252 §4.8.2 does.
//! <https://www.rfc-editor.org/rfc/rfc7252#section-4.8>

/// CoAP transmission parameters, all times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmissionParams {
    /// ACK_TIMEOUT: initial retransmission timeout (before randomisation).
    pub ack_timeout: u64,
    /// ACK_RANDOM_FACTOR in thousandths (1500 = 1.5).
    pub ack_random_factor_milli: u32,
    /// MAX_RETRANSMIT.
    pub max_retransmit: u8,
    /// NSTART: outstanding interactions at a time; more are queued.
    pub nstart: u8,
    /// MAX_LATENCY: longest time a datagram may take to cross the link.
    pub max_latency: u64,
    /// PROCESSING_DELAY: how long a server may take before acknowledging.
    pub processing_delay: u64,
    /// How many times the retransmission interval doubles at most (RFC 7252 §4.2's
    /// exponential backoff, capped): on a lossy link an uncapped backoff leaves the link idle
    /// for hours after a few losses; with NSTART > 1 the other exchanges keep it busy
    /// meanwhile. `u8::MAX` is the RFC's uncapped backoff.
    pub backoff_limit: u8,
    /// How long a server holds back an ACK hoping to piggyback the response (at most
    /// ACK_TIMEOUT/2; a separate response costs an extra 4-byte ACK plus its own ACK).
    pub piggyback_wait: u64,
}

impl Default for TransmissionParams {
    /// RFC 7252 §4.8 defaults (for fast links and interop with stock peers).
    fn default() -> Self {
        TransmissionParams {
            ack_timeout: 2_000,
            ack_random_factor_milli: 1_500,
            max_retransmit: 4,
            nstart: 1,
            max_latency: 100_000,
            processing_delay: 2_000,
            piggyback_wait: 500,
            backoff_limit: u8::MAX,
        }
    }
}

impl TransmissionParams {
    /// Parameters for a link of `bit_rate` bit/s carrying frames of at most `mtu` bytes
    /// (link framing included), with `extra_latency` ms of one-way delay on top of the airtime
    /// (radio turnaround, queueing in modems, satellite hops).
    ///
    /// ACK_TIMEOUT = 1.25 × (2 × airtime(mtu) + 2 × extra_latency) + 250 ms, never below the
    /// RFC's 2 s. MAX_LATENCY is the airtime of four frames (one in flight, queueing behind
    /// others) plus `extra_latency`: the RFC's 100 s is an Internet worst case, while a lowband
    /// link is one hop (pass the delay of any tunnel or satellite hop as `extra_latency`).
    pub fn for_link(bit_rate: u32, mtu: u16, extra_latency: u32) -> Self {
        let bit_rate = u64::from(bit_rate.max(1));
        let airtime = (u64::from(mtu) * 8 * 1000).div_ceil(bit_rate);
        let extra = u64::from(extra_latency);
        let rtt = 2 * airtime + 2 * extra;
        let ack_timeout = (rtt + rtt / 4 + 250).max(2_000);
        TransmissionParams {
            ack_timeout,
            ack_random_factor_milli: 1_500,
            max_retransmit: 4,
            nstart: 1,
            max_latency: 4 * airtime + extra,
            processing_delay: ack_timeout,
            piggyback_wait: (ack_timeout / 4).min(airtime + 500),
            backoff_limit: u8::MAX,
        }
    }
    /// Largest initial timeout: ACK_TIMEOUT × ACK_RANDOM_FACTOR.
    pub fn max_initial_timeout(&self) -> u64 {
        self.ack_timeout * u64::from(self.ack_random_factor_milli) / 1000
    }
    /// MAX_TRANSMIT_SPAN = ACK_TIMEOUT × (2^MAX_RETRANSMIT − 1) × ACK_RANDOM_FACTOR.
    pub fn max_transmit_span(&self) -> u64 {
        self.max_initial_timeout() * self.interval_sum(self.max_retransmit)
    }

    /// Σ over the first `n` intervals of their multiple of the initial timeout (2^i, capped
    /// at 2^backoff_limit).
    fn interval_sum(&self, n: u8) -> u64 {
        (0..u32::from(n))
            .map(|i| 1u64 << i.min(u32::from(self.backoff_limit)).min(62))
            .sum()
    }
    /// MAX_TRANSMIT_WAIT = ACK_TIMEOUT × (2^(MAX_RETRANSMIT + 1) − 1) × ACK_RANDOM_FACTOR.
    pub fn max_transmit_wait(&self) -> u64 {
        self.max_initial_timeout() * self.interval_sum(self.max_retransmit + 1)
    }
    /// EXCHANGE_LIFETIME = MAX_TRANSMIT_SPAN + 2 × MAX_LATENCY + PROCESSING_DELAY: how long
    /// a message ID must be remembered for deduplication.
    pub fn exchange_lifetime(&self) -> u64 {
        self.max_transmit_span() + 2 * self.max_latency + self.processing_delay
    }
    /// NON_LIFETIME = MAX_TRANSMIT_SPAN + MAX_LATENCY.
    pub fn non_lifetime(&self) -> u64 {
        self.max_transmit_span() + self.max_latency
    }
    /// A sensible per-request deadline: the whole retransmission schedule plus a round trip
    /// for a separate response.
    pub fn default_deadline(&self) -> u64 {
        self.max_transmit_wait() + self.ack_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundred_bits_per_second() {
        let p = TransmissionParams::for_link(100, 60, 0);
        // 60 B = 480 bit = 4.8 s; round trip of two frames 9.6 s; +25% +250 ms
        assert_eq!(p.ack_timeout, 12_250);
        assert!(p.ack_timeout > 2 * 4_800);
        assert_eq!(p.max_initial_timeout(), 18_375);
        assert_eq!(p.max_transmit_span(), 18_375 * 15);
        assert_eq!(p.max_transmit_wait(), 18_375 * 31);
    }

    #[test]
    fn fast_link_keeps_rfc_floor() {
        let p = TransmissionParams::for_link(1_000_000, 1280, 5);
        assert_eq!(p.ack_timeout, 2_000);
        let d = TransmissionParams::default();
        assert_eq!(d.exchange_lifetime(), 247_000);
        assert_eq!(d.non_lifetime(), 145_000);
    }
}
