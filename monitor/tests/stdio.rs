//! The monitor's stdio sessions with runc and a busybox rootfs (run as root): terminal
//! containers (runc's console socket), attach (fan-out, stdin, stdin_once, a stalled
//! client), exec (exit code, stdin, terminal and resize, backpressure, a client that
//! leaves), malformed frames. Cleanup as in `monitor.rs` (the fixture's `Drop`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use runtime_core::monitor::frame::{self, FrameType};
use runtime_core::monitor::{MonitorError, Request, SessionOutput, SessionReader, StdioSession};

mod common;
use common::*;

const T: Duration = Duration::from_secs(20);

/// What a session delivered until `done(stdout)` held or it ended.
#[derive(Debug, Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<(i32, Option<i32>)>,
    error: Option<String>,
    ended: bool,
}

impl Collected {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Reads `reader` until `done` holds on what was collected, or the session ends; fails
/// after [`T`].
async fn collect(reader: &mut SessionReader, done: impl Fn(&Collected) -> bool) -> Collected {
    let mut c = Collected::default();
    let work = async {
        while !done(&c) {
            match reader.recv().await.expect("recv") {
                Some(SessionOutput::Stdout(b)) => c.stdout.extend(b),
                Some(SessionOutput::Stderr(b)) => c.stderr.extend(b),
                Some(SessionOutput::Exit { exit_code, signal }) => {
                    c.exit = Some((exit_code, signal))
                }
                Some(SessionOutput::Error(m)) => c.error = Some(m),
                None => {
                    c.ended = true;
                    break;
                }
            }
        }
    };
    if tokio::time::timeout(T, work).await.is_err() {
        panic!("timed out collecting session output");
    }
    c
}

async fn to_end(reader: &mut SessionReader) -> Collected {
    collect(reader, |_| false).await
}

fn log_contents(fx: &Fixture, id: &str) -> Vec<(String, String)> {
    parse_log(&fx.log_path(id))
        .into_iter()
        .map(|e| (e.stream, String::from_utf8_lossy(&e.content).into_owned()))
        .collect()
}

#[tokio::test]
async fn tty_container_logs_terminal_output_as_stdout() {
    let mut fx = Fixture::new();
    fx.run_with(
        "tty",
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; [ -t 0 ] && echo is-a-tty; exit 2",
        ],
        true,
        false,
        false,
    )
    .await;
    let exit = fx.wait_exit("tty").await;
    assert_eq!(exit.exit_code, 2);
    let log = log_contents(&fx, "tty");
    let expected: Vec<(String, String)> = ["hello", "oops", "is-a-tty"]
        .iter()
        .map(|l| ("stdout".to_string(), l.to_string()))
        .collect();
    assert_eq!(log, expected, "a terminal's output is stdout, without \\r");
    assert!(
        !fx.console_socket("tty").exists(),
        "the console socket is removed once the terminal arrived"
    );
}

#[tokio::test]
async fn attach_fans_out_and_writes_stdin() {
    let mut fx = Fixture::new();
    let script = "while read l; do echo got $l; echo e$l >&2; done; echo eof";
    fx.run_with("att", &["sh", "-c", script], false, true, false)
        .await;
    let one = fx.client.attach("att", true, true, true).await.unwrap();
    assert!(!one.tty);
    let two = fx.client.attach("att", false, true, false).await.unwrap();
    let (mut r1, mut w1) = one.into_split();
    let (mut r2, _w2) = two.into_split();
    w1.stdin(b"a\n").await.unwrap();
    let c1 = collect(&mut r1, |c| {
        c.out().contains("got a") && !c.stderr.is_empty()
    })
    .await;
    assert_eq!(c1.out(), "got a\n");
    assert_eq!(c1.stderr, b"ea\n");
    let c2 = collect(&mut r2, |c| c.out().contains("got a")).await;
    assert_eq!(c2.out(), "got a\n");
    assert!(
        c2.stderr.is_empty(),
        "the second client asked for no stderr"
    );
    // The end of one client's stdin does not close the container's (no stdin_once).
    w1.close_stdin().await.unwrap();
    let three = fx.client.attach("att", true, true, false).await.unwrap();
    let (mut r3, mut w3) = three.into_split();
    w3.stdin(b"b\n").await.unwrap();
    for r in [&mut r1, &mut r2, &mut r3] {
        let c = collect(r, |c| c.out().contains("got b")).await;
        assert_eq!(c.out(), "got b\n");
    }
    // The container exits: every attach session gets its exit, then the end.
    fx.runc(&["kill", "att", "KILL"]);
    for r in [&mut r1, &mut r2, &mut r3] {
        let c = to_end(r).await;
        assert_eq!(c.exit, Some((137, Some(9))));
        assert!(c.ended);
    }
    let log = log_contents(&fx, "att");
    assert!(log.contains(&("stdout".into(), "got a".into())));
    assert!(log.contains(&("stderr".into(), "eb".into())));
    // Attach to an exited container, to an unknown one, stdin of a container without.
    match fx.client.attach("att", false, true, true).await {
        Err(MonitorError::NotRunning { .. }) => {}
        other => panic!("attach to an exited container: {other:?}"),
    }
    match fx.client.attach("nope", false, true, true).await {
        Err(MonitorError::NotFound { .. }) => {}
        other => panic!("attach to an unknown container: {other:?}"),
    }
    fx.run("nostdin", &["sleep", "1000"]).await;
    match fx.client.attach("nostdin", true, true, true).await {
        Err(MonitorError::BadRequest { message }) => {
            assert!(message.contains("stdin"), "{message}")
        }
        other => panic!("stdin attach to a container without stdin: {other:?}"),
    }
}

