//! The streaming server against a fake runtime, with the harness's own client: both
//! transports, every protocol version, the token rules, port-forward, disconnects and the
//! idle timeout.

use std::sync::Arc;
use std::time::Duration;

use e2e::poll_until;
use e2e::streaming::{PortForward, Session, StdioOpts, Transport, http_status, run};
use runtime_core::config::StreamingConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend::{AttachTarget, ExecTarget};
use super::fake::Fake;
use super::{Pending, Streaming};

const T: Duration = Duration::from_secs(20);

async fn server(idle: &str) -> (Streaming, Arc<std::sync::Mutex<super::fake::Seen>>) {
    let fake = Fake::default();
    let seen = Arc::clone(&fake.seen);
    let config = StreamingConfig {
        idle_timeout: idle.to_string(),
        ..Default::default()
    };
    let s = super::start(&config, Arc::new(fake), std::future::pending())
        .await
        .unwrap();
    (s, seen)
}

fn exec(cmd: &[&str], opts: StdioOpts) -> Pending {
    Pending::Exec(ExecTarget {
        container_id: "c".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: opts.tty,
        stdin: opts.stdin,
        stdout: opts.stdout,
        stderr: opts.stderr,
    })
}

const OUT_ERR: StdioOpts = StdioOpts {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};

const BOTH: [Transport; 2] = [Transport::Spdy, Transport::WebSocket];

#[tokio::test]
async fn url_is_absolute_http_on_loopback() {
    let (s, _) = server("4h").await;
    let url = s.url(exec(&["echo"], OUT_ERR)).unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.contains("/exec/"), "{url}");
}

#[tokio::test]
async fn exec_stdout_stderr_and_exit_codes_over_both_transports() {
    let (s, _) = server("4h").await;
    for t in BOTH {
        let out = run(
            &s.url(exec(&["echo", "hello"], OUT_ERR)).unwrap(),
            t,
            OUT_ERR,
            None,
        )
        .await
        .unwrap();
        assert_eq!(out.stdout, b"hello", "{t:?}");
        assert!(out.stderr.is_empty(), "{t:?}");
        assert_eq!(out.exit_code(), Some(0), "{t:?}: {out:?}");
        let want = if t == Transport::Spdy {
            "v4.channel.k8s.io"
        } else {
            "v5.channel.k8s.io"
        };
        assert_eq!(out.protocol, want);

        let out = run(
            &s.url(exec(&["err", "oops"], OUT_ERR)).unwrap(),
            t,
            OUT_ERR,
            None,
        )
        .await
        .unwrap();
        assert_eq!(out.stderr, b"oops", "{t:?}");

        let out = run(
            &s.url(exec(&["exit", "3"], OUT_ERR)).unwrap(),
            t,
            OUT_ERR,
            None,
        )
        .await
        .unwrap();
        assert_eq!(out.exit_code(), Some(3), "{t:?}: {out:?}");
        let status = out.status_json().unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");

        let out = run(&s.url(exec(&["fail"], OUT_ERR)).unwrap(), t, OUT_ERR, None)
            .await
            .unwrap();
        let status = out.status_json().unwrap();
        assert_eq!(status["status"], "Failure", "{t:?}");
        assert_eq!(status["reason"], "InternalError");
        assert!(status["message"].as_str().unwrap().contains("it failed"));
    }
}

#[tokio::test]
async fn stdin_reaches_the_process_and_its_close_ends_cat() {
    let (s, seen) = server("4h").await;
    let opts = StdioOpts {
        stdin: true,
        ..OUT_ERR
    };
    for t in BOTH {
        let out = run(
            &s.url(exec(&["cat"], opts)).unwrap(),
            t,
            opts,
            Some(b"some input"),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout, b"some input", "{t:?}");
        assert_eq!(out.exit_code(), Some(0));
    }
    assert!(seen.lock().unwrap().stdin_closed);
}

