//! The DPU client: keeps one DPU configured as the agent wants it, and
//! brings the DPU's telemetry to the rest of the agent.
//!
//! A background task connects (with exponential backoff and jitter), reads
//! the DPU's generation, pushes the desired configuration when the DPU's is
//! older, and then follows the telemetry stream. The DPU reporting a lower
//! generation (it restarted: it reports 0) or a new boot id makes the task
//! push again; a broken stream or a silent one makes it reconnect. Nothing
//! needs an operator: a DPU that comes back is configured again by itself.
//!
//! The rest of the agent sets the desired configuration with
//! [`DpuClient::set_desired`] and reads [`DpuState`] from a watch channel;
//! scale requests arrive on a broadcast channel.

use std::sync::Arc;
use std::time::Duration;

use chaingate_proto::dpu;
use chaingate_proto::dpu::dpu_control_client::DpuControlClient;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// How the client paces itself.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// The first wait after a failed connection.
    pub backoff_min: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// Telemetry period asked of the DPU.
    pub telemetry_period: Duration,
    /// Time allowed for connecting and for each call.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            telemetry_period: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What the agent knows of the DPU.
#[derive(Clone, Debug, Default)]
pub struct DpuState {
    /// A telemetry stream is open.
    pub connected: bool,
    /// The DPU's run, as it last reported it.
    pub boot_id: Option<u64>,
    /// The generation in force on the DPU.
    pub generation: u64,
    /// The latest telemetry.
    pub telemetry: Option<Arc<dpu::Telemetry>>,
    /// Configurations the DPU applied when this client pushed them.
    pub pushes: u64,
    /// Times the DPU was seen to restart (a new boot id).
    pub restarts: u64,
    /// The last thing that went wrong (a refused configuration names the
    /// field), cleared when a push succeeds.
    pub last_error: Option<String>,
}

/// Why a call to the DPU failed.
#[derive(Debug, thiserror::Error)]
pub enum DpuError {
    /// Not connected now.
    #[error("the DPU at {0} is not connected")]
    NotConnected(String),
    /// The DPU answered with an error.
    #[error("the DPU refused: {}", .0.message())]
    Refused(tonic::Status),
}

/// A running client; the task stops when this is dropped.
#[derive(Debug)]
pub struct DpuClient {
    addr: String,
    desired: watch::Sender<Option<Arc<dpu::Config>>>,
    state: watch::Receiver<DpuState>,
    scale: broadcast::Sender<dpu::ScaleRequest>,
    conn: watch::Receiver<Option<DpuControlClient<Channel>>>,
    task: JoinHandle<()>,
}

impl DpuClient {
    /// Starts a client of the DPU at `addr` (`HOST:PORT`) on the current
    /// tokio runtime.
    #[must_use]
    pub fn start(addr: &str, options: ClientOptions) -> Self {
        let (desired, desired_rx) = watch::channel(None);
        let (state_tx, state) = watch::channel(DpuState::default());
        let (scale, _) = broadcast::channel(256);
        let (conn_tx, conn) = watch::channel(None);
        let task = tokio::spawn(
            Task {
                addr: addr.to_owned(),
                options,
                refused: None,
                desired: desired_rx,
                state: state_tx,
                scale: scale.clone(),
                conn: conn_tx,
            }
            .run(),
        );
        Self {
            addr: addr.to_owned(),
            desired,
            state,
            scale,
            conn,
            task,
        }
    }

    /// The DPU's address.
    #[must_use]
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sets the configuration the DPU must have; it is pushed when the
    /// DPU's generation is older.
    pub fn set_desired(&self, config: dpu::Config) {
        self.desired.send_replace(Some(Arc::new(config)));
    }

    /// What is known of the DPU, as it changes.
    #[must_use]
    pub fn state(&self) -> watch::Receiver<DpuState> {
        self.state.clone()
    }

    /// Scale requests, as the DPU raises them.
    #[must_use]
    pub fn scale_requests(&self) -> broadcast::Receiver<dpu::ScaleRequest> {
        self.scale.subscribe()
    }

    /// Sets an instance's state on the DPU now.
    ///
    /// # Errors
    /// [`DpuError`].
    pub async fn set_instance_state(
        &self,
        instance: &str,
        state: dpu::InstanceState,
    ) -> Result<(), DpuError> {
        let mut client = self
            .conn
            .borrow()
            .clone()
            .ok_or_else(|| DpuError::NotConnected(self.addr.clone()))?;
        client
            .set_instance_state(dpu::SetInstanceStateRequest {
                instance: instance.to_owned(),
                state: state.into(),
            })
            .await
            .map_err(DpuError::Refused)?;
        Ok(())
    }
}

impl Drop for DpuClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Task {
    addr: String,
    options: ClientOptions,
    /// The desired generation the DPU refused (not pushed again).
    refused: Option<u64>,
    desired: watch::Receiver<Option<Arc<dpu::Config>>>,
    state: watch::Sender<DpuState>,
    scale: broadcast::Sender<dpu::ScaleRequest>,
    conn: watch::Sender<Option<DpuControlClient<Channel>>>,
}

/// Why a session with the DPU ended.
enum End {
    Lost(String),
}

