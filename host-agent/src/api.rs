//! The operator API (`chaingate.agent.v1.Agent`) on a Unix socket, and
//! the client the `chaingate` CLI uses.
//!
//! The socket is made with the configured mode (0600 by default: root
//! only) before the server accepts anything; a socket file left by an
//! earlier run is replaced, one that a running agent serves is not.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use chaingate_proto::agent::{self, agent_client::AgentClient, agent_server};
use chaingate_proto::dpu;
use chaingate_proto::dpu::dpu_control_client::DpuControlClient;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::agent::{ActionError, Agent};
use crate::store::{EventRecord, Phase};

/// The service over an [`Agent`].
#[derive(Debug, Clone)]
pub struct AgentService {
    agent: Arc<Agent>,
    dpu_addr: String,
}

impl AgentService {
    /// Serves `agent`; `dpu_addr` is where session listings are asked.
    #[must_use]
    pub fn new(agent: Arc<Agent>, dpu_addr: &str) -> Self {
        Self {
            agent,
            dpu_addr: dpu_addr.to_owned(),
        }
    }
}

fn status_of(e: ActionError) -> Status {
    match e {
        ActionError::Invalid(m) => Status::invalid_argument(m),
        ActionError::NotFound(m) => Status::not_found(m),
        ActionError::Store(e) => Status::internal(e.to_string()),
        ActionError::Unavailable(m) => Status::unavailable(m),
    }
}

fn event_of(e: EventRecord) -> agent::Event {
    agent::Event {
        seq: e.seq,
        at_ms: e.at_ms,
        kind: e.kind,
        service: e.service,
        instance: e.instance,
        message: e.message,
    }
}

/// Runs blocking agent work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ActionError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status_of)
}

