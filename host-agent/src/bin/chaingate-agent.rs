//! `chaingate-agent`: the host daemon. Keeps the service instances the
//! operator's configuration asks for running (VMs through VFIO, or
//! processes on the simulated rig), keeps the DPU configured, and serves
//! the operator API to the `chaingate` CLI.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chaingate_agent::agent::{Agent, Options, Parts};
use chaingate_agent::cluster::Cluster;
use chaingate_agent::config::{AgentConfig, ms};
use chaingate_agent::dpu::{ClientOptions, DpuClient};
use chaingate_agent::image::GuestKit;
use chaingate_agent::launcher::{ProcessLauncher, QemuLauncher, VmLauncher};
use chaingate_agent::store::Store;
use chaingate_agent::vf::{PoolVf, VfKind, VfPool, VfRef};
use chaingate_agent::{api, metrics};
use chaingate_provision::Sysfs;
use clap::{Parser, Subcommand};

const DEFAULT_CONFIG: &str = "/etc/chaingate/agent.yaml";

#[derive(Parser, Debug)]
#[command(
    name = "chaingate-agent",
    version,
    about = "The chaingate host agent: runs the service instances, keeps the DPU configured, serves the operator API",
    long_about = "The chaingate host agent.\n\n\
        With no command it runs: reads its configuration (docs/agent.md), makes the SR-IOV VFs it is told to, \
        adopts the instances still running from before, launches what the stored configuration asks for, \
        pushes the configuration to the DPU, and serves the operator API (for `chaingate`) on a Unix socket. \
        SIGTERM or SIGINT stop the agent; the instances keep running and are adopted at the next start."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The agent's configuration file [default: /etc/chaingate/agent.yaml if it exists, else built-in defaults]
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// The operator API socket (overrides the file's `socket`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The state database (overrides `state`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// The DPU's control API, HOST:PORT (overrides `dpu`).
    #[arg(long)]
    dpu: Option<String>,
    /// Where instances' files go (overrides `run_dir`).
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the agent (what happens with no command).
    Run,
    /// Checks the configuration file and prints what it means.
    Check,
    /// Makes a service VM image: an initramfs with busybox, the VF
    /// drivers and a static service binary, which runs on the VF the VM is
    /// given, answers the probe (with the VF's link) on its second serial
    /// port and stops on the power button.
    Image {
        /// The static service binary (chaingate-service built with
        /// `-C target-feature=+crt-static`).
        #[arg(long)]
        binary: PathBuf,
        /// The service function and its arguments, as `chaingate-service`
        /// takes them (`monitor`).
        #[arg(long, default_value = "monitor")]
        function: String,
        /// The VF drivers (and any other kernel modules) the guest loads;
        /// virtio-net, the power button and evdev are always in.
        #[arg(long, value_delimiter = ',', default_value = "igbvf,mlx5_core")]
        modules: Vec<String>,
        /// The guest kit: a kernel package unpacked, `vmlinuz` beside it.
        #[arg(
            long,
            env = "CHAINGATE_VM_DIR",
            default_value = "/var/cache/chaingate/vm"
        )]
        kit: PathBuf,
        /// The initramfs to write.
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
}

fn load_config(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    let path = match &args.config {
        Some(p) => Some(p.clone()),
        None => Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| PathBuf::from(DEFAULT_CONFIG)),
    };
    let mut config = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
            AgentConfig::parse(&text).with_context(|| format!("{}", p.display()))?
        }
        None => AgentConfig::default(),
    };
    if let Some(s) = &args.socket {
        config.socket.clone_from(s);
    }
    if let Some(s) = &args.state {
        config.state.clone_from(s);
    }
    if let Some(d) = &args.dpu {
        config.dpu.clone_from(d);
    }
    if let Some(r) = &args.run_dir {
        config.run_dir.clone_from(r);
    }
    Ok(config)
}

