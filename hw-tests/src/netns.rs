//! Running code inside a network namespace: a thread joins the namespace
//! (`setns`), runs the closure and ends. Sockets opened there stay in the
//! namespace, whichever thread uses them afterwards.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Runs `f` on a thread inside the named namespace (`/run/netns/NAME`,
/// or a path such as `/proc/1/ns/net` for the host's own).
///
/// # Errors
/// The namespace cannot be opened or joined.
///
/// # Panics
/// If `f` panics.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let path = if name.starts_with('/') {
        name.to_owned()
    } else {
        format!("/run/netns/{name}")
    };
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `ns` is an open namespace file; setns only changes
            // this thread's network namespace, and the thread ends after.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
