//! User namespaces (`hostUsers: false`): a pod gets a user namespace of its own with exactly
//! kubelet's mappings, owning its network, IPC, UTS and PID namespaces; the rootfs and bind
//! volumes are idmapped, so files keep their owners as seen from inside and what the
//! container writes lands on the host under the mapped (rootfs) or original (volume) IDs;
//! malformed requests are InvalidArgument and create nothing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use e2e::Code;
use e2e::cri_api::{self as api, IdMapping, Mount, NamespaceMode, UserNamespace};
use e2e::pods::{PodEnv, expect_code, inode, mount_at, mounts_under, ns_options};

const HOST_UID: u32 = 200_000;
const HOST_GID: u32 = 300_000;
const LENGTH: u32 = 65_536;

fn mapping(host_id: u32) -> Vec<IdMapping> {
    vec![IdMapping {
        container_id: 0,
        host_id,
        length: LENGTH,
    }]
}

/// `config` with a user namespace of its own (and a shared PID namespace when `pid_pod`).
fn with_userns(
    mut config: api::PodSandboxConfig,
    userns: UserNamespace,
    pid_pod: bool,
) -> api::PodSandboxConfig {
    let pid = if pid_pod {
        NamespaceMode::Pod
    } else {
        NamespaceMode::Container
    };
    let nso = config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .insert(ns_options(NamespaceMode::Pod, pid, NamespaceMode::Pod));
    nso.userns_options = Some(userns);
    config
}

fn pod_userns() -> UserNamespace {
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: mapping(HOST_UID),
        gids: mapping(HOST_GID),
    }
}

