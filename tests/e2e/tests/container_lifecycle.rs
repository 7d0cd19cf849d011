//! Containers of a pod: create / start / status / exit codes and reasons, kubelet's
//! command / args / env / working dir / user semantics, mounts and a read-only rootfs, the
//! namespaces and files the containers of a pod share, StopContainer's signals and
//! timeouts, RemoveContainer of a running container, ListContainers filters,
//! UpdateContainerResources, StopPodSandbox stopping containers, and OOM kills.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use e2e::cri_api::{
    self as api, ContainerFilter, ContainerState, ContainerStateValue, LinuxContainerResources,
    LinuxContainerSecurityContext, Mount,
};
use e2e::pods::{
    PodEnv, STOPSIGNAL_IMAGE_EXIT, STOPSIGNAL_IMAGE_TERM_EXIT, TERM_IGNORE_LOOP, TERM_TRAP_LOOP,
    cgroup_v1_dir, expect_code, has_memory_cgroup_v1, info_json, inode, is_hex64, is_mounted, map,
    mount_at, mounts_under, now_ns, ns_link, pid_alive, push_entrypoint_image,
    push_stopsignal_image, push_user_image, read_cri_log, unique,
};
use e2e::{Code, poll_until};

const EXIT_WAIT: Duration = Duration::from_secs(15);
const MIB: i64 = 1 << 20;

fn linux_sc(sc: LinuxContainerSecurityContext) -> Option<api::LinuxContainerConfig> {
    Some(api::LinuxContainerConfig {
        resources: None,
        security_context: Some(sc),
    })
}

fn bind(container_path: &str, host_path: &Path, readonly: bool) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: host_path.display().to_string(),
        readonly,
        ..Default::default()
    }
}

async fn wait_pid_gone(pid: i32, what: &str) {
    let r = poll_until(Duration::from_secs(10), what, || async move {
        Ok((!pid_alive(pid)).then_some(()))
    })
    .await;
    assert!(r.is_ok(), "{what}: pid {pid} still alive");
}

