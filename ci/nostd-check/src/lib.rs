//! Links the fast path into a `no_std` static library. The exported
//! function makes the parser and the flow hash part of the artefact, so
//! what is checked is code that is really compiled, not just type-checked.

#![no_std]

use chaingate_fastpath::wire::parse;

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

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
