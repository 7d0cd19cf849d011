//! Container exits seen as they happen: each running container's directory is watched
//! with inotify for the exit file its pod's monitor renames into it when the container's
//! init has exited and its output is drained. The watcher thread hands each such event to
//! the pod service, which reads the file and records the exit in the store (and so
//! publishes the container's Stopped event) with no CRI call in between.
//!
//! Each pod's monitor is watched too, through a pidfd: when one dies the service is told at
//! once, so that the containers it supervised are killed and reported exited instead of
//! running unsupervised until the next call.
//!
//! When events may have been lost (the inotify queue overflowed) the service is asked to
//! sweep: read the exit file of every container not known to have exited. Without inotify
//! at all (no instance left, a failed read) the thread sweeps every second instead.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::lock;

/// The name the monitors give exit files (see `ContainerRecord::exit_file`).
const EXIT_FILE_NAME: &str = "exit.json";
/// How often the watcher thread checks whether its service is gone.
const LIVENESS_POLL: Duration = Duration::from_secs(1);
/// How often every exit file is read when inotify cannot be used.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What the watcher saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The exit file of this container appeared.
    Exit(String),
    /// Events may have been lost: every exit file must be read.
    Lost,
    /// The monitor (pid) of this pod exited.
    MonitorDied(String, i32),
    /// The monitor replaced this container's log-gap file: its log could not be written
    /// (a full disk) and output was dropped, or it is written again.
    LogGap(String),
}

/// Handles what the watcher saw; returns false once the service is gone, which ends the
/// watcher thread.
pub(crate) type Handler = Box<dyn Fn(Seen) -> bool + Send + Sync>;

#[derive(Default)]
struct Watched {
    /// Watch descriptor -> container ID.
    by_wd: HashMap<WatchDescriptor, String>,
    /// Container ID -> its watch.
    by_id: HashMap<String, WatchDescriptor>,
    /// Pod ID -> its monitor's pid and pidfd.
    /// Containers whose directory could not be watched (the inotify watch limit, say): while
    /// there are any, every exit file is swept once a second.
    unwatched: std::collections::HashSet<String>,
    /// Shared with a poll in progress, so that forgetting never closes a polled descriptor.
    monitors: HashMap<String, (i32, Arc<OwnedFd>)>,
}

struct Shared {
    inotify: Inotify,
    watched: Mutex<Watched>,
    /// Written to wake the thread when the set of monitors changed.
    wake: (OwnedFd, OwnedFd),
}

/// Watches the directories of running containers for their exit files.
pub(crate) struct ExitWatch {
    shared: Option<Arc<Shared>>,
}

impl ExitWatch {
    /// Starts the watcher thread, which gives what it sees to `handler`.
    pub(crate) fn start(handler: Handler) -> ExitWatch {
        let inotify = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable: container exits are found by reading every exit file each second");
                None
            }
        };
        let wake = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK);
        let shared = match (inotify, wake) {
            (Some(inotify), Ok(wake)) => Some(Arc::new(Shared {
                inotify,
                watched: Mutex::new(Watched::default()),
                wake,
            })),
            (Some(_), Err(e)) => {
                tracing::warn!(error = %e, "no pipe for the exit watcher: container exits are found by reading every exit file each second");
                None
            }
            (None, _) => None,
        };
        let weak = shared.as_ref().map(Arc::downgrade);
        let started = std::thread::Builder::new()
            .name("berthd-exits".into())
            .spawn(move || {
                if let Some(weak) = weak {
                    watch_loop(weak, &handler);
                }
                sweep_loop(&handler);
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the exit watcher thread: container exits are seen only when a call reads them");
        }
        ExitWatch { shared }
    }

    /// Watches `dir`, the directory the exit file of container `id` will appear in. Call it
    /// before the container can exit (or check the exit file afterwards): an exit file
    /// renamed into `dir` after this returns is seen. Returns whether the watch was added.
    pub(crate) fn watch(&self, id: &str, dir: &Path) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        // Holding the lock while adding keeps the thread from handling an event of this
        // watch before it is mapped to its container.
        let mut w = lock(&shared.watched);
        match shared.inotify.add_watch(
            dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_ONLYDIR,
        ) {
            Ok(wd) => {
                w.by_wd.insert(wd, id.to_string());
                w.by_id.insert(id.to_string(), wd);
                true
            }
            Err(e) => {
                tracing::warn!(container = id, dir = %dir.display(), error = %e, "cannot watch for the exit file; exit files are swept every second while it runs");
                w.unwatched.insert(id.to_string());
                false
            }
        }
    }

    /// Watches the monitor `pid` of pod `pod_id`; returns false when it cannot (no pidfd,
    /// or no watcher). Call it with a pid known to be the pod's monitor: the pidfd then
    /// refers to that process even if the pid is reused later.
    pub(crate) fn watch_monitor(&self, pod_id: &str, pid: i32) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let Ok(fd) = RawFd::try_from(fd) else {
            return false;
        };
        if fd < 0 {
            tracing::warn!(pod = pod_id, pid, error = %std::io::Error::last_os_error(), "cannot watch the pod's monitor; its death is noticed at the next call");
            return false;
        }
        // SAFETY: the descriptor was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        lock(&shared.watched)
            .monitors
            .insert(pod_id.to_string(), (pid, Arc::new(fd)));
        let _ = nix::unistd::write(&shared.wake.1, &[1]);
        true
    }

    /// Stops watching the monitor of pod `pod_id` (it is being shut down).
    pub(crate) fn forget_monitor(&self, pod_id: &str) {
        if let Some(s) = &self.shared {
            lock(&s.watched).monitors.remove(pod_id);
            let _ = nix::unistd::write(&s.wake.1, &[1]);
        }
    }

    /// Stops watching container `id` (its exit is known, or it is being removed).
    pub(crate) fn forget(&self, id: &str) {
        if let Some(s) = &self.shared {
            let mut w = lock(&s.watched);
            w.unwatched.remove(id);
            if let Some(wd) = w.by_id.remove(id) {
                w.by_wd.remove(&wd);
                // Fails harmlessly when the directory, and with it the watch, is gone.
                let _ = s.inotify.rm_watch(wd);
            }
        }
    }
}

