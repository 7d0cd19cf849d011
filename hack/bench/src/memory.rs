//! Memory of processes from /proc: RSS and PSS from `/proc/<pid>/smaps_rollup`, and the
//! process tree (to count a pause process together with its children).

use std::collections::{HashMap, HashSet};

/// Resident and proportional set size, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    /// Resident set size: every page mapped, shared ones counted in full.
    pub rss_kib: u64,
    /// Proportional set size: shared pages divided among the processes sharing them.
    pub pss_kib: u64,
}

impl Mem {
    /// The sum of two figures.
    pub fn plus(self, other: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib + other.rss_kib,
            pss_kib: self.pss_kib + other.pss_kib,
        }
    }

    /// `self - other`, saturating at zero.
    pub fn minus(self, other: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib.saturating_sub(other.rss_kib),
            pss_kib: self.pss_kib.saturating_sub(other.pss_kib),
        }
    }

    /// Divided by `n` (rounded down); zero for `n == 0`.
    pub fn per(self, n: usize) -> Mem {
        if n == 0 {
            return Mem::default();
        }
        Mem {
            rss_kib: self.rss_kib / n as u64,
            pss_kib: self.pss_kib / n as u64,
        }
    }
}

/// RSS and PSS of one process; `None` if it is gone (or a kernel thread).
pub fn of_pid(pid: i32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_smaps_rollup(&text)
}

/// The sum over `pids` (processes that are gone count nothing), and how many were counted.
pub fn of_pids(pids: &[i32]) -> (Mem, usize) {
    let mut total = Mem::default();
    let mut n = 0;
    for &pid in pids {
        if let Some(m) = of_pid(pid) {
            total = total.plus(m);
            n += 1;
        }
    }
    (total, n)
}

/// Parses the `Rss:` and `Pss:` lines of smaps_rollup (kB).
pub fn parse_smaps_rollup(text: &str) -> Option<Mem> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(Mem {
        rss_kib: field("Rss:")?,
        pss_kib: field("Pss:")?,
    })
}

/// Every process with its argv (split at NUL) and parent, from /proc.
#[derive(Debug, Default)]
pub struct ProcTable {
    /// pid → (ppid, argv).
    pub procs: HashMap<i32, (i32, Vec<String>)>,
}

impl ProcTable {
    /// Reads /proc now.
    pub fn read() -> ProcTable {
        let mut procs = HashMap::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let Some(ppid) = ppid(pid) else { continue };
                let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|raw| {
                        raw.split(|b| *b == 0)
                            .filter(|a| !a.is_empty())
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                procs.insert(pid, (ppid, argv));
            }
        }
        ProcTable { procs }
    }

    /// PIDs whose argv satisfies `pred`, sorted.
    pub fn matching(&self, pred: impl Fn(&[String]) -> bool) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .procs
            .iter()
            .filter(|(_, (_, argv))| pred(argv))
            .map(|(pid, _)| *pid)
            .collect();
        v.sort_unstable();
        v
    }

    /// `roots` and all their descendants, each once, sorted.
    pub fn subtrees(&self, roots: &[i32]) -> Vec<i32> {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (pid, (ppid, _)) in &self.procs {
            children.entry(*ppid).or_default().push(*pid);
        }
        let mut seen = HashSet::new();
        let mut stack: Vec<i32> = roots
            .iter()
            .copied()
            .filter(|p| self.procs.contains_key(p))
            .collect();
        while let Some(p) = stack.pop() {
            if seen.insert(p)
                && let Some(c) = children.get(&p)
            {
                stack.extend(c);
            }
        }
        let mut v: Vec<i32> = seen.into_iter().collect();
        v.sort_unstable();
        v
    }
}

/// The parent PID from `/proc/<pid>/stat` (the field after the state, which follows the
/// last `)`: the command may contain parentheses).
fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_rollup() {
        let text = "55d0c4a00000-7ffd3b5fe000 ---p 00000000 00:00 0                          [rollup]\n\
                    Rss:                3712 kB\n\
                    Pss:                 871 kB\n\
                    Pss_Dirty:           412 kB\n\
                    Pss_Anon:            400 kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            Some(Mem {
                rss_kib: 3712,
                pss_kib: 871
            })
        );
        assert_eq!(parse_smaps_rollup("nothing"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let m = of_pid(me).expect("own smaps_rollup");
        assert!(m.rss_kib > 0 && m.pss_kib > 0 && m.pss_kib <= m.rss_kib);
        let t = ProcTable::read();
        assert!(t.procs.contains_key(&me));
        assert!(t.subtrees(&[me]).contains(&me));
        assert_eq!(t.subtrees(&[-5]), Vec::<i32>::new());
    }

    #[test]
    fn arithmetic() {
        let a = Mem {
            rss_kib: 10,
            pss_kib: 6,
        };
        let b = Mem {
            rss_kib: 4,
            pss_kib: 8,
        };
        assert_eq!(
            a.plus(b),
            Mem {
                rss_kib: 14,
                pss_kib: 14
            }
        );
        assert_eq!(
            a.minus(b),
            Mem {
                rss_kib: 6,
                pss_kib: 0
            }
        );
        assert_eq!(
            a.per(2),
            Mem {
                rss_kib: 5,
                pss_kib: 3
            }
        );
        assert_eq!(a.per(0), Mem::default());
    }
}
