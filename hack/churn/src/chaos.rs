//! The faults: berthd SIGKILLed at random moments (whatever call is in flight: pulls,
//! creates, starts, stops, removes, CNI ADD and DEL) and started again on the same
//! directories, and now and then a pod monitor SIGKILLed with it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::Notify;

use crate::Env;

/// How many kills were made.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kills {
    /// SIGKILLs of berthd.
    pub berthd: usize,
    /// SIGKILLs of pod monitors.
    pub monitors: usize,
}

/// Kills berthd about every `mean` (uniformly between a fifth of it and twice it) until
/// `stop` is notified; one kill in `monitor_ratio` also kills a random monitor of berthd's.
pub async fn run(env: Env, mean: Duration, monitor_ratio: u64, stop: Arc<Notify>) -> Result<Kills> {
    let mut kills = Kills::default();
    let mean_ms = u64::try_from(mean.as_millis()).unwrap_or(u64::MAX).max(5);
    loop {
        let wait = Duration::from_millis(fastrand::u64(mean_ms / 5..=mean_ms * 2));
        tokio::select! {
            _ = stop.notified() => return Ok(kills),
            _ = tokio::time::sleep(wait) => {}
        }
        // The signal goes out at once, whatever the workers are doing; the restart waits
        // for their calls (which fail fast against a dead socket) to let go of the env.
        let (pid, state) = {
            let g = env.read().await;
            (g.berthd.pid(), g.berthd.state())
        };
        if monitor_ratio > 0 && fastrand::u64(0..monitor_ratio) == 0 {
            let monitors = monitors_under(&state);
            if !monitors.is_empty() {
                let m = monitors[fastrand::usize(0..monitors.len())];
                if kill(Pid::from_raw(m), Signal::SIGKILL).is_ok() {
                    kills.monitors += 1;
                }
            }
        }
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let mut g = env.write().await;
        restart(&mut g)
            .await
            .context("restarting berthd after a kill")?;
        kills.berthd += 1;
    }
}

/// Restarts berthd on the same directories (SIGKILL first if it runs) and reconnects;
/// tries three times, since a start can fail for reasons of its own that a retry shows.
pub async fn restart(env: &mut e2e::pods::PodEnv) -> Result<()> {
    let mut last = None;
    for _ in 0..3 {
        match env.berthd.restart().await {
            Ok(()) => return env.reconnect().await,
            Err(e) => {
                eprintln!("berth-churn: berthd did not start: {e:#}");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("berthd did not start")))
}

/// The pids of berth-monitor processes whose pod directory is under `state` (berth's
/// own, started by this run's berthd).
fn monitors_under(state: &std::path::Path) -> Vec<i32> {
    let needle = state.display().to_string();
    e2e::pods::processes()
        .into_iter()
        .filter(|(_, cmd)| {
            cmd.contains("berth-monitor") && cmd.contains(" serve ") && cmd.contains(&needle)
        })
        .map(|(pid, _)| pid)
        .collect()
}
