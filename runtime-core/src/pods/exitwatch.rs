//! Container exits learned by inotify instead of a file look-up per container and call.
//!
//! A pod's monitor records a container's exit by renaming `exit.json` into the container's
//! directory. kubelet lists every container every second; checking each running
//! container's exit file on every list is a path walk per container and call. Instead each
//! running container's directory is watched: while no exit file has arrived there the
//! container is "quiet" and known to be running without a system call. An event (or
//! anything unusual: a lost watch, a queue overflow) only drops the container back to
//! reading its exit file, so the watcher can make a list call cheaper but never wrong for
//! longer than it takes to deliver one event.
//!
//! Decisions that act on a container's process (stop signals) never rely on it: they read
//! the exit file themselves.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::{Changes, lock};

/// The name the monitors give exit files (see `ContainerRecord::exit_file`).
const EXIT_FILE_NAME: &str = "exit.json";
/// How often the watcher thread checks whether its service is gone.
const LIVENESS_POLL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Watched {
    /// Whether the watcher thread still reads events; once it stopped nothing is quiet.
    stopped: bool,
    /// Watch descriptor -> container ID.
    by_wd: HashMap<WatchDescriptor, String>,
    /// Container ID -> its watch.
    by_id: HashMap<String, WatchDescriptor>,
    /// Watched containers whose directory has seen no exit file since the watch began.
    quiet: HashSet<String>,
}

impl Watched {
    /// The thread is gone: from now on every container's exit file is read.
    fn stop(&mut self) {
        self.stopped = true;
        self.quiet.clear();
    }
}

struct Shared {
    inotify: Inotify,
    watched: Mutex<Watched>,
    /// Bumped whenever a container stops being quiet: list answers cached while it was
    /// quiet show it running.
    changes: Changes,
}

/// Watches the directories of running containers for their exit files.
pub(crate) struct ExitWatch {
    shared: Option<Arc<Shared>>,
}

impl ExitWatch {
    /// Starts the watcher thread; without inotify (no instance left, say) every container
    /// is simply never quiet and exit files are read as before.
    pub(crate) fn start(changes: &Changes) -> ExitWatch {
        let inotify = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable: container exits are found by reading exit files on every call");
                return ExitWatch { shared: None };
            }
        };
        let shared = Arc::new(Shared {
            inotify,
            watched: Mutex::new(Watched::default()),
            changes: changes.clone(),
        });
        let weak = Arc::downgrade(&shared);
        let started = std::thread::Builder::new()
            .name("berthd-exits".into())
            .spawn(move || watch_loop(weak));
        match started {
            Ok(_) => ExitWatch {
                shared: Some(shared),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the exit watcher thread: container exits are found by reading exit files on every call");
                ExitWatch { shared: None }
            }
        }
    }

    /// Watches `dir`, the directory the exit file of container `id` will appear in. Call it
    /// before the container can exit (or check the exit file afterwards): an exit file
    /// renamed into `dir` after this returns is seen. Returns whether the container is now
    /// quiet.
    pub(crate) fn watch(&self, id: &str, dir: &Path) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        // Holding the lock while adding keeps the thread from handling an event of this
        // watch before it is mapped to its container.
        let mut w = lock(&shared.watched);
        if w.stopped {
            return false;
        }
        match shared.inotify.add_watch(
            dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_ONLYDIR,
        ) {
            Ok(wd) => {
                w.by_wd.insert(wd, id.to_string());
                w.by_id.insert(id.to_string(), wd);
                w.quiet.insert(id.to_string());
                true
            }
            Err(e) => {
                tracing::debug!(container = id, dir = %dir.display(), error = %e, "cannot watch for the exit file; reading it on every call");
                false
            }
        }
    }

    /// Whether container `id` is watched and no exit file has appeared for it.
    pub(crate) fn is_quiet(&self, id: &str) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|s| lock(&s.watched).quiet.contains(id))
    }

    /// Stops watching container `id` (its exit is known, or it is being removed).
    pub(crate) fn forget(&self, id: &str) {
        if let Some(s) = &self.shared {
            let mut w = lock(&s.watched);
            w.quiet.remove(id);
            if let Some(wd) = w.by_id.remove(id) {
                w.by_wd.remove(&wd);
                // Fails harmlessly when the directory, and with it the watch, is gone.
                let _ = s.inotify.rm_watch(wd);
            }
            drop(w);
            s.changes.bump();
        }
    }
}

