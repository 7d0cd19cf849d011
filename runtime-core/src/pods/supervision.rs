//! A pod whose monitor died: nothing of it may keep running unsupervised.
//!
//! The exit watcher holds a pidfd of every ready pod's monitor (and recovery checks the
//! monitors of the pods it loads). When one dies, its containers' processes are killed
//! through their cgroups, each container is recorded exited (137, SIGKILL) with a message
//! that says why, in its record and in an exit file written as the monitor would have
//! written it, so the state holds across a restart of berthd, and the pod is reported not
//! ready (kubelet then stops it and creates a new one; StopPodSandbox and
//! RemovePodSandbox release it as usual). Logs written so far stay where they are.

use std::time::{Duration, Instant};

use crate::monitor::ExitInfo;

use super::records::{self, SandboxState};
use super::sandbox::process_alive;
use super::{PodService, is_monitor, now_ns};

/// How long the killed processes of one container get to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

impl PodService {
    /// The monitor `pid` of pod `pod_id` has died (the exit watcher saw its pidfd, or
    /// recovery found it gone).
    pub(crate) fn monitor_died(&self, pod_id: &str, pid: i32) {
        let Ok(entry) = self.sandbox(pod_id) else {
            return;
        };
        let pod = entry.get();
        if pod.monitor_pid != Some(pid) || pod.state != SandboxState::Ready || pod.monitor_lost {
            return;
        }
        self.inner
            .monitor_deaths
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(pod = %pod.id, pid, "the pod's monitor died; killing its containers, which nothing supervises any more");
        let message =
            format!("the pod's monitor (pid {pid}) died; berth killed the container's processes");
        for c in self.containers_of(&pod.id) {
            let rec = c.get();
            if self.lifecycle(&rec).is_exited() {
                continue;
            }
            let killed = self
                .inner
                .cgroups
                .kill_all(&rec.cgroup_path)
                .unwrap_or(false);
            if !killed && rec.pid > 1 && process_alive(rec.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(rec.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let deadline = Instant::now() + KILL_WAIT;
            while rec.pid > 1 && process_alive(rec.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut updated = rec.clone();
            updated.exit_message = Some(message.clone());
            if let Err(e) = records::save(&self.container_record_path(&rec.id), &updated) {
                tracing::warn!(container = %rec.id, error = %e, "saving the record of a container whose monitor died");
            }
            self.inner
                .store
                .update_container(&c, |r| r.exit_message = Some(message.clone()));
            let exit = ExitInfo {
                exit_code: 128 + libc::SIGKILL,
                signal: Some(libc::SIGKILL),
                finished_at_ns: now_ns(),
                oom_killed: false,
            };
            // As the monitor would have: the exit holds across a restart of berthd.
            if let Err(e) = crate::monitor::write_exit_file(&rec.exit_file(), &exit) {
                tracing::warn!(container = %rec.id, error = %e, "writing the exit file of a container whose monitor died");
            }
            self.record_exit(&rec.id, exit);
        }
        if let Some(pause) = pod.pause_pid.filter(|p| *p > 1)
            && process_alive(pause)
            && is_monitor(pause)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pause),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mut lost = entry.get();
        lost.monitor_lost = true;
        if let Err(e) = records::save(&self.sandbox_record_path(&lost.id), &lost) {
            tracing::warn!(pod = %lost.id, error = %e, "saving the record of a pod whose monitor died");
        }
        self.inner
            .store
            .update_sandbox(&entry, |r| r.monitor_lost = true);
    }

    /// Watches the monitor of a ready pod, or handles its death if it is already gone.
    pub(crate) fn supervise_monitor(&self, pod_id: &str, pid: i32) {
        let alive = process_alive(pid) && is_monitor(pid);
        if alive && self.inner.exit_watch.watch_monitor(pod_id, pid) {
            // Gone between the look and the watch: the pidfd of a dead process is readable
            // at once, so the watcher reports it.
            return;
        }
        if !alive {
            self.spawn_monitor_died(pod_id.to_string(), pid);
        }
    }

    /// [`Self::monitor_died`] on a thread of its own: the kills wait for the processes to
    /// be gone, which must not hold up the caller (the exit watcher, recovery).
    pub(crate) fn spawn_monitor_died(&self, pod_id: String, pid: i32) {
        let svc = self.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("berthd-monitor-lost".into())
            .spawn(move || svc.monitor_died(&pod_id, pid))
        {
            tracing::error!(pid, error = %e, "cannot start the thread that handles a dead monitor");
        }
    }
}
