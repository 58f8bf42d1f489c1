//! EAL start-up: once per process, from the runtime's configuration.

use std::ffi::CString;
use std::sync::OnceLock;

use super::Errno;

/// Why EAL did not start.
#[derive(Debug, thiserror::Error)]
pub enum EalError {
    /// `rte_eal_init` refused the arguments or the machine.
    #[error("EAL initialisation failed with arguments {args:?}: {errno}")]
    Init {
        /// The arguments given.
        args: Vec<String>,
        /// Why.
        errno: Errno,
    },
    /// An argument holds a NUL byte.
    #[error("EAL argument {0:?} holds a NUL byte")]
    Argument(String),
    /// EAL was started before with other arguments (it starts once per
    /// process).
    #[error("EAL was already started with {0:?}")]
    Again(Vec<String>),
}

/// Proof that EAL runs in this process.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
}

static EAL: OnceLock<Result<Eal, (Vec<String>, Errno)>> = OnceLock::new();

impl Eal {
    /// Starts EAL with `args` (without the program name), or returns the
    /// running one when it was started with the same arguments. A failed
    /// start is final for the process, as it is for EAL.
    ///
    /// # Errors
    /// [`EalError`].
    pub fn init(args: &[String]) -> Result<&'static Self, EalError> {
        for a in args {
            if a.contains('\0') {
                return Err(EalError::Argument(a.clone()));
            }
        }
        let eal = EAL.get_or_init(|| {
            start(args)
                .map(|()| Self {
                    args: args.to_vec(),
                })
                .map_err(|errno| (args.to_vec(), errno))
        });
        match eal {
            Ok(eal) if eal.args == args => Ok(eal),
            Ok(eal) => Err(EalError::Again(eal.args.clone())),
            Err((args, errno)) => Err(EalError::Init {
                args: args.clone(),
                errno: *errno,
            }),
        }
    }

    /// The directory EAL keeps its run-time files in for `file_prefix`
    /// (as root: `/var/run/dpdk/PREFIX`), for whoever must remove them
    /// (a test; after a crash).
    #[must_use]
    pub fn runtime_dir(file_prefix: &str) -> std::path::PathBuf {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|_| {
                // SAFETY: geteuid cannot fail.
                let uid = unsafe { libc::geteuid() };
                uid != 0
            })
            .map_or_else(|| std::path::PathBuf::from("/var/run"), Into::into);
        base.join("dpdk").join(file_prefix)
    }

    /// Releases EAL's resources at the end of the process, when it was
    /// started; no DPDK call may follow (every port and pool is dropped
    /// before).
    pub fn cleanup() {
        if EAL.get().is_some_and(Result::is_ok) {
            // SAFETY: EAL runs, and the caller promises nothing uses it
            // any more.
            let _ = unsafe { dpdk_sys::rte_eal_cleanup() };
        }
    }

    /// The arguments EAL runs with.
    #[must_use]
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

fn start(args: &[String]) -> Result<(), Errno> {
    // Arguments were checked for NUL bytes.
    let owned: Vec<CString> = std::iter::once("dpu-fw")
        .chain(args.iter().map(String::as_str))
        .filter_map(|a| CString::new(a).ok())
        .collect();
    // EAL may permute argv and keep pointers into it: both live to the end
    // of the process.
    let owned = owned.leak();
    let argv: &mut [*mut std::ffi::c_char] = owned
        .iter()
        .map(|c| c.as_ptr().cast_mut())
        .collect::<Vec<_>>()
        .leak();
    let argc = i32::try_from(argv.len()).unwrap_or(i32::MAX);
    // SAFETY: argv holds argc valid NUL-terminated strings that live until
    // the end of the process; EAL is started once, guarded by the
    // OnceLock.
    let rc = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
