//! `dpu-fw`: the chaingate DPU runtime (`run`), its configuration check
//! (`check`), a control client for operators (`ctl`), and the capture tool
//! (`flows`).

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use chaingate_proto::dpu;
use clap::{Parser, Subcommand};
use dpu_fw::config::RuntimeConfig;
use dpu_fw::{ctl, daemon, flows};

/// The chaingate DPU runtime and its tools.
///
/// On a DPU, `dpu-fw run CONFIG` is the daemon: it owns the switch's ports,
/// steers every connection through its chain of services, and takes its
/// traffic configuration from the host agent over the control API.
#[derive(Parser, Debug)]
#[command(name = "dpu-fw", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the data path and the control API until SIGTERM or SIGINT.
    ///
    /// CONFIG (YAML) names the ports (`afpacket:IFNAME` or `dpdk:DEVARGS`)
    /// and their roles (lan, wan, vf), the session table size, the control
    /// address (default 0.0.0.0:7400), the telemetry period and the offload
    /// backend; see docs/runtime.md. Traffic is dropped until the host
    /// agent applies a configuration. Logs go to stderr (RUST_LOG=debug for
    /// more).
    Run {
        /// The runtime configuration file.
        config: PathBuf,
    },
    /// Check a runtime configuration file and the devices it names, then
    /// exit: 0 when `run` would start, 1 with the reason otherwise.
    Check {
        /// The runtime configuration file.
        config: PathBuf,
    },
    /// Talk to a running dpu-fw (answers are JSON, one object per line).
    Ctl {
        /// The control API's address.
        #[arg(long, default_value = "127.0.0.1:7400", global = true)]
        dpu: String,
        #[command(subcommand)]
        action: CtlAction,
    },
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

#[derive(Subcommand, Debug)]
enum CtlAction {
    /// Apply a gateway configuration (YAML; see docs/config.md). Without a
    /// `generation` in the file, the DPU's current one plus one is used.
    Apply {
        /// The configuration file.
        file: PathBuf,
    },
    /// Set an instance active, draining or down.
    State {
        /// The instance's name.
        instance: String,
        /// active, draining or down.
        #[arg(value_parser = ["active", "draining", "down"])]
        state: String,
    },
    /// Every counter of the runtime.
    Stats,
    /// List sessions (all pages, or up to --limit).
    Sessions {
        /// Only sessions through this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Only sessions of this chain.
        #[arg(long)]
        chain: Option<String>,
        /// Only sessions with this address on either side.
        #[arg(long)]
        address: Option<String>,
        /// Only this IP protocol number.
        #[arg(long)]
        protocol: Option<u32>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print telemetry as it comes.
    Watch {
        /// Milliseconds between messages (the runtime's period at least).
        #[arg(long, default_value_t = 1000)]
        period_ms: u32,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. }) {
        tracing_subscriber::fmt()
            .with_writer(io::stderr)
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .init();
    }
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
        Command::Run { config } => {
            let config = RuntimeConfig::load(&config)?;
            daemon::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let parsed = RuntimeConfig::load(&config)?;
            let ports = daemon::open_ports(&parsed)?;
            drop(ports);
            println!(
                "{}: {} ports, {} sessions, control on {}, offload {}",
                config.display(),
                parsed.ports.len(),
                parsed.sessions,
                parsed.listen,
                parsed.backend
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl { dpu, action } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(control(&dpu, action))?;
            Ok(ExitCode::SUCCESS)
        }
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

async fn control(addr: &str, action: CtlAction) -> anyhow::Result<()> {
    let mut client = ctl::connect(addr).await?;
    match action {
        CtlAction::Apply { file } => ctl::print_json(&ctl::apply(&mut client, &file).await?),
        CtlAction::State { instance, state } => {
            let state = match state.as_str() {
                "draining" => dpu::InstanceState::Draining,
                "down" => dpu::InstanceState::Down,
                _ => dpu::InstanceState::Active,
            };
            let reply = client
                .set_instance_state(dpu::SetInstanceStateRequest {
                    instance,
                    state: state.into(),
                })
                .await
                .map_err(ctl::CtlError::from)?;
            ctl::print_json(reply.get_ref());
        }
        CtlAction::Stats => {
            let reply = client
                .get_stats(dpu::GetStatsRequest {})
                .await
                .map_err(ctl::CtlError::from)?;
            ctl::print_json(reply.get_ref());
        }
        CtlAction::Sessions {
            instance,
            chain,
            address,
            protocol,
            limit,
        } => {
            let mut token = String::new();
            let mut left = limit.unwrap_or(usize::MAX);
            while left > 0 {
                let page = client
                    .list_sessions(dpu::ListSessionsRequest {
                        instance: instance.clone(),
                        chain: chain.clone(),
                        address: address.clone(),
                        protocol,
                        page_size: u32::try_from(left.min(1000)).unwrap_or(1000),
                        page_token: token,
                    })
                    .await
                    .map_err(ctl::CtlError::from)?
                    .into_inner();
                for s in page.sessions.iter().take(left) {
                    ctl::print_json(s);
                }
                left = left.saturating_sub(page.sessions.len());
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        CtlAction::Watch { period_ms, count } => {
            let mut stream = client
                .watch_telemetry(dpu::WatchTelemetryRequest { period_ms })
                .await
                .map_err(ctl::CtlError::from)?
                .into_inner();
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                let next = tokio::time::timeout(
                    Duration::from_millis(u64::from(period_ms)) * 3 + Duration::from_secs(5),
                    stream.message(),
                )
                .await
                .context("no telemetry for a while")?;
                match next.map_err(ctl::CtlError::from)? {
                    Some(t) => ctl::print_json(&t),
                    None => break,
                }
                seen += 1;
            }
        }
    }
    Ok(())
}
