//! The control API server (`chaingate.dpu.v1.DpuControl`) on TCP.
//!
//! It converts and validates requests at the boundary (a bad configuration
//! never reaches the data path), then hands them to the engine's thread
//! over a channel and waits for its answer. Telemetry streams read what
//! the engine publishes; they never ask the data path for anything.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use chaingate_proto::dpu;
use chaingate_proto::dpu::dpu_control_server::DpuControl;
use chaingate_shared::Config;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::engine::{Command, StateError};

/// The control service.
#[derive(Debug, Clone)]
pub struct ControlService {
    commands: Sender<Command>,
    telemetry: watch::Receiver<Arc<dpu::Telemetry>>,
    scale: broadcast::Sender<dpu::ScaleRequest>,
    period: Duration,
    shutdown: watch::Receiver<bool>,
}

impl ControlService {
    /// A service that sends commands to the engine and reads its outputs;
    /// `period` is the fastest telemetry a watcher gets. Telemetry streams
    /// end when `shutdown` turns true, so that the server can stop.
    #[must_use]
    pub fn new(
        commands: Sender<Command>,
        telemetry: watch::Receiver<Arc<dpu::Telemetry>>,
        scale: broadcast::Sender<dpu::ScaleRequest>,
        period: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            commands,
            telemetry,
            scale,
            period,
            shutdown,
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .map_err(|_| Status::unavailable("the data path has stopped"))?;
        rx.await
            .map_err(|_| Status::unavailable("the data path has stopped"))
    }
}

type TelemetryStream = Pin<Box<dyn Stream<Item = Result<dpu::Telemetry, Status>> + Send>>;

#[tonic::async_trait]
impl DpuControl for ControlService {
    async fn apply_config(
        &self,
        request: Request<dpu::ApplyConfigRequest>,
    ) -> Result<Response<dpu::ApplyConfigResponse>, Status> {
        let msg = request
            .into_inner()
            .config
            .ok_or_else(|| Status::invalid_argument("config: missing"))?;
        let config = Config::try_from(&msg).map_err(|e| {
            tracing::warn!(error = %e, generation = msg.generation, "configuration refused");
            Status::invalid_argument(e.to_string())
        })?;
        let config = Box::new(config);
        match self.ask(|tx| Command::Apply(config, tx)).await? {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => {
                tracing::warn!(error = %e, generation = msg.generation, "configuration refused");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }

    async fn set_instance_state(
        &self,
        request: Request<dpu::SetInstanceStateRequest>,
    ) -> Result<Response<dpu::SetInstanceStateResponse>, Status> {
        let req = request.into_inner();
        let state = chaingate_proto::convert::instance_state(req.state, || "state".into())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        match self
            .ask(|tx| Command::SetState(req.instance, state, tx))
            .await?
        {
            Ok(r) => Ok(Response::new(r)),
            Err(e @ StateError::NoInstance(_)) => Err(Status::not_found(e.to_string())),
            Err(e @ StateError::Unconfigured) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    type WatchTelemetryStream = TelemetryStream;

    async fn watch_telemetry(
        &self,
        request: Request<dpu::WatchTelemetryRequest>,
    ) -> Result<Response<Self::WatchTelemetryStream>, Status> {
        let asked = Duration::from_millis(u64::from(request.into_inner().period_ms));
        let period = asked.max(self.period);
        let mut telemetry = self.telemetry.clone();
        let mut scale = self.scale.subscribe();
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
                let mut msg = dpu::Telemetry::clone(&telemetry.borrow_and_update());
                loop {
                    match scale.try_recv() {
                        Ok(r) => msg.scale_requests.push(r),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
                if tx.send(Ok(msg)).await.is_err() {
                    break; // the watcher went away
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
        let req = request.into_inner();
        if let Some(a) = &req.address
            && a.parse::<std::net::IpAddr>().is_err()
        {
            return Err(Status::invalid_argument(format!(
                "address: \"{a}\" is not an IP address"
            )));
        }
        if !req.page_token.is_empty() && req.page_token.parse::<u64>().is_err() {
            return Err(Status::invalid_argument(
                "page_token: not one this DPU gave",
            ));
        }
        Ok(Response::new(
            self.ask(|tx| Command::ListSessions(req, tx)).await?,
        ))
    }

    async fn get_stats(
        &self,
        _: Request<dpu::GetStatsRequest>,
    ) -> Result<Response<dpu::Stats>, Status> {
        Ok(Response::new(self.ask(Command::Stats).await?))
    }

    async fn list_rules(
        &self,
        request: Request<dpu::ListRulesRequest>,
    ) -> Result<Response<dpu::ListRulesResponse>, Status> {
        let req = request.into_inner();
        if !req.page_token.is_empty() && req.page_token.parse::<u64>().is_err() {
            return Err(Status::invalid_argument(
                "page_token: not one this DPU gave",
            ));
        }
        Ok(Response::new(
            self.ask(|tx| Command::ListRules(req, tx)).await?,
        ))
    }
}
