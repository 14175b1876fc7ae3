//! The device's provisioning text: keys from `lowband keygen`, the room, the account and the
//! settings, one `name=value` per line.
//!
//! ```text
//! # lowband device provisioning (lines: name=value; '#' starts a comment line)
//! seed=<32 random bytes, base64>          # e.g. head -c32 /dev/urandom | base64
//! key=<device private key, base64>        # the file `lowband keygen --out device.key` wrote
//! gateway=<gateway public key, base64>    # what `lowband keygen --out gateway.key` printed
//! room=!AbCdEf:example.org                # the room to join and post to
//! token=syt_...                           # the device account's access token
//! controller=@alice:example.org           # who may send commands (repeat, up to 2)
//! filter=0                                # sync filter id (optional)
//! interval=600                            # seconds between readings (optional, default 600)
//! rate=100                                # link bit rate (optional, default 9600)
//! sync_timeout=30000                      # sync long-poll in ms (optional, default 30000)
//! ```
//!
//! Keys are base64 (standard or URL-safe alphabet, padding optional), as `lowband keygen`
//! writes and prints them. The parser borrows every text from the input (no allocation).

use crate::board::Provisioned;

/// Most controllers a device accepts commands from.
pub const CONTROLLERS: usize = 2;

/// A parsed provisioning text; texts borrowed from it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceConfig<'a> {
    /// Seed, device key and gateway key.
    pub provisioned: Provisioned,
    /// The room.
    pub room: &'a str,
    /// The access token.
    pub token: &'a str,
    /// Sync filter (id or inline JSON; empty: none).
    pub filter: &'a str,
    /// Users whose `!commands` the device runs.
    pub controllers: heapless::Vec<&'a str, CONTROLLERS>,
    /// Seconds between readings.
    pub interval_s: u32,
    /// Link bit rate.
    pub rate_bps: u32,
    /// Sync long-poll timeout, ms.
    pub sync_timeout_ms: u32,
}

impl core::fmt::Debug for DeviceConfig<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The token and the keys never reach a log.
        f.debug_struct("DeviceConfig")
            .field("room", &self.room)
            .field("controllers", &self.controllers)
            .field("interval_s", &self.interval_s)
            .finish_non_exhaustive()
    }
}

/// Why a provisioning text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// Not UTF-8, or a line without `=`.
    Malformed,
    /// A name the parser does not know.
    UnknownName,
    /// A key that is not 32 bytes of base64.
    BadKey,
    /// A number that does not parse or is 0.
    BadNumber,
    /// More controllers than [`CONTROLLERS`].
    TooManyControllers,
    /// `seed`, `key`, `gateway`, `room` or `token` is missing.
    Missing,
}

impl<'a> DeviceConfig<'a> {
    /// Parses a provisioning text. Never panics on any input.
    ///
    /// # Errors
    ///
    /// [`ConfigError`].
    pub fn parse(text: &'a [u8]) -> Result<Self, ConfigError> {
        let text = core::str::from_utf8(text).map_err(|_| ConfigError::Malformed)?;
        let (mut seed, mut key, mut gateway) = (None, None, None);
        let mut c = DeviceConfig {
            provisioned: Provisioned::from_bytes(&[0; Provisioned::LEN]),
            room: "",
            token: "",
            filter: "",
            controllers: heapless::Vec::new(),
            interval_s: 600,
            rate_bps: 9600,
            sync_timeout_ms: 30_000,
        };
        for line in text.lines() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once('=').ok_or(ConfigError::Malformed)?;
            let value = value.trim_ascii();
            match name.trim_ascii() {
                "seed" => seed = Some(key32(value)?),
                "key" => key = Some(key32(value)?),
                "gateway" => gateway = Some(key32(value)?),
                "room" => c.room = value,
                "token" => c.token = value,
                "filter" => c.filter = value,
                "controller" => c
                    .controllers
                    .push(value)
                    .map_err(|_| ConfigError::TooManyControllers)?,
                "interval" => c.interval_s = number(value)?,
                "rate" => c.rate_bps = number(value)?,
                "sync_timeout" => c.sync_timeout_ms = number(value)?,
                _ => return Err(ConfigError::UnknownName),
            }
        }
        let (Some(seed), Some(key), Some(gateway)) = (seed, key, gateway) else {
            return Err(ConfigError::Missing);
        };
        if c.room.is_empty() || c.token.is_empty() {
            return Err(ConfigError::Missing);
        }
        c.provisioned = Provisioned {
            seed,
            static_key: key,
            gateway_key: gateway,
        };
        Ok(c)
    }
}

