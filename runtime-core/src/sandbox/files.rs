//! The per-pod files every container gets: /etc/hostname, /etc/hosts, /etc/resolv.conf,
//! and the pod's /dev/shm.

use std::fs;
use std::path::{Path, PathBuf};

use berth_cri::v1 as cri;
use nix::mount::MsFlags;

use crate::{Error, Result};

/// Default size of a pod's /dev/shm, as docker and containerd use.
pub const SHM_SIZE_BYTES: u64 = 64 << 20;

/// Contents of /etc/hosts for a pod with its own network namespace (containerd's).
pub fn hosts_content(hostname: &str, ip: Option<&str>) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// Contents of resolv.conf from a CRI DNSConfig; `None` when the config is empty and the
/// host's file should be used.
pub fn resolv_content(dns: Option<&cri::DnsConfig>) -> Result<Option<String>> {
    let Some(dns) = dns else { return Ok(None) };
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return Ok(None);
    }
    let mut s = String::new();
    for v in dns.servers.iter().chain(&dns.searches).chain(&dns.options) {
        if v.contains(['\n', '\r', '\0']) {
            return Err(Error::InvalidArgument(format!(
                "dns_config value {v:?} contains a line break"
            )));
        }
    }
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(Some(s))
}

/// Writes hostname, hosts and resolv.conf into `dir`; returns their paths.
pub fn write_pod_files(
    dir: &Path,
    hostname: &str,
    host_network: bool,
    dns: Option<&cri::DnsConfig>,
) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let hostname_path = dir.join("hostname");
    let hosts_path = dir.join("hosts");
    let resolv_path = dir.join("resolv.conf");
    write(&hostname_path, format!("{hostname}\n").as_bytes())?;
    let hosts = if host_network {
        fs::read("/etc/hosts").unwrap_or_else(|_| hosts_content(hostname, None).into_bytes())
    } else {
        hosts_content(hostname, None).into_bytes()
    };
    write(&hosts_path, &hosts)?;
    let resolv = match resolv_content(dns)? {
        Some(s) => s.into_bytes(),
        None => fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    write(&resolv_path, &resolv)?;
    Ok((hostname_path, hosts_path, resolv_path))
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, data).map_err(|e| Error::io("write", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io("chmod", path, e))
}

/// Mounts a tmpfs for the pod's /dev/shm at `dir`.
pub fn mount_shm(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let data = format!("mode=1777,size={SHM_SIZE_BYTES}");
    nix::mount::mount(
        Some("shm"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| Error::Internal(format!("mount shm tmpfs at {}: {e}", dir.display())))
}

/// Unmounts a path mounted by berth (detaching if busy); absence is fine.
pub fn unmount(path: &Path) {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "unmount"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_from_dns_config() {
        let dns = cri::DnsConfig {
            servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        let s = resolv_content(Some(&dns)).unwrap().unwrap();
        assert_eq!(
            s,
            "search ns.svc.cluster.local cluster.local\nnameserver 10.0.0.10\nnameserver 10.0.0.11\noptions ndots:5\n"
        );
        assert!(
            resolv_content(Some(&cri::DnsConfig::default()))
                .unwrap()
                .is_none()
        );
        assert!(resolv_content(None).unwrap().is_none());
        let bad = cri::DnsConfig {
            servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
            ..Default::default()
        };
        assert!(resolv_content(Some(&bad)).is_err());
    }

    #[test]
    fn writes_files_and_mounts_shm() {
        let dir = tempfile::tempdir().unwrap();
        let (h, hosts, r) = write_pod_files(dir.path(), "web-0", false, None).unwrap();
        assert_eq!(fs::read_to_string(h).unwrap(), "web-0\n");
        assert!(
            fs::read_to_string(hosts)
                .unwrap()
                .starts_with("127.0.0.1\tlocalhost")
        );
        assert_eq!(
            fs::read(r).unwrap(),
            fs::read("/etc/resolv.conf").unwrap_or_default()
        );
        let shm = dir.path().join("shm");
        mount_shm(&shm).unwrap();
        assert!(super::super::ns::is_mounted(&shm));
        unmount(&shm);
        assert!(!super::super::ns::is_mounted(&shm));
    }
}
