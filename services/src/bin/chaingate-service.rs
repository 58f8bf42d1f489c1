//! `chaingate-service`: runs one reference service function on a VF.
//!
//! The host agent starts it with the instance's name, VF and probe channel
//! in the environment (`CHAINGATE_INSTANCE`, `CHAINGATE_VF`,
//! `CHAINGATE_PROBE`); flags override them.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chaingate_services::cap::Rate;
use chaingate_services::monitor::Monitor;
use chaingate_services::probe::{self, Channel, Identity};
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
    /// services crate's `stamp` module).
    #[arg(long, env = "CHAINGATE_STAMP", global = true)]
    stamp: Option<u16>,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(iface) = cli.iface else {
        eprintln!("chaingate-service: give the VF interface (--iface or CHAINGATE_VF)");
        return ExitCode::from(2);
    };
    let (service, mut function): (&str, Box<dyn Function>) = match cli.function {
        FunctionCmd::Monitor => ("monitor", Box::new(Monitor::default())),
    };
    let counters = Arc::new(Counters::default());
    if let Some(channel) = &cli.probe {
        let who = Identity {
            service: service.to_owned(),
            instance: cli.instance.clone(),
        };
        if let Err(e) = probe::serve(channel, who, Arc::clone(&counters)) {
            eprintln!("chaingate-service: probe on {channel}: {e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("chaingate-service: {service} {} on {iface}", cli.instance);
    let stop = Arc::new(AtomicBool::new(false));
    let options = wire::Options {
        cap: cli.cap,
        stamp: cli.stamp,
    };
    match wire::run(&iface, function.as_mut(), &options, &counters, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaingate-service: {iface}: {e}");
            ExitCode::FAILURE
        }
    }
}
