//! Prometheus metrics over HTTP (`GET /metrics`, text format 0.0.4).
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `chaingate_instance_bps` | instance, service | smoothed load, bits/s (DPU) |
//! | `chaingate_instance_utilisation` | instance, service | share of capacity, 1 is full |
//! | `chaingate_instance_sessions` | instance, service | sessions on it |
//! | `chaingate_instances` | service, phase | instances by phase |
//! | `chaingate_service_target` | service | instances wanted |
//! | `chaingate_events_total` | service, kind | scale and lifecycle events |
//! | `chaingate_provisioning_failures_total` | service, step | VF, launch, release failures |
//! | `chaingate_scale_out_reaction_seconds` | service | summary: load over the watermark to the first session on the new instance |
//! | `chaingate_scale_out_reaction_last_seconds` | service | the latest of those |
//! | `chaingate_offload_refused_total` | reason | sessions the NIC refused (DPU) |
//! | `chaingate_offload_sessions` | | sessions in hardware now (DPU) |
//! | `chaingate_dpu_sessions` | | sessions on the DPU now |
//! | `chaingate_dpu_session_capacity` | | the DPU's session table size |
//! | `chaingate_dpu_sessions_refused_total` | | new connections refused, table full (since the DPU started) |
//! | `chaingate_dpu_connected` | | 1 when the telemetry stream is up |
//! | `chaingate_dpu_generation` | | the generation in force on the DPU |
//! | `chaingate_desired_generation` | | the last generation pushed |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::agent::Agent;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The metrics text, now.
#[must_use]
pub fn render(agent: &Agent) -> String {
    let mut out = String::new();
    let state = agent.dpu().state().borrow().clone();
    let telemetry = state.telemetry.clone();
    let loads = telemetry
        .as_ref()
        .map(|t| t.instances.clone())
        .unwrap_or_default();

    type Field = fn(&chaingate_proto::dpu::InstanceLoad) -> f64;
    let per_instance: [(&str, &str, Field); 3] = [
        (
            "chaingate_instance_bps",
            "Smoothed load of an instance, bits per second, as the DPU measures it.",
            |l| l.bps,
        ),
        (
            "chaingate_instance_utilisation",
            "Load of an instance as a share of its capacity (1 is full).",
            |l| l.utilisation,
        ),
        (
            "chaingate_instance_sessions",
            "Sessions that use an instance.",
            |l| l.sessions as f64,
        ),
    ];
    for (name, help, field) in per_instance {
        family(&mut out, name, "gauge", help);
        for l in &loads {
            let _ = writeln!(
                out,
                "{name}{{instance=\"{}\",service=\"{}\"}} {}",
                label(&l.instance),
                label(&l.service),
                field(l)
            );
        }
    }

    let records = agent.store().instances().unwrap_or_default();
    let mut phases: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for r in records.values() {
        *phases
            .entry((r.service.clone(), r.phase.as_str()))
            .or_default() += 1;
    }
    family(
        &mut out,
        "chaingate_instances",
        "gauge",
        "Instances by service and phase.",
    );
    for ((service, phase), n) in &phases {
        let _ = writeln!(
            out,
            "chaingate_instances{{service=\"{}\",phase=\"{phase}\"}} {n}",
            label(service)
        );
    }
    family(
        &mut out,
        "chaingate_service_target",
        "gauge",
        "Instances wanted per service.",
    );
    for (service, n) in agent.store().targets().unwrap_or_default() {
        let _ = writeln!(
            out,
            "chaingate_service_target{{service=\"{}\"}} {n}",
            label(&service)
        );
    }

    let counters = agent.counters();
    family(
        &mut out,
        "chaingate_events_total",
        "counter",
        "Scaling and lifecycle events, by service and kind.",
    );
    for ((service, kind), n) in counters
        .events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        let _ = writeln!(
            out,
            "chaingate_events_total{{service=\"{}\",kind=\"{}\"}} {n}",
            label(service),
            label(kind)
        );
    }
    family(
        &mut out,
        "chaingate_provisioning_failures_total",
        "counter",
        "Failed provisioning steps (VF, launch, release), by service and step.",
    );
    for ((service, step), n) in counters
        .provisioning_failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        let _ = writeln!(
            out,
            "chaingate_provisioning_failures_total{{service=\"{}\",step=\"{}\"}} {n}",
            label(service),
            label(step)
        );
    }

    let reactions = counters
        .reactions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    family(
        &mut out,
        "chaingate_scale_out_reaction_seconds",
        "summary",
        "From the load crossing the scale-out watermark to the first session on the new instance.",
    );
    for (service, (_, sum, count)) in &reactions {
        let _ = writeln!(
            out,
            "chaingate_scale_out_reaction_seconds_sum{{service=\"{}\"}} {sum}",
            label(service)
        );
        let _ = writeln!(
            out,
            "chaingate_scale_out_reaction_seconds_count{{service=\"{}\"}} {count}",
            label(service)
        );
    }
    family(
        &mut out,
        "chaingate_scale_out_reaction_last_seconds",
        "gauge",
        "The latest scale-out reaction time.",
    );
    for (service, (last, _, _)) in &reactions {
        let _ = writeln!(
            out,
            "chaingate_scale_out_reaction_last_seconds{{service=\"{}\"}} {last}",
            label(service)
        );
    }
    family(
        &mut out,
        "chaingate_offload_refused_total",
        "counter",
        "Sessions the NIC did not take (left in software), by reason.",
    );
    if let Some(offload) = telemetry.as_ref().and_then(|t| t.offload.as_ref()) {
        for (reason, n) in &offload.refused {
            let _ = writeln!(
                out,
                "chaingate_offload_refused_total{{reason=\"{}\"}} {n}",
                label(reason)
            );
        }
        family(
            &mut out,
            "chaingate_offload_sessions",
            "gauge",
            "Sessions in hardware now.",
        );
        let _ = writeln!(out, "chaingate_offload_sessions {}", offload.sessions);
    }
    if let Some(sessions) = telemetry.as_ref().and_then(|t| t.sessions.as_ref()) {
        family(
            &mut out,
            "chaingate_dpu_sessions",
            "gauge",
            "Sessions on the DPU now.",
        );
        let _ = writeln!(out, "chaingate_dpu_sessions {}", sessions.active);
        family(
            &mut out,
            "chaingate_dpu_session_capacity",
            "gauge",
            "The DPU's session table size.",
        );
        let _ = writeln!(out, "chaingate_dpu_session_capacity {}", sessions.capacity);
        family(
            &mut out,
            "chaingate_dpu_sessions_refused_total",
            "counter",
            "New connections the DPU refused for a full session table.",
        );
        let _ = writeln!(
            out,
            "chaingate_dpu_sessions_refused_total {}",
            sessions.refused
        );
    }
    family(
        &mut out,
        "chaingate_dpu_connected",
        "gauge",
        "1 when the DPU's telemetry stream is up.",
    );
    let _ = writeln!(out, "chaingate_dpu_connected {}", u8::from(state.connected));
    family(
        &mut out,
        "chaingate_dpu_generation",
        "gauge",
        "The configuration generation in force on the DPU.",
    );
    let _ = writeln!(out, "chaingate_dpu_generation {}", state.generation);
    family(
        &mut out,
        "chaingate_desired_generation",
        "gauge",
        "The last configuration generation pushed to the DPU.",
    );
    let _ = writeln!(
        out,
        "chaingate_desired_generation {}",
        agent.store().generation().unwrap_or(0)
    );
    out
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Up to the end of the request head, within a bound.
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 => len += n,
                    _ => break,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut words = head.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let (status, body, kind) =
                if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
                    let agent = Arc::clone(&agent);
                    let body = tokio::task::spawn_blocking(move || render(&agent))
                        .await
                        .unwrap_or_default();
                    ("200 OK", body, "text/plain; version=0.0.4")
                } else {
                    (
                        "404 Not Found",
                        "only /metrics is here\n".to_owned(),
                        "text/plain",
                    )
                };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
