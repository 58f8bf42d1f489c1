//! `chaingate-demo`: the gateway on one box, scaling under load.
//!
//! Brings up the simulated rig (network namespaces and veths: a lan host,
//! a wan host, `dpu-fw` on afpacket ports with the software eSwitch, the
//! host agent with process instances), applies the chain firewall -> ids
//! -> nat, and sends traffic that ramps up past one firewall's capacity
//! and back down. A live view shows each instance's load, its sessions,
//! the packets the eSwitch's rules moved against those the fast path saw,
//! and the agent's events, while the agent scales the firewall out and in.
//! Ends with a summary, and removes everything it made (Ctrl-C ends it
//! early, and still cleans up). Run as root.
//!
//! `--hosts 2`: two hosts, each with its DPU and agent, one etcd (the
//! cluster of docs/cluster.md). Host A runs the chain on all its VFs;
//! when the firewall runs short, the new instance starts on host B, and
//! A's DPU reaches it over the underlay.

use std::fmt::Write as _;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaingate_hw_tests::agent::{AgentRig, NAT_ADDRESS, WebChain, instances_in};
use chaingate_hw_tests::flows::{Live, Plan};
use chaingate_hw_tests::frames::udp;
use chaingate_hw_tests::rig::Rig as _;
use chaingate_hw_tests::traffic::{Sink, Traffic};
use chaingate_hw_tests::two_dpus::Dpu;
use chaingate_hw_tests::two_hosts::TwoHosts;
use serde_json::Value;

/// The ramp: (seconds, frames per second of 1000 bytes). The firewall has
/// 16 Mbit/s (2000 frames/s) an instance and scales out at 60%.
const RAMP: [(u64, u32); 5] = [(12, 400), (12, 900), (24, 1700), (12, 600), (20, 150)];

fn gateway() -> String {
    WebChain {
        firewall_capacity: "16Mbit".into(),
        firewall_scaling: "{ min: 1, max: 3, scale_out_at: 60%, scale_in_at: 25%, hold: 2s, cooldown: 4s, drain_timeout: 3s }".into(),
        ids_scaling: "{ min: 1, max: 2 }".into(),
        nat_scaling: "{ min: 1, max: 2 }".into(),
        stamps: false,
        ..WebChain::default()
    }
    .gateway()
}

/// Set by Ctrl-C: the demo stops early and still cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn bar(share: f64, width: usize) -> String {
    let filled = ((share.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(filled), "·".repeat(width - filled))
}

fn view(
    rig: &AgentRig,
    phase: &str,
    pps: u32,
    elapsed: Duration,
    sent: u64,
    events: &[Value],
) -> String {
    let status = status(rig);
    let m = rig.agent.scrape();
    let mut out = String::from("\x1b[H\x1b[2J");
    let _ = writeln!(
        out,
        "chaingate demo  {:>5.1} s   {phase}: {pps} frames/s of 1 kB ({:.1} Mbit/s)   sent {sent}\n",
        elapsed.as_secs_f64(),
        f64::from(pps) * 8.0 / 1000.0
    );
    let _ = writeln!(
        out,
        "{:<12} {:<9} {:<32} {:>6} {:>9}",
        "INSTANCE", "PHASE", "LOAD (share of capacity)", "USE", "SESSIONS"
    );
    for i in status["instances"].as_array().into_iter().flatten() {
        let load = &i["load"];
        let share = load["utilisation"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{:<12} {:<9} {} {:>5.0}% {:>9}",
            i["name"].as_str().unwrap_or("?"),
            i["phase"].as_str().unwrap_or("?"),
            bar(share, 32),
            share * 100.0,
            load["sessions"].as_u64().unwrap_or(0)
        );
    }
    let offloaded = m.get("chaingate_offload_sessions").copied().unwrap_or(0.0);
    let sessions = m.get("chaingate_dpu_sessions").copied().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "\nDPU: generation {}, {sessions:.0} sessions; rules in the eSwitch for {offloaded:.0} (packets of those skip the fast path)",
        status["dpu_generation"]
    );
    let stats = rig.dpu.stats();
    let switch = stats.switch.unwrap_or_default();
    let _ = writeln!(
        out,
        "DPU frames: {} switched by eSwitch rules, {} through the fast path",
        switch.out, switch.to_software
    );
    let drops = stats.fast_path.map(|f| f.dropped).unwrap_or_default();
    let drops: Vec<String> = drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(why, n)| format!("{why} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "DPU drops: {}",
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "your own traffic, from another terminal: target/debug/chaingate-traffic --lan {ns}:{} --wan {ns}:{} --tcp --echo",
        rig.lan.outer,
        rig.wan.outer,
        ns = rig.topo.netns()
    );
    let _ = writeln!(out, "\nevents:");
    for e in events.iter().rev().take(8).rev() {
        let _ = writeln!(out, "  {}", event_line(e));
    }
    out
}