impl Task {
    async fn run(mut self) {
        let mut backoff = self.options.backoff_min;
        let mut attempt: u64 = 0;
        loop {
            match self.connect().await {
                Ok(client) => {
                    backoff = self.options.backoff_min;
                    self.conn.send_replace(Some(client.clone()));
                    let End::Lost(why) = self.session(client).await;
                    self.conn.send_replace(None);
                    tracing::warn!(dpu = %self.addr, %why, "connection to the DPU lost");
                    self.state.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(why);
                    });
                }
                Err(why) => {
                    self.state.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(why);
                    });
                }
            }
            // Jitter (up to a quarter) keeps many agents from retrying in
            // step; the attempt count is the only source of variation
            // needed.
            attempt += 1;
            let jitter = backoff.mul_f64(f64::from(u32::try_from(attempt % 7).unwrap_or(0)) / 28.0);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }

    async fn connect(&self) -> Result<DpuControlClient<Channel>, String> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| format!("bad DPU address {}: {e}", self.addr))?
            .connect_timeout(self.options.timeout)
            .timeout(self.options.timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to the DPU at {}: {e}", self.addr))?;
        Ok(DpuControlClient::new(channel))
    }

    async fn session(&mut self, mut client: DpuControlClient<Channel>) -> End {
        let stats = match client.get_stats(dpu::GetStatsRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(e) => return End::Lost(format!("GetStats: {}", e.message())),
        };
        self.saw(stats.boot_id, stats.generation);
        if let Err(e) = self.push_if_older(&mut client).await {
            return e;
        }
        let period = u32::try_from(self.options.telemetry_period.as_millis()).unwrap_or(u32::MAX);
        let stream = client
            .watch_telemetry(dpu::WatchTelemetryRequest { period_ms: period })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) => return End::Lost(format!("WatchTelemetry: {}", e.message())),
        };
        self.state.send_modify(|s| s.connected = true);
        tracing::info!(dpu = %self.addr, generation = stats.generation, "connected to the DPU");
        // A stream that stays silent this long is a dead peer.
        let silence = self.options.telemetry_period * 4 + self.options.timeout;
        loop {
            tokio::select! {
                next = tokio::time::timeout(silence, stream.message()) => {
                    let t = match next {
                        Err(_) => return End::Lost("telemetry stopped".into()),
                        Ok(Err(e)) => return End::Lost(format!("telemetry: {}", e.message())),
                        Ok(Ok(None)) => return End::Lost("the DPU ended the telemetry stream".into()),
                        Ok(Ok(Some(t))) => t,
                    };
                    for r in &t.scale_requests {
                        // Nobody listening is fine.
                        let _ = self.scale.send(r.clone());
                    }
                    self.saw(t.boot_id, t.generation);
                    self.state.send_modify(|s| s.telemetry = Some(Arc::new(t)));
                    if let Err(e) = self.push_if_older(&mut client).await {
                        return e;
                    }
                }
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        // The client was dropped; the task is being aborted.
                        return End::Lost("client dropped".into());
                    }
                    if let Err(e) = self.push_if_older(&mut client).await {
                        return e;
                    }
                }
            }
        }
    }

    /// Records the DPU's boot id and generation. Within one run of the
    /// DPU its generation only grows (it refuses older ones), so a lower
    /// number is a message from before the last push, not news.
    fn saw(&self, boot_id: u64, generation: u64) {
        self.state.send_modify(|s| {
            if s.boot_id == Some(boot_id) {
                s.generation = s.generation.max(generation);
                return;
            }
            if s.boot_id.is_some() {
                s.restarts += 1;
                tracing::warn!(dpu = %self.addr, generation, "the DPU restarted");
            }
            s.boot_id = Some(boot_id);
            s.generation = generation;
        });
    }

    /// Pushes the desired configuration if the DPU's is older. A refused
    /// configuration is reported and not pushed again until it changes.
    async fn push_if_older(&mut self, client: &mut DpuControlClient<Channel>) -> Result<(), End> {
        let Some(desired) = self.desired.borrow_and_update().clone() else {
            return Ok(());
        };
        let dpu_generation = self.state.borrow().generation;
        if dpu_generation >= desired.generation || self.refused == Some(desired.generation) {
            if dpu_generation > desired.generation {
                tracing::warn!(
                    dpu = %self.addr,
                    dpu_generation,
                    desired = desired.generation,
                    "the DPU has a newer generation than the agent"
                );
            }
            return Ok(());
        }
        let reply = client
            .apply_config(dpu::ApplyConfigRequest {
                config: Some(dpu::Config::clone(&desired)),
            })
            .await;
        match reply {
            Ok(r) => {
                let r = r.into_inner();
                tracing::info!(
                    dpu = %self.addr,
                    generation = r.current_generation,
                    applied = r.applied,
                    "configuration pushed"
                );
                self.saw(r.boot_id, r.current_generation);
                self.state.send_modify(|s| {
                    s.pushes += u64::from(r.applied);
                    s.last_error = None;
                });
                Ok(())
            }
            Err(e) if e.code() == tonic::Code::InvalidArgument => {
                self.refused = Some(desired.generation);
                let why = format!("generation {} refused: {}", desired.generation, e.message());
                tracing::error!(dpu = %self.addr, error = %why, "the DPU refused the configuration");
                self.state.send_modify(|s| s.last_error = Some(why));
                Ok(())
            }
            Err(e) => Err(End::Lost(format!("ApplyConfig: {}", e.message()))),
        }
    }
}
