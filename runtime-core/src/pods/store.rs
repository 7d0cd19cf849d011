//! The store: every pod sandbox and container record berthd knows, with its lifecycle
//! state as a field, and the events its changes produce.
//!
//! Only the lifecycle operations (run, create, start, stop, remove) and the exit path (the
//! exit watcher seeing a monitor's exit file, a sweep at start or when the watcher lost
//! events, an operation that reads the exit file itself) change a record, and every change
//! goes through here. A change that moves a pod or container to another state is published
//! once, in the order the changes were made, to every subscriber (GetContainerEvents, the
//! metrics): the change and its publication happen under one lock. A subscriber is a
//! bounded tokio broadcast receiver; one that falls behind by more than the queue holds
//! gets `Lagged` and is cut off by its reader, so a client that does not read never slows
//! the runtime nor grows berthd's memory. containerd's internal/cri store (records apart
//! from the server; an exit updates the store, which emits the event) is the model.
//!
//! Each pod and container is an [`Entry`]: an operation lock serializing the slow
//! lifecycle calls on that object, and a data lock held only for reads and updates, so
//! list and status calls never wait behind a StopContainer's grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::records::{ContainerRecord, SandboxRecord, SandboxState};
use crate::monitor::ExitInfo;

/// Events queued per subscriber before it is cut off. A full pod lifecycle is about ten
/// events; kubelet reads them as they come.
pub const EVENT_QUEUE: usize = 1024;

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Lifecycle {
    /// Created, not started.
    #[default]
    Created,
    /// Started and not exited.
    Running,
    /// Exited (or failed to start).
    Exited(ExitInfo),
}

impl Lifecycle {
    /// States only move forward: created, running, exited.
    fn rank(&self) -> u8 {
        match self {
            Lifecycle::Created => 0,
            Lifecycle::Running => 1,
            Lifecycle::Exited(_) => 2,
        }
    }

    /// Whether the container has exited.
    pub fn is_exited(&self) -> bool {
        matches!(self, Lifecycle::Exited(_))
    }
}

/// What happened to a container or a pod sandbox (CRI's ContainerEventType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created (a pod sandbox: its RunPodSandbox finished).
    Created,
    /// Started (a pod sandbox: ready).
    Started,
    /// Exited or stopped (a pod sandbox: stopped).
    Stopped,
    /// Removed.
    Deleted,
}

/// One published change, with the pod as it was right after it.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The container's ID, or the pod's for an event of the sandbox itself (as containerd
    /// sends them).
    pub id: String,
    /// When the change was made, Unix ns.
    pub at_ns: i64,
    /// The pod's record after the change (for the sandbox's own Deleted event, its last).
    /// Shared with the store: queued events hold versions, not copies.
    pub pod: Option<Arc<SandboxRecord>>,
    /// The pod's containers after the change, with their states.
    pub containers: Vec<Arc<ContainerRecord>>,
}

/// A pod or container: an operation lock and the data.
pub struct Entry<T> {
    /// Serializes the lifecycle operations on this object.
    pub(crate) op: tokio::sync::Mutex<()>,
    /// Shared with the events that carry this version: an update copies it only while an
    /// event still holds it.
    data: Mutex<Arc<T>>,
}

impl<T: Clone> Entry<T> {
    fn new(v: T) -> Arc<Entry<T>> {
        Arc::new(Entry {
            op: tokio::sync::Mutex::new(()),
            data: Mutex::new(Arc::new(v)),
        })
    }

    /// A copy of the data.
    pub fn get(&self) -> T {
        T::clone(&lock(&self.data))
    }

    /// The data as it is now, shared.
    pub(crate) fn snapshot(&self) -> Arc<T> {
        Arc::clone(&lock(&self.data))
    }

    /// Runs `f` on the data without copying it.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&lock(&self.data))
    }
}

/// The records and their subscribers.
pub(crate) struct Store {
    sandboxes: Mutex<HashMap<String, Arc<Entry<SandboxRecord>>>>,
    containers: Mutex<HashMap<String, Arc<Entry<ContainerRecord>>>>,
    events: broadcast::Sender<Arc<Event>>,
    /// Held across a change and its publication, so events go out in the order of the
    /// changes. Taken before any map or entry lock.
    publishing: Mutex<()>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(EVENT_QUEUE)
    }
}

impl Store {
    /// An empty store whose subscribers may fall `queue` events behind.
    pub(crate) fn new(queue: usize) -> Store {
        Store {
            sandboxes: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            events: broadcast::channel(queue.max(1)).0,
            publishing: Mutex::new(()),
        }
    }

