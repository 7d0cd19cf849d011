//! berth's runtime logic: images, sandboxes, containers, the OCI runtime driver and the
//! state store. It knows nothing about gRPC: `cri-server` maps each RPC onto one call here
//! and maps [`ErrorKind`] to a gRPC status in one place.

pub mod cgroups;
pub mod cgroupwarm;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod image;
pub mod monitor;
pub mod oci;
pub mod ociruntime;
pub mod pods;
pub mod sandbox;

pub use error::{Error, ErrorKind, Result};
