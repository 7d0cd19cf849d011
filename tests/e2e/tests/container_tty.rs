//! Terminal and stdin containers through CRI: a `tty: true` container runs (berthd gives
//! runc the monitor's console socket) and its terminal output is logged as `stdout`; an
//! interactive one (`tty` + `stdin`) is attached through its pod's monitor, as the
//! streaming server does, which writes its stdin, resizes and reads its terminal.

use std::time::Duration;

use anyhow::{Context, Result};
use e2e::cri_api::ContainerState;
use e2e::pods::{PodEnv, parse_cri_log};
use runtime_core::monitor::{MonitorClient, SessionOutput};

#[tokio::test(flavor = "multi_thread")]
async fn tty_container_runs_logs_and_attaches() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("tty");
    let pod_id = env.run_pod(&pod).await?;

    let mut c = env.sh_container("term", "[ -t 1 ] && echo on-a-tty; echo err >&2; exit 3");
    c.tty = true;
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let st = env
        .wait_container_state(
            &cid,
            ContainerState::ContainerExited,
            Duration::from_secs(15),
        )
        .await?;
    assert_eq!(st.exit_code, 3, "{st:?}");
    let path = PodEnv::log_file(&pod, &c);
    env.wait_log_line(
        &path,
        Duration::from_secs(5),
        "the terminal's last line",
        |l| l == "err",
    )
    .await?;
    let entries = parse_cri_log(&std::fs::read_to_string(&path)?)?;
    let got: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.stream.as_str(), e.content.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![("stdout", "on-a-tty"), ("stdout", "err")],
        "a terminal's output is logged as stdout, without \\r"
    );

    let mut c = env.sh_container("shell", "read l; echo got-$l; stty size; exit 0");
    c.tty = true;
    c.stdin = true;
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let socket = env
        .berthd
        .state()
        .join("pods")
        .join(&pod_id[..12])
        .join("monitor.sock");
    let session = MonitorClient::new(socket)
        .attach(&cid, true, true, false)
        .await
        .context("attach through the pod monitor")?;
    assert!(session.tty);
    let (mut reader, mut writer) = session.into_split();
    writer.resize(90, 21).await?;
    writer.stdin(b"hi\r").await?;
    let mut out = Vec::new();
    let mut exit = None;
    let read = async {
        while let Some(o) = reader.recv().await? {
            match o {
                SessionOutput::Stdout(b) => out.extend(b),
                SessionOutput::Exit { exit_code, .. } => exit = Some(exit_code),
                other => anyhow::bail!("unexpected session output {other:?}"),
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .context("the attach session did not end")??;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("got-hi"), "terminal output: {text:?}");
    assert!(
        text.contains("21 90"),
        "stty size after a 90x21 resize: {text:?}"
    );
    assert_eq!(exit, Some(0));
    let path = PodEnv::log_file(&pod, &c);
    env.wait_log_line(
        &path,
        Duration::from_secs(5),
        "the answer in the log",
        |l| l == "got-hi",
    )
    .await?;

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}
