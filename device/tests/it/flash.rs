//! A RAM flash with power-cut injection.

use lowband_device::{Flash, Page};

pub const PAGE: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCut;

/// Two pages of RAM "flash" with NOR rules (program only erased bytes, in WRITE_SIZE runs).
/// `cut_after = Some(n)`: after `n` more programmed bytes the power fails (the run in progress
/// is programmed partially and the call fails), like a reset in the middle of a save.
#[derive(Debug, Clone)]
pub struct RamFlash<const W: usize = 1> {
    pub pages: [Vec<u8>; 2],
    pub cut_after: Option<usize>,
    pub erases: usize,
}

impl<const W: usize> RamFlash<W> {
    pub fn new() -> Self {
        Self {
            pages: [vec![0xff; PAGE], vec![0xff; PAGE]],
            cut_after: None,
            erases: 0,
        }
    }
    fn idx(p: Page) -> usize {
        match p {
            Page::A => 0,
            Page::B => 1,
        }
    }
}

impl<const W: usize> Flash for RamFlash<W> {
    type Error = PowerCut;
    const WRITE_SIZE: usize = W;
    fn page_len(&self) -> usize {
        PAGE
    }
    fn read(&mut self, page: Page, offset: usize, buf: &mut [u8]) -> Result<(), PowerCut> {
        buf.copy_from_slice(&self.pages[Self::idx(page)][offset..offset + buf.len()]);
        Ok(())
    }
    fn erase(&mut self, page: Page) -> Result<(), PowerCut> {
        self.erases += 1;
        self.pages[Self::idx(page)].fill(0xff);
        Ok(())
    }
    fn program(&mut self, page: Page, offset: usize, data: &[u8]) -> Result<(), PowerCut> {
        assert_eq!(offset % W, 0, "aligned offset");
        assert_eq!(data.len() % W, 0, "whole write units");
        let p = &mut self.pages[Self::idx(page)][offset..offset + data.len()];
        assert!(
            p.iter().all(|&b| b == 0xff),
            "programming only erased bytes"
        );
        let n = match self.cut_after {
            Some(left) if left < data.len() => {
                self.cut_after = None;
                p[..left].copy_from_slice(&data[..left]);
                return Err(PowerCut);
            }
            Some(left) => {
                self.cut_after = Some(left - data.len());
                data.len()
            }
            None => data.len(),
        };
        p[..n].copy_from_slice(&data[..n]);
        Ok(())
    }
}
