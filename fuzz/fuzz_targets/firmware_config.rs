//! Fuzz the device's provisioning text parser (`lowband_firmware::DeviceConfig`): any bytes
//! parse or are refused, never a panic; what parses keeps its texts inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_firmware::DeviceConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = DeviceConfig::parse(data) {
        let within = |s: &str| s.is_empty() || data.windows(s.len()).any(|w| w == s.as_bytes());
        assert!(within(c.room) && within(c.token) && within(c.filter));
        assert!(!c.room.is_empty() && !c.token.is_empty());
        assert!(c.interval_s > 0 && c.rate_bps > 0);
    }
});
