//! End-to-end tests of the pod monitor with runc and a busybox rootfs. Run as root.
//!
//! Every test starts its own monitor in its own temporary pod directory, with its own runc
//! root and cgroups named `/berth-test-<random>` (created and removed by runc). Cleanup
//! (`runc delete -f`, SIGTERM to the monitor, removal of the directories) happens in
//! `Drop`, so it also runs when an assertion fails.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use runtime_core::monitor::{
    self, ContainerState, CreateRequest, MonitorClient, MonitorError, read_exit_file,
};

mod common;
use common::*;

#[tokio::test]
async fn exit_code_and_log_lines() {
    let mut fx = Fixture::new();
    let before = monitor::protocol::ExitInfo {
        exit_code: 0,
        signal: None,
        finished_at_ns: 0,
        oom_killed: false,
    };
    let (b, _) = fx
        .run("c1", &["sh", "-c", "echo out; echo err >&2; exit 3"])
        .await;
    let exit = fx.wait_exit("c1").await;
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
    assert_ne!(exit, before);
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(exit.finished_at_ns <= now_ns && now_ns - exit.finished_at_ns < 60_000_000_000);
    assert_eq!(
        read_exit_file(&b.dir.join("exit.json")).unwrap(),
        Some(exit)
    );
    let entries = parse_log(&fx.log_path("c1"));
    assert_eq!(entries.len(), 2, "{entries:?}");
    let mut got: Vec<(String, String, Vec<u8>)> = entries
        .iter()
        .map(|e| (e.stream.clone(), e.tag.clone(), e.content.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("stderr".into(), "F".into(), b"err".to_vec()),
            ("stdout".into(), "F".into(), b"out".to_vec())
        ]
    );
    assert!(entries.iter().all(|e| e.ts.len() == 30));
    let list = fx.client.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].pid > 0);
    // Forget it: gone from the list, idempotent.
    fx.client.forget("c1").await.unwrap();
    fx.client.forget("c1").await.unwrap();
    assert!(fx.client.list().await.unwrap().is_empty());
    assert_eq!(read_exit_file(&b.dir.join("missing.json")).unwrap(), None);
}

#[tokio::test]
async fn long_line_is_split() {
    let mut fx = Fixture::new();
    // 40 KiB of a repeating alphabet, then a newline, then a short line.
    let script = "i=0; while [ $i -lt 1575 ]; do printf abcdefghijklmnopqrstuvwxyz; i=$((i+1)); done; \
                  printf 0123456789; echo; echo short";
    fx.run("long", &["sh", "-c", script]).await;
    let exit = fx.wait_exit("long").await;
    assert_eq!(exit.exit_code, 0);
    let entries = parse_log(&fx.log_path("long"));
    let tags: Vec<(&str, usize)> = entries
        .iter()
        .map(|e| (e.tag.as_str(), e.content.len()))
        .collect();
    assert_eq!(
        tags,
        vec![("P", 16384), ("P", 16384), ("F", 40960 - 32768), ("F", 5)]
    );
    let whole: Vec<u8> = entries[..3]
        .iter()
        .flat_map(|e| e.content.clone())
        .collect();
    let mut expected = b"abcdefghijklmnopqrstuvwxyz".repeat(1575);
    expected.extend_from_slice(b"0123456789");
    assert_eq!(whole.len(), 40960);
    assert!(whole == expected, "the split line does not reassemble");
    assert_eq!(entries[3].content, b"short");
}

#[tokio::test]
async fn unterminated_output_is_partial() {
    let mut fx = Fixture::new();
    fx.run("noeol", &["sh", "-c", "printf 'a\\r\\nno newline'"])
        .await;
    fx.wait_exit("noeol").await;
    let entries = parse_log(&fx.log_path("noeol"));
    let got: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|e| (e.tag.as_str(), e.content.as_slice()))
        .collect();
    assert_eq!(got, vec![("F", &b"a"[..]), ("P", &b"no newline"[..])]);
}

