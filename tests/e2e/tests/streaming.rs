//! Exec, Attach and PortForward end to end: a real berthd, its monitor, runc and busybox,
//! driven over SPDY/3.1 and WebSocket by the harness's own client.

use std::time::Duration;

use anyhow::Result;
use e2e::cri_api::{ContainerState, NamespaceMode};
use e2e::pods::{PodEnv, TERM_TRAP_LOOP, ns_options, read_cri_log};
use e2e::streaming::{
    PortForward, Session, StdioOpts, Transport, attach_url, exec_url, http_status,
    port_forward_url, run,
};
use e2e::{Code, poll_until};

const BOTH: [Transport; 2] = [Transport::Spdy, Transport::WebSocket];
const T: Duration = Duration::from_secs(30);
const OUT_ERR: StdioOpts = StdioOpts {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};
const TTY_IN: StdioOpts = StdioOpts {
    stdin: true,
    stdout: true,
    stderr: false,
    tty: true,
};

async fn running(env: &PodEnv, name: &str) -> Result<(String, String)> {
    let pod = env.pod_config(name);
    let pod_id = env.run_pod(&pod).await?;
    let c = env.sh_container("main", TERM_TRAP_LOOP);
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    Ok((pod_id, cid))
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_without_tty_streams_stdout_stderr_and_exit_code() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let (pod_id, cid) = running(&env, "exec-plain").await?;
    for t in BOTH {
        let url = exec_url(&env.cri, &cid, &["echo", "-n", "hello"], OUT_ERR).await?;
        assert!(url.starts_with("http://127.0.0.1:"), "absolute URL: {url}");
        let out = run(&url, t, OUT_ERR, None).await?;
        assert_eq!(out.stdout, b"hello", "{t:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{t:?}: {out:?}");
        assert_eq!(out.exit_code(), Some(0), "{t:?}: {out:?}");

        let cmd = ["sh", "-c", "echo out; echo err >&2; exit 3"];
        let url = exec_url(&env.cri, &cid, &cmd, OUT_ERR).await?;
        let out = run(&url, t, OUT_ERR, None).await?;
        assert_eq!(out.stdout, b"out\n", "{t:?}");
        assert_eq!(out.stderr, b"err\n", "{t:?}");
        assert_eq!(out.exit_code(), Some(3), "{t:?}: {out:?}");

        // stdin reaches the process and its end is the process's EOF.
        let o = StdioOpts {
            stdin: true,
            ..OUT_ERR
        };
        let url = exec_url(&env.cri, &cid, &["sh", "-c", "wc -c"], o).await?;
        let out = run(&url, t, o, Some(&[b'z'; 100_000])).await?;
        assert_eq!(out.stdout_text().trim(), "100000", "{t:?}: {out:?}");
    }
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_with_tty_sees_its_terminal_and_resize() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let (pod_id, cid) = running(&env, "exec-tty").await?;
    for t in BOTH {
        let url = exec_url(&env.cri, &cid, &["sh"], TTY_IN).await?;
        let mut s = Session::open(&url, t, TTY_IN).await?;
        s.resize(123, 45).await?;
        s.send(b"[ -t 0 ] && echo is-a-tty; stty size\n").await?;
        s.read_until("is-a-tty", T).await?;
        s.read_until("45 123", T).await?;
        s.resize(80, 24).await?;
        s.send(b"stty size\n").await?;
        s.read_until("24 80", T).await?;
        s.send(b"exit 4\n").await?;
        let out = s.finish(T).await?;
        assert_eq!(out.exit_code(), Some(4), "{t:?}: {out:?}");
        assert!(out.stderr.is_empty());
    }
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_attach_check_the_container() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let (pod_id, cid) = running(&env, "exec-errors").await?;
    let e = exec_url(&env.cri, "0123456789abcdef", &["true"], OUT_ERR).await;
    assert_eq!(e.unwrap_err().code(), Code::NotFound);
    let e = attach_url(&env.cri, "0123456789abcdef", OUT_ERR).await;
    assert_eq!(e.unwrap_err().code(), Code::NotFound);
    let e = exec_url(&env.cri, &cid, &[], OUT_ERR).await;
    assert_eq!(e.unwrap_err().code(), Code::InvalidArgument);
    let both = StdioOpts {
        tty: true,
        ..OUT_ERR
    };
    let e = exec_url(&env.cri, &cid, &["true"], both).await;
    assert_eq!(e.unwrap_err().code(), Code::InvalidArgument);
    let e = port_forward_url(&env.cri, "0123456789abcdef", &[80]).await;
    assert_eq!(e.unwrap_err().code(), Code::NotFound);

    // Tokens: single use, unknown is 404.
    let url = exec_url(&env.cri, &cid, &["true"], OUT_ERR).await?;
    run(&url, Transport::Spdy, OUT_ERR, None).await?;
    assert_eq!(http_status(&url, "POST", &[]).await?, 404);
    let bogus = format!("{}x", &url[..url.rfind('/').unwrap_or(0) + 1]);
    assert_eq!(http_status(&bogus, "GET", &[]).await?, 404);

    env.stop_container(&cid, 5).await?;
    let e = exec_url(&env.cri, &cid, &["true"], OUT_ERR).await;
    assert_eq!(e.unwrap_err().code(), Code::FailedPrecondition);
    let e = attach_url(&env.cri, &cid, OUT_ERR).await;
    assert_eq!(e.unwrap_err().code(), Code::FailedPrecondition);
    env.stop_pod(&pod_id).await?;
    let e = port_forward_url(&env.cri, &pod_id, &[80]).await;
    assert_eq!(e.unwrap_err().code(), Code::FailedPrecondition);
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_execs() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let (pod_id, cid) = running(&env, "exec-many").await?;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let cri = env.cri.clone();
        let cid = cid.clone();
        let t = if i % 2 == 0 {
            Transport::Spdy
        } else {
            Transport::WebSocket
        };
        tasks.push(tokio::spawn(async move {
            let cmd = format!("echo exec-{i}; exit {}", i % 7);
            let url = exec_url(&cri, &cid, &["sh", "-c", &cmd], OUT_ERR).await?;
            let out = run(&url, t, OUT_ERR, None).await?;
            anyhow::ensure!(out.stdout_text() == format!("exec-{i}\n"), "{i}: {out:?}");
            anyhow::ensure!(out.exit_code() == Some(i % 7), "{i}: {out:?}");
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_client_that_goes_away_kills_the_process() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let (pod_id, cid) = running(&env, "exec-gone").await?;
    for t in BOTH {
        let o = StdioOpts {
            stdin: true,
            ..OUT_ERR
        };
        let script = "echo started; exec sleep 1000";
        let url = exec_url(&env.cri, &cid, &["sh", "-c", script], o).await?;
        let mut s = Session::open(&url, t, o).await?;
        s.read_until("started", T).await?;
        let sleeping = || {
            e2e::pods::processes()
                .into_iter()
                .filter(|(_, c)| c.starts_with("sleep 1000"))
                .count()
        };
        // "started" comes before the shell turns into sleep.
        poll_until(T, "the exec's sleep runs", || async {
            Ok((sleeping() >= 1).then_some(()))
        })
        .await?;
        drop(s);
        poll_until(T, "the exec process is killed", || async {
            Ok((sleeping() == 0).then_some(()))
        })
        .await?;
    }
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_to_a_tty_container_and_to_a_plain_one_with_stdin_once() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("attach");
    let pod_id = env.run_pod(&pod).await?;

    // A TTY container with stdin: its output is in the log as stdout, attach talks to it.
    let mut c = env.container_config("tty", &["sh"]);
    c.tty = true;
    c.stdin = true;
    let tty_id = env.run_container(&pod_id, &c, &pod).await?;
    let log = PodEnv::log_file(&pod, &c);
    for t in BOTH {
        let url = attach_url(&env.cri, &tty_id, TTY_IN).await?;
        let mut s = Session::open(&url, t, TTY_IN).await?;
        s.send(format!("echo attached-$((40+2))-{t:?}\n").as_bytes())
            .await?;
        s.read_until(&format!("attached-42-{t:?}"), T).await?;
        s.resize(99, 33).await?;
        s.send(b"stty size\n").await?;
        s.read_until("33 99", T).await?;
        s.close_stdin().await?;
        drop(s);
    }
    poll_until(T, "the TTY's output in the CRI log", || async {
        let entries = read_cri_log(&log).unwrap_or_default();
        Ok(entries
            .iter()
            .any(|e| e.stream == "stdout" && e.content.contains("attached-42-Spdy"))
            .then_some(()))
    })
    .await?;
    let st = env.container_status(&tty_id).await?;
    assert_eq!(
        st.state(),
        ContainerState::ContainerRunning,
        "attach left it running"
    );

    // A plain container with stdin_once: the attach's stdin is its stdin; when it ends the
    // shell sees EOF and exits, and the attach ends with it.
    for t in BOTH {
        let mut c = env.container_config(&format!("once-{t:?}").to_lowercase(), &["sh"]);
        c.stdin = true;
        c.stdin_once = true;
        let id = env.run_container(&pod_id, &c, &pod).await?;
        let o = StdioOpts {
            stdin: true,
            ..OUT_ERR
        };
        let url = attach_url(&env.cri, &id, o).await?;
        let out = run(&url, t, o, Some(b"echo -n hello; echo -n oops >&2\n")).await?;
        assert_eq!(out.stdout, b"hello", "{t:?}: {out:?}");
        assert_eq!(out.stderr, b"oops", "{t:?}: {out:?}");
        let st = env
            .wait_container_state(&id, ContainerState::ContainerExited, T)
            .await?;
        assert_eq!(st.exit_code, 0);
    }
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_attach_client_never_holds_the_log_back() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("attach-slow");
    let pod_id = env.run_pod(&pod).await?;
    // About 100 MiB of numbered lines, written once an attach is there.
    let script = "while [ ! -e /tmp/go ]; do sleep 0.05; done; \
                  seq 1 9000000 | sed 's/^/line-/'; echo done";
    let c = env.sh_container("writer", script);
    let id = env.run_container(&pod_id, &c, &pod).await?;
    let o = StdioOpts {
        stdout: true,
        ..Default::default()
    };
    let url = attach_url(&env.cri, &id, o).await?;
    // The client opens its streams and then reads nothing at all.
    let stalled = Session::open(&url, Transport::Spdy, o).await?;
    env.exec_ok(&id, &["touch", "/tmp/go"]).await?;
    env.wait_container_state(
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(240),
    )
    .await?;
    let log = PodEnv::log_file(&pod, &c);
    let entries = read_cri_log(&log)?;
    let lines: Vec<_> = entries.iter().filter(|e| e.stream == "stdout").collect();
    assert_eq!(lines.last().map(|e| e.content.as_str()), Some("done"));
    assert_eq!(lines.len(), 9_000_001, "every line is in the log");
    drop(stalled);
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

async fn httpd_pod(env: &PodEnv, name: &str, host_network: bool, port: u16) -> Result<String> {
    let mut pod = env.pod_config(name);
    if host_network {
        pod.linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .expect("security context")
            .namespace_options = Some(ns_options(
            NamespaceMode::Node,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ));
    }
    let pod_id = env.run_pod(&pod).await?;
    let script = format!(
        "mkdir -p /www && echo hello-from-{name} > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www"
    );
    let c = env.sh_container("web", &script);
    env.run_container(&pod_id, &c, &pod).await?;
    Ok(pod_id)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_to_httpd_in_pod_and_host_network() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod_port = 80;
    let host_port = free_port();
    let pod_net = httpd_pod(&env, "pf-pod", false, pod_port).await?;
    let host_net = httpd_pod(&env, "pf-host", true, host_port).await?;
    let get = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    for (pod_id, port, name) in [
        (&pod_net, pod_port, "pf-pod"),
        (&host_net, host_port, "pf-host"),
    ] {
        for t in BOTH {
            let url = port_forward_url(&env.cri, pod_id, &[i32::from(port)]).await?;
            let pf = std::sync::Arc::new(PortForward::connect(&url, t).await?);
            // httpd may still be starting: retry the first request.
            let want = format!("hello-from-{name}");
            poll_until(T, "httpd answers through the forward", || {
                let pf = std::sync::Arc::clone(&pf);
                let want = want.clone();
                async move {
                    let (data, _) = pf.request(port, get).await?;
                    Ok(String::from_utf8_lossy(&data).contains(&want).then_some(()))
                }
            })
            .await?;
            let mut tasks = Vec::new();
            for _ in 0..10 {
                let pf = std::sync::Arc::clone(&pf);
                let want = want.clone();
                tasks.push(tokio::spawn(async move {
                    let (data, err) = pf.request(port, get).await?;
                    let text = String::from_utf8_lossy(&data);
                    anyhow::ensure!(
                        text.starts_with("HTTP/1.") && text.contains(&want),
                        "{text}"
                    );
                    anyhow::ensure!(err.is_empty(), "{err}");
                    anyhow::Ok(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            // Nothing listens there: the error stream says so.
            let (_, err) = pf.request(1, b"").await?;
            assert!(
                err.contains("error forwarding port 1 to pod"),
                "{t:?}: {err}"
            );
        }
    }
    for id in [pod_net, host_net] {
        env.stop_pod(&id).await?;
        env.remove_pod(&id).await?;
    }
    Ok(())
}
