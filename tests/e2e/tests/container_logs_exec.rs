//! Container logs and ExecSync: the CRI log format with long lines split into P entries,
//! ReopenContainerLog after a rename without losing a line, ExecSync's output and exit
//! code, its timeout (the process is killed), and ExecSync on an exited container.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use e2e::cri_api::ContainerState;
use e2e::pods::{
    PodEnv, TERM_TRAP_LOOP, log_lines, ns_link, parse_cri_log, processes, read_cri_log,
};
use e2e::{Code, poll_until};

const LONG: usize = 40_000;
const MAX_ENTRY: usize = 16 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn log_format_and_long_lines_split_into_partial_entries() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("longlog");
    let pod_id = env.run_pod(&pod).await?;
    let c = env.sh_container(
        "long",
        &format!(
            "echo first; head -c {LONG} /dev/zero | busybox tr '\\0' a; echo; \
             echo err-line >&2; echo last"
        ),
    );
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let st = env
        .wait_container_state(
            &cid,
            ContainerState::ContainerExited,
            Duration::from_secs(15),
        )
        .await?;
    assert_eq!(st.exit_code, 0, "{st:?}");
    let path = PodEnv::log_file(&pod, &c);
    env.wait_log_line(&path, Duration::from_secs(5), "last line", |l| l == "last")
        .await?;

    // Every line matches ^<RFC3339Nano> (stdout|stderr) (P|F) (parse_cri_log checks it).
    let text = std::fs::read_to_string(&path)?;
    assert!(text.ends_with('\n'), "the log ends with a complete line");
    let entries = parse_cri_log(&text)?;
    let stdout: Vec<_> = entries.iter().filter(|e| e.stream == "stdout").collect();
    // first, then the long line as P... F, then last.
    assert_eq!(
        stdout.first().map(|e| (e.tag, e.content.as_str())),
        Some(('F', "first"))
    );
    assert_eq!(
        stdout.last().map(|e| (e.tag, e.content.as_str())),
        Some(('F', "last"))
    );
    let long: Vec<_> = stdout[1..stdout.len() - 1].to_vec();
    assert!(
        long.len() >= 3,
        "a {LONG}-byte line is split into several entries (got {})",
        long.len()
    );
    let (last, partial) = long.split_last().unwrap();
    assert!(
        partial.iter().all(|e| e.tag == 'P'),
        "all but the last piece are P"
    );
    assert_eq!(last.tag, 'F', "the last piece is F");
    for e in &long {
        assert!(
            e.content.len() <= MAX_ENTRY,
            "an entry holds at most 16 KiB (got {})",
            e.content.len()
        );
    }
    let joined: String = long.iter().map(|e| e.content.as_str()).collect();
    assert_eq!(
        joined.len(),
        LONG,
        "the pieces concatenate to the original length"
    );
    assert!(
        joined.bytes().all(|b| b == b'a'),
        "the pieces concatenate to the original"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.stream == "stderr" && e.tag == 'F' && e.content == "err-line"),
        "stderr line"
    );
    let logical = log_lines(&entries);
    assert_eq!(logical.len(), 4, "four logical lines: {}", logical.len());

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_output_exit_code_timeout_and_exited_container() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("exec");
    let pod_id = env.run_pod(&pod).await?;
    let c = env.sh_container("target", TERM_TRAP_LOOP);
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let init = env.container_pid(&cid).await?;
    let init_pidns = ns_link(init, "pid").expect("pid ns of the container");

    let r = env
        .exec_sync(&cid, &["sh", "-c", "echo out; echo err >&2; exit 7"], 10)
        .await?;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "out\n", "stdout");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n", "stderr");
    assert_eq!(r.exit_code, 7, "exit code");

    let r = env.exec_sync(&cid, &["true"], 0).await?;
    assert_eq!(r.exit_code, 0, "timeout 0 means no timeout");
    assert!(r.stdout.is_empty() && r.stderr.is_empty());

    // Timeout: answer within ~5 s, with an error or a non-zero exit, and the process killed.
    let t = Instant::now();
    let r = env.exec_sync(&cid, &["sleep", "37"], 1).await;
    let took = t.elapsed();
    println!("ExecSync `sleep 37` with timeout 1 s: {r:?} after {took:?}");
    assert!(
        took < Duration::from_secs(6),
        "ExecSync with timeout 1 took {took:?}"
    );
    match &r {
        Err(s) => assert_eq!(
            s.code(),
            Code::DeadlineExceeded,
            "an exec timeout is DeadlineExceeded: {s:?}"
        ),
        Ok(resp) => assert_ne!(
            resp.exit_code, 0,
            "a timed-out exec reports a non-zero exit"
        ),
    }
    let sleeps = || {
        processes()
            .into_iter()
            .filter(|(pid, cmd)| {
                cmd == "sleep 37" && ns_link(*pid, "pid").as_deref() == Some(init_pidns.as_str())
            })
            .collect::<Vec<_>>()
    };
    let gone = poll_until(
        Duration::from_secs(5),
        "the timed-out exec's process to die",
        || {
            let s = sleeps();
            async move { Ok(s.is_empty().then_some(())) }
        },
    )
    .await;
    assert!(
        gone.is_ok(),
        "the timed-out `sleep 37` still runs on the host: {:?}",
        sleeps()
    );
    let ps = env.exec_ok(&cid, &["ps"]).await?;
    assert!(
        !ps.contains("sleep 37"),
        "`ps` in the container shows no `sleep 37`: {ps}"
    );

    // A probe whose command does not exist: a clear answer naming it (containerd: an error
    // with the OCI runtime's message), and nothing left running.
    let before = processes().len();
    let r = env.exec_sync(&cid, &["/no-such-probe"], 5).await;
    println!("ExecSync of a missing command: {r:?}");
    match &r {
        Err(s) => assert!(
            s.message().contains("/no-such-probe"),
            "the error names the command: {s:?}"
        ),
        Ok(resp) => {
            assert_ne!(resp.exit_code, 0, "a missing command is not a success");
            assert!(
                String::from_utf8_lossy(&resp.stderr).contains("/no-such-probe"),
                "stderr names the command: {resp:?}"
            );
        }
    }
    let leftover: Vec<(i32, String)> = processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("no-such-probe"))
        .collect();
    assert!(
        leftover.is_empty(),
        "nothing of it runs: {leftover:?} ({before} processes before)"
    );

    // Big output is returned whole.
    let r = env
        .exec_sync(
            &cid,
            &["sh", "-c", "head -c 300000 /dev/zero | busybox tr '\\0' b"],
            10,
        )
        .await?;
    assert_eq!(r.stdout.len(), 300_000, "300 kB of stdout returned whole");

    // Exited container: an error.
    let done = env.sh_container("done", "exit 0");
    let did = env.run_container(&pod_id, &done, &pod).await?;
    env.wait_container_state(
        &did,
        ContainerState::ContainerExited,
        Duration::from_secs(15),
    )
    .await?;
    let r = env.exec_sync(&did, &["true"], 5).await;
    assert!(r.is_err(), "ExecSync in an exited container fails: {r:?}");
    println!("ExecSync in an exited container: {r:?}");

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