/// Reads inotify events until the service is dropped (returns early, for sweeping, when
/// inotify fails).
fn watch_loop(weak: Weak<Shared>, handler: &Handler) {
    let timeout = PollTimeout::try_from(LIVENESS_POLL).unwrap_or(PollTimeout::NONE);
    let mut last_sweep = std::time::Instant::now();
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        // The monitors' pidfds, held for this poll (a monitor forgotten meanwhile closes
        // its descriptor only when the poll let go of it).
        let monitors: Vec<(String, i32, Arc<OwnedFd>)> = lock(&shared.watched)
            .monitors
            .iter()
            .map(|(pod, (pid, fd))| (pod.clone(), *pid, Arc::clone(fd)))
            .collect();
        let mut fds = vec![
            PollFd::new(shared.inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(shared.wake.0.as_fd(), PollFlags::POLLIN),
        ];
        for (_, _, fd) in &monitors {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let polled = poll(&mut fds, timeout);
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        // Containers that could not be watched are found by sweeping, once a second.
        if last_sweep.elapsed() >= SWEEP_INTERVAL && !lock(&shared.watched).unwatched.is_empty() {
            last_sweep = std::time::Instant::now();
            if !handler(Seen::Lost) {
                return;
            }
        }
        match polled {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "exit watcher: poll failed; every exit file is read each second from now on");
                return;
            }
        }
        if ready[1] {
            let mut buf = [0u8; 64];
            while matches!(nix::unistd::read(&shared.wake.0, &mut buf), Ok(n) if n > 0) {}
        }
        let mut died = Vec::new();
        for ((pod, pid, _), r) in monitors.into_iter().zip(&ready[2..]) {
            let mut w = lock(&shared.watched);
            // Still the same watch (not forgotten or replaced while polling).
            if *r && w.monitors.get(&pod).is_some_and(|(p, _)| *p == pid) {
                w.monitors.remove(&pod);
                died.push(Seen::MonitorDied(pod, pid));
            }
        }
        for d in died {
            if !handler(d) {
                return;
            }
        }
        if !ready[0] {
            continue;
        }
        loop {
            match shared.inotify.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    let seen = {
                        let mut w = lock(&shared.watched);
                        let mut seen = Vec::new();
                        for ev in events {
                            handle_event(&mut w, ev, &mut seen);
                        }
                        seen
                    };
                    for s in seen {
                        if !handler(s) {
                            return;
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "exit watcher: read failed; every exit file is read each second from now on");
                    return;
                }
            }
        }
    }
}

/// Asks for a sweep every second while the service lives.
fn sweep_loop(handler: &Handler) {
    while handler(Seen::Lost) {
        std::thread::sleep(SWEEP_INTERVAL);
    }
}