#[tokio::test]
async fn stdin_once_closes_stdin_after_the_first_session() {
    let mut fx = Fixture::new();
    fx.run_with(
        "once",
        &["sh", "-c", "cat; echo eof-seen"],
        false,
        true,
        true,
    )
    .await;
    let s = fx.client.attach("once", true, true, false).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.stdin(b"x\n").await.unwrap();
    let c = collect(&mut r, |c| c.out().contains("x\n")).await;
    assert_eq!(c.out(), "x\n");
    w.close_stdin().await.unwrap();
    let c = to_end(&mut r).await;
    assert_eq!(c.out(), "eof-seen\n");
    assert_eq!(c.exit, Some((0, None)));
    assert_eq!(fx.wait_exit("once").await.exit_code, 0);
}

#[tokio::test]
async fn tty_container_attach_with_stdin() {
    let mut fx = Fixture::new();
    fx.run_with(
        "ttyin",
        &["sh", "-c", "read l; echo got-$l; exit 4"],
        true,
        true,
        false,
    )
    .await;
    let s = fx.client.attach("ttyin", true, true, true).await.unwrap();
    assert!(s.tty);
    let (mut r, mut w) = s.into_split();
    w.resize(120, 40).await.unwrap();
    w.stdin(b"abc\r").await.unwrap();
    let c = to_end(&mut r).await;
    // The terminal echoes the input, then the answer.
    assert!(c.out().contains("got-abc"), "{c:?}");
    assert!(c.stderr.is_empty());
    assert_eq!(c.exit, Some((4, None)));
    assert!(log_contents(&fx, "ttyin").contains(&("stdout".into(), "got-abc".into())));
}

/// Sends a request line and reads the reply line, byte by byte (so that nothing past it
/// is consumed).
fn raw_session(socket: &Path, req: &Request) -> (UnixStream, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut reply = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        reply.push(b[0]);
    }
    (s, String::from_utf8(reply).unwrap())
}

/// Reads raw frames until EOF.
fn raw_frames(s: &mut UnixStream) -> Vec<(FrameType, Vec<u8>)> {
    let mut data = Vec::new();
    let _ = s.read_to_end(&mut data);
    let mut out = Vec::new();
    let mut rest = &data[..];
    while let Ok(Some((kind, payload, n))) = frame::parse(rest) {
        out.push((kind, payload.to_vec()));
        rest = &rest[n..];
    }
    out
}

