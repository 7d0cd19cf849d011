//! The per-pod monitor: one small process per pod (`berth-monitor serve <pod_dir>`),
//! started by berthd, living in the host namespaces and outliving berthd. It is
//! `PR_SET_CHILD_SUBREAPER` and the parent of every container process of the pod, owns
//! their stdout and stderr, writes their CRI-format logs, records each init's exit code
//! and time in an exit file, and answers berthd on a unix socket. It is single-threaded,
//! runs no async runtime and allocates little (one `poll(2)` loop; see [`server`]).
//!
//! berthd's side: `runtime_core::monitor` (`spawn()`, the async `MonitorClient`); [`read_exit_file`]
//! reads what the monitor recorded (after a berthd restart, exit files are the contract),
//! [`process::spawn_pause_in_new_pidns`] starts the pause process of a pod with a shared
//! PID namespace.
//!
//! This crate is the monitor process itself ([`server`]) and what both sides share: the
//! wire protocol ([`protocol`], [`MonitorError`]), the log format ([`logfmt`]) and the
//! process helpers ([`process`]). It depends on no async runtime.
//!
//! # Files in the pod directory
//!
//! | file | written by | content |
//! | --- | --- | --- |
//! | `monitor.sock` | monitor | the socket (mode 0600), removed on clean exit |
//! | `monitor.pid` | monitor, before it listens | its pid, decimal; removed on clean exit |
//! | `monitor.log` | monitor (stdout + stderr) | its own diagnostics, a few lines |
//! | `pause.pid` | [`process::spawn_pause_in_new_pidns`] | host pid of the pause process |
//!
//! Each container's exit file (path chosen by berthd in the create request) holds one
//! JSON [`ExitInfo`]: `{"exit_code":137,"signal":9,"finished_at_ns":1795367004123456789,
//! "oom_killed":false}`, written atomically (temporary file, fsync, rename) once the init
//! has exited and its output is drained (EOF on both pipes, or 2 s after the exit when a
//! leftover process keeps them open). `exit_code` is 128 + signal for a signalled init;
//! `finished_at_ns` is when the monitor reaped it.
//!
//! # Wire protocol
//!
//! Newline-delimited JSON on `<pod_dir>/monitor.sock` (`SOCK_STREAM`). The client sends one
//! request object on one line; the monitor answers with one reply object on one line and
//! closes the connection. Unknown fields are ignored. A request must arrive within 30 s
//! and be at most 1 MiB.
//!
//! Requests, tagged by `op` ([`Request`]):
//!
//! ```text
//! {"op":"create","container_id":"c1","argv":["/usr/sbin/runc","--root","/run/berth/runc",...,"create","--bundle","/b","--pid-file","/b/init.pid","c1"],
//!  "pid_file":"/b/init.pid","log_path":"/var/log/pods/.../0.log","exit_file":"/b/exit.json",
//!  "oom_control":"/sys/fs/cgroup/memory/.../memory.oom_control","timeout_secs":60}
//! {"op":"reopen_log","container_id":"c1"}
//! {"op":"list"}
//! {"op":"forget","container_id":"c1"}
//! {"op":"shutdown"}
//! {"op":"ping"}
//! {"op":"spawn_pause"}
//! ```
//!
//! Replies, tagged by `result` ([`Reply`]):
//!
//! ```text
//! {"result":"created","pid":4242}                       create: the command exited 0; pid from pid_file
//! {"result":"ok"}                                       reopen_log, forget, shutdown
//! {"result":"containers","containers":[{"id":"c1","pid":4242,"exit":null},
//!     {"id":"c0","pid":4100,"exit":{"exit_code":3,"signal":null,"finished_at_ns":...,"oom_killed":false}}]}
//! {"result":"pong","pid":4000,"protocol":1}
//! {"result":"pause","pid":4300}
//! {"result":"error","error":{"kind":"runtime_failed","exit_code":1,"output":"..."}}
//! ```
//!
//! Error kinds are the variants of [`MonitorError`] in snake case (`bad_request`,
//! `not_found`, `already_exists`, `not_running`, `busy`, `runtime_failed`, `timeout`,
//! `io`, `protocol`, ...), with their fields beside `kind`.
//!
//! Semantics:
//! - `create` runs `argv` with stdin `/dev/null` and stdout / stderr on pipes the monitor
//!   reads (the OCI runtime passes them to the container's init), cwd `/`. The reply comes
//!   when the command exits: exit 0 → `created` with the pid read from `pid_file`;
//!   non-zero → `runtime_failed` with its exit code and whatever it wrote on the pipes
//!   (≤ 4 KiB; runc's details are in its `--log` file); past `timeout_secs` (0 → 60) the
//!   command is SIGKILLed → `timeout`. On failure the monitor forgets the container, but a
//!   half-created container may remain in the runtime: berthd must `delete --force` it.
//!   Output written while the command runs is held back and logged once it succeeded. If
//!   the client disconnects before the reply, the create still completes (see `list`).
//!   `log_path` is opened `O_APPEND|O_CREAT`, mode 0640; its directory must exist.
//! - `list`: every container, `pid` 0 while being created, `exit` set once the exit file
//!   is written.
//! - `reopen_log`: opens `log_path` anew (kubelet renamed the old file); the old file gets
//!   nothing more, partial lines buffered in memory go to the new one. `not_running` once
//!   the container has exited.
//! - `forget`: drops an (exited) container; unknown ids are fine; `busy` while creating.
//!   Forgetting a running container stops logging it (its pipes close).
//! - `shutdown`: the monitor answers, writes pending exit files, removes its socket and
//!   pid file and exits 0. It kills nothing: berthd stops containers first. SIGTERM or
//!   SIGINT do the same without a reply.
//! - `spawn_pause`: starts `berth-monitor pause` as PID 1 of a new PID namespace, double
//!   forked so that the monitor (a subreaper) becomes its parent and reaps it.
//!
//! # Memory
//!
//! The monitor's private memory (heap, stack, data: `RssAnon`) is ~120-200 KiB with one
//! container. `VmRSS` also counts the shared text it maps, and the kernel maps file pages
//! 64 KiB around each touched one (fault-around): dynamically linked, glibc's text alone
//! puts it at ~2.3 MiB (a sleeping hello-world is at 1.9 MiB here). Built as a static PIE
//! (`-C target-feature=+crt-static`, release profile) it is ~1.5 MiB, under the 2 MiB
//! budget. The monitor uses no NSS (no user or host lookups), so static glibc is safe.
//!
//! # Limits
//!
//! - If the monitor itself dies (SIGKILL, OOM), its containers keep running but lose the
//!   reader of their stdout / stderr (a write then fails with EPIPE) and their exits are no
//!   longer recorded: berthd finds no socket and must treat the pod's containers as
//!   unmanaged (stop them).
//! - The monitor inherits berthd's cgroup. Under systemd, berthd's unit needs
//!   `KillMode=process` (as containerd's has), or restarting berthd kills every monitor.
//!
//! # Logs
//!
//! See [`logfmt`]: `2026-11-22T17:03:24.123456789Z stdout F text`, lines above 16 KiB cut
//! into `P` entries, each entry written with one `write(2)`.

pub mod error;
pub mod logfmt;
pub mod process;
pub mod protocol;
pub mod server;

pub use error::MonitorError;
pub use protocol::{
    ContainerState, CreateRequest, CreateResponse, ExitInfo, Reply, Request, read_exit_file,
};