#[tokio::test]
async fn tty_resize_reaches_the_session() {
    let (s, seen) = server("4h").await;
    let opts = StdioOpts {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    for t in BOTH {
        let mut session = Session::open(&s.url(exec(&["cat"], opts)).unwrap(), t, opts)
            .await
            .unwrap();
        session.resize(120, 40).await.unwrap();
        session.read_until("size 40 120", T).await.unwrap();
        session.send(b"typed").await.unwrap();
        session.read_until("typed", T).await.unwrap();
        session.close_stdin().await.unwrap();
        let out = session.finish(T).await.unwrap();
        assert_eq!(out.exit_code(), Some(0), "{t:?}: {out:?}");
    }
    assert_eq!(seen.lock().unwrap().resizes, vec![(120, 40), (120, 40)]);
}

#[tokio::test]
async fn older_protocols_and_base64_work() {
    let (s, _) = server("4h").await;
    for p in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        let session = Session::open_spdy(
            &s.url(exec(&["exit", "2"], OUT_ERR)).unwrap(),
            OUT_ERR,
            &[p],
        )
        .await
        .unwrap();
        let out = session.finish(T).await.unwrap();
        assert_eq!(out.protocol, p);
        assert!(
            String::from_utf8_lossy(&out.status).contains("non-zero exit code"),
            "{p}: text status {out:?}"
        );
    }
    for p in [
        "v4.channel.k8s.io",
        "base64.channel.k8s.io",
        "v4.base64.channel.k8s.io",
    ] {
        let session = Session::open_ws(
            &s.url(exec(&["echo", "b64"], OUT_ERR)).unwrap(),
            OUT_ERR,
            &[p],
        )
        .await
        .unwrap();
        let out = session.finish(T).await.unwrap();
        assert_eq!(out.protocol, p);
        assert_eq!(out.stdout, b"b64", "{p}");
    }
}

#[tokio::test]
async fn tokens_are_single_use_and_unknown_ones_are_404() {
    let (s, _) = server("4h").await;
    let url = s.url(exec(&["echo", "x"], OUT_ERR)).unwrap();
    run(&url, Transport::Spdy, OUT_ERR, None).await.unwrap();
    assert!(
        run(&url, Transport::Spdy, OUT_ERR, None).await.is_err(),
        "reused token"
    );
    assert_eq!(http_status(&url, "POST", &[]).await.unwrap(), 404);
    let base = s.base_url().to_string();
    assert_eq!(
        http_status(&format!("{base}/exec/nope"), "GET", &[])
            .await
            .unwrap(),
        404
    );
    assert_eq!(
        http_status(&format!("{base}/"), "GET", &[]).await.unwrap(),
        404
    );
    // An exec token is not a port-forward token, and is spent by the attempt.
    let url = s.url(exec(&["echo", "x"], OUT_ERR)).unwrap();
    let wrong = url.replace("/exec/", "/portforward/");
    assert_eq!(http_status(&wrong, "POST", &[]).await.unwrap(), 404);
    assert_eq!(http_status(&url, "POST", &[]).await.unwrap(), 404);
}

#[tokio::test]
async fn bad_upgrades_are_refused_with_reasons() {
    let (s, _) = server("4h").await;
    let url = s.url(exec(&["echo", "x"], OUT_ERR)).unwrap();
    assert_eq!(
        http_status(&url, "POST", &[]).await.unwrap(),
        400,
        "no upgrade"
    );
    let url = s.url(exec(&["echo", "x"], OUT_ERR)).unwrap();
    let h = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    assert_eq!(
        http_status(&url, "POST", &h).await.unwrap(),
        400,
        "no protocol"
    );
    let url = s.url(exec(&["echo", "x"], OUT_ERR)).unwrap();
    let h = [
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
    ];
    assert_eq!(
        http_status(&url, "POST", &h).await.unwrap(),
        403,
        "unknown protocol"
    );
    // The server still serves.
    let url = s.url(exec(&["echo", "ok"], OUT_ERR)).unwrap();
    assert_eq!(
        run(&url, Transport::Spdy, OUT_ERR, None)
            .await
            .unwrap()
            .stdout,
        b"ok"
    );
}