/// Reads inotify events until the service is dropped.
fn watch_loop(weak: Weak<Shared>) {
    let timeout = PollTimeout::try_from(LIVENESS_POLL).unwrap_or(PollTimeout::NONE);
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let mut fds = [PollFd::new(shared.inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "exit watcher: poll failed; exit files are read on every call from now on");
                lock(&shared.watched).stop();
                shared.changes.bump();
                return;
            }
        }
        loop {
            match shared.inotify.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    let mut w = lock(&shared.watched);
                    for ev in events {
                        handle_event(&mut w, ev);
                    }
                    drop(w);
                    shared.changes.bump();
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "exit watcher: read failed; exit files are read on every call from now on");
                    lock(&shared.watched).stop();
                    shared.changes.bump();
                    return;
                }
            }
        }
    }
}

fn handle_event(w: &mut Watched, ev: nix::sys::inotify::InotifyEvent) {
    if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        // Events were lost: nobody can be trusted to be quiet any more.
        w.quiet.clear();
        return;
    }
    if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
        // The watch is gone (directory removed or unmounted, or `forget`).
        if let Some(id) = w.by_wd.remove(&ev.wd) {
            w.quiet.remove(&id);
            w.by_id.remove(&id);
        }
        return;
    }
    let is_exit_file = ev
        .name
        .as_ref()
        .is_some_and(|n| n.as_os_str() == EXIT_FILE_NAME);
    if is_exit_file && let Some(id) = w.by_wd.get(&ev.wd) {
        w.quiet.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_exit_file_renamed_in_ends_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let changes = Changes::default();
        let w = ExitWatch::start(&changes);
        assert!(w.watch("c1", dir.path()));
        assert!(w.watch("c0", other.path()));
        assert!(w.is_quiet("c1"));
        // Other files in the directory (the temporary one the monitor writes first) do not
        // count. Events arrive in order, so once a later exit in another directory has been
        // handled, so has the temporary file's.
        std::fs::write(dir.path().join("exit.json.tmp"), b"{}").unwrap();
        std::fs::write(other.path().join(EXIT_FILE_NAME), b"{}").unwrap();
        wait_until("the later event", || !w.is_quiet("c0"));
        assert!(w.is_quiet("c1"), "a temporary file is not the exit file");
        let before = changes.now();
        std::fs::rename(
            dir.path().join("exit.json.tmp"),
            dir.path().join(EXIT_FILE_NAME),
        )
        .unwrap();
        wait_until("the exit event", || !w.is_quiet("c1"));
        // Cached list answers that showed it running are invalidated.
        wait_until("the change to be counted", || changes.now() > before);
        let before = changes.now();
        w.forget("c0");
        assert!(changes.now() > before, "forget counted");
    }

    #[test]
    fn a_removed_directory_ends_quiet_and_unknown_ids_never_are() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("c2");
        std::fs::create_dir(&dir).unwrap();
        let w = ExitWatch::start(&Changes::default());
        assert!(!w.is_quiet("c2"));
        assert!(w.watch("c2", &dir));
        std::fs::remove_dir(&dir).unwrap();
        wait_until("the watch to be dropped", || !w.is_quiet("c2"));
        assert!(!w.watch("c3", &base.path().join("missing")));
        assert!(!w.is_quiet("c3"));
    }

    #[test]
    fn a_stopped_watcher_answers_for_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let w = ExitWatch::start(&Changes::default());
        assert!(w.watch("c5", dir.path()));
        lock(&w.shared.as_ref().unwrap().watched).stop();
        assert!(!w.is_quiet("c5"));
        assert!(!w.watch("c6", dir.path()), "no new watch once stopped");
        assert!(!w.is_quiet("c6"));
    }

    #[test]
    fn forget_ends_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let w = ExitWatch::start(&Changes::default());
        assert!(w.watch("c4", dir.path()));
        w.forget("c4");
        assert!(!w.is_quiet("c4"));
        let watched = lock(&w.shared.as_ref().unwrap().watched);
        assert!(
            watched.by_id.is_empty() && watched.by_wd.is_empty(),
            "the watch is removed"
        );
    }
}
