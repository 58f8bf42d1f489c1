//! `dpu-fw`: the chaingate DPU runtime.
//!
//! For now it carries the operator's capture tool (`dpu-fw flows`); the
//! data-path daemon joins it as the runtime grows.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dpu_fw::flows;

/// The chaingate DPU runtime and its tools.
#[derive(Parser, Debug)]
#[command(name = "dpu-fw", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the flow key the fast path reads from every frame of a capture.
    ///
    /// One JSON object per frame (numbered from 1, as in tcpdump and
    /// Wireshark): {"frame":N,"key":{...},"inner":{...}|null,"error":null}.
    /// `inner` is the key inside a VXLAN or Geneve tunnel; a frame that
    /// does not parse has "key":null and "error":"<what> at offset N".
    /// Reads pcap and pcapng; frames of other link types than Ethernet are
    /// skipped with a note on stderr. Frames cut by a snap length are read
    /// as far as their headers go.
    Flows {
        /// The capture file (pcap or pcapng), or - for standard input.
        capture: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dpu-fw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Flows { capture } => {
            let input: Box<dyn Read> = if capture.as_os_str() == "-" {
                Box::new(io::stdin().lock())
            } else {
                let file = File::open(&capture)
                    .with_context(|| format!("cannot open {}", capture.display()))?;
                Box::new(BufReader::with_capacity(1 << 16, file))
            };
            let mut out = BufWriter::new(io::stdout().lock());
            let mut notes = io::stderr().lock();
            let summary = match flows::dump(input, &mut out, &mut notes) {
                // A closed pipe (`| head`) is the reader's choice, not a failure.
                Err(flows::FlowsError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS);
                }
                other => other.with_context(|| format!("{}", capture.display()))?,
            };
            for (link, n) in &summary.skipped {
                eprintln!("note: {n} frame(s) of link type {link} skipped");
            }
            if let Some(why) = summary.stopped {
                eprintln!(
                    "dpu-fw: {}: {why}; the {} frame(s) before were printed",
                    capture.display(),
                    summary.frames
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