#[tokio::test]
async fn reopen_log_loses_nothing() {
    let mut fx = Fixture::new();
    let script = "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); sleep 0.01; done";
    fx.run("rot", &["sh", "-c", script]).await;
    let log = fx.log_path("rot");
    wait_for("50 lines in the log", Duration::from_secs(20), || {
        (std::fs::read(&log)
            .unwrap_or_default()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            >= 50)
            .then_some(())
    });
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    fx.client.reopen_log("rot").await.unwrap();
    let exit = fx.wait_exit("rot").await;
    assert_eq!(exit.exit_code, 0);
    let old = parse_log(&rotated);
    let new = parse_log(&log);
    assert!(
        !old.is_empty() && !new.is_empty(),
        "old {} new {}",
        old.len(),
        new.len()
    );
    let numbers: Vec<u32> = old
        .iter()
        .chain(new.iter())
        .map(|e| {
            assert_eq!((e.stream.as_str(), e.tag.as_str()), ("stdout", "F"));
            let text = String::from_utf8(e.content.clone()).unwrap();
            text.strip_prefix("line ").unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        (0..300).collect::<Vec<u32>>(),
        "lines lost or reordered across the reopen"
    );
    println!(
        "reopen: {} lines in the old file, {} in the new one",
        old.len(),
        new.len()
    );
    // Reopen of an exited container: not running.
    match fx.client.reopen_log("rot").await {
        Err(MonitorError::NotRunning { .. }) => {}
        other => panic!("reopen after exit: {other:?}"),
    }
    match fx.client.reopen_log("nope").await {
        Err(MonitorError::NotFound { .. }) => {}
        other => panic!("reopen of unknown: {other:?}"),
    }
}

#[tokio::test]
async fn init_is_a_child_of_the_monitor() {
    let mut fx = Fixture::new();
    let (b, pid) = fx.run("victim", &["sleep", "1000"]).await;
    // The monitor is the init's parent (it was reparented from runc to the subreaper).
    let ppid: i32 = stat_fields(pid)[1].parse().unwrap();
    assert_eq!(ppid, fx.monitor_pid);
    let list = fx.client.list().await.unwrap();
    assert_eq!(
        list,
        vec![ContainerState {
            id: "victim".into(),
            pid,
            exit: None
        }]
    );
    assert_eq!(read_exit_file(&b.dir.join("exit.json")).unwrap(), None);
}

#[tokio::test]
async fn killed_container_exit_137() {
    let mut fx = Fixture::new();
    let (b, _) = fx.run("k", &["sleep", "1000"]).await;
    fx.runc(&["kill", "k", "KILL"]);
    let exit = fx.wait_exit("k").await;
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    assert!(!exit.oom_killed);
    assert_eq!(
        read_exit_file(&b.dir.join("exit.json")).unwrap(),
        Some(exit)
    );
}

#[tokio::test]
async fn create_failure_is_runtime_failed() {
    let mut fx = Fixture::new();
    let b = fx.bundle("bad", &["true"]);
    let mut req = fx.create_request(&b);
    let pos = req.argv.iter().position(|a| a == "--bundle").unwrap();
    req.argv[pos + 1] = fx.dir.path().join("no-such-bundle").display().to_string();
    match fx.client.create(req.clone()).await {
        Err(MonitorError::RuntimeFailed { exit_code, output }) => {
            assert_ne!(exit_code, 0);
            println!("runtime failed as expected: exit {exit_code}, output {output:?}");
        }
        other => panic!("create with a bad bundle: {other:?}"),
    }
    assert!(fx.client.list().await.unwrap().is_empty());
    // A command that cannot run at all.
    req.argv[0] = "/nonexistent/runc".into();
    match fx.client.create(req.clone()).await {
        Err(MonitorError::Io { message }) => {
            assert!(message.contains("/nonexistent/runc"), "{message}")
        }
        other => panic!("create with a missing binary: {other:?}"),
    }
    // Relative paths are refused.
    req.argv[0] = RUNC.into();
    req.log_path = PathBuf::from("relative.log");
    match fx.client.create(req).await {
        Err(MonitorError::BadRequest { .. }) => {}
        other => panic!("create with a relative log path: {other:?}"),
    }
    assert!(fx.client.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn duplicate_create_is_refused() {
    let mut fx = Fixture::new();
    let (b, _) = fx.run("dup", &["sleep", "1000"]).await;
    let req = fx.create_request(&b);
    match fx.client.create(req).await {
        Err(MonitorError::AlreadyExists { id }) => assert_eq!(id, "dup"),
        other => panic!("duplicate create: {other:?}"),
    }
}

/// Test helper run in a child process by `monitor_survives_its_parent`: spawns a monitor
/// and exits. Ignored unless called with the environment variable set.
#[test]
#[ignore]
fn helper_spawn_and_exit() {
    let Some(dir) = std::env::var_os("BERTH_TEST_POD_DIR") else {
        return;
    };
    let info = monitor::spawn(&monitor_bin(), Path::new(&dir)).expect("spawn");
    println!("MONITOR_PID={}", info.pid);
}

#[tokio::test]
async fn monitor_survives_its_parent() {
    let dir = tempfile::Builder::new()
        .prefix("berth-mon-")
        .tempdir_in("/tmp")
        .unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_spawn_and_exit",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BERTH_TEST_POD_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helper: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid: i32 = stdout
        .split("MONITOR_PID=")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("the helper printed no monitor pid: {stdout}"));
    // The helper process is gone; the monitor still answers.
    let client = MonitorClient::new(dir.path().join("monitor.sock"));
    let answered = client.ping().await;
    // Detached: its own session and process group, not the test's.
    let fields = stat_fields(pid);
    let (pgrp, session): (i32, i32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    // Only stdio and what the monitor opens itself: no inherited fd.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    // Shut it down through the protocol.
    let shut = client.shutdown().await;
    wait_for(
        "monitor exit after shutdown",
        Duration::from_secs(10),
        || process_gone(pid).then_some(()),
    );
    assert_eq!(answered.unwrap(), pid);
    shut.unwrap();
    // SAFETY: plain queries about this process.
    let (our_pgrp, our_session) = unsafe { (libc::getpgrp(), libc::getsid(0)) };
    assert_ne!(
        pgrp, our_pgrp,
        "the monitor is in the caller's process group"
    );
    assert_ne!(
        session, our_session,
        "the monitor is in the caller's session"
    );
    // Double fork: the session leader was the intermediate child, which is gone.
    assert_eq!(pgrp, session);
    assert!(process_gone(session) || session == pid);
    assert_eq!(cwd, Path::new("/"));
    assert!(fds.len() <= 6, "unexpected fds {fds:?}");
    assert!(!dir.path().join("monitor.sock").exists());
    assert!(!dir.path().join("monitor.pid").exists());
    println!("monitor fds: {fds:?}");
}

#[tokio::test]
async fn rss_with_one_running_container() {
    // With one attach session too (the budget covers one container being watched).
    let mut fx = Fixture::new();
    let script = "i=0; while [ $i -lt 2000 ]; do echo hello $i; i=$((i+1)); done; echo >&2 done; exec sleep 1000";
    fx.run("rss", &["sh", "-c", script]).await;
    let log = fx.log_path("rss");
    wait_for("the container's output", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stderr F done")
            .then_some(())
    });
    // A few protocol round trips too, and an attach session held while measuring.
    for _ in 0..20 {
        fx.client.list().await.unwrap();
    }
    let _attached = fx.client.attach("rss", false, true, true).await.unwrap();
    fx.client.ping().await.unwrap();
    let kb = |field: &str| -> u64 {
        let v = status_field(fx.monitor_pid, field).unwrap();
        v.trim_end_matches("kB").trim().parse().unwrap()
    };
    let (rss, anon, file, hwm) = (kb("VmRSS"), kb("RssAnon"), kb("RssFile"), kb("VmHWM"));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", fx.monitor_pid)).unwrap();
    let dynamic = maps.contains("libc.so");
    println!(
        "monitor {} with one running container: VmRSS {rss} kB (RssAnon {anon} kB, RssFile {file} kB, peak {hwm} kB), \
         {} binary {}",
        fx.monitor_pid,
        if dynamic {
            "dynamically linked"
        } else {
            "static"
        },
        monitor_bin().display()
    );
    if std::env::var_os("BERTH_SMAPS").is_some() {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", fx.monitor_pid)).unwrap();
        let mut name = String::new();
        for line in smaps.lines() {
            if line.contains('-') && !line.starts_with(|c: char| c.is_ascii_uppercase()) {
                name = line.to_string();
            } else if let Some(v) = line.strip_prefix("Rss:")
                && v.trim() != "0 kB"
            {
                println!("  {:>8} {name}", v.trim());
            }
        }
    }
    // What the monitor owns privately (heap, stack, data) is small whatever the build.
    assert!(anon < 1024, "monitor RssAnon {anon} kB is not under 1 MiB");
    if dynamic {
        // Dynamically linked, glibc's shared text alone (mapped 64 KiB around each touched
        // page by the kernel's fault-around) is ~1.4 MiB: a sleeping hello-world is at
        // ~1.9 MiB here. The 2 MiB budget is for the static release build
        // (`-C target-feature=+crt-static`); point BERTH_MONITOR_BIN at one.
        println!(
            "note: dynamically linked monitor; the < 2 MiB VmRSS assertion needs a static build"
        );
    } else {
        assert!(rss < 2048, "monitor VmRSS {rss} kB is not under 2 MiB");
    }
}

#[tokio::test]
async fn pause_is_pid1_of_a_new_pid_namespace() {
    let mut fx = Fixture::new();
    // Detached, from the caller.
    let pid = monitor::spawn_pause_in_new_pidns(&monitor_bin(), &fx.pod_dir, None).unwrap();
    fx.pause_pids.push(pid);
    let nspid = status_field(pid, "NSpid").unwrap();
    assert_eq!(
        nspid.split_whitespace().collect::<Vec<_>>(),
        vec![pid.to_string(), "1".to_string()]
    );
    assert_eq!(
        std::fs::read_to_string(fx.pod_dir.join("pause.pid")).unwrap(),
        pid.to_string()
    );
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        std::fs::read_link("/proc/self/ns/pid").unwrap()
    );
    // A SIGTERM right after the start is not lost (the pause process is PID 1 of its
    // namespace, which drops signals it does not handle).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("detached pause exit", Duration::from_secs(10), || {
        process_gone(pid).then_some(())
    });
    // Through the monitor: the monitor is its parent.
    let pid2 = fx.client.spawn_pause(None).await.unwrap();
    fx.pause_pids.push(pid2);
    let nspid = status_field(pid2, "NSpid").unwrap();
    assert_eq!(nspid.split_whitespace().nth(1), Some("1"));
    let ppid: i32 = stat_fields(pid2)[1].parse().unwrap();
    assert_eq!(ppid, fx.monitor_pid);
    assert_eq!(
        std::fs::read_to_string(fx.pod_dir.join("pause.pid")).unwrap(),
        pid2.to_string()
    );
    // SIGTERM from the host ends it (PID 1 of a namespace only gets handled signals).
    unsafe { libc::kill(pid2, libc::SIGTERM) };
    wait_for("pause exit", Duration::from_secs(10), || {
        process_gone(pid2).then_some(())
    });
    // ...and the monitor reaped it: no zombie left.
    wait_for("pause reaped", Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid2}")).exists()).then_some(())
    });
    assert_eq!(fx.client.ping().await.unwrap(), fx.monitor_pid);
}

