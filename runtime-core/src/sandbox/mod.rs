//! Pod sandboxes: pinned namespaces, pod files, /dev/shm, the pod cgroup, the monitor.

pub mod files;
pub mod ns;
