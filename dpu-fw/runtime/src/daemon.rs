//! `dpu-fw run`: opens the ports, starts the data path on its own thread
//! and the control API on a small async runtime, and stops both cleanly on
//! SIGTERM or SIGINT.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use chaingate_fastpath::offload::{Refusing, SoftSwitch};
use chaingate_proto::dpu;
use chaingate_proto::dpu::dpu_control_server::DpuControlServer;
use tokio::sync::{broadcast, watch};

use crate::config::{Backend, IoSpec, RuntimeConfig};
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
    /// The control API cannot listen.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime or a thread could not start.
    #[error("cannot start the {what}")]
    Start {
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

/// Opens every port of the configuration.
///
/// # Errors
/// [`DaemonError::Port`] or [`DaemonError::Unsupported`] for the first
/// port that cannot be opened.
pub fn open_ports(config: &RuntimeConfig) -> Result<Vec<Box<dyn PacketIo>>, DaemonError> {
    config
        .ports
        .iter()
        .map(|p| match &p.io {
            IoSpec::AfPacket { ifname } => AfPacket::open(ifname, SLOT)
                .map(|io| Box::new(io) as Box<dyn PacketIo>)
                .map_err(|source| DaemonError::Port {
                    port: p.name.clone(),
                    source,
                }),
            IoSpec::Dpdk { .. } => Err(DaemonError::Unsupported {
                port: p.name.clone(),
                io: p.io.to_string(),
            }),
        })
        .collect()
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
    let ports = open_ports(&config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Start {
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
            .spawn(move || match config.backend {
                Backend::Soft => {
                    let backend = SoftSwitch::new(config.capacity);
                    drive(&config, ports, backend, boot, outputs, &commands_rx, &stop);
                }
                Backend::Refuse => {
                    drive(
                        &config,
                        ports,
                        Refusing::default(),
                        boot,
                        outputs,
                        &commands_rx,
                        &stop,
                    );
                }
            })
            .map_err(|source| DaemonError::Start {
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
