//! The PPP 16-bit frame check sequence (CRC-16/X-25, a.k.a. CRC-16/IBM-SDLC).
//!
//! Reflected polynomial `0x8408` (x^16 + x^12 + x^5 + 1), initial value `0xFFFF`, final XOR
//! `0xFFFF`, sent least significant byte first, exactly as
//! [RFC 1662 §C.2](https://www.rfc-editor.org/rfc/rfc1662#appendix-C.2). Running the register
//! over a frame *and* its FCS leaves the constant [`GOOD`], so a streaming receiver checks a frame
//! without knowing where the payload ends. A 16-entry nibble table keeps flash use at 32 bytes:
//! at serial bit rates speed is irrelevant.

/// Initial register value.
pub const INIT: u16 = 0xFFFF;
/// Register value after running over a frame followed by its correct FCS (RFC 1662 `PPPGOODFCS16`).
pub const GOOD: u16 = 0xF0B8;

const fn nibble_table() -> [u16; 16] {
    let mut t = [0u16; 16];
    let mut i = 0;
    while i < 16 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 4 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x8408
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static TABLE: [u16; 16] = nibble_table();

/// Feeds one byte into the register.
#[inline]
pub fn update(crc: u16, byte: u8) -> u16 {
    let crc = (crc >> 4) ^ TABLE[usize::from((crc ^ u16::from(byte)) as u8 & 0x0F)];
    (crc >> 4) ^ TABLE[usize::from((crc ^ u16::from(byte >> 4)) as u8 & 0x0F)]
}

/// The FCS of `data` (register complemented), to be sent little-endian after the data.
pub fn fcs16(data: &[u8]) -> u16 {
    !data.iter().fold(INIT, |c, &b| update(c, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // The catalogue check value of CRC-16/X-25 over ASCII "123456789".
        assert_eq!(fcs16(b"123456789"), 0x906E);
        assert_eq!(fcs16(b""), 0x0000);
    }

    #[test]
    fn residue_is_good() {
        let data = b"\x01\x02\x00\xff lowband";
        let fcs = fcs16(data).to_le_bytes();
        let reg = data.iter().chain(&fcs).fold(INIT, |c, &b| update(c, b));
        assert_eq!(reg, GOOD);
        let reg = data
            .iter()
            .chain(&[fcs[0] ^ 1, fcs[1]])
            .fold(INIT, |c, &b| update(c, b));
        assert_ne!(reg, GOOD);
    }
}