fn numbers(path: &std::path::Path) -> Result<Vec<u64>> {
    Ok(read_cri_log(path)?
        .into_iter()
        .filter(|e| e.stream == "stdout" && e.tag == 'F')
        .filter_map(|e| e.content.strip_prefix("line-").and_then(|n| n.parse().ok()))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn reopen_container_log_loses_no_line() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("reopen");
    let pod_id = env.run_pod(&pod).await?;
    let c = env.sh_container(
        "counter",
        "trap 'exit 0' TERM; i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.02; done",
    );
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let path = PodEnv::log_file(&pod, &c);
    let rotated = path.with_extension("log.1");

    let p = path.clone();
    poll_until(Duration::from_secs(10), "20 lines in the log", || {
        let n = numbers(&p).map(|v| v.len());
        async move { Ok((n? >= 20).then_some(())) }
    })
    .await?;
    std::fs::rename(&path, &rotated)?;
    env.reopen_log(&cid).await?;
    let p = path.clone();
    poll_until(
        Duration::from_secs(10),
        "20 lines in the reopened log",
        || {
            let n = numbers(&p).map(|v| v.len());
            async move { Ok((n? >= 20).then_some(())) }
        },
    )
    .await?;
    env.stop_container(&cid, 10).await?;

    let old = numbers(&rotated)?;
    let new = numbers(&path)?;
    assert!(!old.is_empty() && !new.is_empty());
    assert!(
        new.first() > old.last(),
        "the new file continues after the old one (old ends {:?}, new starts {:?})",
        old.last(),
        new.first()
    );
    let all: BTreeSet<u64> = old.iter().chain(new.iter()).copied().collect();
    assert_eq!(all.len(), old.len() + new.len(), "no line written twice");
    let max = *all.iter().next_back().unwrap();
    let missing: Vec<u64> = (0..=max).filter(|n| !all.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "lines lost across the reopen: {missing:?}"
    );
    // Both files are well-formed CRI logs.
    parse_cri_log(&std::fs::read_to_string(&rotated)?)?;
    parse_cri_log(&std::fs::read_to_string(&path)?)?;

    // ReopenContainerLog of an unknown container: NotFound.
    let r = env.reopen_log(&"c".repeat(64)).await;
    e2e::pods::expect_code(
        r,
        Code::NotFound,
        "ReopenContainerLog of an unknown container",
    );

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}
