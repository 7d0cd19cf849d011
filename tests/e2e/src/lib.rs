//! End-to-end test harness of berth: a real registry (Debian's `docker-registry`) on
//! 127.0.0.1 filled with images built here from the host's static busybox, an optional
//! token-auth / counting / throttling proxy in front of it, a real `berthd` process with its
//! own temporary dirs and socket, and a CRI v1 gRPC client over that socket.
//!
//! Every piece cleans up on drop: processes are killed by PID and reaped, temporary
//! directories removed. Waits poll with deadlines ([`util::poll_until`]); nothing sleeps
//! blindly.

pub mod berthd;
pub mod cri;
pub mod events;
pub mod fixtures;
pub mod image;
pub mod metrics;
pub mod netcheck;
pub mod network;
pub mod pods;
pub mod proxy;
pub mod push;
pub mod rawgrpc;
pub mod registry;
pub mod streaming;
pub mod tmpfs;
pub mod util;

pub use berthd::{Berthd, BerthdOptions, MAPPED_REGISTRIES, RegistryEntry};
pub use cri::{Cri, auth_userpass, spec};
pub use image::{Compression, Format, Image, ImageBuilder, ImageIndex, Layer, LayerBuilder};
pub use proxy::{Proxy, ProxyOptions, TokenAuth};
pub use push::{Credentials, PushedImage, Pusher};
pub use registry::Registry;
pub use util::{poll_until, sha256_digest};

/// Re-exported so tests need not depend on tonic / berth-cri directly.
pub use berth_cri::v1 as cri_api;
pub use tonic::{Code, Status};

/// Starts a registry and a berthd mapping every well-known registry name to it: the common
/// set-up of the image tests.
pub async fn registry_and_berthd() -> anyhow::Result<(Registry, Berthd)> {
    let reg = Registry::start().await?;
    let berthd = Berthd::start(BerthdOptions::with_registry(&reg.addr())).await?;
    Ok((reg, berthd))
}
