//! Versions of everything a run involves, and the machine it ran on.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::results::RUNTIMES;
use crate::runtime::Runtime;

/// The first line of `program args`' stdout (or stderr), or why it could not be run.
fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("({program}: {e})"),
    }
}

/// The installed version of a Debian package.
fn deb_version(package: &str) -> String {
    let v = first_line("dpkg-query", &["-W", "-f=${Version}", package]);
    if v.is_empty() {
        "(not installed)".into()
    } else {
        v
    }
}

/// (what, version) for the runtimes (binary and CRI Version answer), runc, the CNI
/// plugins, the registry, the kernel and the bench's source revision.
pub async fn collect(
    rts: &[Runtime; 2],
    berthd: &Path,
    containerd: &Path,
) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let mut cri = Vec::new();
    for (r, rt) in rts.iter().enumerate() {
        let answer = match rt.client.version().await {
            Ok(ver) => format!(
                "{} {} (CRI {})",
                ver.runtime_name, ver.runtime_version, ver.runtime_api_version
            ),
            Err(s) => format!("(Version failed: {})", s.message()),
        };
        cri.push((RUNTIMES[r], answer));
    }
    v.push((
        "berthd".into(),
        format!(
            "{}; {}",
            first_line(&berthd.display().to_string(), &["--version"]),
            berthd.display()
        ),
    ));
    if let Some(monitor) = berthd.parent().map(|d| d.join("berth-monitor")) {
        let linking = match elf_is_static(&monitor) {
            Some(true) => "statically linked",
            Some(false) => "dynamically linked",
            None => "not an ELF file?",
        };
        v.push((
            "berth-monitor".into(),
            format!("{linking}; {}", monitor.display()),
        ));
    }
    v.push((
        "containerd".into(),
        first_line(&containerd.display().to_string(), &["--version"]),
    ));
    for (name, answer) in cri {
        v.push((format!("{name} CRI Version"), answer));
    }
    v.push(("runc".into(), first_line("runc", &["--version"])));
    v.push((
        "CNI plugins (containernetworking-plugins)".into(),
        deb_version("containernetworking-plugins"),
    ));
    v.push(("docker-registry".into(), deb_version("docker-registry")));
    v.push((
        "busybox (image content)".into(),
        deb_version("busybox-static"),
    ));
    v.push(("kernel".into(), read_trim("/proc/sys/kernel/osrelease")));
    v.push(("berth source".into(), git_revision()));
    v
}

/// Whether the ELF executable at `path` has no program interpreter (`PT_INTERP`), i.e. is
/// statically linked. `None` if it is not a readable 64-bit little-endian ELF file.
pub fn elf_is_static(path: &Path) -> Option<bool> {
    let data = std::fs::read(path).ok()?;
    if data.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| -> Option<usize> {
        Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?) as usize)
    };
    let phoff = u64::from_le_bytes(data.get(32..40)?.try_into().ok()?) as usize;
    let (phentsize, phnum) = (u16_at(54)?, u16_at(56)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

/// `git rev-parse --short HEAD` of the workspace, with `+dirty` for local changes.
fn git_revision() -> String {
    let ws = e2e::util::workspace_root();
    let ws = ws.display().to_string();
    let rev = first_line("git", &["-C", &ws, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", &ws, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty { format!("{rev}+dirty") } else { rev }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("({path}: {e})"))
}

/// (what, value) describing the machine: CPU, cores, memory, OS, cgroup layout.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{:.1} GiB", k as f64 / (1u64 << 20) as f64))
        .unwrap_or_else(|| "?".into());
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2 (unified)"
    } else if Path::new("/sys/fs/cgroup/unified").is_dir() {
        "v1 with the v2 hierarchy at /sys/fs/cgroup/unified (hybrid)"
    } else {
        "v1"
    };
    vec![
        ("CPU".into(), cpu),
        ("cores".into(), cores),
        ("memory".into(), mem),
        ("OS".into(), os),
        ("cgroups".into(), cgroups.into()),
        ("load average at start".into(), load_average()),
    ]
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews the figures).
pub fn load_average() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
pub fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM UTC`.
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_linking() {
        let me = std::env::current_exe().expect("test binary");
        assert!(elf_is_static(&me).is_some());
        assert_eq!(elf_is_static(Path::new("/etc/os-release")), None);
        if Path::new("/bin/busybox").exists() {
            assert_eq!(elf_is_static(Path::new("/bin/busybox")), Some(true));
        }
        if Path::new("/bin/ls").exists() {
            assert_eq!(elf_is_static(Path::new("/bin/ls")), Some(false));
        }
    }

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
