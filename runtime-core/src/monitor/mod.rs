//! berthd's side of the per-pod monitor (the process itself and its wire protocol are the
//! `berth_monitor` crate, re-exported here): [`spawn()`] starts a monitor, [`MonitorClient`]
//! talks to it, [`read_exit_file`] reads what it recorded (after a berthd restart, exit
//! files are the contract), [`spawn_pause_in_new_pidns`] / [`MonitorClient::spawn_pause`]
//! start the pause process of a pod with a shared PID namespace. The protocol, the files in
//! the pod directory and the monitor's limits are documented in `berth_monitor`.

pub mod client;
pub mod session;
pub mod spawn;

pub use berth_monitor::frame;
pub use berth_monitor::{error, logfmt, protocol};
pub use client::MonitorClient;
pub use error::MonitorError;
pub use protocol::{
    ContainerState, CreateRequest, CreateResponse, ExecRequest, ExitInfo, Reply, Request,
    read_exit_file, write_exit_file,
};
pub use session::{SessionOutput, SessionReader, SessionWriter, StdioSession};
pub use spawn::{MonitorInfo, spawn, spawn_pause_in_new_pidns};
