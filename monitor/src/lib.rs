//! The per-pod monitor: one small process per pod (`berth-monitor serve <pod_dir>`),
//! started by berthd, living in the host namespaces and outliving berthd. It is
//! `PR_SET_CHILD_SUBREAPER` and the parent of every container process of the pod, owns
//! their stdin, stdout and stderr (pipes, or the terminal runc hands over on a console
//! socket), writes their CRI-format logs, records each init's exit code and time in an exit
//! file, serves attach and exec sessions, and answers berthd on a unix socket. It is single-threaded,
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
//! closes the connection, except after `attached` and `exec_started`, where the connection
//! goes on in binary frames (see *Sessions*). Unknown fields are ignored. A request must
//! arrive within 30 s and be at most 1 MiB. [`PROTOCOL_VERSION`](protocol::PROTOCOL_VERSION)
//! is 2 (1 had no terminals, stdin, attach or exec).
//!
//! Requests, tagged by `op` ([`Request`]):
//!
//! ```text
//! {"op":"create","container_id":"c1","argv":["/usr/sbin/runc","--root","/run/berth/runc",...,"create","--bundle","/b","--pid-file","/b/init.pid","c1"],
//!  "pid_file":"/b/init.pid","log_path":"/var/log/pods/.../0.log","exit_file":"/b/exit.json",
//!  "oom_control":"/sys/fs/cgroup/memory/.../memory.oom_control","timeout_secs":60,
//!  "console_socket":"/run/berth/pods/p1/c1a2b3c4.tty","stdin":true,"stdin_once":false}
//! {"op":"attach","container_id":"c1","stdin":true,"stdout":true,"stderr":true}
//! {"op":"exec","container_id":"c1","argv":["/usr/sbin/runc","--root","/run/berth/runc",...,"exec","--detach",
//!  "--pid-file","/b/exec-1.pid","--tty","--console-socket","/run/berth/pods/p1/x1a2b3c.tty","c1","sh"],
//!  "pid_file":"/b/exec-1.pid","tty":true,"stdin":true,"timeout_secs":60,
//!  "console_socket":"/run/berth/pods/p1/x1a2b3c.tty"}
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
//! {"result":"attached","tty":false}                    attach: frames follow
//! {"result":"exec_started","pid":4500}                 exec: the exec command exited 0; frames follow
//! {"result":"error","error":{"kind":"runtime_failed","exit_code":1,"output":"..."}}
//! ```
//!
//! Error kinds are the variants of [`MonitorError`] in snake case (`bad_request`,
//! `not_found`, `already_exists`, `not_running`, `busy`, `runtime_failed`, `timeout`,
//! `io`, `too_many_sessions`, `protocol`, ...), with their fields beside `kind`.
//!
//! Semantics:
//! - `create` runs `argv` with stdin `/dev/null` (a pipe whose write end the monitor keeps
//!   with `stdin`) and stdout / stderr on pipes the monitor reads (the OCI runtime passes
//!   them to the container's init), cwd `/`. With `console_socket` (a terminal container;
//!   `argv` must pass the same path as `--console-socket`) the monitor listens there before
//!   it runs `argv`, takes the pty master runc sends (`SCM_RIGHTS`, once the console is set
//!   up), removes the socket, sets `ONLCR`, logs the terminal's output as `stdout` and
//!   uses the master as the container's stdin; a create that exits 0 without having sent
//!   it fails with `protocol`. The reply comes
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
//! - `attach`: a running container (`not_found`, `busy` while creating, `not_running` once
//!   it exited; `bad_request` for `stdin` of a container created without it). `tty` in the
//!   answer: the output is all `stdout`.
//! - `exec`: a running container (same errors); `argv` is the runtime's *detached* exec,
//!   run with stdin a pipe (with `stdin` and no `tty`, else `/dev/null`), stdout / stderr
//!   on pipes, cwd `/`; with `tty`, `console_socket` is required and works as for create.
//!   When the command exits 0 the monitor reads (and removes) `pid_file`: the process,
//!   reparented to the monitor, is its child from then on. Non-zero → `runtime_failed` with
//!   the command's output (≤ 4 KiB); past `timeout_secs` (0 → 60; the command's deadline,
//!   not the process's) → `timeout`.
//! - At most 256 attach and exec sessions at once (execs count from the request); beyond,
//!   `too_many_sessions`. These connections do not count against the 64 request
//!   connections.
//!
//! # Sessions
//!
//! After the `attached` / `exec_started` line both directions carry frames
//! ([`frame`]): `[type u8][payload length u32 big-endian][payload, ≤ 32 KiB]`.
//!
//! | type | name | direction | payload |
//! | --- | --- | --- | --- |
//! | 0 | Stdin | client → monitor | bytes for stdin |
//! | 1 | Stdout | monitor → client | output (all of a terminal's) |
//! | 2 | Stderr | monitor → client | output |
//! | 3 | Exit | monitor → client | JSON `{"exit_code":137,"signal":9}`; last frame |
//! | 4 | Error | monitor → client | UTF-8 message; last frame |
//! | 5 | StdinClose | client → monitor | empty: this client's stdin has ended |
//! | 6 | Resize | client → monitor | width u16 BE, height u16 BE (`TIOCSWINSZ`) |
//!
//! - A malformed frame (unknown type, length above 32 KiB, a type clients do not send, a
//!   resize payload that is not 4 bytes) ends that session with an Error frame; the monitor
//!   and every other session go on. Stdin of a session without stdin is dropped; a resize
//!   without a terminal is ignored.
//! - The client half-closing its socket (`shutdown(SHUT_WR)`) is a StdinClose; closing it
//!   ends the session.
//! - Attach: the container's output goes to its log and to every attach session that
//!   asked for that stream, as read (not cut into lines). A session with more than
//!   256 KiB queued is dropped (its connection closed): it never slows the container or
//!   the log. Stdin from every session with stdin goes to the container's stdin. With
//!   `stdin_once`, the container's stdin is closed when the first session with stdin ends
//!   its stdin (StdinClose, half-close, disconnect, drop); for a terminal, the monitor then
//!   stops writing to it (no end-of-file is typed). When the container exits (its output
//!   drained), each session gets Exit and is closed; forgetting the container closes them
//!   with Error. A session that does not take its last frames within 30 s is closed.
//! - Exec: the process's output is read only while the client has less than 256 KiB
//!   queued, so a slow client blocks the process (backpressure). StdinClose closes the
//!   process's stdin. Exit comes once the process is reaped and its output drained (EOF,
//!   or 2 s after the exit when a leftover process holds the pipes and the client is not
//!   the one behind). A client that disconnects before Exit gets its process SIGKILLed.
//! - Sessions live on connections: when berthd restarts they end (exec'd processes are
//!   killed), containers and their logs go on.
//!
//! # Memory
//!
//! The monitor's private memory (heap, stack, data: `RssAnon`) is ~120-200 KiB with one
//! container and one idle attach session (a session holds at most one partial incoming
//! frame and its queued output: ≤ 256 KiB plus a frame, returned to the system when
//! written, as buffers above 64 KiB are mmap'd). `VmRSS` also counts the shared text it maps, and the kernel maps file pages
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
pub mod frame;
pub mod logfmt;
pub mod logsink;
pub mod process;
pub mod protocol;
pub mod server;

pub use error::MonitorError;
pub use protocol::{
    ContainerState, CreateRequest, CreateResponse, ExecRequest, ExitInfo, Reply, Request,
    read_exit_file,
};
