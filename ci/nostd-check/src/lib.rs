//! Links the fast path into a `no_std` static library. The exported
//! functions make the parser, the flow hash and a whole data path (config,
//! classifier, balancer, sessions) part of the artefact, so what is checked
//! is code that is really compiled, not just type-checked. The fast path
//! allocates its tables when it is set up; here they come from a bump
//! allocator over a static arena, as firmware without an OS would do.

#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use chaingate_fastpath::datapath::{Datapath, Options, Verdict};
use chaingate_fastpath::offload::{
    ManagerOptions, Mlx5, OffloadManager, Outcome, Profile, SoftSwitch,
};
use chaingate_fastpath::wire::{FrameBuf, parse};
use chaingate_shared::config::{PortRole, Uplink};
use chaingate_shared::{Config, Generation, Nanos};

const ARENA: usize = 8 << 20;

struct Bump {
    arena: UnsafeCell<[u8; ARENA]>,
    next: AtomicUsize,
}

// SAFETY: `next` hands out disjoint ranges of the arena atomically; the
// arena itself is only reached through those ranges.
unsafe impl Sync for Bump {}

// SAFETY: every returned pointer is inside the arena, aligned as asked,
// and never handed out twice; freeing is a no-op (a bump allocator).
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.arena.get().cast::<u8>();
        let mut start = 0;
        let claimed = self.next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            start = (base as usize + next).next_multiple_of(layout.align()) - base as usize;
            let end = start.checked_add(layout.size())?;
            (end <= ARENA).then_some(end)
        });
        match claimed {
            // SAFETY: `start + size <= ARENA`, so the pointer stays inside
            // the arena.
            Ok(_) => unsafe { base.add(start) },
            Err(_) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static ALLOCATOR: Bump = Bump {
    arena: UnsafeCell::new([0; ARENA]),
    next: AtomicUsize::new(0),
};

/// The symmetric flow hash of a 128-byte frame buffer of which `len` bytes
/// are the frame, or 0 when it does not parse.
#[unsafe(no_mangle)]
pub extern "C" fn chaingate_flow_hash(frame: &[u8; 128], len: usize) -> u64 {
    frame
        .get(..len)
        .and_then(|f| parse(f).ok())
        .and_then(|p| p.key().map(|k| k.symmetric_hash()))
        .unwrap_or(0)
}

/// A data path with two uplinks and no policies: everything bypasses.
fn bypass_datapath() -> Option<(Datapath, chaingate_shared::PortId, chaingate_shared::PortId)> {
    let mut b = Config::builder(Generation(1));
    let (Ok(lan), Ok(wan)) = (
        b.add_port("lan", PortRole::Uplink(Uplink::Lan)),
        b.add_port("wan", PortRole::Uplink(Uplink::Wan)),
    ) else {
        return None;
    };
    let config = b.build().ok()?;
    let options = Options {
        sessions: 64,
        events: 64,
        ..Options::default()
    };
    Some((Datapath::new(config, &options), lan, wan))
}

/// Runs a frame through a bypass data path from lan: 1 when it is
/// forwarded.
#[unsafe(no_mangle)]
pub extern "C" fn chaingate_bypass(frame: &[u8; 128], len: usize) -> u32 {
    let Some((mut dp, lan, _)) = bypass_datapath() else { return 0 };
    let Some(frame) = frame.get(..len) else { return 0 };
    u32::from(matches!(dp.process(lan, frame, Nanos(0)), Verdict::Forward { .. }))
}

/// Runs a TCP SYN through a bypass data path whose sessions are offloaded
/// to the software eSwitch (mlx5 profile): the SYN and its answer go
/// through the fast path, which then installs the session's rules; the
/// next copy of the frame must leave the eSwitch by itself. Returns the
/// number of rules installed, or 0.
#[unsafe(no_mangle)]
pub extern "C" fn chaingate_offload(frame: &[u8; 128], len: usize) -> u32 {
    let Some((mut dp, lan, wan)) = bypass_datapath() else { return 0 };
    let backend = SoftSwitch::ready(64, Profile::Mlx5(Mlx5::default()));
    let mut mgr = OffloadManager::new(backend, &dp, ManagerOptions::default());
    let mut copy = *frame;
    let Ok(mut buf) = FrameBuf::new(&mut copy, 0, len) else { return 0 };
    if mgr.backend_mut().process(lan, &mut buf, Nanos(0)) != Outcome::ToSoftware(lan) {
        return 0;
    }
    if !matches!(dp.process(lan, buf.frame(), Nanos(0)), Verdict::Forward { .. }) {
        return 0;
    }
    // The answer: addresses and ports swapped, SYN and ACK.
    let mut answer = *frame;
    answer.copy_within(26..30, 120);
    answer.copy_within(30..34, 26);
    answer.copy_within(120..124, 30);
    answer.copy_within(34..36, 120);
    answer.copy_within(36..38, 34);
    answer.copy_within(120..122, 36);
    if let Some(flags) = answer.get_mut(47) {
        *flags = 0x12;
    }
    let Some(answer) = answer.get(..len) else { return 0 };
    if !matches!(dp.process(wan, answer, Nanos(0)), Verdict::Forward { .. }) {
        return 0;
    }
    mgr.handle_events(&mut dp);
    let mut copy = *frame;
    let Ok(mut buf) = FrameBuf::new(&mut copy, 0, len) else { return 0 };
    // An established connection's segment (ACK): by rule alone.
    if let Some(flags) = buf.frame_mut().get_mut(47) {
        *flags = 0x10;
    }
    match mgr.backend_mut().process(lan, &mut buf, Nanos(1)) {
        Outcome::Out(_) => u32::try_from(mgr.stats().rules).unwrap_or(0),
        _ => 0,
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The host's prebuilt `alloc` was compiled with unwinding and names this
/// symbol; with `panic = "abort"` nothing ever calls it.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
