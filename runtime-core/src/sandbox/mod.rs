//! Pod sandboxes: pinned namespaces, pod files, /dev/shm, the pod cgroup, the monitor.

pub mod files;
pub mod idmap;
pub mod ns;
pub mod userns;