/// Whether berthd says the default handler supports user namespaces; prints why not.
async fn supported(env: &PodEnv) -> Result<bool> {
    let ok = env.default_handler_features().await?.user_namespaces;
    if !ok {
        eprintln!(
            "skipped: this kernel cannot give pods user namespaces with idmapped layers (Linux 6.13+ needed); berthd does not advertise them"
        );
    }
    Ok(ok)
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_with_its_own_user_namespace_sees_its_files_as_on_the_host() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    if !supported(&env).await? {
        return Ok(());
    }
    let vol = tempfile::tempdir()?;
    std::fs::write(vol.path().join("from-host"), "host file\n")?;
    let pod = with_userns(env.pod_config("userns"), pod_userns(), true);
    let pod_id = env.run_pod(&pod).await?;
    let pod_dir = env.pod_dir(&pod_id);
    let pinned = pod_dir.join("ns").join("user");
    let pinned_ino = inode(&pinned).context("the pod's user namespace is pinned")?;

    let mut c = env.container_config("app", &["sleep", "3600"]);
    c.mounts = vec![Mount {
        container_path: "/mnt/vol".into(),
        host_path: vol.path().display().to_string(),
        ..Default::default()
    }];
    let cid = env.run_container(&pod_id, &c, &pod).await?;

    // Exactly kubelet's mappings, seen from inside.
    let uid_map = env.exec_ok(&cid, &["cat", "/proc/self/uid_map"]).await?;
    assert_eq!(
        words(&uid_map),
        ["0", &HOST_UID.to_string(), &LENGTH.to_string()]
    );
    let gid_map = env.exec_ok(&cid, &["cat", "/proc/self/gid_map"]).await?;
    assert_eq!(
        words(&gid_map),
        ["0", &HOST_GID.to_string(), &LENGTH.to_string()]
    );
    assert_eq!(env.exec_ok(&cid, &["id", "-u"]).await?.trim(), "0");

    // The image's files keep their owners (root's) inside; so does the volume's.
    for path in ["/etc/passwd", "/bin/sh", "/", "/mnt/vol/from-host"] {
        let owner = env.exec_ok(&cid, &["stat", "-c", "%u:%g", path]).await?;
        assert_eq!(owner.trim(), "0:0", "owner of {path} inside");
    }
    // What root writes: in the rootfs, the mapped IDs on the host; in the volume, host root.
    env.exec_ok(
        &cid,
        &[
            "sh",
            "-c",
            "echo x > /made-inside && echo y > /mnt/vol/made-inside",
        ],
    )
    .await?;
    let upper = env
        .berthd
        .root()
        .join("containers")
        .join(&cid)
        .join("upper");
    let m = std::fs::metadata(upper.join("made-inside")).context("the upper layer holds it")?;
    assert_eq!((m.uid(), m.gid()), (HOST_UID, HOST_GID));
    let m = std::fs::metadata(vol.path().join("made-inside"))?;
    assert_eq!((m.uid(), m.gid()), (0, 0));
    // Root of a user namespace cannot reach what the host's root owns outside it.
    let r = env
        .exec_sync(
            &cid,
            &["sh", "-c", "echo z > /proc/sys/kernel/hostname"],
            10,
        )
        .await?;
    assert_ne!(r.exit_code, 0, "a host sysctl is not writable from the pod");

    // On the host: the container and the pause process are in the pinned namespace, which
    // owns the PID namespace they share.
    let pid = env.container_pid(&cid).await?;
    let ns_ino = |pid: i32, kind: &str| inode(Path::new(&format!("/proc/{pid}/ns/{kind}")));
    assert_eq!(ns_ino(pid, "user"), Some(pinned_ino));
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map"))?;
    assert_eq!(
        words(&uid_map),
        ["0", &HOST_UID.to_string(), &LENGTH.to_string()]
    );
    let pause: i32 = std::fs::read_to_string(pod_dir.join("pause.pid"))?
        .trim()
        .parse()?;
    assert_eq!(ns_ino(pause, "user"), Some(pinned_ino));
    assert_eq!(ns_ino(pause, "pid"), ns_ino(pid, "pid"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert_eq!(
        words(uid_line)[1],
        HOST_UID.to_string(),
        "runs as the mapped uid on the host"
    );

    let bundle = env.container_dir(&cid);
    let rootfs = mount_at(&bundle.join("rootfs")).context("the rootfs is mounted")?;
    assert!(rootfs.is_volatile_overlay(), "{rootfs:?}");
    assert!(
        mounts_under(&bundle.join("volumes")).is_empty(),
        "the idmapped clone of the volume was the OCI runtime's only"
    );
    env.stop_container(&cid, 0).await?;
    env.remove_container(&cid).await?;
    assert!(
        mounts_under(&bundle).is_empty(),
        "nothing of the bundle stays mounted"
    );
    assert!(
        vol.path().join("from-host").exists(),
        "the volume's files are kept"
    );
    env.stop_pod(&pod_id).await?;
    assert!(!pinned.exists(), "the user namespace is unpinned on stop");
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_user_namespace_is_mode_node() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let node = UserNamespace {
        mode: NamespaceMode::Node as i32,
        ..Default::default()
    };
    let pod = with_userns(env.pod_config("userns-node"), node, false);
    let pod_id = env.run_pod(&pod).await?;
    assert!(!env.pod_dir(&pod_id).join("ns").join("user").exists());
    let cid = env
        .run_container(
            &pod_id,
            &env.container_config("app", &["sleep", "3600"]),
            &pod,
        )
        .await?;
    let inside = env.exec_ok(&cid, &["cat", "/proc/self/uid_map"]).await?;
    let host = std::fs::read_to_string("/proc/self/uid_map")?;
    assert_eq!(words(&inside), words(&host));
    env.stop_container(&cid, 0).await?;
    env.remove_container(&cid).await?;
    env.stop_pod(&pod_id).await?;
    env.remove_pod(&pod_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_user_namespace_requests_are_refused_and_create_nothing() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let two = {
        let mut v = mapping(HOST_UID);
        v.push(IdMapping {
            container_id: 0,
            host_id: 400_000,
            length: LENGTH,
        });
        v
    };
    let with = |mode: NamespaceMode, uids: Vec<IdMapping>| UserNamespace {
        mode: mode as i32,
        gids: uids.clone(),
        uids,
    };
    let cases = [
        (
            "CONTAINER",
            with(NamespaceMode::Container, mapping(HOST_UID)),
            false,
            "CONTAINER",
        ),
        (
            "TARGET",
            with(NamespaceMode::Target, vec![]),
            false,
            "TARGET",
        ),
        (
            "two mappings",
            with(NamespaceMode::Pod, two),
            false,
            "exactly one",
        ),
        (
            "no root",
            with(
                NamespaceMode::Pod,
                vec![IdMapping {
                    container_id: 1,
                    host_id: HOST_UID,
                    length: LENGTH,
                }],
            ),
            false,
            "container ID 0",
        ),
        (
            "overflow",
            with(
                NamespaceMode::Pod,
                vec![IdMapping {
                    container_id: 0,
                    host_id: u32::MAX - 10,
                    length: LENGTH,
                }],
            ),
            false,
            "overflows",
        ),
        (
            "NODE with mappings",
            with(NamespaceMode::Node, mapping(HOST_UID)),
            false,
            "NODE",
        ),
    ];
    let before = PodEnv::dir_entries(&env.pods_dir());
    for (what, userns, pid_pod, words) in cases {
        let pod = with_userns(env.pod_config("userns-bad"), userns, pid_pod);
        let st = expect_code(env.run_pod(&pod).await, Code::InvalidArgument, what);
        assert!(st.message().contains(words), "{what}: {}", st.message());
    }
    // A pod user namespace with the host's network.
    let mut pod = with_userns(env.pod_config("userns-hostnet"), pod_userns(), false);
    if let Some(nso) = pod
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        nso.network = NamespaceMode::Node as i32;
    }
    let st = expect_code(
        env.run_pod(&pod).await,
        Code::InvalidArgument,
        "host network",
    );
    assert!(st.message().contains("network"), "{}", st.message());
    assert_eq!(
        PodEnv::dir_entries(&env.pods_dir()),
        before,
        "no pod directory is made"
    );
    assert!(env.list_pod_ids(None).await?.is_empty());
    Ok(())
}