fn handle_event(w: &mut Watched, ev: nix::sys::inotify::InotifyEvent, seen: &mut Vec<Seen>) {
    if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        tracing::warn!("exit watcher: inotify queue overflowed; reading every exit file");
        seen.push(Seen::Lost);
        return;
    }
    if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
        // The watch is gone (directory removed or unmounted, or `forget`).
        if let Some(id) = w.by_wd.remove(&ev.wd) {
            w.by_id.remove(&id);
        }
        return;
    }
    let is_exit_file = ev
        .name
        .as_ref()
        .is_some_and(|n| n.as_os_str() == EXIT_FILE_NAME);
    if is_exit_file && let Some(id) = w.by_wd.get(&ev.wd) {
        seen.push(Seen::Exit(id.clone()));
    }
    let is_log_gap_file = ev.mask.contains(AddWatchFlags::IN_MOVED_TO)
        && ev
            .name
            .as_ref()
            .is_some_and(|n| n.as_os_str() == berth_monitor::protocol::LOG_GAP_FILE);
    if is_log_gap_file && let Some(id) = w.by_wd.get(&ev.wd) {
        seen.push(Seen::LogGap(id.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A watcher whose handler records what it is given.
    fn recording() -> (ExitWatch, Arc<Mutex<Vec<Seen>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        let w = ExitWatch::start(Box::new(move |s| {
            lock(&sink).push(s);
            true
        }));
        (w, got)
    }

    fn wait_for(got: &Mutex<Vec<Seen>>, want: &Seen) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(got).contains(want) {
            assert!(Instant::now() < deadline, "timed out waiting for {want:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_exit_file_renamed_in_is_reported_once_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let (w, got) = recording();
        assert!(w.watch("c1", dir.path()));
        assert!(w.watch("c0", other.path()));
        // Other files in the directory (the temporary one the monitor writes first) do not
        // count. Events arrive in order, so once a later exit in another directory has been
        // handled, so has the temporary file's.
        std::fs::write(dir.path().join("exit.json.tmp"), b"{}").unwrap();
        std::fs::write(other.path().join(EXIT_FILE_NAME), b"{}").unwrap();
        wait_for(&got, &Seen::Exit("c0".into()));
        assert!(!lock(&got).contains(&Seen::Exit("c1".into())));
        std::fs::rename(
            dir.path().join("exit.json.tmp"),
            dir.path().join(EXIT_FILE_NAME),
        )
        .unwrap();
        wait_for(&got, &Seen::Exit("c1".into()));
        w.forget("c0");
        w.forget("c1");
        let watched = lock(&w.shared.as_ref().unwrap().watched);
        assert!(watched.by_id.is_empty() && watched.by_wd.is_empty());
    }

    #[test]
    fn a_removed_directory_drops_its_watch() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("c2");
        std::fs::create_dir(&dir).unwrap();
        let (w, _got) = recording();
        assert!(w.watch("c2", &dir));
        std::fs::remove_dir(&dir).unwrap();
        let shared = w.shared.as_ref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(&shared.watched).by_id.is_empty() {
            assert!(Instant::now() < deadline, "the watch was not dropped");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!w.watch("c3", &base.path().join("missing")));
    }

    #[test]
    fn a_container_that_cannot_be_watched_is_swept_for_until_forgotten() {
        let (w, got) = recording();
        let base = tempfile::tempdir().unwrap();
        assert!(!w.watch("c9", &base.path().join("missing")));
        wait_for(&got, &Seen::Lost);
        w.forget("c9");
        assert!(
            lock(&w.shared.as_ref().unwrap().watched)
                .unwatched
                .is_empty()
        );
    }

    #[test]
    fn the_thread_ends_when_the_handler_says_the_service_is_gone() {
        let calls = Arc::new(Mutex::new(0));
        let n = Arc::clone(&calls);
        let dir = tempfile::tempdir().unwrap();
        let w = ExitWatch::start(Box::new(move |_| {
            *lock(&n) += 1;
            false
        }));
        assert!(w.watch("c", dir.path()));
        std::fs::write(dir.path().join(EXIT_FILE_NAME), b"{}").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while *lock(&calls) == 0 {
            assert!(Instant::now() < deadline, "the exit was not handled");
            std::thread::sleep(Duration::from_millis(1));
        }
        // No sweeping follows: the watch loop returned and the sweep loop stopped at once.
        std::thread::sleep(Duration::from_millis(50));
        assert!(*lock(&calls) <= 2);
    }
}
