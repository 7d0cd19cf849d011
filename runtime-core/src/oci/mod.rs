//! The OCI runtime side of berth: generation of the runtime spec (`config.json`) for a
//! container from its CRI config, its pod's config and its image config.

pub(crate) mod caps;
pub(crate) mod devices;
pub(crate) mod mounts;
pub mod seccomp;
pub mod spec;
pub mod user;