    /// Every change published from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// The sandboxes by ID, locked while the guard lives (no other store lock is taken
    /// while it is held).
    pub(crate) fn sandbox_map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry<SandboxRecord>>>> {
        lock(&self.sandboxes)
    }

    /// The containers by ID, as [`Self::sandbox_map`].
    pub(crate) fn container_map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry<ContainerRecord>>>> {
        lock(&self.containers)
    }

    /// Every sandbox entry.
    pub(crate) fn sandboxes(&self) -> Vec<Arc<Entry<SandboxRecord>>> {
        self.sandbox_map().values().cloned().collect()
    }

    /// Every container entry.
    pub(crate) fn containers(&self) -> Vec<Arc<Entry<ContainerRecord>>> {
        self.container_map().values().cloned().collect()
    }

    /// The containers of pod `pod_id`.
    pub(crate) fn containers_of(&self, pod_id: &str) -> Vec<Arc<Entry<ContainerRecord>>> {
        self.container_map()
            .values()
            .filter(|e| e.with(|c| c.pod_id == pod_id))
            .cloned()
            .collect()
    }

    /// Adds a ready (or, at recovery, any) pod: Created and, when ready, Started.
    pub(crate) fn add_sandbox(&self, rec: SandboxRecord) {
        let _order = lock(&self.publishing);
        let (id, ready) = (rec.id.clone(), rec.state == SandboxState::Ready);
        self.sandbox_map().insert(id.clone(), Entry::new(rec));
        self.publish(EventKind::Created, &id, &id);
        if ready {
            self.publish(EventKind::Started, &id, &id);
        }
    }

    /// Changes a pod's record; a pod that stops being ready (stopped, or its monitor died)
    /// is Stopped.
    pub(crate) fn update_sandbox(
        &self,
        entry: &Entry<SandboxRecord>,
        f: impl FnOnce(&mut SandboxRecord),
    ) {
        let _order = lock(&self.publishing);
        let ready = |r: &SandboxRecord| {
            super::sandbox::sandbox_state(r) == berth_cri::v1::PodSandboxState::SandboxReady
        };
        let (id, was, now) = {
            let mut guard = lock(&entry.data);
            let r = Arc::make_mut(&mut guard);
            let was = ready(r);
            f(r);
            (r.id.clone(), was, ready(r))
        };
        if was && !now {
            self.publish(EventKind::Stopped, &id, &id);
        }
    }

    /// Removes a pod (its containers are removed first): Deleted.
    pub(crate) fn remove_sandbox(&self, id: &str) {
        let _order = lock(&self.publishing);
        let Some(entry) = self.sandbox_map().remove(id) else {
            return;
        };
        if self.events.receiver_count() > 0 {
            self.send(Event {
                kind: EventKind::Deleted,
                id: id.to_string(),
                at_ns: super::now_ns(),
                pod: Some(entry.snapshot()),
                containers: Vec::new(),
            });
        }
    }

    /// Adds a container: Created, and more when it is recovered in a later state.
    pub(crate) fn add_container(&self, rec: ContainerRecord) {
        let _order = lock(&self.publishing);
        let (id, pod, state) = (rec.id.clone(), rec.pod_id.clone(), rec.state);
        self.container_map().insert(id.clone(), Entry::new(rec));
        self.publish(EventKind::Created, &id, &pod);
        self.published_moves(&id, &pod, Lifecycle::Created, state);
    }

    /// Changes a container's record. Its state never moves back: a change computed from
    /// a copy taken before the container exited keeps the exit. Moving on publishes
    /// Started and Stopped.
    pub(crate) fn update_container(
        &self,
        entry: &Entry<ContainerRecord>,
        f: impl FnOnce(&mut ContainerRecord),
    ) {
        let _order = lock(&self.publishing);
        let (id, pod, was, now) = {
            let mut guard = lock(&entry.data);
            let r = Arc::make_mut(&mut guard);
            let was = r.state;
            f(r);
            if r.state.rank() < was.rank() {
                r.state = was;
            }
            (r.id.clone(), r.pod_id.clone(), was, r.state)
        };
        self.published_moves(&id, &pod, was, now);
    }

    /// Records the exit of container `id` unless an exit is already known; true if this
    /// call recorded it. `on_record` runs when it does, before the event is published (so
    /// that a subscriber who reads a counter after the event sees it counted).
    pub(crate) fn set_exited(&self, id: &str, exit: ExitInfo, on_record: impl FnOnce()) -> bool {
        let Some(entry) = self.container_map().get(id).cloned() else {
            return false;
        };
        let mut recorded = false;
        self.update_container(&entry, |r| {
            if !r.state.is_exited() {
                r.state = Lifecycle::Exited(exit);
                recorded = true;
                on_record();
            }
        });
        recorded
    }

