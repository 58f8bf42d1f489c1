//! A QMP client: QEMU's machine protocol, JSON lines on the VM's control
//! socket. The agent asks a VM's run state (`query-status`), the devices
//! it has (`query-pci`), and stops it gracefully (`system_powerdown`: the
//! guest's power button) or at once (`quit`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// A connection that has negotiated capabilities.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

/// A VM's run state, as `query-status` names it (`running`, `paused`,
/// `shutdown`, `guest-panicked`, `internal-error`, `prelaunch`, ...).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RunState(pub String);

impl RunState {
    /// The guest runs, or will (QEMU still setting up).
    #[must_use]
    pub fn is_up(&self) -> bool {
        matches!(
            self.0.as_str(),
            "running" | "prelaunch" | "inmigrate" | "finish-migrate" | "postmigrate" | "restore-vm"
        )
    }
}

/// A PCI device of the VM.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PciDevice {
    /// Its `id=` on the command line (empty for QEMU's own).
    pub id: String,
    /// PCI vendor and device IDs.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates.
    ///
    /// # Errors
    /// No socket, no greeting within `timeout`, or the negotiation refused.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, String> {
        let stream = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut qmp = Self {
            stream,
            reader,
            next_id: 1,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP closed".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line}")),
            Err(e) => Err(format!("QMP: {e}")),
        }
    }

    /// Runs `command`; its `return` value. Events that arrive meanwhile
    /// are skipped.
    ///
    /// # Errors
    /// QMP's error (its class and description), or the connection lost.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            request["arguments"] = a;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| format!("QMP {command}: {e}"))?;
        loop {
            let answer = self.read().map_err(|e| format!("{command}: {e}"))?;
            if answer.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(r) = answer.get("return") {
                return Ok(r.clone());
            }
            let error = &answer["error"];
            return Err(format!(
                "QMP {command}: {}: {}",
                error["class"].as_str().unwrap_or("?"),
                error["desc"].as_str().unwrap_or("?")
            ));
        }
    }

    /// `query-status`.
    ///
    /// # Errors
    /// As [`Self::execute`].
    pub fn status(&mut self) -> Result<RunState, String> {
        let r = self.execute("query-status", None)?;
        r["status"]
            .as_str()
            .map(|s| RunState(s.to_owned()))
            .ok_or_else(|| format!("query-status: no status in {r}"))
    }

    /// `query-pci`: every PCI device on every bus.
    ///
    /// # Errors
    /// As [`Self::execute`].
    pub fn pci_devices(&mut self) -> Result<Vec<PciDevice>, String> {
        let r = self.execute("query-pci", None)?;
        let mut out = Vec::new();
        let mut buses: Vec<&Value> = r.as_array().map(|a| a.iter().collect()).unwrap_or_default();
        while let Some(bus) = buses.pop() {
            for d in bus["devices"].as_array().into_iter().flatten() {
                let id16 =
                    |v: &Value| u16::try_from(v.as_u64().unwrap_or(0xffff)).unwrap_or(0xffff);
                out.push(PciDevice {
                    id: d["qdev_id"].as_str().unwrap_or_default().to_owned(),
                    vendor: id16(&d["id"]["vendor"]),
                    device: id16(&d["id"]["device"]),
                });
                if let Some(behind) = d.get("pci_bridge").and_then(|b| b.get("bus")) {
                    buses.push(behind);
                }
            }
        }
        Ok(out)
    }

    /// `system_powerdown`: presses the guest's power button.
    ///
    /// # Errors
    /// As [`Self::execute`].
    pub fn powerdown(&mut self) -> Result<(), String> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// `quit`: QEMU exits at once. The connection closing as QEMU answers
    /// is success.
    ///
    /// # Errors
    /// QMP refused.
    pub fn quit(&mut self) -> Result<(), String> {
        match self.execute("quit", None) {
            Ok(_) => Ok(()),
            Err(e) if e.contains("QMP closed") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