#[tokio::test]
async fn stalled_attach_client_is_dropped_and_the_log_keeps_every_line() {
    let mut fx = Fixture::new();
    const LINES: usize = 200_000;
    let b = fx.bundle(
        "flood",
        &["sh", "-c", &format!("seq 1 {LINES}; sleep 1000")],
    );
    let req = fx.create_request(&b);
    fx.client.create(req).await.unwrap();
    // Attached before the start: a client that never reads, and one that does.
    let attach = Request::Attach {
        container_id: "flood".into(),
        stdin: false,
        stdout: true,
        stderr: true,
    };
    let (mut stalled, reply) = raw_session(&fx.pod_dir.join("monitor.sock"), &attach);
    assert!(reply.contains("attached"), "{reply}");
    let good = fx.client.attach("flood", false, true, true).await.unwrap();
    let (mut r, _w) = good.into_split();
    fx.runc(&["start", "flood"]);
    let want = format!("\n{LINES}\n");
    let c = collect(&mut r, |c| c.stdout.ends_with(want.as_bytes())).await;
    assert_eq!(c.stdout.iter().filter(|&&b| b == b'\n').count(), LINES);
    // (Not parse_log: it checks every timestamp with date(1).)
    let log = fx.log_path("flood");
    let lines = wait_for("every line in the log", T, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.lines().count() == LINES).then_some(text)
    });
    for (i, line) in lines.lines().enumerate() {
        let content = line.splitn(4, ' ').nth(3);
        assert_eq!(content, Some((i + 1).to_string().as_str()), "log line {i}");
    }
    // The stalled client was cut off: its connection ends without an exit frame, far short
    // of the whole output.
    let frames = raw_frames(&mut stalled);
    let got: usize = frames.iter().map(|(_, p)| p.len()).sum();
    assert!(frames.iter().all(|(k, _)| *k == FrameType::Stdout));
    assert!(got < c.stdout.len(), "stalled client got {got} bytes");
    assert_eq!(fx.client.ping().await.unwrap(), fx.monitor_pid);
}

#[tokio::test]
async fn exec_reports_output_and_exit_code() {
    let mut fx = Fixture::new();
    fx.run("ex", &["sleep", "1000"]).await;
    let req = fx.exec_request(
        "ex",
        "e1",
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        false,
        false,
    );
    let s = fx.client.exec(req).await.unwrap();
    assert!(!s.tty);
    let (mut r, _w) = s.into_split();
    let c = to_end(&mut r).await;
    assert_eq!(
        (c.out(), c.stderr.as_slice()),
        ("out\n".to_string(), &b"err\n"[..])
    );
    assert_eq!(c.exit, Some((7, None)));
    // stdin: written, then closed.
    let req = fx.exec_request("ex", "e2", &["cat"], false, true);
    let (mut r, mut w) = fx.client.exec(req).await.unwrap().into_split();
    w.stdin(b"through stdin").await.unwrap();
    w.close_stdin().await.unwrap();
    let c = to_end(&mut r).await;
    assert_eq!(c.out(), "through stdin");
    assert_eq!(c.exit, Some((0, None)));
    // A command that does not exist: the runtime's failure, no session.
    let req = fx.exec_request("ex", "e3", &["/no/such/command"], false, false);
    match fx.client.exec(req).await {
        Err(MonitorError::RuntimeFailed { exit_code, .. }) => assert_ne!(exit_code, 0),
        other => panic!("exec of a missing command: {other:?}"),
    }
    // Exec in an unknown container.
    let req = fx.exec_request("nope", "e4", &["true"], false, false);
    assert!(matches!(
        fx.client.exec(req).await,
        Err(MonitorError::NotFound { .. })
    ));
    // Nothing left behind.
    assert!(!fx.dir.path().join("execs/e1.pid").exists());
}

#[tokio::test]
async fn exec_with_a_terminal_applies_resize() {
    let mut fx = Fixture::new();
    fx.run("tx", &["sleep", "1000"]).await;
    let req = fx.exec_request(
        "tx",
        "t1",
        &["sh", "-c", "read x; stty size; exit 3"],
        true,
        true,
    );
    let s: StdioSession = fx.client.exec(req).await.unwrap();
    assert!(s.tty);
    let (mut r, mut w) = s.into_split();
    w.resize(100, 30).await.unwrap();
    w.stdin(b"go\r").await.unwrap();
    let c = to_end(&mut r).await;
    assert!(
        c.out().contains("30 100"),
        "stty size after a 100x30 resize: {c:?}"
    );
    assert!(c.stderr.is_empty());
    assert_eq!(c.exit, Some((3, None)));
    assert!(!fx.console_socket("t1").exists());
}

