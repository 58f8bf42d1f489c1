//! `chaingate-service`: runs one reference service function on a VF.
//!
//! The host agent starts it with the instance's name, VF and probe channel
//! in the environment (`CHAINGATE_INSTANCE`, `CHAINGATE_VF`,
//! `CHAINGATE_PROBE`); flags override them.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chaingate_services::cap::Rate;
use chaingate_services::firewall::{Action, Firewall, Prefix, Rule, parse_rules};
use chaingate_services::ids::{Ids, Mode, parse_signature, parse_signatures};
use chaingate_services::monitor::Monitor;
use chaingate_services::nat::Nat;
use chaingate_services::probe::{self, Channel, Identity, Report};
use chaingate_services::wire::{self, Counters, Function};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chaingate-service",
    version,
    about = "Runs a chaingate reference service function on its VF"
)]
struct Cli {
    #[command(subcommand)]
    function: FunctionCmd,
    /// The VF interface (bump in the wire: frames go back out on it).
    #[arg(long, env = "CHAINGATE_VF", global = true)]
    iface: Option<String>,
    /// Where to answer the agent's health probe: unix:PATH or tty:PATH.
    #[arg(long, env = "CHAINGATE_PROBE", global = true)]
    probe: Option<Channel>,
    /// Drop what comes in over this rate (500kbit, 10Mbit, 1Gbit): an
    /// instance that runs short of bandwidth on purpose.
    #[arg(long, env = "CHAINGATE_CAP", global = true)]
    cap: Option<Rate>,
    /// Add this ID to each passing frame's trace trailer (see the
    /// services crate's `stamp` module); `N+` adds the instance's number
    /// (the digits after the last `-` of its name: `ids-2` with `200+`
    /// stamps 202).
    #[arg(long, env = "CHAINGATE_STAMP", global = true, value_parser = stamp_spec)]
    stamp: Option<(u16, bool)>,
    /// The instance's name, as the agent knows it.
    #[arg(
        long,
        env = "CHAINGATE_INSTANCE",
        global = true,
        default_value = "standalone"
    )]
    instance: String,
}