fn raw_exchange(socket: &Path, data: &[u8], close_write: bool) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(data);
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[tokio::test]
async fn garbage_does_not_kill_the_monitor() {
    let fx = Fixture::new();
    let socket = fx.pod_dir.join("monitor.sock");
    let reply = raw_exchange(&socket, b"this is not json\n", false);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains(r#""result":"error""#) && text.contains("bad_request"),
        "{text}"
    );
    let reply = raw_exchange(&socket, br#"{"op":"launch_missiles"}"#, true);
    assert!(String::from_utf8_lossy(&reply).contains("bad_request"));
    let reply = raw_exchange(&socket, br#"{"op":"create","container_id":"x"}"#, true);
    assert!(String::from_utf8_lossy(&reply).contains("bad_request"));
    let reply = raw_exchange(&socket, &[0xff, 0xfe, 0x00, b'\n'], false);
    assert!(String::from_utf8_lossy(&reply).contains("bad_request"));
    // Two MiB without a newline: refused, not buffered forever.
    let reply = raw_exchange(&socket, &vec![b'x'; 2 << 20], false);
    assert!(String::from_utf8_lossy(&reply).contains("longer than"));
    // Connect and leave at once; connect and stay idle while others are served.
    drop(UnixStream::connect(&socket).unwrap());
    let idle = UnixStream::connect(&socket).unwrap();
    let reply = raw_exchange(&socket, b"{\"op\":\"ping\"}\n", false);
    assert!(String::from_utf8_lossy(&reply).contains("pong"));
    // A request, then the client leaves without reading the reply.
    {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(b"{\"op\":\"list\"}\n").unwrap();
    }
    drop(idle);
    assert_eq!(fx.client.ping().await.unwrap(), fx.monitor_pid);
    assert!(fx.client.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn sigterm_stops_the_monitor_cleanly() {
    let fx = Fixture::new();
    unsafe { libc::kill(fx.monitor_pid, libc::SIGTERM) };
    wait_for("monitor exit", Duration::from_secs(10), || {
        process_gone(fx.monitor_pid).then_some(())
    });
    assert!(!fx.pod_dir.join("monitor.sock").exists());
    assert!(!fx.pod_dir.join("monitor.pid").exists());
    match fx.client.ping().await {
        Err(MonitorError::Unreachable { .. }) => {}
        other => panic!("ping after SIGTERM: {other:?}"),
    }
}

/// A fake OCI runtime (a shell script on the host) for the paths runc cannot provoke at
/// will: `script` runs as `sh -c script fake <pid_file> <dir>`.
fn fake_request(fx: &Fixture, id: &str, script: &str) -> CreateRequest {
    let dir = fx.dir.path().join("fake").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("init.pid");
    CreateRequest {
        container_id: id.to_string(),
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            script.into(),
            "fake".into(),
            pid_file.display().to_string(),
            dir.display().to_string(),
        ],
        pid_file,
        log_path: fx.log_path(id),
        exit_file: dir.join("exit.json"),
        oom_control: None,
        timeout_secs: 10,
        console_socket: None,
        stdin: false,
        stdin_once: false,
    }
}

#[tokio::test]
async fn init_exiting_before_its_pid_is_known() {
    let fx = Fixture::new();
    // The "init" is a grandchild that writes its pid, prints, and exits 7 at once; the
    // create command exits only after the monitor has reaped it (kill -0 fails), so the
    // monitor sees the init's status before it knows the pid.
    let script = r#"
        ( sh -c 'echo early; echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exit 7' init "$1" & )
        while [ ! -s "$1" ]; do :; done
        pid=$(cat "$1")
        while kill -0 "$pid" 2>/dev/null; do :; done
        exit 0"#;
    let mut req = fake_request(&fx, "early", script);
    let oom = fx.dir.path().join("memory.oom_control");
    std::fs::write(&oom, "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n").unwrap();
    req.oom_control = Some(oom);
    let exit_file = req.exit_file.clone();
    let resp = fx.client.create(req).await.unwrap();
    let exit = fx.wait_exit("early").await;
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (7, None, true)
    );
    assert_eq!(read_exit_file(&exit_file).unwrap(), Some(exit));
    let list = fx.client.list().await.unwrap();
    assert_eq!(list[0].pid, resp.pid);
    let entries = parse_log(&fx.log_path("early"));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].content, b"early");
}

