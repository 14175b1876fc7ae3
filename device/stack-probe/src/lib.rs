//! Entry points of lowband-device at the default capacities, for stack measurement only.
#![no_std]
use lowband_device::{DefaultSyncState, SyncUpdate, Body, EventIn, RoomRef};
#[panic_handler]
fn p(_: &core::panic::PanicInfo) -> ! { loop {} }
#[no_mangle]
pub extern "C" fn dev_restore(out: &mut DefaultSyncState, buf: *const u8, len: usize) -> bool {
    let b = unsafe { core::slice::from_raw_parts(buf, len) };
    out.restore_into(b).is_ok()
}
#[no_mangle]
pub extern "C" fn dev_save(s: &DefaultSyncState, buf: *mut u8, len: usize) -> usize {
    let b = unsafe { core::slice::from_raw_parts_mut(buf, len) };
    s.save(b).unwrap_or(0)
}
#[no_mangle]
pub extern "C" fn dev_apply(s: &mut DefaultSyncState, id: *const u8, len: usize) -> bool {
    let b = unsafe { core::slice::from_raw_parts(id, len) };
    let t = core::str::from_utf8(b).unwrap_or("");
    s.apply(SyncUpdate::Event(EventIn { room: RoomRef::Short(1), event_id: t, sender: t, kind: t, msgtype: Some(t), body: Body::Text(t), ts: 0 })) == lowband_device::Applied::Stored
}
#[no_mangle]
pub extern "C" fn dev_send(s: &mut DefaultSyncState, id: *const u8, len: usize) -> bool {
    let b = unsafe { core::slice::from_raw_parts(id, len) };
    let t = core::str::from_utf8(b).unwrap_or("");
    s.send_text(t, t).is_ok() && s.next_event().is_some()
}
#[no_mangle]
pub extern "C" fn dev_save_stream(s: &DefaultSyncState, f: &mut lowband_device::AbStore<Fl>) -> bool {
    s.save_to(f).is_ok()
}
#[no_mangle]
pub extern "C" fn dev_load(s: &mut DefaultSyncState, f: &mut lowband_device::AbStore<Fl>, buf: *mut u8, len: usize) -> bool {
    let b = unsafe { core::slice::from_raw_parts_mut(buf, len) };
    s.load_into(f, b).unwrap_or(false)
}
#[no_mangle]
pub extern "C" fn dev_boot(f: &mut lowband_device::AbStore<Fl>, seed: &[u8; 32], out: &mut [u8; 32]) -> u32 {
    use rand_core::RngCore;
    match lowband_device::BootCounter::advance(f, 0) { Ok(b) => { let v = b.get(); let mut r = lowband_device::EphemeralRng::new(seed, b); r.fill_bytes(out); v } Err(_) => 0 }
}
pub struct Fl;
extern "C" { fn fl_read(p: u8, off: usize, b: *mut u8, n: usize) -> i32; fn fl_erase(p: u8) -> i32; fn fl_prog(p: u8, off: usize, b: *const u8, n: usize) -> i32; }
impl lowband_device::Flash for Fl {
    type Error = i32;
    const WRITE_SIZE: usize = 8;
    fn page_len(&self) -> usize { 8192 }
    fn read(&mut self, p: lowband_device::Page, off: usize, b: &mut [u8]) -> Result<(), i32> { match unsafe { fl_read(p as u8, off, b.as_mut_ptr(), b.len()) } { 0 => Ok(()), e => Err(e) } }
    fn erase(&mut self, p: lowband_device::Page) -> Result<(), i32> { match unsafe { fl_erase(p as u8) } { 0 => Ok(()), e => Err(e) } }
    fn program(&mut self, p: lowband_device::Page, off: usize, b: &[u8]) -> Result<(), i32> { match unsafe { fl_prog(p as u8, off, b.as_ptr(), b.len()) } { 0 => Ok(()), e => Err(e) } }
}
