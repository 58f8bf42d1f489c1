//! The health probe: a line protocol on a byte stream.
//!
//! The host agent writes `probe\n`; a healthy service answers one line,
//! `ok service=NAME instance=NAME rx=N tx=N dropped=N capped=N link=up\n`.
//! The link is the VF's carrier: a service whose VF has no link cannot
//! pass a frame, so it answers `down ...` instead of `ok ...` and the
//! agent takes it for unhealthy. An instance that does not answer within
//! the agent's probe timeout is unhealthy too.
//!
//! A function may answer more requests ([`Report`]): the monitor answers
//! `flows` with a first line `flows N untracked=N` and then N lines, one
//! per flow. Anything else is answered `error unknown request`.
//!
//! Where the stream comes from ([`Channel`]):
//! - `unix:PATH`: a Unix socket the service listens on; the agent
//!   connects for each probe. Process instances use this: their network
//!   namespace is their own, the file system is shared.
//! - `tty:PATH`: a serial port that the VM's second UART is wired to; QEMU
//!   serves it to the agent as a Unix socket. The port must be raw (the
//!   image's init runs `stty raw -echo` on it).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::thread;

use crate::wire::Counters;

/// Where the probe is served.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Channel {
    /// Listen on this Unix socket.
    Unix(PathBuf),
    /// Serve on this (raw) serial port.
    Tty(PathBuf),
}

impl FromStr for Channel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("unix", p)) if !p.is_empty() => Ok(Self::Unix(p.into())),
            Some(("tty", p)) if !p.is_empty() => Ok(Self::Tty(p.into())),
            _ => Err(format!("`{s}`: write unix:PATH or tty:PATH")),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tty(p) => write!(f, "tty:{}", p.display()),
        }
    }
}

/// Who answers: the service's and the instance's names, and its counters.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The service function (`monitor`, `firewall`, ...).
    pub service: String,
    /// The instance name the agent gave it.
    pub instance: String,
    /// Its VF's network interface, whose carrier the probe reports (none:
    /// no link in the answer).
    pub iface: Option<String>,
}

/// Whether `iface` has a carrier (`/sys/class/net/IFACE/carrier`).
#[must_use]
pub fn link_up(iface: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/carrier"))
        .is_ok_and(|c| c.trim() == "1")
}

/// Requests a service function answers beyond `probe`.
pub trait Report: Send + Sync {
    /// The answer to `request` (trimmed), ending in a newline, or `None`
    /// when it is not one of this function's.
    fn answer(&self, request: &str) -> Option<String>;
}

/// The answer to one request line.
#[must_use]
pub fn answer(
    request: &str,
    who: &Identity,
    counters: &Counters,
    report: Option<&dyn Report>,
) -> String {
    let request = request.trim();
    match request {
        "probe" => {
            let c = counters.snapshot();
            let (health, link) = match &who.iface {
                None => ("ok", String::new()),
                Some(iface) if link_up(iface) => ("ok", " link=up".to_owned()),
                Some(_) => ("down", " link=down".to_owned()),
            };
            format!(
                "{health} service={} instance={} rx={} tx={} dropped={} capped={}{link}\n",
                who.service, who.instance, c.rx, c.tx, c.dropped, c.capped
            )
        }
        _ => report
            .and_then(|r| r.answer(request))
            .unwrap_or_else(|| "error unknown request\n".to_owned()),
    }
}

fn serve_stream(
    reader: impl io::Read,
    mut writer: impl Write,
    who: &Identity,
    counters: &Counters,
    report: Option<&dyn Report>,
) -> io::Result<()> {
    let mut lines = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        writer.write_all(answer(&line, who, counters, report).as_bytes())?;
        writer.flush()?;
    }
}

/// Starts answering probes on `channel` in a background thread, and the
/// function's own requests through `report`.
///
/// # Errors
/// The socket cannot be bound, or the serial port opened.
pub fn serve(
    channel: &Channel,
    who: Identity,
    counters: Arc<Counters>,
    report: Option<Arc<dyn Report>>,
) -> io::Result<thread::JoinHandle<()>> {
    match channel {
        Channel::Unix(path) => {
            // A socket file left by an earlier run of the same instance.
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok(thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (who, counters) = (who.clone(), Arc::clone(&counters));
                    let report = report.clone();
                    thread::spawn(move || {
                        if let Ok(reader) = stream.try_clone() {
                            let _ =
                                serve_stream(reader, stream, &who, &counters, report.as_deref());
                        }
                    });
                }
            }))
        }
        Channel::Tty(path) => {
            let open = || -> io::Result<(File, File)> {
                let port = OpenOptions::new().read(true).write(true).open(path)?;
                Ok((port.try_clone()?, port))
            };
            let (reader, writer) =
                open().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok(thread::spawn(move || {
                // A serial port has no end of file; a read error ends it.
                let _ = serve_stream(reader, writer, &who, &counters, report.as_deref());
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;

    #[test]
    fn channels_parse_and_print() {
        assert_eq!(
            "unix:/run/p.sock".parse(),
            Ok(Channel::Unix("/run/p.sock".into()))
        );
        assert_eq!(
            "tty:/dev/ttyS1".parse::<Channel>().unwrap().to_string(),
            "tty:/dev/ttyS1"
        );
        assert!(
            "/run/p.sock"
                .parse::<Channel>()
                .unwrap_err()
                .contains("unix:PATH")
        );
        assert!("unix:".parse::<Channel>().is_err());
    }

    #[test]
    fn a_probe_over_a_unix_socket_reports_the_counters() {
        let path =
            std::env::temp_dir().join(format!("chaingate-probe-{}.sock", std::process::id()));
        let counters = Arc::new(Counters::default());
        counters.rx.fetch_add(5, Ordering::Relaxed);
        counters.tx.fetch_add(4, Ordering::Relaxed);
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        let who = Identity {
            service: "monitor".into(),
            instance: "mon-0".into(),
            iface: None,
        };
        struct Echo;
        impl Report for Echo {
            fn answer(&self, request: &str) -> Option<String> {
                request
                    .strip_prefix("echo ")
                    .map(|rest| format!("echoed {rest}\n"))
            }
        }
        serve(
            &Channel::Unix(path.clone()),
            who,
            counters,
            Some(Arc::new(Echo)),
        )
        .unwrap();
        let stream = UnixStream::connect(&path).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut ask = |req: &str| {
            writer.write_all(req.as_bytes()).unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            line
        };
        assert_eq!(
            ask("probe\n"),
            "ok service=monitor instance=mon-0 rx=5 tx=4 dropped=1 capped=0\n"
        );
        assert_eq!(ask("hello\n"), "error unknown request\n");
        assert_eq!(
            ask("echo hi\n"),
            "echoed hi\n",
            "the function's own request"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_service_whose_vf_has_no_link_answers_down() {
        let counters = Counters::default();
        let who = |iface: &str| Identity {
            service: "monitor".into(),
            instance: "mon-0".into(),
            iface: Some(iface.into()),
        };
        let up = answer("probe", &who("lo"), &counters, None);
        assert!(up.starts_with("ok ") && up.ends_with(" link=up\n"), "{up}");
        let down = answer("probe", &who("cg-no-such-vf"), &counters, None);
        assert!(
            down.starts_with("down ") && down.ends_with(" link=down\n"),
            "{down}"
        );
    }
}
