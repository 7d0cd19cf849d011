//! Pressure stall information (PSI, 1.33 in the CRI): a cgroup v2's `cpu.pressure`,
//! `memory.pressure` and `io.pressure`. cgroup v1 has none, so nothing is reported there,
//! as with containerd.

use std::fs;
use std::path::Path;

use super::{Layout, relative};
use crate::Result;

/// One line of a pressure file: `some` or `full`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiLine {
    /// Total stall time, nanoseconds (the kernel counts microseconds).
    pub total_ns: u64,
    /// Percent of the last 10 s stalled.
    pub avg10: f64,
    /// Percent of the last 60 s stalled.
    pub avg60: f64,
    /// Percent of the last 300 s stalled.
    pub avg300: f64,
}

/// A pressure file: at least one task stalled (`some`), all stalled (`full`; absent from
/// cpu.pressure before Linux 5.13).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Psi {
    /// `some` line.
    pub some: Option<PsiLine>,
    /// `full` line.
    pub full: Option<PsiLine>,
}

/// The pressure of one cgroup per resource (None where the file is absent).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// cpu.pressure.
    pub cpu: Option<Psi>,
    /// memory.pressure.
    pub memory: Option<Psi>,
    /// io.pressure.
    pub io: Option<Psi>,
}

/// Parses a pressure file; malformed lines are skipped, a file with no valid line is None.
pub fn parse(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let kind = parts.next();
        let mut l = PsiLine::default();
        let mut fields = 0;
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let ok = match k {
                "avg10" => v.parse().map(|x| l.avg10 = x).is_ok(),
                "avg60" => v.parse().map(|x| l.avg60 = x).is_ok(),
                "avg300" => v.parse().map(|x| l.avg300 = x).is_ok(),
                "total" => v
                    .parse::<u64>()
                    .map(|us| l.total_ns = us.saturating_mul(1000))
                    .is_ok(),
                _ => false,
            };
            fields += usize::from(ok);
        }
        if fields < 4 {
            continue;
        }
        match kind {
            Some("some") => psi.some = Some(l),
            Some("full") => psi.full = Some(l),
            _ => {}
        }
    }
    (psi.some.is_some() || psi.full.is_some()).then_some(psi)
}

fn read(dir: &Path, file: &str) -> Option<Psi> {
    parse(&fs::read_to_string(dir.join(file)).ok()?)
}

impl Layout {
    /// The pressure of cgroup `path`: all None on cgroup v1 or where the kernel has no PSI.
    pub fn pressure(&self, path: &str) -> Result<Pressure> {
        let rel = relative(path)?;
        Ok(match self {
            Layout::V1 { .. } => Pressure::default(),
            Layout::V2 { root } => {
                let dir = root.join(rel);
                Pressure {
                    cpu: read(&dir, "cpu.pressure"),
                    memory: read(&dir, "memory.pressure"),
                    io: read(&dir, "io.pressure"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn parses_the_kernel_format_in_nanoseconds() {
        let p = parse(
            "some avg10=1.50 avg60=0.25 avg300=0.05 total=123456\n\
             full avg10=0.00 avg60=0.10 avg300=0.00 total=42\n",
        )
        .unwrap();
        let some = p.some.unwrap();
        assert_eq!(some.total_ns, 123_456_000);
        assert_eq!((some.avg10, some.avg60, some.avg300), (1.5, 0.25, 0.05));
        assert_eq!(p.full.unwrap().total_ns, 42_000);
        // cpu.pressure before Linux 5.13: no full line.
        let cpu = parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert!(cpu.full.is_none());
        assert_eq!(cpu.some.unwrap().total_ns, 7000);
    }

    #[test]
    fn malformed_input_is_none_never_a_panic() {
        for bad in [
            "",
            "garbage",
            "some avg10=x avg60=0 avg300=0 total=1",
            "some avg10=0.0 avg60=0.0 total=1",
            "some avg10=0 avg60=0 avg300=0 total=-1",
            "other avg10=0 avg60=0 avg300=0 total=1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let huge = parse("some avg10=0 avg60=0 avg300=0 total=18446744073709551615").unwrap();
        assert_eq!(huge.some.unwrap().total_ns, u64::MAX);
    }

    #[test]
    fn v2_fixture_files_and_nothing_on_v1() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("kubepods/pod1");
        fs::create_dir_all(&d).unwrap();
        let line = "some avg10=2.00 avg60=1.00 avg300=0.50 total=1000\n\
                    full avg10=1.00 avg60=0.50 avg300=0.25 total=500\n";
        fs::write(d.join("cpu.pressure"), line).unwrap();
        fs::write(d.join("memory.pressure"), line).unwrap();
        let v2 = Layout::V2 {
            root: root.path().to_path_buf(),
        };
        let p = v2.pressure("/kubepods/pod1").unwrap();
        assert_eq!(p.cpu.unwrap().some.unwrap().total_ns, 1_000_000);
        assert_eq!(p.memory.unwrap().full.unwrap().avg10, 1.0);
        assert!(p.io.is_none(), "no io.pressure file");
        let v1 = Layout::V1 {
            hierarchies: vec![PathBuf::from(root.path())],
        };
        assert_eq!(v1.pressure("/kubepods/pod1").unwrap(), Pressure::default());
        assert!(v2.pressure("/../etc").is_err());
    }
}