/// Waits until the container's log has a line `ready` (its signal traps are set).
async fn wait_ready(env: &PodEnv, pod: &api::PodSandboxConfig, c: &api::ContainerConfig) {
    let path = PodEnv::log_file(pod, c);
    env.wait_log_line(
        &path,
        Duration::from_secs(10),
        "the container to print ready",
        |l| l == "ready",
    )
    .await
    .expect("container ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_start_status_exit_codes_and_log() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("life");
    let pod_id = env.run_pod(&pod).await?;
    let host_dir = tempfile::tempdir()?;

    let mut c = env.sh_container("fail", "echo hello; echo oops >&2; exit 3");
    c.labels.insert("tier".into(), "t1".into());
    c.annotations = map(&[("e2e.berth/c", "annotated")]);
    c.mounts = vec![bind("/data", host_dir.path(), false)];
    let before = now_ns();
    let cid = env.create_container(&pod_id, &c, &pod).await?;
    let after = now_ns();
    assert!(is_hex64(&cid), "container ID is 64 hex: {cid:?}");

    let st = env.container_status(&cid).await?;
    assert_eq!(st.id, cid);
    assert_eq!(
        st.state,
        ContainerState::ContainerCreated as i32,
        "CREATED after create"
    );
    assert!(
        st.created_at >= before - 1_000_000_000 && st.created_at <= after + 1_000_000_000,
        "created_at {} in ns near creation ({before}..{after})",
        st.created_at
    );
    assert_eq!(st.started_at, 0, "not started yet");
    assert_eq!(st.metadata, c.metadata, "metadata echoed");
    assert_eq!(
        st.image.as_ref().map(|i| i.image.as_str()),
        Some("busybox"),
        "image.image is what was asked for"
    );
    assert_eq!(st.image_id, env.busybox_id(), "image_id is the image ID");
    assert!(!st.image_ref.is_empty(), "image_ref is set");
    assert_eq!(st.labels, c.labels, "labels echoed");
    assert_eq!(st.annotations, c.annotations, "annotations echoed");
    let log_path = PodEnv::log_file(&pod, &c);
    assert_eq!(
        Path::new(&st.log_path),
        log_path,
        "log_path = log_directory/log_path"
    );
    assert_eq!(st.mounts.len(), 1, "mounts echoed: {:?}", st.mounts);
    assert_eq!(st.mounts[0].container_path, "/data");
    assert_eq!(
        st.mounts[0].host_path,
        host_dir.path().display().to_string()
    );
    assert!(!st.mounts[0].readonly);

    let t_start = now_ns();
    env.start_container(&cid).await?;
    let st = env
        .wait_container_state(&cid, ContainerState::ContainerExited, EXIT_WAIT)
        .await?;
    assert_eq!(st.exit_code, 3, "exit code 3");
    assert_eq!(st.reason, "Error", "non-zero exit: reason Error");
    assert!(
        st.started_at >= st.created_at && st.started_at >= t_start - 1_000_000_000,
        "started_at {} after created_at {} / start call {t_start}",
        st.started_at,
        st.created_at
    );
    assert!(
        st.finished_at >= st.started_at,
        "finished_at {} >= started_at {}",
        st.finished_at,
        st.started_at
    );
    assert!(
        st.finished_at <= now_ns() + 1_000_000_000,
        "finished_at not in the future"
    );

    // The log, in CRI format.
    env.wait_log_line(&log_path, Duration::from_secs(5), "hello in the log", |l| {
        l == "hello"
    })
    .await?;
    env.wait_log_line(&log_path, Duration::from_secs(5), "oops in the log", |l| {
        l == "oops"
    })
    .await?;
    let entries = read_cri_log(&log_path)?;
    assert!(
        entries
            .iter()
            .any(|e| e.stream == "stdout" && e.tag == 'F' && e.content == "hello"),
        "`stdout F hello` in {entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.stream == "stderr" && e.tag == 'F' && e.content == "oops"),
        "`stderr F oops` in {entries:?}"
    );

    // exit 0: Completed.
    let ok = env.sh_container("ok", "exit 0");
    let ok_id = env.run_container(&pod_id, &ok, &pod).await?;
    let st = env
        .wait_container_state(&ok_id, ContainerState::ContainerExited, EXIT_WAIT)
        .await?;
    assert_eq!(st.exit_code, 0);
    assert_eq!(st.reason, "Completed", "exit 0: reason Completed");
    assert_eq!(
        env.container_status_full(&ok_id, true).await?.status,
        Some(st),
        "verbose and plain status agree on an exited container"
    );

    // A running one: RUNNING right after StartContainer, a live process.
    let run = env.sh_container("run", TERM_TRAP_LOOP);
    let run_id = env.run_container(&pod_id, &run, &pod).await?;
    let full = env.container_status_full(&run_id, true).await?;
    let st = full.status.clone().unwrap();
    // Without info (served from a kept encoding, with the state appended) it says the same.
    assert_eq!(env.container_status(&run_id).await?, st);
    assert_eq!(
        st.state,
        ContainerState::ContainerRunning as i32,
        "RUNNING after start"
    );
    assert!(st.started_at > 0, "started_at set");
    assert_eq!(st.finished_at, 0, "finished_at unset while running");
    assert!(
        full.info.get("info").is_some_and(|s| !s.is_empty()),
        "verbose container status has info: {:?}",
        full.info
    );
    let pid = e2e::pods::json_pid(&info_json(&full.info), "pid").expect("pid in verbose info");
    assert!(pid_alive(pid), "container process {pid} runs");
    // It lives in the pod's network namespace.
    assert_eq!(
        ns_link(pid, "net"),
        inode(&env.pod_dir(&pod_id).join("ns/net")).map(|i| format!("net:[{i}]")),
        "the container joined the pod's pinned netns"
    );
    wait_ready(&env, &pod, &run).await;
    env.stop_container(&run_id, 10).await?;
    wait_pid_gone(pid, "container process after stop").await;

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn command_args_env_working_dir_and_user() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let p = env.pusher();
    let entry = push_entrypoint_image(&p, "library/e2e-entry").await?;
    assert_eq!(env.cri.pull("e2e-entry").await?, entry.id());
    let user = push_user_image(&p, "library/e2e-user", "nobody").await?;
    assert_eq!(env.cri.pull("e2e-user").await?, user.id());
    let pod = env.pod_config("cmdargs");
    let pod_id = env.run_pod(&pod).await?;

    // kubelet: command replaces Entrypoint (and drops Cmd); args replace Cmd.
    let cases: [(&str, &[&str], &[&str], &str); 4] = [
        ("none", &[], &[], "ep cmd"),
        ("command", &["/bin/echo", "c"], &[], "c"),
        ("args", &[], &["a1", "a2"], "ep a1 a2"),
        ("both", &["/bin/echo", "c"], &["a1"], "c a1"),
    ];
    let mut started = Vec::new();
    for (name, command, args, _) in cases {
        let mut c = env.container_config(name, command);
        c.image = Some(e2e::spec("e2e-entry"));
        c.args = args.iter().map(|s| s.to_string()).collect();
        started.push((env.run_container(&pod_id, &c, &pod).await?, c));
    }

    // Env: image Env merged with CRI envs, CRI wins; working_dir applied.
    let mut envc = env.container_config(
        "env",
        &["sh", "-c", "echo \"$FROM_IMAGE $OVERRIDE $FROM_CRI\"; pwd"],
    );
    envc.image = Some(e2e::spec("e2e-entry"));
    envc.envs = vec![
        e2e::pods::kv("OVERRIDE", "cri"),
        e2e::pods::kv("FROM_CRI", "cri"),
    ];
    envc.working_dir = "/etc".into();
    let env_id = env.run_container(&pod_id, &envc, &pod).await?;

    // The image's WorkingDir when none is given.
    let mut wd = env.container_config("imgwd", &["pwd"]);
    wd.image = Some(e2e::spec("e2e-entry"));
    let wd_id = env.run_container(&pod_id, &wd, &pod).await?;

    // The image's USER (nobody, resolved through the image's /etc/passwd).
    let mut imgu = env.container_config("imguser", &["id", "-u"]);
    imgu.image = Some(e2e::spec("e2e-user"));
    let imgu_id = env.run_container(&pod_id, &imgu, &pod).await?;

    // run_as_user 1234 (via ExecSync).
    let mut ru = env.sh_container("runasuser", TERM_TRAP_LOOP);
    ru.linux = linux_sc(LinuxContainerSecurityContext {
        run_as_user: Some(api::Int64Value { value: 1234 }),
        ..Default::default()
    });
    let ru_id = env.run_container(&pod_id, &ru, &pod).await?;

    // Read-only rootfs: writing /x fails.
    let mut ro = env.sh_container(
        "rorootfs",
        "if echo x > /x; then echo wrote; else echo refused; fi",
    );
    ro.linux = linux_sc(LinuxContainerSecurityContext {
        readonly_rootfs: true,
        ..Default::default()
    });
    let ro_id = env.run_container(&pod_id, &ro, &pod).await?;

    for ((id, c), (name, _, _, want)) in started.iter().zip(cases) {
        let st = env
            .wait_container_state(id, ContainerState::ContainerExited, EXIT_WAIT)
            .await?;
        assert_eq!(st.exit_code, 0, "{name}: exit 0");
        let path = PodEnv::log_file(&pod, c);
        env.wait_log_line(&path, Duration::from_secs(5), name, |l| l == want)
            .await
            .unwrap_or_else(|e| panic!("{name}: expected output {want:?}: {e:#}"));
    }
    for (id, c, want) in [
        (&env_id, &envc, "img cri cri"),
        (&env_id, &envc, "/etc"),
        (&wd_id, &wd, "/tmp"),
        (&imgu_id, &imgu, "65534"),
        (&ro_id, &ro, "refused"),
    ] {
        env.wait_container_state(id, ContainerState::ContainerExited, EXIT_WAIT)
            .await?;
        let path = PodEnv::log_file(&pod, c);
        env.wait_log_line(&path, Duration::from_secs(5), want, |l| l == want)
            .await
            .unwrap_or_else(|e| panic!("{:?}: expected a line {want:?}: {e:#}", c.metadata));
    }
    let ro_lines = e2e::pods::log_texts(&PodEnv::log_file(&pod, &ro))?;
    assert!(
        !ro_lines.iter().any(|l| l == "wrote"),
        "read-only rootfs was written: {ro_lines:?}"
    );

    let uid = env.exec_ok(&ru_id, &["id", "-u"]).await?;
    assert_eq!(uid.trim(), "1234", "run_as_user 1234");

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_mounts_readonly_mounts_and_missing_host_paths() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("mounts");
    let pod_id = env.run_pod(&pod).await?;
    let rw = tempfile::tempdir()?;
    std::fs::write(rw.path().join("from-host"), "host data\n")?;
    let ro = tempfile::tempdir()?;
    let base = tempfile::tempdir()?;
    let missing = base.path().join("does/not/exist");

    let mut c = env.sh_container("m", TERM_TRAP_LOOP);
    c.mounts = vec![
        bind("/data", rw.path(), false),
        bind("/ro", ro.path(), true),
        bind("/missing", &missing, false),
    ];
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    assert!(
        missing.is_dir(),
        "a bind mount's missing host path is created as a directory: {}",
        missing.display()
    );
    assert_eq!(
        env.exec_ok(&cid, &["cat", "/data/from-host"]).await?,
        "host data\n"
    );
    env.exec_ok(&cid, &["sh", "-c", "echo from-container > /data/f"])
        .await?;
    assert_eq!(
        std::fs::read_to_string(rw.path().join("f"))?,
        "from-container\n",
        "a file written inside appears on the host"
    );
    let r = env
        .exec_sync(&cid, &["sh", "-c", "echo x > /ro/f"], 10)
        .await?;
    assert_ne!(r.exit_code, 0, "writing to a read-only mount fails");
    assert!(
        !ro.path().join("f").exists(),
        "nothing written through a read-only mount"
    );
    env.exec_ok(&cid, &["test", "-d", "/missing"]).await?;

    let st = env.container_status(&cid).await?;
    assert_eq!(
        env.container_status_full(&cid, true).await?.status.as_ref(),
        Some(&st),
        "verbose and plain status agree with mounts"
    );
    let paths: Vec<_> = st
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.readonly))
        .collect();
    assert_eq!(
        paths,
        vec![("/data", false), ("/ro", true), ("/missing", false)],
        "mounts echoed in status"
    );

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    // The host dirs are untouched by removal.
    assert!(rw.path().join("f").exists() && missing.is_dir());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_share_the_pods_namespaces_hostname_dns_and_shm() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("shared-ns");
    let pod_id = env.run_pod(&pod).await?;
    let c1 = env.sh_container("one", TERM_TRAP_LOOP);
    let c2 = env.sh_container("two", TERM_TRAP_LOOP);
    let id1 = env.run_container(&pod_id, &c1, &pod).await?;
    let id2 = env.run_container(&pod_id, &c2, &pod).await?;

    let pinned_net = inode(&env.pod_dir(&pod_id).join("ns/net")).expect("pinned netns");
    let host_net = ns_link(std::process::id() as i32, "net").unwrap_or_default();
    let mut nets = Vec::new();
    for id in [&id1, &id2] {
        let net = env
            .exec_ok(id, &["busybox", "readlink", "/proc/self/ns/net"])
            .await?;
        nets.push(net.trim().to_string());
    }
    assert_eq!(
        nets[0], nets[1],
        "both containers share one network namespace"
    );
    assert_eq!(
        nets[0],
        format!("net:[{pinned_net}]"),
        "it is the pinned one"
    );
    assert_ne!(nets[0], host_net, "not the host's");
    for kind in ["ipc", "uts"] {
        let a = env
            .exec_ok(
                &id1,
                &["busybox", "readlink", &format!("/proc/self/ns/{kind}")],
            )
            .await?;
        let b = env
            .exec_ok(
                &id2,
                &["busybox", "readlink", &format!("/proc/self/ns/{kind}")],
            )
            .await?;
        assert_eq!(a, b, "{kind} namespace shared");
    }
    // pid=CONTAINER: each container has its own PID namespace.
    let pa = env
        .exec_ok(&id1, &["busybox", "readlink", "/proc/self/ns/pid"])
        .await?;
    let pb = env
        .exec_ok(&id2, &["busybox", "readlink", "/proc/self/ns/pid"])
        .await?;
    assert_ne!(pa, pb, "pid=CONTAINER: separate PID namespaces");

    for id in [&id1, &id2] {
        assert_eq!(
            env.exec_ok(id, &["hostname"]).await?.trim(),
            pod.hostname,
            "pod hostname"
        );
        let resolv = env.exec_ok(id, &["cat", "/etc/resolv.conf"]).await?;
        for want in [
            "nameserver 10.96.0.10",
            "e2e.svc.cluster.local",
            "svc.cluster.local",
            "ndots:5",
        ] {
            assert!(
                resolv.contains(want),
                "/etc/resolv.conf has {want:?}: {resolv:?}"
            );
        }
        let hosts = env.exec_ok(id, &["cat", "/etc/hosts"]).await?;
        assert!(
            hosts.contains("localhost"),
            "/etc/hosts has localhost: {hosts:?}"
        );
        let hn = env.exec_ok(id, &["cat", "/etc/hostname"]).await?;
        assert_eq!(hn.trim(), pod.hostname, "/etc/hostname");
    }
    // /dev/shm is the pod's, shared.
    env.exec_ok(&id1, &["sh", "-c", "echo shared > /dev/shm/x"])
        .await?;
    assert_eq!(
        env.exec_ok(&id2, &["cat", "/dev/shm/x"]).await?,
        "shared\n",
        "shm shared"
    );
    assert_eq!(
        std::fs::read_to_string(env.pod_dir(&pod_id).join("shm/x"))?,
        "shared\n",
        "the pod's shm tmpfs holds it"
    );

    // A pod with a shared PID namespace (no namespace_options): containers join the infra
    // process's PID namespace.
    let mut shared = env.pod_config("shared-pid");
    shared.linux.as_mut().unwrap().security_context = None;
    let spod = env.run_pod(&shared).await?;
    let pause = env.pod_info(&spod).await?;
    let pause = e2e::pods::json_pid(&pause, "pausePid").expect("pausePid");
    let sc = env.sh_container("inshared", TERM_TRAP_LOOP);
    let sid = env.run_container(&spod, &sc, &shared).await?;
    let cpid = env
        .exec_ok(&sid, &["busybox", "readlink", "/proc/self/ns/pid"])
        .await?;
    assert_eq!(
        Some(cpid.trim().to_string()),
        ns_link(pause, "pid"),
        "the container joined the pod's shared PID namespace"
    );
    let ps = env.exec_ok(&sid, &["ps"]).await?;
    let pid1 = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or_default()
        .to_string();
    assert!(
        !pid1.is_empty() && !pid1.contains("sh -c"),
        "PID 1 of the shared namespace is the infra process, not the container: {ps}"
    );

    for p in [&pod_id, &spod] {
        env.stop_pod(p).await?;
        env.remove_pod(p).await?;
        env.assert_pod_gone(p, "").await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_container_signals_and_timeouts() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let img = push_stopsignal_image(&env.pusher(), "library/e2e-stopsignal").await?;
    assert_eq!(env.cri.pull("e2e-stopsignal").await?, img.id());
    let pod = env.pod_config("stops");
    let pod_id = env.run_pod(&pod).await?;

    let graceful = env.sh_container("graceful", TERM_TRAP_LOOP);
    let ignoring = env.sh_container("ignoring", TERM_IGNORE_LOOP);
    let mut usr1 = env.container_config("usr1", &[]);
    usr1.image = Some(e2e::spec("e2e-stopsignal"));
    let g = env.run_container(&pod_id, &graceful, &pod).await?;
    let i = env.run_container(&pod_id, &ignoring, &pod).await?;
    let u = env.run_container(&pod_id, &usr1, &pod).await?;
    for c in [&graceful, &ignoring, &usr1] {
        wait_ready(&env, &pod, c).await;
    }
    let gpid = env.container_pid(&g).await?;
    let ipid = env.container_pid(&i).await?;

    // SIGTERM handled: exits 0 at once.
    let t = Instant::now();
    env.stop_container(&g, 10).await?;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "graceful stop took {took:?}");
    let st = env.container_status(&g).await?;
    assert_eq!(
        st.state,
        ContainerState::ContainerExited as i32,
        "EXITED after stop returns"
    );
    assert_eq!(st.exit_code, 0, "graceful: exit 0");
    assert_eq!(st.reason, "Completed");
    assert!(!pid_alive(gpid), "process gone");

    // SIGTERM ignored: SIGKILL after the 2 s timeout.
    let t = Instant::now();
    env.stop_container(&i, 2).await?;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(8),
        "a container ignoring SIGTERM is killed after the 2 s timeout (took {took:?})"
    );
    let st = env.container_status(&i).await?;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 137, "killed: 128 + SIGKILL");
    assert!(!pid_alive(ipid), "process gone");

    // The image's STOPSIGNAL (SIGUSR1) is sent, not SIGTERM.
    let t = Instant::now();
    env.stop_container(&u, 10).await?;
    let took = t.elapsed();
    let st = env.container_status(&u).await?;
    assert_ne!(
        st.exit_code, STOPSIGNAL_IMAGE_TERM_EXIT,
        "the container got SIGTERM instead of the image's STOPSIGNAL"
    );
    assert_eq!(
        st.exit_code, STOPSIGNAL_IMAGE_EXIT,
        "exit code of the USR1 trap: {st:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "stop with the image's signal took {took:?}"
    );

    // Idempotent: stopping exited containers again is OK.
    for id in [&g, &i, &u] {
        env.stop_container(id, 10).await?;
        env.stop_container(id, 0).await?;
    }
    let st = env.container_status(&g).await?;
    assert_eq!(
        st.exit_code, 0,
        "a second stop does not change the exit code"
    );

    // A container that already exited on its own.
    let done = env.sh_container("done", "exit 0");
    let d = env.run_container(&pod_id, &done, &pod).await?;
    env.wait_container_state(&d, ContainerState::ContainerExited, EXIT_WAIT)
        .await?;
    env.stop_container(&d, 10).await?;
    assert_eq!(env.container_status(&d).await?.reason, "Completed");

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_running_container_unmounts_and_deletes_it() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("rmrun");
    let pod_id = env.run_pod(&pod).await?;
    let c = env.container_config("sleeper", &["sleep", "3600"]);
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let pid = env.container_pid(&cid).await?;
    let dir = env.container_dir(&cid);
    let rootfs = dir.join("rootfs");
    let m = mount_at(&rootfs);
    assert_eq!(
        m.as_ref().map(|m| m.fstype.as_str()),
        Some("overlay"),
        "the rootfs is an overlay mount at {}: mounts under the container dir {:?}",
        rootfs.display(),
        mounts_under(&dir)
    );
    // Its unmount must not sync the file system of the upper directory.
    assert!(
        m.as_ref().is_some_and(|m| m.is_volatile_overlay()),
        "the rootfs overlay is volatile: {m:?}"
    );

    let t = Instant::now();
    env.remove_container(&cid).await?;
    println!(
        "RemoveContainer of a running `sleep 3600` took {:?}",
        t.elapsed()
    );
    assert!(!is_mounted(&rootfs), "rootfs unmounted after remove");
    assert!(
        mounts_under(&dir).is_empty(),
        "no mount under the container dir"
    );
    assert!(!dir.exists(), "{} removed", dir.display());
    wait_pid_gone(pid, "container process after remove").await;
    expect_code(
        env.container_status(&cid).await,
        Code::NotFound,
        "status of a removed container",
    );
    assert!(env.list_container_ids(None).await?.is_empty(), "not listed");
    env.remove_container(&cid).await?;
    env.remove_container(&"e".repeat(64)).await?;
    // The pod is unaffected.
    assert_eq!(
        env.pod_status(&pod_id).await?.state,
        api::PodSandboxState::SandboxReady as i32
    );

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_containers_filters() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod1 = env.pod_config("lc1");
    let p1 = env.run_pod(&pod1).await?;
    let pod2 = env.pod_config("lc2");
    let p2 = env.run_pod(&pod2).await?;

    let mut a = env.sh_container("a", TERM_TRAP_LOOP);
    a.labels.insert("tier".into(), "x".into());
    a.annotations = map(&[("note", "a")]);
    let a_id = env.run_container(&p1, &a, &pod1).await?;
    let mut b = env.sh_container("b", "exit 0");
    b.labels.insert("tier".into(), "x".into());
    let b_id = env.run_container(&p1, &b, &pod1).await?;
    env.wait_container_state(&b_id, ContainerState::ContainerExited, EXIT_WAIT)
        .await?;
    let c = env.sh_container("c", TERM_TRAP_LOOP);
    let c_id = env.create_container(&p1, &c, &pod1).await?;
    let d = env.sh_container("d", TERM_TRAP_LOOP);
    let d_id = env.run_container(&p2, &d, &pod2).await?;

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let all = sorted(vec![a_id.clone(), b_id.clone(), c_id.clone(), d_id.clone()]);
    assert_eq!(env.list_container_ids(None).await?, all, "no filter");
    assert_eq!(
        env.list_container_ids(Some(ContainerFilter::default()))
            .await?,
        all,
        "empty filter"
    );
    let by_id = |id: &str| ContainerFilter {
        id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        env.list_container_ids(Some(by_id(&a_id))).await?,
        vec![a_id.clone()],
        "by id"
    );
    let prefix = &c_id[..12];
    assert!([&a_id, &b_id, &d_id].iter().all(|x| !x.starts_with(prefix)));
    assert_eq!(
        env.list_container_ids(Some(by_id(prefix))).await?,
        vec![c_id.clone()],
        "by id prefix"
    );
    assert!(
        env.list_container_ids(Some(by_id(&"0".repeat(64))))
            .await?
            .is_empty(),
        "unknown id"
    );
    let by_state = |s: ContainerState| ContainerFilter {
        state: Some(ContainerStateValue { state: s as i32 }),
        ..Default::default()
    };
    assert_eq!(
        env.list_container_ids(Some(by_state(ContainerState::ContainerRunning)))
            .await?,
        sorted(vec![a_id.clone(), d_id.clone()]),
        "RUNNING"
    );
    assert_eq!(
        env.list_container_ids(Some(by_state(ContainerState::ContainerExited)))
            .await?,
        vec![b_id.clone()],
        "EXITED"
    );
    assert_eq!(
        env.list_container_ids(Some(by_state(ContainerState::ContainerCreated)))
            .await?,
        vec![c_id.clone()],
        "CREATED"
    );
    let by_pod = |p: &str| ContainerFilter {
        pod_sandbox_id: p.into(),
        ..Default::default()
    };
    assert_eq!(
        env.list_container_ids(Some(by_pod(&p1))).await?,
        sorted(vec![a_id.clone(), b_id.clone(), c_id.clone()]),
        "by pod"
    );
    assert_eq!(
        env.list_container_ids(Some(by_pod(&p2))).await?,
        vec![d_id.clone()],
        "by pod 2"
    );
    let by_labels = |pairs: &[(&str, &str)]| ContainerFilter {
        label_selector: map(pairs),
        ..Default::default()
    };
    assert_eq!(
        env.list_container_ids(Some(by_labels(&[("tier", "x")])))
            .await?,
        sorted(vec![a_id.clone(), b_id.clone()]),
        "label tier=x"
    );
    assert_eq!(
        env.list_container_ids(Some(by_labels(&[("tier", "x"), ("container", "b")])))
            .await?,
        vec![b_id.clone()],
        "two labels"
    );
    assert!(
        env.list_container_ids(Some(by_labels(&[("tier", "y")])))
            .await?
            .is_empty(),
        "non-matching label"
    );
    let mut combo = by_pod(&p1);
    combo.state = Some(ContainerStateValue {
        state: ContainerState::ContainerRunning as i32,
    });
    assert_eq!(
        env.list_container_ids(Some(combo)).await?,
        vec![a_id.clone()],
        "pod + state"
    );

    let items = env.list_containers(Some(by_id(&a_id))).await?;
    let it = &items[0];
    assert_eq!(it.pod_sandbox_id, p1);
    assert_eq!(it.metadata, a.metadata);
    assert_eq!(it.image.as_ref().map(|i| i.image.as_str()), Some("busybox"));
    assert_eq!(it.image_id, env.busybox_id(), "image_id in the list item");
    // As containerd: the image ID here (kubelets before 1.30 match it against ListImages'
    // IDs for image GC), the digested reference in ContainerStatus.
    assert_eq!(it.image_ref, env.busybox_id(), "image_ref in the list item");
    assert_eq!(it.state, ContainerState::ContainerRunning as i32);
    assert!(it.created_at > 0);
    assert_eq!(it.labels, a.labels);
    assert_eq!(it.annotations, a.annotations);

    // Every list item (answered from cached encodings) agrees with ContainerStatus (built
    // field by field), newest first.
    let items = env.list_containers(None).await?;
    assert!(
        items.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
    for it in &items {
        let st = env.container_status(&it.id).await?;
        assert_eq!(it.metadata, st.metadata, "{}", it.id);
        assert_eq!(it.state, st.state, "{}", it.id);
        assert_eq!(it.created_at, st.created_at, "{}", it.id);
        assert_eq!(it.image_ref, st.image_id, "{}", it.id);
        assert_eq!(it.image_id, st.image_id, "{}", it.id);
        assert_eq!(it.labels, st.labels, "{}", it.id);
        assert_eq!(it.annotations, st.annotations, "{}", it.id);
    }

    // A running container that exits by itself shows up exited in the list, with no other
    // call asking about it (the exit is learned from the monitor's exit file). The
    // unfiltered list (kept whole between changes) is asked both ways kubelet and crictl
    // ask it: no filter, and an empty one. A new container is in it at once.
    let unfiltered = [None, Some(api::ContainerFilter::default())];
    for f in &unfiltered {
        env.list_containers(f.clone()).await?;
    }
    let e = env.sh_container("e", "sleep 0.3; exit 7");
    let e_id = env.run_container(&p2, &e, &pod2).await?;
    for f in &unfiltered {
        let items = env.list_containers(f.clone()).await?;
        assert!(items.iter().any(|i| i.id == e_id), "new container listed");
    }
    poll_until(EXIT_WAIT, "the exit in ListContainers", || async {
        let mut states = Vec::new();
        for f in [
            Some(by_id(&e_id)),
            None,
            Some(api::ContainerFilter::default()),
        ] {
            let items = env.list_containers(f).await?;
            let it = items.iter().find(|i| i.id == e_id).expect("listed");
            states.push(it.state);
        }
        if states
            .iter()
            .all(|s| *s == ContainerState::ContainerExited as i32)
        {
            return Ok(Some(()));
        }
        // Until every way of asking has seen the exit, each says running or exited.
        for s in &states {
            assert!(
                *s == ContainerState::ContainerRunning as i32
                    || *s == ContainerState::ContainerExited as i32,
                "{states:?}"
            );
        }
        Ok(None)
    })
    .await?;
    assert_eq!(env.container_status(&e_id).await?.exit_code, 7);

    // A pod's list item follows its state (its cached encoding is replaced on stop).
    let ready = |pods: &[api::PodSandbox], id: &str| {
        pods.iter()
            .find(|p| p.id == id)
            .map(|p| p.state == api::PodSandboxState::SandboxReady as i32)
    };
    assert_eq!(ready(&env.list_pods(None).await?, &p2), Some(true));
    env.stop_pod(&p2).await?;
    assert_eq!(ready(&env.list_pods(None).await?, &p2), Some(false));
    assert_eq!(ready(&env.list_pods(None).await?, &p1), Some(true));

    for p in [&p1, &p2] {
        env.stop_pod(p).await?;
        env.remove_pod(p).await?;
        env.assert_pod_gone(p, "").await;
    }
    for f in unfiltered {
        let items = env.list_containers(f).await?;
        assert!(
            items
                .iter()
                .all(|i| i.pod_sandbox_id != p1 && i.pod_sandbox_id != p2),
            "removed containers listed: {items:?}"
        );
    }
    Ok(())
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", p.display()))
}

