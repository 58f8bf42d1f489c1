//! `dpu-fw run`: opens the ports, starts the data path on its own thread
//! and the control API on a small async runtime, and stops both cleanly on
//! SIGTERM or SIGINT.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use chaingate_fastpath::offload::{
    FlowOffload, Mlx5, OffloadError, PortAttr, Profile, Refusing, SoftSwitch,
};
use chaingate_proto::dpu;
use chaingate_proto::dpu::dpu_control_server::DpuControlServer;
use chaingate_shared::config::MAX_INSTANCES;
use tokio::sync::{broadcast, watch};

use crate::config::{Backend, IoSpec, ProfileName, RuntimeConfig};
use crate::control::ControlService;
use crate::engine::{Command, Engine, Outputs, SLOT, Switch};
use crate::io::PacketIo;
use crate::io::afpacket::{AfPacket, AfPacketError};

/// Why the runtime could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A port could not be opened.
    #[error("port {port}")]
    Port {
        /// The port's name.
        port: String,
        /// Why.
        #[source]
        source: AfPacketError,
    },
    /// A port needs support this build does not have.
    #[error("port {port}: {io} needs a build with the `dpdk` feature")]
    Unsupported {
        /// The port's name.
        port: String,
        /// Its I/O.
        io: String,
    },
    /// A DPDK port could not be opened (EAL, mempool or port set-up).
    #[error("port {port}: {message}")]
    Dpdk {
        /// The port's name.
        port: String,
        /// What failed.
        message: String,
    },
    /// The rte_flow backend needs a build with DPDK.
    #[error("offload backend rte_flow needs a build with the `dpdk` feature")]
    NoRteFlow,
    /// The control API cannot listen.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A port would not start.
    #[error("port {port}: cannot start it")]
    Start {
        /// The port's name.
        port: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The flow backend refused its set-up.
    #[error("the {backend} offload backend: {error}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// Why.
        error: OffloadError,
    },
    /// The async runtime or a thread could not start.
    #[error("cannot start the {what}")]
    Spawn {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control server failed.
    #[error("the control server failed")]
    Serve(#[source] tonic::transport::Error),
    /// The data path thread ended abnormally.
    #[error("the data path thread panicked")]
    DataPath,
}

/// The runtime's ports, opened.
pub struct Ports {
    /// Each port's I/O, in the configuration's order.
    pub io: Vec<Box<dyn PacketIo>>,
    /// The DPDK port number of each (`None`: not a DPDK port).
    pub dpdk_ids: Vec<Option<u16>>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports")
            .field("count", &self.io.len())
            .field("dpdk_ids", &self.dpdk_ids)
            .finish()
    }
}

