//! `dpu-fw`: the chaingate DPU runtime (`run`), its configuration check
//! (`check`), a control client for operators (`ctl`), and the capture tool
//! (`flows`).

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write as _};
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
    /// Show the hardware rules a gateway configuration gives, without a
    /// DPU: N synthetic sessions, spread over the configuration's policies,
    /// are set up by the fast path and offloaded into the software eSwitch
    /// of the chosen profile, as the daemon would.
    ///
    /// Prints what the sessions got (offloaded, refused by reason) on
    /// stderr; with --testpmd, the rules on stdout as dpdk-testpmd `flow`
    /// commands, one a line: the shared counters (`flow indirect_action`),
    /// the base jumps, then every session's rules, transfer rules on port
    /// 0 (the proxy). Replay them on a card started with `dv_flow_en=1`
    /// (docs/bluefield.md).
    Rules {
        /// The gateway configuration (YAML, docs/config.md).
        config: PathBuf,
        /// Synthetic sessions.
        #[arg(long, default_value_t = 8)]
        sessions: usize,
        /// Print the rules as dpdk-testpmd commands.
        #[arg(long)]
        testpmd: bool,
        /// The eSwitch's profile: mlx5 (a BlueField) or generic.
        #[arg(long, default_value = "mlx5", value_parser = ["mlx5", "generic"])]
        profile: String,
        /// A port's ethdev number on the card, as NAME=ID (repeatable);
        /// otherwise ports are numbered in the configuration's order.
        #[arg(long = "port", value_name = "NAME=ID")]
        ports: Vec<String>,
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
    /// The rules in force (all pages).
    Rules {
        /// As dpdk-testpmd `flow` commands, one a line (the only form).
        #[arg(long, required = true)]
        testpmd: bool,
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
            let profile = if parsed.backend == dpu_fw::config::Backend::Soft {
                format!(" (profile {})", parsed.profile)
            } else {
                String::new()
            };
            println!(
                "{}: {} ports, {} sessions, control on {}, offload {}{profile}",
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
        Command::Rules {
            config,
            sessions,
            testpmd,
            profile,
            ports,
        } => {
            rules(&config, sessions, testpmd, &profile, &ports)?;
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

/// `dpu-fw rules`.
fn rules(
    path: &std::path::Path,
    sessions: usize,
    testpmd: bool,
    profile: &str,
    ports: &[String],
) -> anyhow::Result<()> {
    use chaingate_fastpath::offload::{Mlx5, Profile};
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, message) =
        chaingate_proto::file::load(&text, 1).with_context(|| path.display().to_string())?;
    let config = chaingate_shared::Config::try_from(message)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut ids: Vec<u16> = (0..config.ports().len())
        .map(|i| u16::try_from(i).unwrap_or(u16::MAX))
        .collect();
    for p in ports {
        let (name, id) = p
            .split_once('=')
            .with_context(|| format!("--port {p}: give NAME=ID"))?;
        let at = config
            .ports()
            .iter()
            .position(|x| x.name().as_str() == name)
            .with_context(|| format!("--port {p}: the configuration has no port {name}"))?;
        ids[at] = id
            .parse()
            .with_context(|| format!("--port {p}: {id} is not an ethdev number"))?;
    }
    let profile = match profile {
        "generic" => Profile::Generic,
        _ => Profile::Mlx5(Mlx5::default()),
    };
    let (dp, mgr, summary) =
        dpu_fw::rules::synthetic(&config, sessions, dpu_fw::rules::card(sessions, profile));
    eprint!("{summary}");
    if testpmd {
        let port = |p: chaingate_shared::PortId| ids.get(p.index()).copied().unwrap_or(u16::MAX);
        let mut lines = Vec::new();
        dpu_fw::rules::testpmd_page(&mgr, &dp, &port, 0, usize::MAX, &mut lines);
        let mut out = BufWriter::new(io::stdout().lock());
        for l in lines {
            if let Err(e) = writeln!(out, "{l}") {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
        }
    }
    Ok(())
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
        CtlAction::Rules { testpmd: _ } => {
            let mut token = String::new();
            loop {
                let page = client
                    .list_rules(dpu::ListRulesRequest {
                        page_size: 0,
                        page_token: token,
                    })
                    .await
                    .map_err(ctl::CtlError::from)?
                    .into_inner();
                for line in &page.lines {
                    println!("{line}");
                }
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
