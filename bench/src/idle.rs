//! The idle-connections test: open many MQTT connections, leave them idle, and see what each
//! costs the broker in resident memory.
//!
//! Owns the open sockets of the test. RSS "before" is read before the first connection opens,
//! "after" once the connections have sat idle for the settle time. A connection that fails or
//! that the broker closes is counted, never a reason to stop.

use crate::client::{Client, Target};
use crate::error::{BenchError, Role};
use crate::report::{summarize, IdleReport};
use crate::rss::read_rss_kb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct IdleSpec {
    /// Connections to open.
    pub(crate) connections: u32,
    /// How long they sit idle before RSS is read.
    pub(crate) settle: Duration,
    /// Connection attempts in flight at once.
    pub(crate) concurrency: usize,
}

/// Runs the test. Errors only when not a single connection could be made.
pub(crate) async fn run(
    target: &Target,
    spec: IdleSpec,
    pid: Option<u32>,
) -> Result<IdleReport, BenchError> {
    let rss_before_kb = pid.and_then(|p| read_rss_kb(p).ok());
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..spec.connections {
        let (target, permits) = (target.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            Client::connect(&target, Role::Idle(i)).await
        });
    }
    let mut open = Vec::with_capacity(spec.connections as usize);
    let mut errors = Vec::new();
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(c)) => open.push(c),
            Ok(Err(e)) => {
                errors.push(e.to_string());
                first_error.get_or_insert(e);
            }
            Err(_) => errors.push("a connect task panicked".to_string()),
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    if open.is_empty() {
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    let failed = u64::from(spec.connections) - open.len() as u64;
    let mut errors = summarize(errors);

    tokio::time::sleep(spec.settle).await;

    let mut closed_by_broker = 0;
    let mut closed = Vec::new();
    for c in open.iter_mut() {
        // Idle connections get nothing but maybe a PINGRESP; an end of stream means closed.
        if let Err(e) = c.try_fill() {
            closed_by_broker += 1;
            closed.push(e.to_string());
        }
    }
    errors.extend(summarize(closed));
    let rss_after_kb = pid.and_then(|p| read_rss_kb(p).ok());
    let report = IdleReport {
        requested: spec.connections,
        established: open.len() as u64,
        failed,
        closed_by_broker,
        connect_s,
        rss_before_kb,
        rss_after_kb,
        broker_gone: rss_before_kb.is_some() && rss_after_kb.is_none(),
        errors,
    };
    drop(open);
    Ok(report)
}
