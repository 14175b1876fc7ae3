//! Commands typed into the device's room, and their replies.
//!
//! A message body starting with `!` is a command (the usual Matrix bot convention):
//!
//! | body | effect | reply |
//! |---|---|---|
//! | `!status` | none | `boot 3 up 12s led off every 60s 21.50` |
//! | `!led on`, `!led off` | switches the LED | `led on` |
//! | `!interval 30`, `!interval 5m`, `!interval 1h` | reading period (1 s ..= 1 day) | `every 30s` |
//!
//! Replies are short on purpose: each byte costs 80 ms at 100 bit/s.

use core::fmt::{self, Write as _};

use lowband_device::text::decimal;

/// A parsed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `!status`: report boot count, uptime, LED, interval and the last reading.
    Status,
    /// `!led on` / `!led off`.
    Led(bool),
    /// `!interval N[s|m|h]`: post a reading every N seconds.
    Interval(u32),
}

/// Why a message is not a command the device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// The message does not start with `!`: not for the device (ignore it silently).
    NotACommand,
    /// `!` followed by a name the device does not know.
    Unknown,
    /// A known command with a missing or bad argument.
    BadArgument,
}

/// Longest interval accepted: one day.
pub const MAX_INTERVAL_S: u32 = 86_400;

impl Command {
    /// Parses a message body. Leading/trailing ASCII whitespace and runs of spaces are ignored.
    ///
    /// # Errors
    ///
    /// See [`CommandError`]; never panics on any input.
    pub fn parse(body: &[u8]) -> Result<Command, CommandError> {
        let body = body.trim_ascii();
        let Some(rest) = body.strip_prefix(b"!") else {
            return Err(CommandError::NotACommand);
        };
        let mut words = rest
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty());
        let name = words.next().ok_or(CommandError::Unknown)?;
        let arg = words.next();
        if words.next().is_some() {
            return match name {
                b"status" | b"led" | b"interval" => Err(CommandError::BadArgument),
                _ => Err(CommandError::Unknown),
            };
        }
        match (name, arg) {
            (b"status", None) => Ok(Command::Status),
            (b"led", Some(b"on")) => Ok(Command::Led(true)),
            (b"led", Some(b"off")) => Ok(Command::Led(false)),
            (b"interval", Some(a)) => parse_interval(a).map(Command::Interval),
            (b"status" | b"led" | b"interval", _) => Err(CommandError::BadArgument),
            _ => Err(CommandError::Unknown),
        }
    }
}

fn parse_interval(a: &[u8]) -> Result<u32, CommandError> {
    let (digits, unit) = match a.last() {
        Some(b's') => (&a[..a.len() - 1], 1),
        Some(b'm') => (&a[..a.len() - 1], 60),
        Some(b'h') => (&a[..a.len() - 1], 3600),
        _ => (a, 1),
    };
    if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(CommandError::BadArgument);
    }
    let n = digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    let secs = n * unit; // at most 999_999 * 3600 < 2^32
    if secs == 0 || secs > MAX_INTERVAL_S {
        return Err(CommandError::BadArgument);
    }
    Ok(secs)
}

/// What the commands act on and `!status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Boots so far, this one included (persisted).
    pub boots: u32,
    /// LED state.
    pub led: bool,
    /// Seconds between posted readings.
    pub interval_s: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            boots: 0,
            led: false,
            interval_s: 60,
        }
    }
}

impl Settings {
    /// Applies `cmd` and writes the reply text into `out`; returns its length.
    ///
    /// `now_ms` is the uptime and `reading` the last sensor reading (milli-units), both for
    /// `!status`. The caller switches the LED to [`Settings::led`] afterwards. A reply that does
    /// not fit in `out` is cut short (64 bytes always suffice).
    pub fn apply(
        &mut self,
        cmd: Command,
        now_ms: u64,
        reading: Option<i32>,
        out: &mut [u8],
    ) -> usize {
        let mut w = SliceWriter { out, len: 0 };
        let _ = match cmd {
            Command::Status => {
                let led = if self.led { "on" } else { "off" };
                let up = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
                let (mut b1, mut b2, mut b3) = ([0u8; 10], [0u8; 10], [0u8; 10]);
                let r = [
                    "boot ",
                    decimal(self.boots, &mut b1),
                    " up ",
                    decimal(up, &mut b2),
                    "s led ",
                    led,
                    " every ",
                    decimal(self.interval_s, &mut b3),
                    "s",
                ]
                .iter()
                .try_for_each(|p| w.write_str(p));
                match reading {
                    Some(m) => r.and_then(|()| write_milli(&mut w, m)),
                    None => r.and_then(|()| w.write_str(" -")),
                }
            }
            Command::Led(on) => {
                self.led = on;
                w.write_str(if on { "led on" } else { "led off" })
            }
            Command::Interval(s) => {
                self.interval_s = s;
                let mut b = [0u8; 10];
                ["every ", decimal(s, &mut b), "s"]
                    .iter()
                    .try_for_each(|p| w.write_str(p))
            }
        };
        w.len
    }
}