    /// Removes a container: Deleted.
    pub(crate) fn remove_container(&self, id: &str) {
        let _order = lock(&self.publishing);
        let Some(entry) = self.container_map().remove(id) else {
            return;
        };
        let pod = entry.with(|c| c.pod_id.clone());
        self.publish(EventKind::Deleted, id, &pod);
    }

    /// Publishes the events of a container moving from `was` to `now`.
    fn published_moves(&self, id: &str, pod: &str, was: Lifecycle, now: Lifecycle) {
        // A container that failed to start, or exited before its start was recorded, goes
        // from created to stopped.
        if was.rank() == 0 && now.rank() == 1 {
            self.publish(EventKind::Started, id, pod);
        }
        if was.rank() < 2 && now.rank() == 2 {
            self.publish(EventKind::Stopped, id, pod);
        }
    }

    /// Sends an event about `id` with pod `pod` as it is now, if anyone listens. Called
    /// with `publishing` held.
    fn publish(&self, kind: EventKind, id: &str, pod: &str) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let pod_rec = self.sandbox_map().get(pod).map(|e| e.snapshot());
        let mut containers: Vec<Arc<ContainerRecord>> = self
            .containers_of(pod)
            .iter()
            .map(|e| e.snapshot())
            .collect();
        containers.sort_by_key(|c| c.created_at_ns);
        self.send(Event {
            kind,
            id: id.to_string(),
            at_ns: super::now_ns(),
            pod: pod_rec,
            containers,
        });
    }

    fn send(&self, event: Event) {
        // Fails only when nobody listens any more.
        let _ = self.events.send(Arc::new(event));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_cri::v1 as cri;
    use std::path::PathBuf;

    pub(crate) fn container(id: &str, pod: &str, created: i64) -> ContainerRecord {
        ContainerRecord {
            id: id.to_string(),
            pod_id: pod.to_string(),
            config: cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: format!("c-{id}"),
                    attempt: 0,
                }),
                ..Default::default()
            },
            image_id: "sha256:".to_string() + &"a".repeat(64),
            image_ref: "docker.io/library/busybox:latest".into(),
            image_digest_ref: String::new(),
            created_at_ns: created,
            started_at_ns: 0,
            log_path: None,
            bundle: PathBuf::from("/b"),
            dir: PathBuf::from("/d"),
            pid: 0,
            start_error: None,
            stop_signal: None,
            cgroup_path: String::new(),
            exit_message: None,
            image_volumes: Vec::new(),
            user: None,
            state: Lifecycle::Created,
        }
    }

    pub(crate) fn sandbox(id: &str, state: SandboxState) -> SandboxRecord {
        SandboxRecord {
            id: id.to_string(),
            config: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: format!("pod-{id}"),
                    uid: "u".into(),
                    namespace: "ns".into(),
                    attempt: 1,
                }),
                ..Default::default()
            },
            created_at_ns: 42,
            state,
            runtime_handler: "runc".into(),
            dir: PathBuf::from("/p"),
            namespaces: Default::default(),
            pause_pid: None,
            cgroup_parent: String::new(),
            cgroups_created: vec![],
            hostname_file: PathBuf::new(),
            hosts_file: PathBuf::new(),
            resolv_file: PathBuf::new(),
            shm: None,
            monitor_pid: None,
            monitor_socket: PathBuf::new(),
            network_attached: false,
            ips: vec![],
            monitor_lost: false,
            resources: None,
        }
    }

    fn exit(code: i32) -> ExitInfo {
        ExitInfo {
            exit_code: code,
            signal: None,
            finished_at_ns: 7,
            oom_killed: false,
        }
    }

    fn drain(rx: &mut broadcast::Receiver<Arc<Event>>) -> Vec<(EventKind, String)> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push((e.kind, e.id.clone()));
        }
        out
    }

    #[test]
    fn a_lifecycle_is_published_in_order_to_every_subscriber() {
        let store = Store::default();
        let mut a = store.subscribe();
        let mut b = store.subscribe();
        store.add_sandbox(sandbox("p", SandboxState::Ready));
        store.add_container(container("c", "p", 1));
        let c = store.container_map().get("c").cloned().unwrap();
        store.update_container(&c, |r| {
            r.started_at_ns = 5;
            r.state = Lifecycle::Running;
        });
        assert!(store.set_exited("c", exit(3), || {}));
        assert!(
            !store.set_exited("c", exit(4), || {}),
            "an exit is recorded once"
        );
        let p = store.sandbox_map().get("p").cloned().unwrap();
        store.update_sandbox(&p, |r| r.state = SandboxState::NotReady);
        store.update_sandbox(&p, |r| r.network_attached = false);
        store.remove_container("c");
        store.remove_sandbox("p");
        let want: Vec<(EventKind, String)> = [
            (EventKind::Created, "p"),
            (EventKind::Started, "p"),
            (EventKind::Created, "c"),
            (EventKind::Started, "c"),
            (EventKind::Stopped, "c"),
            (EventKind::Stopped, "p"),
            (EventKind::Deleted, "c"),
            (EventKind::Deleted, "p"),
        ]
        .into_iter()
        .map(|(k, id)| (k, id.to_string()))
        .collect();
        assert_eq!(drain(&mut a), want);
        assert_eq!(drain(&mut b), want);
    }

    #[test]
    fn events_carry_the_pod_and_its_containers_after_the_change() {
        let store = Store::default();
        store.add_sandbox(sandbox("p", SandboxState::Ready));
        store.add_container(container("c1", "p", 1));
        store.add_container(container("c2", "p", 2));
        store.add_container(container("x", "other", 3));
        let mut rx = store.subscribe();
        store.set_exited("c2", exit(0), || {});
        let stopped = rx.try_recv().unwrap();
        assert_eq!(
            (stopped.kind, stopped.id.as_str()),
            (EventKind::Stopped, "c2")
        );
        assert_eq!(stopped.pod.as_ref().unwrap().id, "p");
        let ids: Vec<&str> = stopped.containers.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2"]);
        assert_eq!(stopped.containers[1].state, Lifecycle::Exited(exit(0)));
    }

    #[test]
    fn a_stale_copy_never_moves_a_state_back() {
        let store = Store::default();
        store.add_container(container("c", "p", 1));
        let e = store.container_map().get("c").cloned().unwrap();
        let mut stale = e.get();
        store.update_container(&e, |r| r.state = Lifecycle::Running);
        store.set_exited("c", exit(1), || {});
        stale.pid = 99;
        stale.state = Lifecycle::Running;
        store.update_container(&e, |r| *r = stale);
        let now = e.get();
        assert_eq!(now.pid, 99, "the other fields are taken");
        assert_eq!(now.state, Lifecycle::Exited(exit(1)));
    }

    #[test]
    fn a_subscriber_that_does_not_read_is_cut_off_and_others_are_not() {
        let store = Store::new(4);
        let mut slow = store.subscribe();
        let mut fast = store.subscribe();
        let mut seen = 0;
        for i in 0..20 {
            store.add_container(container(&format!("c{i}"), "p", i));
            seen += drain(&mut fast).len();
        }
        assert_eq!(seen, 20);
        assert!(matches!(
            slow.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }

    #[test]
    fn recovered_records_publish_what_they_went_through() {
        let store = Store::default();
        let mut rx = store.subscribe();
        store.add_sandbox(sandbox("p", SandboxState::NotReady));
        let mut c = container("c", "p", 1);
        c.state = Lifecycle::Exited(exit(0));
        store.add_container(c);
        let mut r = container("r", "p", 2);
        r.state = Lifecycle::Running;
        store.add_container(r);
        let want: Vec<(EventKind, String)> = [
            (EventKind::Created, "p"),
            (EventKind::Created, "c"),
            (EventKind::Stopped, "c"),
            (EventKind::Created, "r"),
            (EventKind::Started, "r"),
        ]
        .into_iter()
        .map(|(k, id)| (k, id.to_string()))
        .collect();
        assert_eq!(drain(&mut rx), want);
    }

    #[test]
    fn a_pod_whose_monitor_died_is_stopped_once() {
        let store = Store::default();
        store.add_sandbox(sandbox("p", SandboxState::Ready));
        let mut rx = store.subscribe();
        let p = store.sandbox_map().get("p").cloned().unwrap();
        store.update_sandbox(&p, |r| r.monitor_lost = true);
        // Stopping it afterwards changes its record, not what CRI sees.
        store.update_sandbox(&p, |r| r.state = SandboxState::NotReady);
        assert_eq!(drain(&mut rx), [(EventKind::Stopped, "p".to_string())]);
    }

    #[test]
    fn nothing_is_built_without_subscribers() {
        let store = Store::default();
        store.add_sandbox(sandbox("p", SandboxState::Ready));
        store.add_container(container("c", "p", 1));
        store.remove_container("c");
        store.remove_sandbox("p");
        assert!(store.sandboxes().is_empty() && store.containers().is_empty());
    }
}