#[tokio::test]
async fn garbage_after_the_upgrade_closes_only_that_connection() {
    let (s, seen) = server("4h").await;
    let url = s.url(exec(&["cat"], OUT_ERR)).unwrap();
    let (conn, _incoming, _) = e2e::streaming::spdy_connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    drop(conn);
    let url = s.url(exec(&["cat"], OUT_ERR)).unwrap();
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let path = &url[url.find("/exec/").unwrap()..];
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp.write_all(&[0x80, 3, 0, 1, 0, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    tcp.write_all(&[0xde; 4096]).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(T, tcp.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "the server closes a connection that sends garbage"
    );
    let url = s.url(exec(&["echo", "still"], OUT_ERR)).unwrap();
    assert_eq!(
        run(&url, Transport::WebSocket, OUT_ERR, None)
            .await
            .unwrap()
            .stdout,
        b"still"
    );
    assert_eq!(
        seen.lock().unwrap().dropped,
        1,
        "one session was ever started"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_ends_its_session() {
    let (s, seen) = server("4h").await;
    let opts = StdioOpts {
        stdin: true,
        ..OUT_ERR
    };
    for (i, t) in BOTH.into_iter().enumerate() {
        let mut session = Session::open(&s.url(exec(&["cat"], opts)).unwrap(), t, opts)
            .await
            .unwrap();
        session.send(b"hi").await.unwrap();
        session.read_until("hi", T).await.unwrap();
        drop(session);
        let seen = Arc::clone(&seen);
        poll_until(T, "the session is released", move || {
            let seen = Arc::clone(&seen);
            async move { Ok((seen.lock().unwrap().dropped > i).then_some(())) }
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (s, seen) = server("300ms").await;
    let opts = StdioOpts {
        stdin: true,
        ..OUT_ERR
    };
    let session = Session::open(&s.url(exec(&["cat"], opts)).unwrap(), Transport::Spdy, opts)
        .await
        .unwrap();
    let out = session.finish(T).await.unwrap();
    assert!(out.status.is_empty(), "cut, not finished: {out:?}");
    assert_eq!(seen.lock().unwrap().dropped, 1);
}

#[tokio::test]
async fn attach_with_stdin_once_runs_until_the_container_closes() {
    let (s, _) = server("4h").await;
    let opts = StdioOpts {
        stdin: true,
        ..OUT_ERR
    };
    let target = |id: &str| {
        Pending::Attach(AttachTarget {
            container_id: id.into(),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
    };
    for t in BOTH {
        let out = run(&s.url(target("c")).unwrap(), t, opts, Some(b"attached"))
            .await
            .unwrap();
        assert_eq!(out.stdout, b"attached", "{t:?}");
        assert_eq!(out.exit_code(), Some(0), "{t:?}: {out:?}");
        let out = run(&s.url(target("missing")).unwrap(), t, opts, None)
            .await
            .unwrap();
        let status = out.status_json().unwrap();
        assert_eq!(status["status"], "Failure");
        assert!(status["message"].as_str().unwrap().contains("not found"));
    }
}

#[tokio::test]
async fn port_forward_many_connections_over_both_transports() {
    let (s, _) = server("4h").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = c.read_to_end(&mut buf).await;
                let _ = c.write_all(b"echo:").await;
                let _ = c.write_all(&buf).await;
            });
        }
    });
    for t in BOTH {
        let pf = Arc::new(
            PortForward::connect(&s.url(Pending::PortForward("pod".into())).unwrap(), t)
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for i in 0..20 {
            let pf = Arc::clone(&pf);
            tasks.push(tokio::spawn(async move {
                let msg = format!("request {i}");
                let (data, err) = pf.request(port, msg.as_bytes()).await.unwrap();
                assert_eq!(data, format!("echo:{msg}").into_bytes());
                assert!(err.is_empty(), "{err}");
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // A closed port says so on the error stream, naming the port and pod.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let (_, err) = pf.request(closed_port, b"x").await.unwrap();
        assert!(
            err.contains(&format!("error forwarding port {closed_port} to pod pod")),
            "{err}"
        );
    }
}

#[tokio::test]
async fn tls_serves_https_urls_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let mut params = params;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.path().join("c.pem");
    let key_path = dir.path().join("k.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let config = StreamingConfig {
        tls_cert_file: Some(cert_path),
        tls_key_file: Some(key_path.clone()),
        ..Default::default()
    };
    let s = super::start(&config, Arc::new(Fake::default()), std::future::pending())
        .await
        .unwrap();
    assert!(
        s.base_url().starts_with("https://127.0.0.1:"),
        "{}",
        s.base_url()
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let addr = s.base_url().trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /exec/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");

    // A key that does not fit the certificate is refused at start, naming it.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&key_path, other.serialize_pem()).unwrap();
    let e = super::start(&config, Arc::new(Fake::default()), std::future::pending())
        .await
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("do not fit"), "{e:#}");
}