#[derive(Subcommand, Debug)]
enum FunctionCmd {
    /// Passes every frame; counts.
    Monitor,
    /// A stateful filter: rules decide a connection's first packet.
    Firewall {
        /// A rule: `allow|deny [tcp|udp|icmp|icmpv6|N] [from CIDR] [to CIDR]
        /// [port N[-M]] [sport N[-M]]`; first match wins (repeatable).
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// Rules from a file, one per line, after those of --rule.
        #[arg(long = "rules")]
        file: Option<std::path::PathBuf>,
        /// What no rule matches.
        #[arg(long, value_enum, default_value = "allow")]
        default: DefaultAction,
    },
    /// Source NAT: inside addresses leave as --to, with a port of --ports.
    Nat {
        /// The inside prefix (10.0.0.0/8).
        #[arg(long)]
        inside: Prefix,
        /// The address they leave as.
        #[arg(long)]
        to: std::net::Ipv4Addr,
        /// The ports to allocate, N-M.
        #[arg(long, default_value = "1024-65535", value_parser = port_range)]
        ports: (u16, u16),
        /// Split --ports into blocks of this many ports and use the block
        /// of the instance's number, so that instances of one service
        /// sharing --to never hand out the same port.
        #[arg(long)]
        port_block: Option<u16>,
    },
    /// Payload signatures (Aho-Corasick): alert, or drop.
    Ids {
        /// A signature; `\xNN` for a byte (repeatable).
        #[arg(long = "signature")]
        signatures: Vec<String>,
        /// Signatures from a file, one per line.
        #[arg(long = "signatures")]
        file: Option<std::path::PathBuf>,
        /// What a match does.
        #[arg(long, value_enum, default_value = "alert")]
        mode: Mode,
    },
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}`: write N-M"))?;
    match (lo.parse::<u16>(), hi.parse::<u16>()) {
        (Ok(lo), Ok(hi)) if lo <= hi && lo > 0 => Ok((lo, hi)),
        _ => Err(format!("`{s}` is not a port range N-M")),
    }
}

fn stamp_spec(s: &str) -> Result<(u16, bool), String> {
    let (n, plus) = s.strip_suffix('+').map_or((s, false), |n| (n, true));
    n.parse()
        .map(|n| (n, plus))
        .map_err(|_| format!("`{s}`: write a number 0-65535, or N+"))
}

/// The instance's number: the digits after the last `-` of its name.
fn ordinal(instance: &str) -> Option<u16> {
    instance.rsplit_once('-')?.1.parse().ok()
}

/// The ports of `instance`'s block of `ports`.
fn port_block(ports: (u16, u16), block: u16, instance: &str) -> Result<(u16, u16), String> {
    let size = u32::from(ports.1 - ports.0) + 1;
    if block == 0 || u32::from(block) > size {
        return Err(format!(
            "--port-block {block}: give 1 to {size} (the size of --ports)"
        ));
    }
    let n = ordinal(instance)
        .ok_or_else(|| format!("--port-block: instance `{instance}` has no number"))?;
    let blocks = size / u32::from(block);
    let first = u32::from(ports.0) + (u32::from(n) % blocks) * u32::from(block);
    let last = first + u32::from(block) - 1;
    match (u16::try_from(first), u16::try_from(last)) {
        (Ok(f), Ok(l)) => Ok((f, l)),
        _ => Err("--port-block: the block is past port 65535".to_owned()),
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DefaultAction {
    Allow,
    Deny,
}

fn firewall(
    rules: &[String],
    file: Option<&std::path::Path>,
    default: DefaultAction,
) -> Result<Firewall, String> {
    let mut all = rules
        .iter()
        .map(|r| r.parse::<Rule>())
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        all.extend(parse_rules(&text).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    let default = match default {
        DefaultAction::Allow => Action::Allow,
        DefaultAction::Deny => Action::Deny,
    };
    Ok(Firewall::new(all, default))
}

fn ids(signatures: &[String], file: Option<&std::path::Path>, mode: Mode) -> Result<Ids, String> {
    let mut all = signatures
        .iter()
        .map(|s| parse_signature(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        all.extend(parse_signatures(&text).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    Ids::new(&all, mode)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(iface) = cli.iface else {
        eprintln!("chaingate-service: give the VF interface (--iface or CHAINGATE_VF)");
        return ExitCode::from(2);
    };
    let mut report: Option<Arc<dyn Report>> = None;
    let made: Result<(&str, Box<dyn Function>), String> = match &cli.function {
        FunctionCmd::Monitor => {
            let monitor = Monitor::default();
            report = Some(Arc::new(monitor.clone()));
            Ok(("monitor", Box::new(monitor)))
        }
        FunctionCmd::Firewall {
            rules,
            file,
            default,
        } => firewall(rules, file.as_deref(), *default)
            .map(|f| ("firewall", Box::new(f) as Box<dyn Function>)),
        FunctionCmd::Ids {
            signatures,
            file,
            mode,
        } => ids(signatures, file.as_deref(), *mode)
            .map(|f| ("ids", Box::new(f) as Box<dyn Function>)),
        FunctionCmd::Nat {
            inside,
            to,
            ports,
            port_block: block,
        } => block
            .map_or(Ok(*ports), |b| port_block(*ports, b, &cli.instance))
            .map(|ports| {
                (
                    "nat",
                    Box::new(Nat::new(*inside, *to, ports)) as Box<dyn Function>,
                )
            }),
    };
    let stamp = match cli.stamp {
        None => Ok(None),
        Some((n, false)) => Ok(Some(n)),
        Some((n, true)) => ordinal(&cli.instance)
            .and_then(|k| n.checked_add(k))
            .map(Some)
            .ok_or_else(|| format!("--stamp {n}+: instance `{}` has no number", cli.instance)),
    };
    let (service, mut function, stamp) = match (made, stamp) {
        (Ok((s, f)), Ok(stamp)) => (s, f, stamp),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("chaingate-service: {e}");
            return ExitCode::from(2);
        }
    };
    let counters = Arc::new(Counters::default());
    if let Some(channel) = &cli.probe {
        let who = Identity {
            service: service.to_owned(),
            instance: cli.instance.clone(),
            iface: Some(iface.clone()),
        };
        if let Err(e) = probe::serve(channel, who, Arc::clone(&counters), report) {
            eprintln!("chaingate-service: probe on {channel}: {e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("chaingate-service: {service} {} on {iface}", cli.instance);
    let stop = Arc::new(AtomicBool::new(false));
    let options = wire::Options {
        cap: cli.cap,
        stamp,
    };
    match wire::run(&iface, function.as_mut(), &options, &counters, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaingate-service: {iface}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_port_blocks_follow_the_instance_number() {
        assert_eq!(stamp_spec("7"), Ok((7, false)));
        assert_eq!(stamp_spec("200+"), Ok((200, true)));
        assert!(stamp_spec("x+").is_err());
        assert_eq!(ordinal("nat-12"), Some(12));
        assert_eq!(ordinal("standalone"), None);
        let ports = (20_000, 29_999);
        assert_eq!(port_block(ports, 1000, "nat-0"), Ok((20_000, 20_999)));
        assert_eq!(port_block(ports, 1000, "nat-3"), Ok((23_000, 23_999)));
        assert_eq!(
            port_block(ports, 1000, "nat-10"),
            Ok((20_000, 20_999)),
            "numbers past the blocks wrap"
        );
        assert!(port_block(ports, 0, "nat-0").is_err());
        assert!(port_block(ports, 10_001, "nat-0").is_err());
        assert!(port_block(ports, 1000, "nat").is_err());
    }
}