#[tokio::test]
async fn create_output_and_timeout() {
    let fx = Fixture::new();
    let req = fake_request(&fx, "noisy", "echo 'runtime says no' >&2; exit 4");
    match fx.client.create(req).await {
        Err(MonitorError::RuntimeFailed {
            exit_code: 4,
            output,
        }) => assert_eq!(output, "runtime says no"),
        other => panic!("failing create: {other:?}"),
    }
    // Nothing of a failed create reaches the container log.
    assert!(parse_log(&fx.log_path("noisy")).is_empty());
    let mut req = fake_request(&fx, "slow", "exec sleep 100");
    req.timeout_secs = 1;
    let started = Instant::now();
    match fx.client.create(req).await {
        Err(MonitorError::Timeout { .. }) => {}
        other => panic!("slow create: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(fx.client.list().await.unwrap().is_empty());
    // The same id can be created again after a failure.
    let req = fake_request(
        &fx,
        "noisy",
        "(sh -c 'echo $$ > \"$1\"; exit 0' x \"$1\" &); while [ ! -s \"$1\" ]; do :; done",
    );
    fx.client.create(req).await.unwrap();
    assert_eq!(fx.wait_exit("noisy").await.exit_code, 0);
}

#[tokio::test]
async fn exit_is_reported_when_a_leftover_process_holds_the_pipes() {
    let fx = Fixture::new();
    // The init starts a background sleep that keeps stdout open, writes its pid to
    // <dir>/leftover.pid and exits 5.
    let script = r#"
        ( sh -c 'sleep 60 & echo $! > "$2/leftover.pid"; echo bye; echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exit 5' init "$1" "$2" & )
        while [ ! -s "$1" ]; do :; done"#;
    let req = fake_request(&fx, "leftover", script);
    let dir = req.exit_file.parent().unwrap().to_path_buf();
    fx.client.create(req).await.unwrap();
    let started = Instant::now();
    let exit = fx.wait_exit("leftover").await;
    let waited = started.elapsed();
    let leftover: i32 = std::fs::read_to_string(dir.join("leftover.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kills the sleep this test started (through the fake runtime).
    unsafe { libc::kill(leftover, libc::SIGKILL) };
    assert_eq!(exit.exit_code, 5);
    assert!(
        waited < Duration::from_secs(6),
        "exit reported after {waited:?}"
    );
    let entries = parse_log(&fx.log_path("leftover"));
    assert_eq!(
        entries
            .iter()
            .map(|e| e.content.as_slice())
            .collect::<Vec<_>>(),
        vec![&b"bye"[..]]
    );
    println!("exit reported {waited:?} after create with a leftover process holding stdout");
}

#[tokio::test]
async fn create_goes_on_when_the_client_leaves() {
    let fx = Fixture::new();
    // berthd killed mid-create: the request was sent, nobody reads the reply.
    let script = r#"( sh -c 'echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 60' init "$1" & )
        while [ ! -s "$1" ]; do :; done"#;
    let req = fake_request(&fx, "orphaned", script);
    let mut line = serde_json::to_vec(&monitor::Request::Create(req.clone())).unwrap();
    line.push(b'\n');
    {
        let mut s = UnixStream::connect(fx.pod_dir.join("monitor.sock")).unwrap();
        s.write_all(&line).unwrap();
    }
    let state = wait_for_async(
        "the container in the list",
        Duration::from_secs(10),
        || async {
            let list = fx.client.list().await.unwrap();
            list.into_iter().find(|c| c.id == "orphaned" && c.pid > 0)
        },
    )
    .await;
    assert_eq!(state.exit, None);
    let pid: i32 = std::fs::read_to_string(&req.pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(state.pid, pid);
    // SAFETY: kills the sleep this test started (through the fake runtime).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let exit = fx.wait_exit("orphaned").await;
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
}
