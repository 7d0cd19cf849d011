//! Pod sandboxes on the host: pinned namespaces, pod files, /dev/shm, the pod cgroup, the
//! monitor and the infra process of a shared PID namespace; status, list filters, stop and
//! remove (idempotent, nothing left behind), host namespaces, twenty pods at once, the
//! bad requests of RunPodSandbox, and where the cgroup warm-up thread lives.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use e2e::cri_api::{
    self as api, NamespaceMode, PodSandboxFilter, PodSandboxState, PodSandboxStateValue,
};
use e2e::pods::{
    PodEnv, cgroup_v1_dir, cmdline, expect_code, has_memory_cgroup_v1, inode, is_hex64, is_mounted,
    json_pid, map, mount_at, mounts_under, now_ns, ns_options, nspid, pid_alive,
    processes_mentioning, unique,
};
use e2e::{Code, poll_until};

const NS_FILES: [&str; 3] = ["net", "ipc", "uts"];

fn ns_opts(cfg: &api::PodSandboxConfig) -> Option<api::NamespaceOption> {
    cfg.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
}

async fn wait_pid_gone(pid: i32, what: &str) {
    let r = poll_until(Duration::from_secs(10), what, || async move {
        Ok((!pid_alive(pid)).then_some(()))
    })
    .await;
    assert!(
        r.is_ok(),
        "{what}: pid {pid} still alive ({:?})",
        cmdline(pid)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_pod_pins_namespaces_files_shm_cgroup_and_monitor_then_stop_and_remove() -> Result<()> {
    let env = PodEnv::start().await?;
    let mut cfg = env.pod_config("pinned");
    cfg.labels.insert("tier".into(), "backend".into());
    cfg.annotations
        .insert("e2e.berth/other".into(), "x y z".into());
    let before = now_ns();
    let id = env.run_pod(&cfg).await?;
    let after = now_ns();
    assert!(is_hex64(&id), "pod ID is 64 hex digits: {id:?}");

    // Pinned namespaces: bind mounts of nsfs files, not the host's namespaces.
    let dir = env.pod_dir(&id);
    for ns in NS_FILES {
        let p = dir.join("ns").join(ns);
        let m = mount_at(&p);
        assert!(
            m.is_some(),
            "{} is a mount point (bind-mounted namespace file); mounts under the pod dir: {:?}",
            p.display(),
            mounts_under(&dir)
        );
        assert_eq!(
            m.as_ref().map(|m| m.fstype.as_str()),
            Some("nsfs"),
            "{} is an nsfs mount",
            p.display()
        );
        let host = inode(Path::new(&format!("/proc/self/ns/{ns}")));
        assert_ne!(
            inode(&p),
            host,
            "the pinned {ns} namespace is not the host's"
        );
    }

    // Pod files.
    let hostname = std::fs::read_to_string(dir.join("hostname"))?;
    assert_eq!(
        hostname.trim(),
        cfg.hostname,
        "<pod>/hostname holds the pod's hostname"
    );
    let hosts = std::fs::read_to_string(dir.join("hosts"))?;
    assert!(
        hosts.contains("localhost"),
        "hosts has localhost: {hosts:?}"
    );
    let resolv = std::fs::read_to_string(dir.join("resolv.conf"))?;
    for want in [
        "nameserver 10.96.0.10",
        "e2e.svc.cluster.local",
        "svc.cluster.local",
        "ndots:5",
    ] {
        assert!(
            resolv.contains(want),
            "resolv.conf has {want:?}: {resolv:?}"
        );
    }
    assert!(
        resolv.contains("search "),
        "resolv.conf has a search line: {resolv:?}"
    );
    assert!(
        resolv.contains("options "),
        "resolv.conf has an options line: {resolv:?}"
    );

    // /dev/shm of the pod.
    let shm = dir.join("shm");
    let m = mount_at(&shm);
    assert_eq!(
        m.as_ref().map(|m| m.fstype.as_str()),
        Some("tmpfs"),
        "{} is a tmpfs mount: {m:?}",
        shm.display()
    );

    // The pod cgroup (no cgroup_parent: /berth/<id>).
    if has_memory_cgroup_v1() {
        let cg = cgroup_v1_dir("memory", &format!("/berth/{id}")).expect("memory hierarchy");
        assert!(cg.is_dir(), "pod cgroup {} exists", cg.display());
    } else {
        println!("SKIP cgroup check: /sys/fs/cgroup/memory (cgroup v1) does not exist here");
    }

    // Status.
    let full = env.pod_status_full(&id, true).await?;
    let st = full.status.clone().expect("status");
    assert_eq!(st.id, id);
    assert_eq!(
        st.state,
        PodSandboxState::SandboxReady as i32,
        "state READY"
    );
    assert!(
        st.created_at >= before - 1_000_000_000 && st.created_at <= after + 1_000_000_000,
        "created_at {} is the creation time in ns (between {before} and {after})",
        st.created_at
    );
    assert_eq!(st.metadata, cfg.metadata, "metadata echoed");
    assert_eq!(st.labels, cfg.labels, "labels echoed");
    assert_eq!(st.annotations, cfg.annotations, "annotations echoed");
    assert_eq!(st.runtime_handler, "runc", "default runtime handler");
    assert_eq!(
        st.linux
            .as_ref()
            .and_then(|l| l.namespaces.as_ref())
            .and_then(|n| n.options.clone()),
        ns_opts(&cfg),
        "linux.namespaces.options echo the request"
    );
    assert!(
        full.info.get("info").is_some_and(|s| !s.is_empty()),
        "verbose status has a non-empty `info`: {:?}",
        full.info
    );
    let info = e2e::pods::info_json(&full.info);
    let monitor = json_pid(&info, "monitorPid").expect("monitorPid in verbose info");
    assert!(pid_alive(monitor), "monitor {monitor} runs");
    let mon_cmd = cmdline(monitor).unwrap_or_default();
    let mon_exe = std::fs::read_link(format!("/proc/{monitor}/exe")).unwrap_or_default();
    assert!(
        mon_cmd.contains("berth-monitor") || mon_exe.to_string_lossy().contains("berth-monitor"),
        "monitorPid {monitor} is berth-monitor (cmdline {mon_cmd:?}, exe {mon_exe:?})"
    );
    if let Some(kib) = e2e::pods::vm_rss_kib(monitor) {
        println!("berth-monitor RSS for a pod without containers: {kib} KiB");
    }
    assert_eq!(
        json_pid(&info, "pausePid"),
        None,
        "no infra process with pid=CONTAINER: {info}"
    );
    // Not verbose: no info.
    let plain = env.pod_status_full(&id, false).await?;
    assert!(
        plain.info.is_empty(),
        "non-verbose status has no info: {:?}",
        plain.info
    );

    // Stop: NOTREADY, namespaces unpinned, shm unmounted, monitor gone; the record stays.
    env.stop_pod(&id).await?;
    let st = env.pod_status(&id).await?;
    assert_eq!(
        st.state,
        PodSandboxState::SandboxNotready as i32,
        "NOTREADY after stop"
    );
    for ns in NS_FILES {
        let p = dir.join("ns").join(ns);
        assert!(!is_mounted(&p), "{} unmounted after stop", p.display());
    }
    assert!(!is_mounted(&shm), "shm unmounted after stop");
    wait_pid_gone(monitor, "monitor to exit after StopPodSandbox").await;
    assert_eq!(
        env.list_pod_ids(None).await?,
        vec![id.clone()],
        "still listed after stop"
    );
    // Stop is idempotent.
    env.stop_pod(&id).await?;
    env.stop_pod(&"0".repeat(64)).await?;
    env.stop_pod("no-such-pod").await?;

    // Remove: nothing left.
    env.remove_pod(&id).await?;
    env.assert_pod_gone(&id, "").await;
    env.remove_pod(&id).await?;
    env.remove_pod(&"f".repeat(64)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn omitted_namespace_options_mean_shared_pid_namespace_with_infra_process() -> Result<()> {
    let env = PodEnv::start().await?;
    let mut cfg = env.pod_config("sharedpid");
    // crictl / critest style: no namespace_options at all. The zero value is POD.
    if let Some(l) = cfg.linux.as_mut() {
        l.security_context = None;
    }
    let id = env.run_pod(&cfg).await?;
    let info = env.pod_info(&id).await?;
    let pause = json_pid(&info, "pausePid")
        .unwrap_or_else(|| panic!("pausePid in verbose info of a pid=POD pod: {info}"));
    assert!(pid_alive(pause), "infra process {pause} runs");
    let ns = nspid(pause).expect("NSpid of the infra process");
    assert!(
        ns.len() >= 2 && ns.last() == Some(&1),
        "the infra process is pid 1 of its own pid namespace (NSpid {ns:?})"
    );
    let st = env.pod_status(&id).await?;
    let opts = st
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .unwrap_or_default();
    assert_eq!(
        opts.pid,
        NamespaceMode::Pod as i32,
        "status reports pid=POD: {opts:?}"
    );
    assert_eq!(
        opts.network,
        NamespaceMode::Pod as i32,
        "network=POD: {opts:?}"
    );
    assert_eq!(opts.ipc, NamespaceMode::Pod as i32, "ipc=POD: {opts:?}");
    // The pod's namespaces are pinned as usual.
    for n in NS_FILES {
        assert!(
            is_mounted(&env.pod_dir(&id).join("ns").join(n)),
            "ns/{n} pinned for a pid=POD pod"
        );
    }

    env.stop_pod(&id).await?;
    wait_pid_gone(pause, "infra process to exit after StopPodSandbox").await;
    env.remove_pod(&id).await?;
    env.assert_pod_gone(&id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_network_and_ipc_use_the_hosts_namespaces() -> Result<()> {
    let env = PodEnv::start().await?;
    let mut cfg = env.pod_config("hostns");
    cfg.hostname = String::new();
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(ns_options(
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Node,
    ));
    let id = env.run_pod(&cfg).await?;
    let dir = env.pod_dir(&id);
    for n in ["net", "uts"] {
        let p = dir.join("ns").join(n);
        assert!(
            !is_mounted(&p) && !p.exists(),
            "network=NODE: no pinned {n} namespace file at {}",
            p.display()
        );
    }
    let ipc = dir.join("ns").join("ipc");
    assert!(
        !is_mounted(&ipc) && !ipc.exists(),
        "ipc=NODE: no pinned ipc namespace file"
    );
    assert!(!is_mounted(&dir.join("shm")), "ipc=NODE: no pod shm mount");
    let host = nix::unistd::gethostname()?.to_string_lossy().into_owned();
    let hostname = std::fs::read_to_string(dir.join("hostname"))?;
    assert_eq!(
        hostname.trim(),
        host,
        "network=NODE: the pod hostname is the host's"
    );
    let st = env.pod_status(&id).await?;
    assert_eq!(
        st.linux.and_then(|l| l.namespaces).and_then(|n| n.options),
        ns_opts(&cfg),
        "namespace options echoed"
    );
    env.stop_pod(&id).await?;
    env.remove_pod(&id).await?;
    env.assert_pod_gone(&id, "").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cgroup_parent_is_created_and_removed() -> Result<()> {
    if !has_memory_cgroup_v1() {
        println!("SKIP: /sys/fs/cgroup/memory (cgroup v1) does not exist here");
        return Ok(());
    }
    let env = PodEnv::start().await?;
    let top = unique("berth-e2e");
    let parent = format!("/{top}/pod");
    env.track_cgroup_parent(&parent);
    let mut cfg = env.pod_config("cgparent");
    cfg.linux.as_mut().unwrap().cgroup_parent = parent.clone();
    let id = env.run_pod(&cfg).await?;
    let cg = cgroup_v1_dir("memory", &parent).unwrap();
    assert!(cg.is_dir(), "pod cgroup {} exists", cg.display());
    let default = cgroup_v1_dir("memory", &format!("/berth/{id}")).unwrap();
    assert!(
        !default.exists(),
        "with a cgroup_parent no /berth/<id> cgroup is made"
    );
    env.stop_pod(&id).await?;
    env.remove_pod(&id).await?;
    env.assert_pod_gone(&id, &parent).await;
    let left = e2e::pods::cgroup_dirs_existing(&top);
    assert!(
        left.is_empty(),
        "berth created /{top} (the parent of the pod cgroup) and must remove it: {left:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_pod_sandbox_filters() -> Result<()> {
    let env = PodEnv::start().await?;
    let mut cfgs = Vec::new();
    let mut ids = Vec::new();
    for (name, tier) in [("lista", "front"), ("listb", "back"), ("listc", "back")] {
        let mut cfg = env.pod_config(name);
        cfg.labels.insert("tier".into(), tier.into());
        ids.push(env.run_pod(&cfg).await?);
        cfgs.push(cfg);
    }
    let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    env.stop_pod(&c).await?;

    let mut all = ids.clone();
    all.sort();
    assert_eq!(env.list_pod_ids(None).await?, all, "no filter: all pods");
    assert_eq!(
        env.list_pod_ids(Some(PodSandboxFilter::default())).await?,
        all,
        "empty filter: all pods"
    );
    let by = |id: &str| PodSandboxFilter {
        id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        env.list_pod_ids(Some(by(&a))).await?,
        vec![a.clone()],
        "by full id"
    );
    // A prefix long enough to be unique among three random IDs.
    let prefix = &b[..12];
    assert!(!a.starts_with(prefix) && !c.starts_with(prefix));
    assert_eq!(
        env.list_pod_ids(Some(by(prefix))).await?,
        vec![b.clone()],
        "by id prefix"
    );
    assert!(
        env.list_pod_ids(Some(by(&"0".repeat(64))))
            .await?
            .is_empty(),
        "unknown id: empty list"
    );
    let state = |s: PodSandboxState| PodSandboxFilter {
        state: Some(PodSandboxStateValue { state: s as i32 }),
        ..Default::default()
    };
    let mut ready = vec![a.clone(), b.clone()];
    ready.sort();
    assert_eq!(
        env.list_pod_ids(Some(state(PodSandboxState::SandboxReady)))
            .await?,
        ready,
        "state READY"
    );
    assert_eq!(
        env.list_pod_ids(Some(state(PodSandboxState::SandboxNotready)))
            .await?,
        vec![c.clone()],
        "state NOTREADY"
    );
    let labels = |pairs: &[(&str, &str)]| PodSandboxFilter {
        label_selector: map(pairs),
        ..Default::default()
    };
    let mut back = vec![b.clone(), c.clone()];
    back.sort();
    assert_eq!(
        env.list_pod_ids(Some(labels(&[("tier", "back")]))).await?,
        back,
        "label tier=back"
    );
    assert_eq!(
        env.list_pod_ids(Some(labels(&[("tier", "back"), ("app", "listc")])))
            .await?,
        vec![c.clone()],
        "two labels must both match"
    );
    assert!(
        env.list_pod_ids(Some(labels(&[("tier", "nope")])))
            .await?
            .is_empty(),
        "non-matching label"
    );
    assert!(
        env.list_pod_ids(Some(labels(&[("missing", "x")])))
            .await?
            .is_empty(),
        "absent label key"
    );
    // Combined: label and state.
    let mut f = labels(&[("tier", "back")]);
    f.state = Some(PodSandboxStateValue {
        state: PodSandboxState::SandboxReady as i32,
    });
    assert_eq!(
        env.list_pod_ids(Some(f)).await?,
        vec![b.clone()],
        "label + state"
    );
    // Combined: id and a label it lacks.
    let mut f = by(&a);
    f.label_selector = map(&[("tier", "back")]);
    assert!(
        env.list_pod_ids(Some(f)).await?.is_empty(),
        "id + non-matching label"
    );

    // The items carry metadata, state, labels, annotations, handler, created_at.
    let items = env.list_pods(Some(by(&c))).await?;
    let item = &items[0];
    assert_eq!(item.metadata, cfgs[2].metadata);
    assert_eq!(item.state, PodSandboxState::SandboxNotready as i32);
    assert_eq!(item.labels, cfgs[2].labels);
    assert_eq!(item.annotations, cfgs[2].annotations);
    assert_eq!(item.runtime_handler, "runc");
    assert!(item.created_at > 0);

    for id in &ids {
        env.stop_pod(id).await?;
        env.remove_pod(id).await?;
        env.assert_pod_gone(id, "").await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_pods_at_once() -> Result<()> {
    let env = PodEnv::start().await?;
    let cfgs: Vec<_> = (0..20)
        .map(|i| env.pod_config(&format!("many-{i}")))
        .collect();
    let results = futures_util::future::join_all(cfgs.iter().map(|c| env.run_pod(c))).await;
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(id) => ids.push(id),
            Err(s) => failures.push(format!("pod {i}: {s:?}")),
        }
    }
    assert!(failures.is_empty(), "RunPodSandbox failures: {failures:#?}");
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 20, "20 distinct IDs");
    let mut monitors = Vec::new();
    for id in &ids {
        let st = env.pod_status(id).await?;
        assert_eq!(
            st.state,
            PodSandboxState::SandboxReady as i32,
            "pod {id} READY"
        );
        assert!(
            is_mounted(&env.pod_dir(id).join("ns/net")),
            "pod {id} netns pinned"
        );
        let m = env.monitor_pid(id).await?;
        assert!(pid_alive(m), "monitor of {id} runs");
        monitors.push(m);
    }
    let distinct_nets: HashSet<_> = ids
        .iter()
        .map(|id| inode(&env.pod_dir(id).join("ns/net")))
        .collect();
    assert_eq!(distinct_nets.len(), 20, "20 distinct network namespaces");

    let stops = futures_util::future::join_all(ids.iter().map(|id| env.stop_pod(id))).await;
    for (id, r) in ids.iter().zip(stops) {
        r.unwrap_or_else(|s| panic!("StopPodSandbox {id}: {s:?}"));
    }
    let removes = futures_util::future::join_all(ids.iter().map(|id| env.remove_pod(id))).await;
    for (id, r) in ids.iter().zip(removes) {
        r.unwrap_or_else(|s| panic!("RemovePodSandbox {id}: {s:?}"));
    }
    for id in &ids {
        env.assert_pod_gone(id, "").await;
    }
    for m in monitors {
        wait_pid_gone(m, "monitor to exit").await;
    }
    let left = mounts_under(&env.pods_dir());
    assert!(left.is_empty(), "mounts left under <state>/pods: {left:?}");
    let dirs = PodEnv::dir_entries(&env.pods_dir());
    assert!(dirs.is_empty(), "dirs left under <state>/pods: {dirs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pod_requests() -> Result<()> {
    let env = PodEnv::start().await?;
    let cfg = env.pod_config("dup");
    let id = env.run_pod(&cfg).await?;

    // Same name, namespace, uid, attempt: AlreadyExists, and nothing new.
    let s = expect_code(
        env.run_pod(&cfg).await,
        Code::AlreadyExists,
        "duplicate pod",
    );
    println!("duplicate pod: {s:?}");
    assert_eq!(
        env.list_pod_ids(None).await?,
        vec![id.clone()],
        "one pod after the duplicate"
    );
    let dir_name = env
        .pod_dir(&id)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        PodEnv::dir_entries(&env.pods_dir()),
        vec![dir_name],
        "one pod dir"
    );

    // Another attempt of the same pod is a different sandbox.
    let mut next = cfg.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    let id2 = env.run_pod(&next).await?;
    assert_ne!(id, id2);

    // Unknown runtime handler: InvalidArgument, no leak, and the name is not kept reserved.
    let dirs_before = PodEnv::dir_entries(&env.pods_dir());
    let mounts_before = mounts_under(&env.berthd.state()).len();
    let other = env.pod_config("badhandler");
    let s = expect_code(
        env.run_pod_handler(&other, "no-such-handler").await,
        Code::InvalidArgument,
        "unknown runtime handler",
    );
    assert!(
        s.message().contains("no-such-handler"),
        "the message names the handler: {:?}",
        s.message()
    );
    assert_eq!(
        PodEnv::dir_entries(&env.pods_dir()),
        dirs_before,
        "no new dir under <state>/pods after an unknown handler"
    );
    assert_eq!(
        mounts_under(&env.berthd.state()).len(),
        mounts_before,
        "no new mount"
    );
    assert!(
        processes_mentioning(&other.metadata.as_ref().unwrap().uid).is_empty(),
        "no process for the failed pod"
    );

    // Relative log_directory: InvalidArgument, no leak.
    let mut rel = env.pod_config("badlogdir");
    rel.log_directory = "relative/logs".into();
    let s = expect_code(
        env.run_pod(&rel).await,
        Code::InvalidArgument,
        "relative log_directory",
    );
    assert!(
        s.message().contains("log_directory") || s.message().contains("relative/logs"),
        "the message names the log directory: {:?}",
        s.message()
    );
    assert_eq!(
        PodEnv::dir_entries(&env.pods_dir()),
        dirs_before,
        "no new dir after a bad log_directory"
    );
    assert_eq!(
        mounts_under(&env.berthd.state()).len(),
        mounts_before,
        "no new mount"
    );

    let mut ids = vec![id.clone(), id2.clone()];
    ids.sort();
    assert_eq!(
        env.list_pod_ids(None).await?,
        ids,
        "only the good pods are listed"
    );

    // Failed calls did not reserve names: both now run with a valid request.
    let ok = env.run_pod(&other).await?;
    let mut fixed = rel.clone();
    fixed.log_directory = env.pod_config("unused").log_directory;
    let ok2 = env.run_pod(&fixed).await?;

    // After removal the name can be used again.
    env.stop_pod(&id).await?;
    env.remove_pod(&id).await?;
    let again = env.run_pod(&cfg).await?;

    // Unknown IDs: status NotFound.
    expect_code(
        env.pod_status(&"a".repeat(64)).await,
        Code::NotFound,
        "status of unknown pod",
    );

    for p in [id2, ok, ok2, again] {
        env.stop_pod(&p).await?;
        env.remove_pod(&p).await?;
        env.assert_pod_gone(&p, "").await;
    }
    Ok(())
}

/// The cgroup warm-up (see runtime-core/src/cgroupwarm.rs): on cgroup v1 one berthd
/// thread, `berthd-cgwarm`, sits in berthd's default pod parent in the pids hierarchy while
/// berthd runs; berthd itself stays where it was started, and the cgroup is empty (and
/// removable) once berthd is gone. With `cgroup_warmup = false` no thread goes there.
#[tokio::test(flavor = "multi_thread")]
async fn cgroup_warmup_thread_sits_in_the_default_parent() -> Result<()> {
    let Some(pids_root) = e2e::pods::cgroup_v1_root("pids") else {
        println!("SKIP: no cgroup v1 pids hierarchy here (the v1 warm-up is what is checked)");
        return Ok(());
    };
    for warm in [true, false] {
        let parent = format!("/{}", unique("berth-e2e-warm"));
        let opts = e2e::BerthdOptions {
            extra_config: format!(
                "\n[runtime]\ndefault_cgroup_parent = \"{parent}\"\ncgroup_warmup = {warm}\n"
            ),
            ..Default::default()
        };
        let mut berthd = e2e::Berthd::start(opts).await?;
        let pid = berthd.pid().expect("berthd runs");
        let tasks = pids_root.join(parent.trim_start_matches('/')).join("tasks");
        let threads_there = || -> Vec<String> {
            std::fs::read_to_string(&tasks)
                .unwrap_or_default()
                .lines()
                .filter_map(|tid| {
                    std::fs::read_to_string(format!("/proc/{pid}/task/{}/comm", tid.trim()))
                        .ok()
                        .map(|c| c.trim().to_string())
                })
                .collect()
        };
        if warm {
            poll_until(Duration::from_secs(10), "the warm-up thread", || async {
                let names = threads_there();
                if names.is_empty() {
                    return Ok(None);
                }
                assert_eq!(names, vec!["berthd-cgwarm".to_string()], "{names:?}");
                Ok(Some(()))
            })
            .await?;
            let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
            assert!(!own.contains(&parent), "berthd itself moved: {own}");
        } else {
            // berthd answers calls, so its start (where the thread would move) is over.
            berthd.cri().await?.version().await?;
            assert!(threads_there().is_empty(), "{:?}", threads_there());
        }
        berthd.terminate();
        let dirs = e2e::pods::cgroup_dirs_existing(&parent);
        for d in &dirs {
            std::fs::remove_dir(d).map_err(|e| {
                anyhow::anyhow!("{} not removable once berthd is gone: {e}", d.display())
            })?;
        }
        assert!(!dirs.is_empty(), "berthd created {parent}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn update_pod_sandbox_resources_sets_berths_pod_cgroup_and_unknown_pods_are_not_found()
-> Result<()> {
    let env = PodEnv::start().await?;
    // No cgroup_parent: the pod cgroup is berth's, whose limits berth sets.
    let pod = env.pod_config("resize");
    let id = env.run_pod(&pod).await?;
    let resources = e2e::cri_api::LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 256 << 20,
        ..Default::default()
    };
    let overhead = e2e::cri_api::LinuxContainerResources {
        memory_limit_in_bytes: 16 << 20,
        ..Default::default()
    };
    let mut rt = env.cri.runtime.clone();
    rt.update_pod_sandbox_resources(e2e::cri_api::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: id.clone(),
        overhead: Some(overhead),
        resources: Some(resources.clone()),
    })
    .await?;
    let info = env.pod_info(&id).await?;
    assert_eq!(
        info["resources"][1]["memory_limit_in_bytes"],
        serde_json::json!(256 << 20),
        "recorded: {info}"
    );
    let cgroup = info["cgroupParent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let read = |ctrl: &str, file: &str| {
        e2e::pods::cgroup_v1_dir(ctrl, &cgroup)
            .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
            .map(|v| v.trim().to_string())
    };
    match read("memory", "memory.limit_in_bytes") {
        Some(limit) => {
            assert_eq!(limit, (272u64 << 20).to_string(), "resources + overhead");
            assert_eq!(read("cpu", "cpu.shares").as_deref(), Some("512"));
            assert_eq!(read("cpu", "cpu.cfs_quota_us").as_deref(), Some("50000"));
        }
        None => println!("SKIP: no cgroup v1 memory hierarchy to read the pod's limits from"),
    }
    let err = rt
        .update_pod_sandbox_resources(e2e::cri_api::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "0".repeat(64),
            overhead: None,
            resources: Some(resources),
        })
        .await
        .expect_err("an unknown pod");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    env.stop_pod(&id).await?;
    env.remove_pod(&id).await?;
    Ok(())
}