/// The agent's status, or null if it cannot be had this second.
fn status(rig: &AgentRig) -> Value {
    let out = rig.agent.cli(&["--json", "status"]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn events(rig: &AgentRig) -> Vec<Value> {
    let out = rig.agent.cli(&["--json", "events"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn run() -> Result<(), String> {
    println!(
        "chaingate demo: building the simulated rig (namespaces, veths, dpu-fw, the host agent)..."
    );
    let rig = AgentRig::start(7).map_err(|e| format!("the rig: {e}"))?;
    rig.apply_and_wait(&gateway(), &["firewall-0", "ids-0", "nat-0"]);
    let server = Ipv4Addr::new(192, 0, 2, 80);
    let public = NAT_ADDRESS;
    let wan = Sink::start(rig.topo.netns(), &rig.wan.outer, public).map_err(|e| e.to_string())?;
    // Beside the load, ten new short sessions a second (DNS-sized): a new
    // instance gets new sessions as soon as it is on the DPU.
    let fresh: Vec<Vec<u8>> = (0..60_000u16)
        .map(|p| {
            udp(
                (Ipv4Addr::new(10, 200, 0, 1), 1024 + p),
                (server, 53),
                true,
                &[0; 64],
            )
        })
        .collect();
    let trickle =
        Traffic::start(rig.topo.netns(), &rig.lan.outer, fresh, 10).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut sent_total = 0;
    let mut peak = 0usize;
    let mut stage_flows = 0u8;
    let mut stages = Vec::new();
    for (secs, pps) in RAMP {
        // Each stage opens sixteen new connections (new sessions are what
        // the DPU can steer to a new instance), sent and checked by the
        // traffic tool: loss and latency per stage for the summary.
        stage_flows += 1;
        let live = Arc::new(Live::default());
        let mut plan = Plan::udp(16, u32::try_from(secs).unwrap_or(60) * pps / 16, pps);
        plan.client = SocketAddrV4::new(Ipv4Addr::new(10, stage_flows, 0, 1), 4000);
        plan.clients = 16;
        plan.server = SocketAddrV4::new(server, 443);
        plan.size = 1000;
        plan.live = Some(Arc::clone(&live));
        let traffic = rig.traffic_in_background(plan.clone());
        let phase = format!("stage {stage_flows}/{}", RAMP.len());
        while !traffic.is_finished() {
            if INTERRUPTED.load(Ordering::Relaxed) {
                live.stop.store(true, Ordering::Relaxed);
            }
            let ev = events(&rig);
            let sent = sent_total + live.sent.load(Ordering::Relaxed);
            print!("{}", view(&rig, &phase, pps, start.elapsed(), sent, &ev));
            let _ = std::io::stdout().flush();
            let active = instances_in(&status(&rig), "active");
            peak = peak.max(active.iter().filter(|i| i.starts_with("firewall-")).count());
            std::thread::sleep(Duration::from_millis(500));
        }
        let out = traffic
            .join()
            .map_err(|_| "the traffic tool failed".to_owned())?;
        sent_total += out.sent;
        stages.push((pps, out));
        if INTERRUPTED.load(Ordering::Relaxed) {
            println!("\ninterrupted");
            break;
        }
    }
    sent_total += trickle.sent();
    drop(trickle);
    std::thread::sleep(Duration::from_millis(500));
    let (arrived, natted) = wan.counts();
    let ev = events(&rig);
    let count = |k: &str| ev.iter().filter(|e| e["kind"] == k).count();
    let m = rig.agent.scrape();
    println!("\nsummary");
    println!("  frames sent from the lan host:      {sent_total}");
    println!(
        "  frames at the wan host:             {arrived} ({natted} with the NAT's address as source)"
    );
    println!("  firewall instances at the peak:     {peak}");
    println!("  per stage (frames/s offered: sent, lost, one-way latency p50 / p99):");
    for (pps, out) in &stages {
        let got = out.forward.frames();
        let lost = out.sent.saturating_sub(got);
        let p = |q| {
            out.forward
                .latency
                .percentile(q)
                .map_or("-".to_owned(), |d| {
                    format!("{:.2} ms", d.as_secs_f64() * 1e3)
                })
        };
        println!(
            "    {pps:>5}/s: {:>6} sent, {lost:>5} lost ({:>4.1}%), {} / {}",
            out.sent,
            100.0 * lost as f64 / out.sent.max(1) as f64,
            p(50.0),
            p(99.0)
        );
    }
    println!(
        "  scale-outs: {}, scale-ins: {}, drains finished: {}",
        count("scale_out"),
        count("scale_in"),
        count("drain_finished")
    );
    if let Some(r) = m.get("chaingate_scale_out_reaction_last_seconds{service=\"firewall\"}") {
        println!(
            "  last scale-out reaction:            {r:.2} s (load over the watermark to the first session on the new instance)"
        );
    }
    println!(
        "  events: chaingate --socket {} events",
        rig.agent.socket.display()
    );
    println!("\ncleaning up: instances, the agent, dpu-fw, namespaces and veths");
    Ok(())
}

/// The gateway file of host `min` (1: A, which runs the chain; 0: B,
/// which only takes instances when A has no VF left).
fn cluster_gateway(min: u16) -> String {
    WebChain {
        firewall_capacity: "16Mbit".into(),
        firewall_scaling: format!(
            "{{ min: {min}, max: 3, scale_out_at: 60%, scale_in_at: 25%, hold: 2s, cooldown: 4s, drain_timeout: 3s }}"
        ),
        ids_scaling: format!("{{ min: {min}, max: 1 }}"),
        nat_scaling: format!("{{ min: {min}, max: 1 }}"),
        stamps: false,
        ..WebChain::default()
    }
    .gateway()
}

fn run_two_hosts() -> Result<(), String> {
    println!(
        "chaingate demo, two hosts: two DPUs joined by a VXLAN underlay, two agents, one etcd..."
    );
    let rig =
        TwoHosts::start([3, 3], Duration::from_secs(5)).map_err(|e| format!("the rig: {e}"))?;
    let (a, b) = (rig.host(Dpu::A), rig.host(Dpu::B));
    let up = Duration::from_secs(60);
    a.agent
        .apply_and_wait(&cluster_gateway(1), &["firewall-0", "ids-0", "nat-0"], up);
    b.agent.apply_and_wait(&cluster_gateway(0), &[], up);
    let start = Instant::now();
    let mut sent_total = 0;
    let mut lost_total = 0;
    let mut where_ran = std::collections::BTreeSet::new();
    let mut stages = Vec::new();
    for (stage, (secs, pps)) in (1u8..).zip(RAMP) {
        let live = Arc::new(Live::default());
        let mut plan = Plan::udp(16, u32::try_from(secs).unwrap_or(60) * pps / 16, pps);
        plan.client = SocketAddrV4::new(Ipv4Addr::new(10, stage, 0, 1), 4000);
        plan.clients = 16;
        plan.server = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 80), 443);
        plan.size = 1000;
        plan.live = Some(Arc::clone(&live));
        let traffic = rig.traffic_in_background(plan);
        while !traffic.is_finished() {
            if INTERRUPTED.load(Ordering::Relaxed) {
                live.stop.store(true, Ordering::Relaxed);
            }
            let mut out = String::from("\x1b[H\x1b[2J");
            let _ = writeln!(
                out,
                "chaingate demo, two hosts  {:>5.1} s   stage {stage}/{}: {pps} frames/s of 1 kB   sent {}\n",
                start.elapsed().as_secs_f64(),
                RAMP.len(),
                sent_total + live.sent.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "{:<6} {:<12} {:<9} {:<32} {:>6}",
                "HOST", "INSTANCE", "PHASE", "LOAD (share of capacity)", "USE"
            );
            for (h, name) in [(Dpu::A, "a"), (Dpu::B, "b")] {
                let st = serde_json::from_slice::<Value>(
                    &rig.host(h).agent.cli(&["--json", "status"]).stdout,
                )
                .unwrap_or(Value::Null);
                for i in st["instances"].as_array().into_iter().flatten() {
                    let share = i["load"]["utilisation"].as_f64().unwrap_or(0.0);
                    let inst = i["name"].as_str().unwrap_or("?");
                    if i["phase"] == "active" {
                        where_ran.insert(format!("{inst} on host {name}"));
                    }
                    let _ = writeln!(
                        out,
                        "{name:<6} {inst:<12} {:<9} {} {:>5.0}%",
                        i["phase"].as_str().unwrap_or("?"),
                        bar(share, 32),
                        share * 100.0
                    );
                }
            }
            let on_a: Vec<String> = rig
                .dpu_instances(Dpu::A)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            let _ = writeln!(out, "\nhost A's DPU chooses among: {}", on_a.join(", "));
            for (h, name) in [(Dpu::A, "a"), (Dpu::B, "b")] {
                let stats = rig.host(h).dpu.stats();
                let sw = stats.switch.unwrap_or_default();
                let _ = writeln!(
                    out,
                    "DPU {name}: {} frames by eSwitch rules, {} through the fast path",
                    sw.out, sw.to_software
                );
            }
            let _ = writeln!(out, "\nevents (both agents):");
            for (h, name) in [(Dpu::A, "a"), (Dpu::B, "b")] {
                let ev =
                    String::from_utf8_lossy(&rig.host(h).agent.cli(&["--json", "events"]).stdout)
                        .to_string();
                for e in ev
                    .lines()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    if let Ok(e) = serde_json::from_str::<Value>(e) {
                        let _ = writeln!(out, "  {name}: {}", event_line(&e));
                    }
                }
            }
            print!("{out}");
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_millis(500));
        }
        let out = traffic
            .join()
            .map_err(|_| "the traffic tool failed".to_owned())?;
        sent_total += out.sent;
        let lost = out.sent.saturating_sub(out.forward.frames());
        lost_total += lost;
        stages.push(format!("{pps}/s: {} sent, {lost} lost", out.sent));
        if INTERRUPTED.load(Ordering::Relaxed) {
            println!("\ninterrupted");
            break;
        }
    }
    println!("\nsummary");
    println!("  frames sent from host A's lan: {sent_total}, lost: {lost_total}");
    println!("  per stage: {}", stages.join("; "));
    println!(
        "  instances that ran: {}",
        where_ran.into_iter().collect::<Vec<_>>().join(", ")
    );
    println!("\ncleaning up: instances, agents, DPUs, etcd, namespaces and veths");
    Ok(())
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("chaingate-demo: run as root (it makes network namespaces and veths)");
        return ExitCode::from(2);
    }
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hosts = match args.as_slice() {
        [] => 1,
        [flag, n] if flag == "--hosts" && (n == "1" || n == "2") => n.parse().unwrap_or(1),
        _ => {
            eprintln!(
                "usage: chaingate-demo [--hosts 1|2]\n  --hosts 2: two hosts with their DPUs and agents and one etcd; the firewall scales out onto the second host"
            );
            return ExitCode::from(2);
        }
    };
    let result = if hosts == 2 { run_two_hosts() } else { run() };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaingate-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An agent event on one line: kind, instance (or service), message.
fn event_line(e: &Value) -> String {
    format!(
        "{:<19} {:<12} {}",
        e["kind"].as_str().unwrap_or(""),
        e["instance"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or(e["service"].as_str())
            .unwrap_or(""),
        e["message"].as_str().unwrap_or("")
    )
}