/// The VF pool: the listed VFs, and those `sriov` makes now.
fn make_pool(config: &AgentConfig) -> anyhow::Result<VfPool> {
    let sysfs = Sysfs::new(&config.sysfs, &config.devfs);
    let mut vfs = config.pool()?;
    if let Some(s) = &config.sriov {
        let pf = sysfs.pf(&s.pf.parse()?)?;
        pf.set_num_vfs(s.num_vfs)?;
        for (i, addr) in pf.vfs()?.into_iter().enumerate() {
            vfs.push(PoolVf {
                vf: VfRef {
                    port: format!("{}{i}", s.port_prefix),
                    device: addr.to_string(),
                },
                kind: VfKind::Pci,
            });
        }
        tracing::info!(pf = %pf.addr(), vfs = s.num_vfs, "SR-IOV VFs ready");
    }
    Ok(VfPool::new(vfs, sysfs))
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    let pool = make_pool(&config)?;
    let store = Store::open(&config.state)?;
    std::fs::create_dir_all(&config.run_dir)
        .with_context(|| format!("{}", config.run_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = api::bind(&config.socket, config.mode()?)?;
        let dpu = DpuClient::start(&config.dpu, ClientOptions::default());
        let launchers: Vec<Box<dyn VmLauncher>> = vec![
            Box::new(ProcessLauncher::new(&config.run_dir)),
            Box::new(QemuLauncher::new(&config.run_dir).with_user(&config.vm_user)),
        ];
        let options = Options {
            probe: config.probe,
            stop_timeout: ms(config.stop_timeout),
            ..Options::default()
        };
        let agent = Arc::new(Agent::start(Parts {
            store,
            pool,
            launchers,
            run_dir: config.run_dir.clone(),
            dpu,
            runtime: tokio::runtime::Handle::current(),
            options,
            cluster: config.cluster.as_ref().map(|c| {
                tracing::info!(host = %c.host, etcd = ?c.etcd, "joining the cluster");
                Cluster::start(c, &tokio::runtime::Handle::current())
            }),
        }));
        if let Some(addr) = config.metrics {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics on {addr}"))?;
            tracing::info!(%addr, "metrics at /metrics");
            tokio::spawn(metrics::serve(l, Arc::clone(&agent)));
        }
        tracing::info!(socket = %config.socket.display(), dpu = %config.dpu, "agent running");
        let service = api::AgentService::new(Arc::clone(&agent), &config.dpu);
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signals");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping; instances keep running");
        };
        api::serve(listener, service, shutdown).await?;
        let _ = std::fs::remove_file(&config.socket);
        drop(agent);
        Ok::<_, anyhow::Error>(())
    })
}

fn check(args: &RunArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    println!(
        "socket        {} (mode {:o})",
        config.socket.display(),
        config.mode()?
    );
    println!("state         {}", config.state.display());
    println!("run_dir       {}", config.run_dir.display());
    println!("dpu           {}", config.dpu);
    println!(
        "metrics       {}",
        config
            .metrics
            .map_or_else(|| "off".to_owned(), |m| m.to_string())
    );
    for v in config.pool()? {
        println!(
            "vf            {} -> {} {}",
            v.vf.port,
            v.kind.as_str(),
            v.vf.device
        );
    }
    if let Some(s) = &config.sriov {
        println!(
            "sriov         {} VFs on {}, ports {}N",
            s.num_vfs, s.pf, s.port_prefix
        );
    }
    Ok(())
}

fn image(
    binary: &Path,
    function: &str,
    modules: &[String],
    kit: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let kit = GuestKit::open(kit)?;
    // `--modules ""`: no VF driver (a tap-only image).
    let modules: Vec<&str> = modules
        .iter()
        .map(String::as_str)
        .filter(|m| !m.is_empty())
        .collect();
    let initramfs = kit.service_initramfs(binary, function, &modules)?;
    initramfs
        .write_file(out)
        .with_context(|| format!("{}", out.display()))?;
    println!(
        "{}: service image for `{function}` (kernel {})",
        out.display(),
        kit.kernel.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match &cli.command {
        None | Some(Command::Run) => run(&cli.run),
        Some(Command::Check) => check(&cli.run),
        Some(Command::Image {
            binary,
            function,
            modules,
            kit,
            out,
        }) => image(binary, function, modules, kit, out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaingate-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