fn number(v: &str) -> Result<u32, ConfigError> {
    match v.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError::BadNumber),
    }
}

/// 32 bytes from base64 (standard or URL-safe, padding optional).
fn key32(v: &str) -> Result<[u8; 32], ConfigError> {
    let mut out = [0u8; 32];
    let mut n = 0;
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in v.trim_end_matches('=').as_bytes() {
        let d = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(ConfigError::BadKey),
        };
        acc = (acc << 6) | u32::from(d);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n).ok_or(ConfigError::BadKey)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    // 43 characters: 32 bytes and 2 spare zero bits.
    if n != 32 || acc & ((1 << bits) - 1) != 0 {
        return Err(ConfigError::BadKey);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = b"# device 7\n\
        seed=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE\n\
        key = JCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQ=\n\
        gateway=QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI\n\
        room=!r:example.org\n\
        token=syt_abc\n\
        controller=@alice:example.org\n\
        controller=@bob:example.org\n\
        \n\
        interval=900\n\
        rate=100\n";

    #[test]
    fn parses_a_provisioning_text() {
        let c = DeviceConfig::parse(TEXT).unwrap();
        assert_eq!(c.provisioned.seed, [1; 32]);
        assert_eq!(c.provisioned.static_key, [0x24; 32]);
        assert_eq!(c.provisioned.gateway_key, [0x42; 32]);
        assert_eq!(
            (c.room, c.token, c.filter),
            ("!r:example.org", "syt_abc", "")
        );
        assert_eq!(c.controllers, ["@alice:example.org", "@bob:example.org"]);
        assert_eq!(
            (c.interval_s, c.rate_bps, c.sync_timeout_ms),
            (900, 100, 30_000)
        );
        extern crate std;
        let dbg = std::format!("{c:?}");
        assert!(!dbg.contains("syt_abc"), "{dbg}");
    }

    #[test]
    fn refuses_bad_texts() {
        extern crate alloc;
        let with = |extra: &str| {
            let mut v: alloc::vec::Vec<u8> = TEXT.to_vec();
            v.extend_from_slice(extra.as_bytes());
            DeviceConfig::parse(&v).map(|_| ())
        };
        assert_eq!(
            with("controller=@c:x\n"),
            Err(ConfigError::TooManyControllers)
        );
        assert_eq!(with("interval=0\n"), Err(ConfigError::BadNumber));
        assert_eq!(with("colour=red\n"), Err(ConfigError::UnknownName));
        assert_eq!(with("oops\n"), Err(ConfigError::Malformed));
        assert_eq!(with("key=AAAA\n"), Err(ConfigError::BadKey));
        assert_eq!(
            with("key=JCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCR\n"),
            Err(ConfigError::BadKey)
        );
        assert_eq!(
            DeviceConfig::parse(b"room=!r:x\n").map(|_| ()),
            Err(ConfigError::Missing)
        );
        assert_eq!(
            DeviceConfig::parse(b"\xff").map(|_| ()),
            Err(ConfigError::Malformed)
        );
        // Every prefix of a valid text is refused or parses; never a panic.
        for n in 0..TEXT.len() {
            let _ = DeviceConfig::parse(&TEXT[..n]);
        }
    }
}
