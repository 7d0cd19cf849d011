//! CNI support for berth: network config loading from the conf dir (libcni's rules), plugin
//! execution per the CNI spec 1.0 / 1.1 (also 0.3.x and 0.4.0 networks), ADD / CHECK / DEL
//! over a plugin chain with `prevResult`, capability arguments in `runtimeConfig`, and a
//! result cache on disk so DEL works after a restart even when the conf dir changed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cni::CniError> {
//! let cni = cni::Cni::new(cni::CniOptions::default());
//! let mut a = cni::Attachment::new("0123abcd", "/run/berth/pods/0123abcd/net");
//! a.args = cni::Attachment::pod_args("default", "web", "0123abcd", "uid-1");
//! let result = cni.add(&a).await?;
//! println!("pod IPs: {:?}", result.pod_ips());
//! cni.del(&a).await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod attachment;
mod cache;
mod conf;
mod error;
mod exec;
mod network;
mod result;
mod runtime_config;
mod version;

pub use attachment::Attachment;
pub use conf::{
    CONF_EXTENSIONS, ConfError, DirLoad, MAX_CONF_SIZE, NetworkConfigList, PluginConfig, load_dir,
};
pub use error::CniError;
pub use network::{Cni, CniOptions, SyncHook};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use runtime_config::{
    Bandwidth, CAP_BANDWIDTH, CAP_CGROUP_PATH, CAP_DNS, CAP_IP_RANGES, CAP_PORT_MAPPINGS,
    DnsConfig, IpRange, PortMapping, RuntimeConfig,
};
pub use version::SUPPORTED_VERSIONS;
