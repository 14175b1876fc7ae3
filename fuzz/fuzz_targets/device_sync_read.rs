//! Fuzz the device's reader of sync responses (gateway bytes: packed CBOR) and the state it
//! feeds: never a panic, and a batch is committed only when the whole body read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowband_device::runner::read_sync;
use lowband_device::{DefaultSyncState, SyncUpdate};

fuzz_target!(|data: &[u8]| {
    let (initial, cbor) = match data.split_first() {
        Some((&b, rest)) => (b & 1 == 1, rest),
        None => (false, data),
    };
    let mut state = DefaultSyncState::new(0);
    state.begin_boot(1).unwrap();
    let mut since = 0usize;
    let r = read_sync(cbor, initial, &mut |u| {
        if matches!(u, SyncUpdate::Since(_)) {
            since += 1;
        }
        state.apply(u);
    });
    assert_eq!(since, usize::from(r.is_ok()), "Since exactly when the read succeeded");
    while state.next_event().is_some() {}
});
