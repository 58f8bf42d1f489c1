//! `chaingate`: the operator's command line, a client of the agent's
//! Unix socket. Tables for people by default, `--json` for scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use chaingate_agent::api;
use chaingate_proto::{agent, dpu};
use clap::{Parser, Subcommand};
use tokio_stream::StreamExt;

#[derive(Parser, Debug)]
#[command(
    name = "chaingate",
    version,
    about = "Operate a chaingate gateway: apply its configuration, see its instances and sessions, scale and drain",
    after_help = "The agent must be running (chaingate-agent); its socket is root's only by default."
)]
struct Cli {
    /// The agent's API socket.
    #[arg(
        long,
        env = "CHAINGATE_SOCKET",
        default_value = "/run/chaingate/agent.sock",
        global = true
    )]
    socket: PathBuf,
    /// Print JSON (one document, or one event per line) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Applies a gateway configuration (docs/config.md); nothing changes
    /// when it is refused.
    Apply {
        /// The YAML file (`-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// The gateway at a glance: DPU, services, instances.
    Status,
    /// Every instance, with its VF, launcher and load.
    Instances,
    /// Sessions on the DPU.
    Sessions {
        /// Only those through this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Only those of this chain.
        #[arg(long)]
        chain: Option<String>,
        /// Only those with this address on either side.
        #[arg(long)]
        address: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Sets a service's instance count (within its min and max).
    Scale {
        /// The service.
        service: String,
        /// Instances wanted.
        instances: u32,
    },
    /// Drains an instance: no new sessions, stopped when its sessions are
    /// gone or its service's drain timeout passes.
    Drain {
        /// The instance.
        instance: String,
    },
    /// Asks an instance's service function, through its probe channel:
    /// `probe` (frames in, out, dropped, capped) or a request of its own
    /// (`flows`: a monitor's per-flow counts).
    Ask {
        /// The instance.
        instance: String,
        /// The request.
        #[arg(default_value = "probe")]
        request: Vec<String>,
    },
    /// What the agent did and why.
    Events {
        /// Keep printing events as they happen.
        #[arg(long, short = 'F')]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

/// Prints rows as aligned columns.
fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn bps(v: f64) -> String {
    let units = [("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)];
    for (u, f) in units {
        if v >= f {
            return format!("{:.1} {u}", v / f);
        }
    }
    format!("{v:.0} bit/s")
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn instance_rows(status: &agent::Status) -> Vec<Vec<String>> {
    status
        .instances
        .iter()
        .map(|i| {
            let load = i.load.as_ref();
            vec![
                i.name.clone(),
                i.service.clone(),
                i.phase.clone(),
                i.vfs.join(","),
                format!("{} {}", i.launcher, i.handle),
                load.map_or_else(|| "-".to_owned(), |l| bps(l.bps)),
                load.map_or_else(
                    || "-".to_owned(),
                    |l| format!("{:.0}%", l.utilisation * 100.0),
                ),
                load.map_or_else(|| "-".to_owned(), |l| l.sessions.to_string()),
            ]
        })
        .collect()
}

const INSTANCE_HEAD: [&str; 8] = [
    "INSTANCE", "SERVICE", "PHASE", "VF", "LAUNCHER", "LOAD", "USE", "SESSIONS",
];

fn when(at_ms: u64) -> String {
    let s = at_ms / 1000;
    let (h, m, sec) = ((s / 3600) % 24, (s / 60) % 60, s % 60);
    format!("{h:02}:{m:02}:{sec:02}.{:03}", at_ms % 1000)
}

fn print_event(e: &agent::Event, json: bool) {
    if json {
        println!("{}", serde_json::to_string(e).unwrap_or_default());
    } else {
        let what = [e.service.as_str(), e.instance.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{:>5} {} {:<20} {:<16} {}",
            e.seq,
            when(e.at_ms),
            e.kind,
            what,
            e.message
        );
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut client = api::connect(&cli.socket).await?;
    let fail = |s: tonic::Status| s.message().to_owned();
    match cli.command {
        Cmd::Apply { file } => {
            let yaml = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| format!("standard input: {e}"))?
            } else {
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?
            };
            let r = client
                .apply_config(agent::ApplyConfigRequest { yaml })
                .await
                .map_err(|s| format!("{}: {}", file.display(), s.message()))?
                .into_inner();
            if cli.json {
                print_json(&r);
            } else {
                println!("applied {}: generation {}", file.display(), r.generation);
            }
        }
        Cmd::Status => {
            let s = client
                .get_status(agent::GetStatusRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            if cli.json {
                print_json(&s);
                return Ok(());
            }
            let dpu = if s.dpu_connected {
                format!(
                    "connected, generation {} (pushed {})",
                    s.dpu_generation, s.desired_generation
                )
            } else if s.dpu_error.is_empty() {
                "not connected".to_owned()
            } else {
                format!("not connected: {}", s.dpu_error)
            };
            println!("DPU      {} {dpu}", s.dpu_address);
            if !s.configured {
                println!("no configuration applied yet: chaingate apply -f gateway.yaml");
                return Ok(());
            }
            println!();
            let rows: Vec<Vec<String>> = s
                .services
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.running.to_string(),
                        v.target.to_string(),
                        format!("{}..{}", v.min, v.max),
                        bps(v.capacity_bps as f64),
                    ]
                })
                .collect();
            table(
                &[
                    "SERVICE",
                    "RUNNING",
                    "TARGET",
                    "BOUNDS",
                    "CAPACITY/INSTANCE",
                ],
                &rows,
            );
            if !s.instances.is_empty() {
                println!();
                table(&INSTANCE_HEAD, &instance_rows(&s));
            }
        }
        Cmd::Instances => {
            let s = client
                .get_status(agent::GetStatusRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            if cli.json {
                print_json(&s.instances);
            } else {
                table(&INSTANCE_HEAD, &instance_rows(&s));
            }
        }
        Cmd::Sessions {
            instance,
            chain,
            address,
            limit,
        } => {
            let mut sessions = Vec::new();
            let mut token = String::new();
            while sessions.len() < limit as usize {
                let page = client
                    .list_sessions(dpu::ListSessionsRequest {
                        instance: instance.clone(),
                        chain: chain.clone(),
                        address: address.clone(),
                        protocol: None,
                        page_size: (limit - sessions.len() as u32).min(1000),
                        page_token: token,
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                sessions.extend(page.sessions);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            sessions.truncate(limit as usize);
            if cli.json {
                print_json(&sessions);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = sessions
                .iter()
                .map(|s| {
                    let hops = s
                        .hops
                        .iter()
                        .map(|h| {
                            if h.instance.is_empty() {
                                format!("{}:-", h.service)
                            } else {
                                h.instance.clone()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" > ");
                    vec![
                        format!("{}:{}", s.src, s.src_port),
                        format!("{}:{}", s.dst, s.dst_port),
                        s.protocol.to_string(),
                        s.chain.clone(),
                        hops,
                    ]
                })
                .collect();
            table(&["SOURCE", "DESTINATION", "PROTO", "CHAIN", "PATH"], &rows);
        }
        Cmd::Scale { service, instances } => {
            let r = client
                .scale(agent::ScaleRequest {
                    service: service.clone(),
                    instances,
                })
                .await
                .map_err(fail)?
                .into_inner();
            if cli.json {
                print_json(&r);
            } else {
                println!("{service}: target {} instances", r.instances);
            }
        }
        Cmd::Drain { instance } => {
            client
                .drain(agent::DrainRequest {
                    instance: instance.clone(),
                })
                .await
                .map_err(fail)?;
            if cli.json {
                print_json(&serde_json::json!({ "draining": instance }));
            } else {
                println!("{instance}: draining");
            }
        }
        Cmd::Ask { instance, request } => {
            let r = client
                .ask_instance(agent::AskInstanceRequest {
                    instance: instance.clone(),
                    request: request.join(" "),
                })
                .await
                .map_err(fail)?
                .into_inner();
            if cli.json {
                print_json(&serde_json::json!({ "instance": instance, "answer": r.answer }));
            } else {
                println!("{}", r.answer);
            }
        }
        Cmd::Events { follow, after } => {
            let mut stream = client
                .watch_events(agent::WatchEventsRequest { after })
                .await
                .map_err(fail)?
                .into_inner();
            if !follow {
                // The past, then stop: what arrives within a moment of the
                // last stored event is the end of the backlog.
                loop {
                    match tokio::time::timeout(std::time::Duration::from_millis(300), stream.next())
                        .await
                    {
                        Ok(Some(Ok(e))) => print_event(&e, cli.json),
                        Ok(Some(Err(s))) => return Err(fail(s)),
                        Ok(None) | Err(_) => return Ok(()),
                    }
                }
            }
            while let Some(e) = stream.next().await {
                print_event(&e.map_err(fail)?, cli.json);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaingate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaingate: {e}");
            ExitCode::FAILURE
        }
    }
}