impl Ports {
    /// Starts every port: transfer proxies first, then the rest (mlx5
    /// refuses to start a representor before its proxy).
    ///
    /// # Errors
    /// [`DaemonError::Start`] naming the port.
    pub fn start(&mut self, config: &RuntimeConfig) -> Result<(), DaemonError> {
        let proxies: Vec<bool> = self.io.iter().map(|io| io.transfer_proxy()).collect();
        for first in [true, false] {
            for (i, io) in self.io.iter_mut().enumerate() {
                if proxies.get(i).copied() == Some(first) {
                    io.start().map_err(|source| DaemonError::Start {
                        port: config
                            .ports
                            .get(i)
                            .map(|p| p.name.clone())
                            .unwrap_or_default(),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Opens every port of the configuration (starting EAL first when a port
/// is a DPDK one), configured and not started: the flow backend's
/// template API is set up on stopped ports ([`prepare`]).
///
/// # Errors
/// [`DaemonError::Port`], [`DaemonError::Dpdk`] or
/// [`DaemonError::Unsupported`] for the first port that cannot be opened.
pub fn open_ports(config: &RuntimeConfig) -> Result<Ports, DaemonError> {
    #[cfg(feature = "dpdk")]
    let mut dpdk: Option<(&'static crate::dpdk::Eal, Arc<crate::dpdk::Mempool>)> = None;
    let mut ports = Ports {
        io: Vec::with_capacity(config.ports.len()),
        dpdk_ids: Vec::with_capacity(config.ports.len()),
    };
    for p in &config.ports {
        match &p.io {
            IoSpec::AfPacket { ifname } => {
                let io = AfPacket::open(ifname, SLOT).map_err(|source| DaemonError::Port {
                    port: p.name.clone(),
                    source,
                })?;
                ports.io.push(Box::new(io));
                ports.dpdk_ids.push(None);
            }
            #[cfg(feature = "dpdk")]
            IoSpec::Dpdk { device } => {
                let failed = |message: String| DaemonError::Dpdk {
                    port: p.name.clone(),
                    message,
                };
                let (eal, pool) = if let Some((eal, pool)) = &dpdk {
                    (*eal, Arc::clone(pool))
                } else {
                    let eal = crate::dpdk::Eal::init(&config.dpdk.eal)
                        .map_err(|e| failed(e.to_string()))?;
                    let pool = crate::dpdk::Mempool::new(eal, "chaingate", config.dpdk.mbufs)
                        .map_err(|e| {
                            failed(format!(
                                "cannot make a pool of {} mbufs: {e}",
                                config.dpdk.mbufs
                            ))
                        })?;
                    let pool = Arc::new(pool);
                    dpdk = Some((eal, Arc::clone(&pool)));
                    (eal, pool)
                };
                let port = crate::dpdk::EthPort::open(eal, device, pool, config.dpdk.descriptors)
                    .map_err(|e| failed(e.to_string()))?;
                ports.dpdk_ids.push(Some(port.id()));
                ports.io.push(Box::new(crate::dpdk::DpdkIo::new(port)));
            }
            #[cfg(not(feature = "dpdk"))]
            IoSpec::Dpdk { .. } => {
                return Err(DaemonError::Unsupported {
                    port: p.name.clone(),
                    io: p.io.to_string(),
                });
            }
        }
    }
    Ok(ports)
}

/// The offload backend the configuration asks for.
pub enum Chosen {
    /// The software eSwitch.
    Soft(Box<SoftSwitch>),
    /// No offload.
    Refuse(Refusing),
    /// The NIC, through rte_flow.
    #[cfg(feature = "dpdk")]
    RteFlow(Box<crate::dpdk::DpdkFlow>),
}

impl std::fmt::Debug for Chosen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Soft(_) => "soft",
            Self::Refuse(_) => "refuse",
            #[cfg(feature = "dpdk")]
            Self::RteFlow(_) => "rte_flow",
        })
    }
}

/// The backend `config` names, over `ports`.
fn choose(config: &RuntimeConfig, ports: &Ports) -> Result<Chosen, DaemonError> {
    Ok(match config.backend {
        Backend::Soft => {
            let profile = match config.profile {
                ProfileName::Mlx5 => Profile::Mlx5(Mlx5::default()),
                ProfileName::Generic => Profile::Generic,
            };
            Chosen::Soft(Box::new(SoftSwitch::with_profile(config.capacity, profile)))
        }
        Backend::Refuse => Chosen::Refuse(Refusing::default()),
        #[cfg(feature = "dpdk")]
        Backend::RteFlow => Chosen::RteFlow(Box::new(
            crate::dpdk::DpdkFlow::new(ports.dpdk_ids.clone(), config.capacity).map_err(|e| {
                DaemonError::Dpdk {
                    port: "(rte_flow backend)".into(),
                    message: e.to_string(),
                }
            })?,
        )),
        #[cfg(not(feature = "dpdk"))]
        Backend::RteFlow => {
            let _ = ports;
            return Err(DaemonError::NoRteFlow);
        }
    })
}

/// What the template API reserves for `config`: a counter and an AGE per
/// rule at most, and a shared counter per instance.
#[must_use]
pub fn port_attr(config: &RuntimeConfig) -> PortAttr {
    PortAttr::for_rules(config.capacity, MAX_INSTANCES)
}

/// Configures `backend`'s template API while the ports are stopped.
/// A NIC whose ports refuse it gets its rules one by one (logged); the
/// software eSwitch must take it.
fn configure<B: FlowOffload>(
    backend: &mut B,
    name: &'static str,
    attr: &PortAttr,
    fatal: bool,
) -> Result<(), DaemonError> {
    match backend.configure(attr) {
        Err(error) if fatal => Err(DaemonError::Backend {
            backend: name,
            error,
        }),
        _ => Ok(()),
    }
}

/// Opens the ports and sets the backend up in DPDK's order: ports
/// configured, `rte_flow_configure` while they are stopped, ports started
/// (proxies first), then the backend told so (template tables come after).
///
/// # Errors
/// [`DaemonError`] for the first step that fails.
pub fn prepare(config: &RuntimeConfig) -> Result<(Ports, Chosen), DaemonError> {
    let mut ports = open_ports(config)?;
    let mut chosen = choose(config, &ports)?;
    let attr = port_attr(config);
    match &mut chosen {
        Chosen::Soft(b) => configure(b.as_mut(), "soft", &attr, true)?,
        Chosen::Refuse(b) => configure(b, "refuse", &attr, true)?,
        #[cfg(feature = "dpdk")]
        Chosen::RteFlow(b) => configure(b.as_mut(), "rte_flow", &attr, false)?,
    }
    ports.start(config)?;
    let started = match &mut chosen {
        Chosen::Soft(b) => b.start(),
        Chosen::Refuse(b) => b.start(),
        #[cfg(feature = "dpdk")]
        Chosen::RteFlow(b) => b.start(),
    };
    started.map_err(|error| DaemonError::Backend {
        backend: "offload",
        error,
    })?;
    Ok((ports, chosen))
}

/// A number that differs between two runs of the runtime.
fn boot_id() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    u64::try_from(t & u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id())
}

/// Runs the runtime until SIGTERM or SIGINT.
///
/// # Errors
/// [`DaemonError`].
pub fn run(config: RuntimeConfig) -> Result<(), DaemonError> {
    let (ports, chosen) = prepare(&config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Spawn {
            what: "async runtime",
            source,
        })?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .map_err(|source| DaemonError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    let boot = boot_id();
    let (telemetry_tx, telemetry_rx) = watch::channel(Arc::new(dpu::Telemetry::default()));
    let (scale_tx, _) = broadcast::channel(256);
    let outputs = Outputs {
        telemetry: telemetry_tx,
        scale: scale_tx.clone(),
    };
    let (commands_tx, commands_rx) = mpsc::channel::<Command>();
    let stop = Arc::new(AtomicBool::new(false));
    let engine = {
        let stop = Arc::clone(&stop);
        let config = config.clone();
        thread::Builder::new()
            .name("datapath".into())
            .spawn(move || match chosen {
                Chosen::Soft(b) => drive(&config, ports.io, *b, boot, outputs, &commands_rx, &stop),
                Chosen::Refuse(b) => {
                    drive(&config, ports.io, b, boot, outputs, &commands_rx, &stop);
                }
                #[cfg(feature = "dpdk")]
                Chosen::RteFlow(b) => {
                    drive(&config, ports.io, *b, boot, outputs, &commands_rx, &stop);
                }
            })
            .map_err(|source| DaemonError::Spawn {
                what: "data path thread",
                source,
            })?
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let service = ControlService::new(
        commands_tx,
        telemetry_rx,
        scale_tx,
        config.telemetry_period,
        shutdown_rx,
    );
    tracing::info!(
        %addr,
        ports = config.ports.len(),
        backend = %config.backend,
        boot_id = format_args!("{boot:016x}"),
        "dpu-fw running"
    );
    let served = rt.block_on(async {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(DpuControlServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown_signal(shutdown_tx))
            .await
    });
    stop.store(true, Ordering::Relaxed);
    let joined = engine.join();
    // Streams still open are cut, not waited for.
    rt.shutdown_background();
    // The data path thread dropped the ports and the backend: EAL (when it
    // runs) has nothing left to serve.
    #[cfg(feature = "dpdk")]
    if joined.is_ok() {
        crate::dpdk::Eal::cleanup();
    }
    served.map_err(DaemonError::Serve)?;
    joined.map_err(|_| DaemonError::DataPath)?;
    tracing::info!("dpu-fw stopped");
    Ok(())
}

fn drive<B: Switch>(
    config: &RuntimeConfig,
    ports: Vec<Box<dyn PacketIo>>,
    backend: B,
    boot: u64,
    outputs: Outputs,
    commands: &mpsc::Receiver<Command>,
    stop: &AtomicBool,
) {
    let mut engine = Engine::new(config, ports, backend, boot, outputs);
    engine.run(commands, stop);
}

/// Waits for SIGTERM or SIGINT, then tells the telemetry streams to end.
async fn shutdown_signal(streams: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    streams.send_replace(true);
}