/// The status as the API gives it.
///
/// # Errors
/// The store failed.
pub fn status(agent: &Agent) -> Result<agent::Status, ActionError> {
    let store = agent.store();
    let desired = store
        .desired()?
        .and_then(|y| chaingate_proto::file::parse(&y).ok());
    let targets = store.targets()?;
    let records = store.instances()?;
    let dpu_state = agent.dpu().state().borrow().clone();
    let loads = dpu_state
        .telemetry
        .as_ref()
        .map(|t| t.instances.clone())
        .unwrap_or_default();
    let services = desired
        .as_ref()
        .map(|g| {
            g.services
                .iter()
                .map(|s| agent::ServiceStatus {
                    name: s.name.clone(),
                    target: targets
                        .get(&s.name)
                        .copied()
                        .unwrap_or(0)
                        .try_into()
                        .unwrap_or(u32::MAX),
                    min: s.scaling.min.into(),
                    max: s.scaling.max.into(),
                    running: records
                        .values()
                        .filter(|r| {
                            r.service == s.name
                                && matches!(r.phase, Phase::Starting | Phase::Active)
                        })
                        .count()
                        .try_into()
                        .unwrap_or(u32::MAX),
                    capacity_bps: s.capacity.0,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(agent::Status {
        desired_generation: store.generation()?,
        dpu_generation: dpu_state.generation,
        dpu_connected: dpu_state.connected,
        instances: records
            .into_values()
            .map(|r| agent::InstanceStatus {
                load: loads.iter().find(|l| l.instance == r.name).cloned(),
                phase: r.phase.as_str().to_owned(),
                vfs: vec![format!("{} ({})", r.vf.port, r.vf.device)],
                handle: r
                    .handle
                    .map(|h| format!("pid {}", h.pid))
                    .unwrap_or_default(),
                launcher: r.launcher,
                service: r.service,
                name: r.name,
            })
            .collect(),
        services,
        dpu_address: agent.dpu_address().to_owned(),
        dpu_error: dpu_state.last_error.unwrap_or_default(),
        configured: desired.is_some(),
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<agent::Event, Status>> + Send>>;

#[tonic::async_trait]
impl agent_server::Agent for AgentService {
    async fn get_status(
        &self,
        _: Request<agent::GetStatusRequest>,
    ) -> Result<Response<agent::Status>, Status> {
        let agent = Arc::clone(&self.agent);
        Ok(Response::new(blocking(move || status(&agent)).await?))
    }

    async fn apply_config(
        &self,
        request: Request<agent::ApplyConfigRequest>,
    ) -> Result<Response<agent::ApplyConfigResponse>, Status> {
        let agent = Arc::clone(&self.agent);
        let yaml = request.into_inner().yaml;
        let generation = blocking(move || agent.apply(&yaml)).await?;
        Ok(Response::new(agent::ApplyConfigResponse { generation }))
    }

    async fn scale(
        &self,
        request: Request<agent::ScaleRequest>,
    ) -> Result<Response<agent::ScaleResponse>, Status> {
        let agent = Arc::clone(&self.agent);
        let r = request.into_inner();
        let n = blocking(move || agent.scale(&r.service, r.instances.into())).await?;
        Ok(Response::new(agent::ScaleResponse {
            instances: n.try_into().unwrap_or(u32::MAX),
        }))
    }

    async fn drain(
        &self,
        request: Request<agent::DrainRequest>,
    ) -> Result<Response<agent::DrainResponse>, Status> {
        let agent = Arc::clone(&self.agent);
        let name = request.into_inner().instance;
        blocking(move || agent.drain(&name)).await?;
        Ok(Response::new(agent::DrainResponse {}))
    }

    async fn ask_instance(
        &self,
        request: Request<agent::AskInstanceRequest>,
    ) -> Result<Response<agent::AskInstanceResponse>, Status> {
        let agent = Arc::clone(&self.agent);
        let r = request.into_inner();
        let answer = blocking(move || agent.ask(&r.instance, &r.request)).await?;
        Ok(Response::new(agent::AskInstanceResponse { answer }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<agent::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let after = request.into_inner().after;
        // Subscribe first, then read the past: an event in between is in
        // both and is sent once (by its sequence number).
        let mut live = self.agent.subscribe();
        let agent = Arc::clone(&self.agent);
        let past = blocking(move || Ok(agent.store().events_after(after)?)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut last = after;
            for e in past {
                last = e.seq;
                if tx.send(Ok(event_of(e))).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(e) if e.seq <= last => {}
                    Ok(e) => {
                        last = e.seq;
                        if tx.send(Ok(event_of(e))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "{n} events missed: watch again from {last}"
                            ))))
                            .await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_sessions(
        &self,
        request: Request<dpu::ListSessionsRequest>,
    ) -> Result<Response<dpu::ListSessionsResponse>, Status> {
        let channel = Endpoint::from_shared(format!("http://{}", self.dpu_addr))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the DPU at {} is not reachable: {e}",
                    self.dpu_addr
                ))
            })?;
        DpuControlClient::new(channel)
            .list_sessions(request.into_inner())
            .await
    }
}

/// Binds the API socket at `path` with permission bits `mode`.
///
/// # Errors
/// Another agent serves it, or the socket cannot be made.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another agent is serving it", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // The socket is made under a restrictive umask, so there is no moment
    // when it is more open than `mode`.
    let old = rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener =
        bound.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves the API on `listener` until `shutdown` completes.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: UnixListener,
    service: AgentService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(agent_server::AgentServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}

/// A client of the agent at the Unix socket `path`.
///
/// # Errors
/// The socket does not answer.
pub async fn connect(path: &Path) -> Result<AgentClient<Channel>, String> {
    let path: PathBuf = path.to_owned();
    let shown = path.display().to_string();
    // The URI is not used: every connection goes to the socket.
    let channel = Endpoint::from_static("http://agent.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| {
            let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
            format!("cannot reach the agent at {shown}: {why} (is chaingate-agent running? --socket to point elsewhere)")
        })?;
    Ok(AgentClient::new(channel))
}