/// Writes ` 21.50` for 21500 milli-units (two decimals, truncated toward zero).
fn write_milli(w: &mut SliceWriter<'_>, m: i32) -> fmt::Result {
    let sign = if m < 0 { "-" } else { "" };
    let a = m.unsigned_abs();
    let (mut b1, mut b2) = ([0u8; 10], [0u8; 10]);
    // Two digits: 0..=99 padded with a zero.
    let frac = decimal(100 + a % 1000 / 10, &mut b2);
    [" ", sign, decimal(a / 1000, &mut b1), ".", &frac[1..]]
        .iter()
        .try_for_each(|p| w.write_str(p))
}

/// The reply to a message that is not a valid command, if any (`None`: stay silent).
pub fn error_reply(e: CommandError) -> Option<&'static [u8]> {
    match e {
        CommandError::NotACommand => None,
        CommandError::Unknown => Some(b"? !status !led on|off !interval N"),
        CommandError::BadArgument => Some(b"bad argument"),
    }
}

struct SliceWriter<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.out.len() - self.len;
        let n = s.len().min(room);
        self.out[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(Command::parse(b"!status"), Ok(Command::Status));
        assert_eq!(Command::parse(b"  !status \n"), Ok(Command::Status));
        assert_eq!(Command::parse(b"!led on"), Ok(Command::Led(true)));
        assert_eq!(Command::parse(b"!led   off"), Ok(Command::Led(false)));
        assert_eq!(Command::parse(b"!interval 30"), Ok(Command::Interval(30)));
        assert_eq!(Command::parse(b"!interval 30s"), Ok(Command::Interval(30)));
        assert_eq!(Command::parse(b"!interval 5m"), Ok(Command::Interval(300)));
        assert_eq!(
            Command::parse(b"!interval 24h"),
            Ok(Command::Interval(86_400))
        );
    }

    #[test]
    fn rejects_the_rest() {
        use CommandError::*;
        for (body, e) in [
            (&b"hello"[..], NotACommand),
            (b"", NotACommand),
            (b"status", NotACommand),
            (b"!", Unknown),
            (b"!reboot", Unknown),
            (b"!Status", Unknown),
            (b"!status now", BadArgument),
            (b"!led", BadArgument),
            (b"!led blue", BadArgument),
            (b"!led on off", BadArgument),
            (b"!interval", BadArgument),
            (b"!interval 0", BadArgument),
            (b"!interval 25h", BadArgument),
            (b"!interval 86401", BadArgument),
            (b"!interval 9999999", BadArgument),
            (b"!interval -5", BadArgument),
            (b"!interval s", BadArgument),
            (b"!interval 1x", BadArgument),
            (b"!\xFF\xFE", Unknown),
        ] {
            assert_eq!(Command::parse(body), Err(e), "{:?}", body);
        }
    }

    fn reply(s: &mut Settings, cmd: Command, now: u64, r: Option<i32>) -> ([u8; 64], usize) {
        let mut out = [0u8; 64];
        let n = s.apply(cmd, now, r, &mut out);
        (out, n)
    }

    #[test]
    fn replies_and_state() {
        let mut s = Settings {
            boots: 3,
            ..Settings::default()
        };
        let (o, n) = reply(&mut s, Command::Status, 12_345, Some(21_507));
        assert_eq!(&o[..n], b"boot 3 up 12s led off every 60s 21.50");
        let (o, n) = reply(&mut s, Command::Led(true), 0, None);
        assert_eq!((&o[..n], s.led), (&b"led on"[..], true));
        let (o, n) = reply(&mut s, Command::Interval(300), 0, None);
        assert_eq!((&o[..n], s.interval_s), (&b"every 300s"[..], 300));
        let (o, n) = reply(&mut s, Command::Status, 999, Some(-1_250));
        assert_eq!(&o[..n], b"boot 3 up 0s led on every 300s -1.25");
        let (o, n) = reply(&mut s, Command::Status, 0, None);
        assert_eq!(&o[..n], b"boot 3 up 0s led on every 300s -");
    }

    #[test]
    fn worst_case_status_fits_64_bytes() {
        let mut s = Settings {
            boots: u32::MAX,
            led: false,
            interval_s: MAX_INTERVAL_S,
        };
        let mut big = [0u8; 128];
        let n = s.apply(
            Command::Status,
            10 * 365 * 86_400_000,
            Some(i32::MIN),
            &mut big,
        );
        assert!(n <= 64, "{n}: {:?}", core::str::from_utf8(&big[..n]));
        // A short buffer truncates instead of panicking.
        let mut small = [0u8; 5];
        assert_eq!(s.apply(Command::Status, 0, None, &mut small), 5);
        assert_eq!(&small, b"boot ");
    }
}