#[tokio::test(flavor = "multi_thread")]
async fn update_container_resources_reaches_the_cgroup() -> Result<()> {
    if !has_memory_cgroup_v1() {
        println!("SKIP: /sys/fs/cgroup/memory (cgroup v1) does not exist here");
        return Ok(());
    }
    let env = PodEnv::with_busybox().await?;
    let parent = format!("/{}/pod", unique("berth-e2e"));
    env.track_cgroup_parent(&parent);
    let mut pod = env.pod_config("update");
    pod.linux.as_mut().unwrap().cgroup_parent = parent.clone();
    let pod_id = env.run_pod(&pod).await?;
    let mut c = env.sh_container("upd", TERM_TRAP_LOOP);
    c.linux = Some(api::LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            cpu_shares: 1024,
            memory_limit_in_bytes: 128 * MIB,
            ..Default::default()
        }),
        security_context: None,
    });
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let pid = env.container_pid(&cid).await?;
    let cg_path = format!("{parent}/{cid}");
    let mem = cgroup_v1_dir("memory", &cg_path).unwrap();
    assert!(
        mem.is_dir(),
        "container memory cgroup {} exists (the process's cgroups: {:?})",
        mem.display(),
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
    );
    let limit = mem.join("memory.limit_in_bytes");
    assert_eq!(
        read_trim(&limit),
        (128 * MIB).to_string(),
        "initial memory limit"
    );
    // A status before the update: the answer berthd keeps must not outlive it.
    let before = env.container_status(&cid).await?;
    assert_eq!(
        before
            .resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(128 * MIB),
        "status reports the initial memory limit"
    );

    env.update_resources(
        &cid,
        LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 64 * MIB,
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(
        read_trim(&limit),
        (64 * MIB).to_string(),
        "updated memory limit in {}",
        limit.display()
    );
    if let Some(cpu) = cgroup_v1_dir("cpu", &cg_path) {
        let shares = cpu.join("cpu.shares");
        if shares.exists() {
            assert_eq!(read_trim(&shares), "512", "updated cpu.shares");
        } else {
            println!(
                "note: {} does not exist; cpu.shares not checked",
                shares.display()
            );
        }
    }
    let st = env.container_status(&cid).await?;
    let res = st
        .resources
        .and_then(|r| r.linux)
        .expect("ContainerStatus.resources.linux");
    assert_eq!(
        res.memory_limit_in_bytes,
        64 * MIB,
        "status reports the new memory limit"
    );
    assert_eq!(res.cpu_shares, 512, "status reports the new cpu shares");
    assert!(pid_alive(pid), "the container kept running");

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, &parent).await;
    assert!(
        e2e::pods::cgroup_dirs_existing(&cg_path).is_empty(),
        "container cgroup removed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_pod_stops_its_containers_and_remove_pod_removes_them() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("stoppod");
    let pod_id = env.run_pod(&pod).await?;
    let c1 = env.sh_container("trap", TERM_TRAP_LOOP);
    let c2 = env.container_config("sleep", &["sleep", "3600"]);
    let id1 = env.run_container(&pod_id, &c1, &pod).await?;
    let id2 = env.run_container(&pod_id, &c2, &pod).await?;
    let pid1 = env.container_pid(&id1).await?;
    let pid2 = env.container_pid(&id2).await?;
    let monitor = env.monitor_pid(&pod_id).await?;
    if let Some(kib) = e2e::pods::vm_rss_kib(monitor) {
        println!("berth-monitor RSS for a pod with two running containers: {kib} KiB");
    }

    let t = Instant::now();
    env.stop_pod(&pod_id).await?;
    println!(
        "StopPodSandbox with two running containers took {:?}",
        t.elapsed()
    );
    for id in [&id1, &id2] {
        let st = env.container_status(id).await?;
        assert_eq!(
            st.state,
            ContainerState::ContainerExited as i32,
            "container {id} EXITED once StopPodSandbox returned"
        );
        assert!(st.finished_at > 0);
    }
    for pid in [pid1, pid2, monitor] {
        wait_pid_gone(pid, "process after StopPodSandbox").await;
    }
    env.remove_pod(&pod_id).await?;
    for id in [&id1, &id2] {
        expect_code(
            env.container_status(id).await,
            Code::NotFound,
            "container of a removed pod",
        );
        assert!(
            !env.container_dir(id).exists(),
            "container dir removed with the pod"
        );
    }
    assert!(
        env.list_container_ids(None).await?.is_empty(),
        "no containers listed"
    );
    let left = mounts_under(&env.berthd.state());
    assert!(left.is_empty(), "mounts left under the state dir: {left:?}");
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oom_killed_container() -> Result<()> {
    if !e2e::pods::oom_kills_reported() {
        return Ok(());
    }
    let env = PodEnv::with_busybox().await?;
    let pod = env.pod_config("oom");
    let pod_id = env.run_pod(&pod).await?;
    let mut c = env.sh_container("hog", "x=a; while true; do x=$x$x; done");
    c.linux = Some(api::LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 16 * MIB,
            ..Default::default()
        }),
        security_context: None,
    });
    let cid = env.run_container(&pod_id, &c, &pod).await?;
    let st = env
        .wait_container_state(
            &cid,
            ContainerState::ContainerExited,
            Duration::from_secs(30),
        )
        .await?;
    println!(
        "OOM container: exit {} reason {:?} message {:?}",
        st.exit_code, st.reason, st.message
    );
    assert_eq!(
        st.reason, "OOMKilled",
        "a container killed by the OOM killer: {st:?}"
    );
    assert_eq!(st.exit_code, 137, "OOM kill is SIGKILL");

    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    env.assert_pod_gone(&pod_id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_containers_stop_signal_overrides_the_images_and_is_reported() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    push_stopsignal_image(&env.pusher(), "library/e2e-stopsignal").await?;
    env.cri.pull("e2e-stopsignal").await?;
    let pod = env.pod_config("stop-signals");
    let pod_id = env.run_pod(&pod).await?;
    let mut own = env.container_config("own-signal", &[]);
    own.image = Some(e2e::spec("e2e-stopsignal"));
    own.stop_signal = api::Signal::Sigterm as i32;
    let mut image_s = env.container_config("image-signal", &[]);
    image_s.image = Some(e2e::spec("e2e-stopsignal"));
    let plain = env.container_config("plain", &["sleep", "3600"]);
    let o = env.run_container(&pod_id, &own, &pod).await?;
    let i = env.run_container(&pod_id, &image_s, &pod).await?;
    let p = env.run_container(&pod_id, &plain, &pod).await?;
    for (id, want) in [
        (&o, api::Signal::Sigterm),
        (&i, api::Signal::Sigusr1),
        (&p, api::Signal::Sigterm),
    ] {
        let st = env.container_status(id).await?;
        assert_eq!(st.stop_signal, want as i32, "the signal in force for {id}");
    }
    for c in [&own, &image_s] {
        wait_ready(&env, &pod, c).await;
    }
    // The container's own signal wins over the image's STOPSIGNAL.
    env.stop_container(&o, 10).await?;
    let st = env.container_status(&o).await?;
    assert_eq!(
        st.exit_code, STOPSIGNAL_IMAGE_TERM_EXIT,
        "got SIGTERM: {st:?}"
    );
    env.stop_container(&i, 10).await?;
    let st = env.container_status(&i).await?;
    assert_eq!(
        st.exit_code, STOPSIGNAL_IMAGE_EXIT,
        "got the image's SIGUSR1: {st:?}"
    );
    // A stop signal that is not a signal is refused.
    let mut bad = env.container_config("bad-signal", &["sleep", "3600"]);
    bad.stop_signal = 999;
    let st = e2e::pods::expect_code(
        env.create_container(&pod_id, &bad, &pod).await,
        Code::InvalidArgument,
        "CreateContainer with stop_signal 999",
    );
    assert!(st.message().contains("not a signal"), "{}", st.message());
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}