fn exec_raw(fx: &Fixture, tag: &str, cmd: &[&str]) -> (UnixStream, i32) {
    let req = Request::Exec(fx.exec_request("bp", tag, cmd, false, false));
    let (s, reply) = raw_session(&fx.pod_dir.join("monitor.sock"), &req);
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(v["result"], "exec_started", "{reply}");
    let pid = v["pid"].as_i64().unwrap() as i32;
    (s, pid)
}

#[tokio::test]
async fn exec_backpressure_loses_nothing_and_a_leaving_client_kills_the_process() {
    let mut fx = Fixture::new();
    fx.run("bp", &["sleep", "1000"]).await;
    // 200000 lines (1.3 MB) to a client that does not read yet: the process blocks on
    // its pipe instead of the monitor buffering it all.
    const LINES: usize = 200_000;
    let (mut s, pid) = exec_raw(&fx, "b1", &["seq", "1", &LINES.to_string()]);
    let blocked = wait_for("the exec'd process to block on its full pipe", T, || {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok()?;
        if wchan == "0" || wchan.is_empty() {
            return Some(false); // no wchan here: cannot tell
        }
        wchan.contains("pipe").then_some(true)
    });
    if blocked {
        let rss = status_field(fx.monitor_pid, "VmRSS").unwrap();
        println!("monitor VmRSS with a blocked exec client: {rss}");
    }
    let frames = raw_frames(&mut s);
    let out: Vec<u8> = frames
        .iter()
        .filter(|(k, _)| *k == FrameType::Stdout)
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), LINES);
    assert!(out.ends_with(format!("\n{LINES}\n").as_bytes()));
    let (kind, payload) = frames.last().unwrap();
    assert_eq!(*kind, FrameType::Exit);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(payload).unwrap()["exit_code"],
        0
    );
    // A client that leaves: its process is SIGKILLed.
    let (s, pid) = exec_raw(&fx, "b2", &["sleep", "1000"]);
    assert!(!process_gone(pid));
    drop(s);
    wait_for("the abandoned exec to be killed", T, || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert_eq!(fx.client.ping().await.unwrap(), fx.monitor_pid);
}

#[tokio::test]
async fn malformed_frames_end_only_their_session() {
    let mut fx = Fixture::new();
    fx.run_with("mf", &["sh", "-c", "cat"], false, true, false)
        .await;
    let socket = fx.pod_dir.join("monitor.sock");
    let attach = Request::Attach {
        container_id: "mf".into(),
        stdin: true,
        stdout: true,
        stderr: false,
    };
    // An unknown frame type, an oversized length, a frame only the monitor sends, a bad
    // resize payload: each ends its session with an error frame.
    for bad in [
        vec![9u8, 0, 0, 0, 0],
        vec![0, 0, 1, 0, 0],
        vec![3, 0, 0, 0, 0],
        vec![6, 0, 0, 0, 3, 1, 2, 3],
    ] {
        let (mut s, reply) = raw_session(&socket, &attach);
        assert!(reply.contains("attached"), "{reply}");
        s.write_all(&bad).unwrap();
        let frames = raw_frames(&mut s);
        assert_eq!(frames.len(), 1, "{bad:?}: {frames:?}");
        assert_eq!(frames[0].0, FrameType::Error);
    }
    // A malformed exec session: the process is killed.
    let (mut s, pid) = {
        let req = Request::Exec(fx.exec_request("mf", "m1", &["sleep", "1000"], false, false));
        let (s, reply) = raw_session(&socket, &req);
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        (s, v["pid"].as_i64().unwrap() as i32)
    };
    s.write_all(&[42, 1, 2, 3, 4]).unwrap();
    let frames = raw_frames(&mut s);
    assert_eq!(frames.last().map(|f| f.0), Some(FrameType::Error));
    drop(s);
    wait_for("the malformed exec session's process killed", T, || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    // The container and the monitor are fine: a new session works.
    let (mut r, mut w) = fx
        .client
        .attach("mf", true, true, false)
        .await
        .unwrap()
        .into_split();
    w.stdin(b"still here\n").await.unwrap();
    let c = collect(&mut r, |c| c.out().contains("still here")).await;
    assert_eq!(c.out(), "still here\n");
    let started = Instant::now();
    assert_eq!(fx.client.ping().await.unwrap(), fx.monitor_pid);
    assert!(started.elapsed() < T);
}
