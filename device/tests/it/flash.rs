//! A RAM flash with power-cut injection.

use lowband_device::{Flash, Page};

pub const PAGE: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCut;

/// Two pages of RAM "flash". `cut_after = Some(n)` makes the next write erase the page, program
/// only its first `n` bytes and fail, like a power loss in the middle of programming.
#[derive(Debug, Clone)]
pub struct RamFlash {
    pub pages: [Vec<u8>; 2],
    pub cut_after: Option<usize>,
    pub writes: usize,
}

impl RamFlash {
    pub fn new() -> Self {
        Self {
            pages: [vec![0xff; PAGE], vec![0xff; PAGE]],
            cut_after: None,
            writes: 0,
        }
    }
    fn idx(p: Page) -> usize {
        match p {
            Page::A => 0,
            Page::B => 1,
        }
    }
}

impl Flash for RamFlash {
    type Error = PowerCut;
    fn read(&mut self, page: Page, buf: &mut [u8]) -> Result<(), PowerCut> {
        let n = buf.len().min(PAGE);
        buf[..n].copy_from_slice(&self.pages[Self::idx(page)][..n]);
        Ok(())
    }
    fn write(&mut self, page: Page, data: &[u8]) -> Result<(), PowerCut> {
        self.writes += 1;
        let p = &mut self.pages[Self::idx(page)];
        p.fill(0xff);
        match self.cut_after.take() {
            Some(n) => {
                let n = n.min(data.len());
                p[..n].copy_from_slice(&data[..n]);
                Err(PowerCut)
            }
            None => {
                p[..data.len()].copy_from_slice(data);
                Ok(())
            }
        }
    }
}
