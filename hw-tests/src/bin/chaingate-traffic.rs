//! `chaingate-traffic`: the rig's traffic tool from the command line.
//! Sends flows from a lan-side interface, checks and answers them on a
//! wan-side one, checks the answers, and reports per direction: frames,
//! loss, duplicates, reordering, changed bytes, the instances the frames
//! passed (the services' trace stamps), the addresses they arrived under,
//! latency percentiles. Both interfaces must be on this machine (a rig's
//! namespaces, or a LabRig host's interfaces wired to the DPU's uplinks).

use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Duration;

use chaingate_hw_tests::flows::{self, Outcome, Plan, Proto, Side};
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "chaingate-traffic",
    version,
    about = "Sends flows through the gateway and checks what arrives and what comes back",
    after_help = "Exit status: 0 when nothing was lost or changed, 3 when something was, 1 when it \
                  could not run.\n\nExample (as root, beside a running demo, which prints its \
                  interfaces):\n  \
                  chaingate-traffic --lan cg1a2bx0-ns:cg1a2bx0olan --wan cg1a2bx0-ns:cg1a2bx0owan --tcp --flows 8 --echo"
)]
struct Cli {
    /// The lan host's interface: [NETNS:]IFACE (the host's namespace
    /// without NETNS).
    #[arg(long, value_parser = endpoint)]
    lan: (String, String),
    /// The wan host's interface: [NETNS:]IFACE.
    #[arg(long, value_parser = endpoint)]
    wan: (String, String),
    /// TCP connections (SYN, SYN-ACK, data, FIN) instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// Flows.
    #[arg(long, default_value_t = 16)]
    flows: u32,
    /// Client addresses the flows come from (consecutive from --client).
    #[arg(long, default_value_t = 1)]
    clients: u32,
    /// The first client address and source port.
    #[arg(long, default_value = "10.0.0.1:10000")]
    client: SocketAddrV4,
    /// The server.
    #[arg(long, default_value = "192.0.2.10:80")]
    server: SocketAddrV4,
    /// Data frames per flow.
    #[arg(long, default_value_t = 100)]
    packets: u32,
    /// Ethernet frame length of data frames, bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Data frames per second, all flows together (0: as fast as possible).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// The wan host sends every data frame back.
    #[arg(long)]
    echo: bool,
    /// How long to wait for the last frames (500ms, 2s).
    #[arg(long, default_value = "500ms", value_parser = duration)]
    settle: Duration,
    /// One JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

fn endpoint(s: &str) -> Result<(String, String), String> {
    let (ns, iface) = match s.split_once(':') {
        Some((ns, iface)) => (ns.to_owned(), iface.to_owned()),
        None => (chaingate_hw_tests::rig::HOST_NETNS.to_owned(), s.to_owned()),
    };
    if iface.is_empty() || iface.len() > 15 {
        return Err(format!(
            "`{s}`: write [NETNS:]IFACE (an interface name of 1-15 bytes)"
        ));
    }
    Ok((ns, iface))
}

fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<chaingate_proto::file::Millis>()
        .map(|m| Duration::from_millis(u64::from(m.0)))
}

fn side_json(side: &Side, plan: &Plan) -> serde_json::Value {
    let (duplicates, reordered) = side.disorder();
    let p = |q| side.latency.percentile(q).map(|d| d.as_nanos() as u64);
    let stamps: Vec<_> = side
        .stamps()
        .into_iter()
        .map(|(ids, frames)| json!({ "instances": ids, "frames": frames }))
        .collect();
    let tuples: Vec<String> = side
        .flows
        .values()
        .flat_map(|f| f.tuples.iter())
        .map(|(s, d)| format!("{s} -> {d}"))
        .collect();
    json!({
        "frames": side.frames(),
        "lost": side.lost(plan),
        "duplicates": duplicates,
        "reordered": reordered,
        "corrupt": side.corrupt,
        "foreign": side.foreign,
        "stamps": stamps,
        "addresses": tuples,
        "latency_ns": { "p50": p(50.0), "p90": p(90.0), "p99": p(99.0), "max": p(100.0) },
    })
}

fn report(out: &Outcome, plan: &Plan) -> String {
    use std::fmt::Write as _;
    let mut r = String::new();
    let _ = writeln!(
        r,
        "sent {} data frames in {:.2} s ({} not taken by the socket)",
        out.sent,
        out.sending.as_secs_f64(),
        out.unsent
    );
    if plan.proto == Proto::Tcp {
        let _ = writeln!(r, "connections opened: {} of {}", out.opened, plan.flows);
    }
    let sides = [("lan -> wan", &out.forward), ("answers", &out.back)];
    for (name, side) in sides {
        if name == "answers" && !plan.echo && plan.proto == Proto::Udp {
            continue;
        }
        let (dup, reo) = side.disorder();
        let lat = |q| {
            side.latency
                .percentile(q)
                .map_or("-".to_owned(), |d| format!("{d:.1?}"))
        };
        let _ = writeln!(
            r,
            "{name}: {} frames, {} lost, {dup} duplicated, {reo} reordered, {} changed; latency p50 {} p90 {} p99 {} max {}",
            side.frames(),
            side.lost(plan),
            side.corrupt,
            lat(50.0),
            lat(90.0),
            lat(99.0),
            lat(100.0)
        );
        for (ids, n) in side.stamps() {
            let path = if ids.is_empty() {
                "no stamp".to_owned()
            } else {
                ids.iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(" > ")
            };
            let _ = writeln!(r, "  passed {path}: {n} frames");
        }
    }
    r
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = Plan {
        proto: if cli.tcp { Proto::Tcp } else { Proto::Udp },
        flows: cli.flows,
        clients: cli.clients.max(1),
        client: cli.client,
        server: cli.server,
        packets: cli.packets,
        size: cli.size,
        pps: cli.rate,
        echo: cli.echo,
        settle: cli.settle,
        live: None,
    };
    let out = match flows::run(&plan, (&cli.lan.0, &cli.lan.1), (&cli.wan.0, &cli.wan.1)) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("chaingate-traffic: {e} (run as root; are both interfaces there?)");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        let v = json!({
            "sent": out.sent,
            "unsent": out.unsent,
            "opened": out.opened,
            "sending_ns": out.sending.as_nanos() as u64,
            "forward": side_json(&out.forward, &plan),
            "back": side_json(&out.back, &plan),
        });
        println!("{v}");
    } else {
        print!("{}", report(&out, &plan));
    }
    // For scripts: 0 when nothing was lost or changed, 3 when something
    // was, 1 when the tool could not run.
    let bad = out.forward.lost(&plan) + out.forward.corrupt + out.back.corrupt;
    if bad > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
