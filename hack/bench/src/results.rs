//! What a run measured: latency samples per operation and runtime, memory per pod count,
//! targets, notes and versions.

use std::time::Duration;

use crate::memory::Mem;
use crate::plan::Plan;
use crate::stats;

/// Index of berth in per-runtime arrays.
pub const BERTH: usize = 0;
/// Index of containerd in per-runtime arrays.
pub const CONTAINERD: usize = 1;
/// Names by index.
pub const RUNTIMES: [&str; 2] = ["berth", "containerd"];

/// A target from issue 5: the highest acceptable ratio berth / containerd.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// On the medians.
    pub median: Option<f64>,
    /// On the 95th percentiles.
    pub p95: Option<f64>,
}

impl Target {
    /// A target on the median only.
    pub fn median(max: f64) -> Option<Target> {
        Some(Target {
            median: Some(max),
            p95: None,
        })
    }
}

/// One timed operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// Stable key.
    pub key: &'static str,
    /// What the row says.
    pub label: String,
    /// A breakdown of the row above it.
    pub detail: bool,
    /// Latencies in milliseconds, per runtime.
    pub samples: [Vec<f64>; 2],
    /// Why a runtime has no figure (e.g. the RPC is unimplemented).
    pub unavailable: [Option<String>; 2],
    /// The target, if it sets one.
    pub target: Option<Target>,
}

impl Op {
    /// Median per runtime.
    pub fn medians(&self) -> [Option<f64>; 2] {
        [
            stats::median(&self.samples[0]),
            stats::median(&self.samples[1]),
        ]
    }

    /// 95th percentile per runtime.
    pub fn p95s(&self) -> [Option<f64>; 2] {
        [stats::p95(&self.samples[0]), stats::p95(&self.samples[1])]
    }

    /// Ratio of the medians, berth / containerd.
    pub fn median_ratio(&self) -> Option<f64> {
        let m = self.medians();
        stats::ratio(m[BERTH], m[CONTAINERD])
    }

    /// Ratio of the 95th percentiles, berth / containerd.
    pub fn p95_ratio(&self) -> Option<f64> {
        let p = self.p95s();
        stats::ratio(p[BERTH], p[CONTAINERD])
    }
}

/// Memory of both runtimes at one pod count.
#[derive(Debug, Clone, Default)]
pub struct MemLevel {
    /// Running pods per runtime.
    pub pods: usize,
    /// berthd / containerd.
    pub daemon: [Mem; 2],
    /// Monitors / shims.
    pub helpers: [Mem; 2],
    /// How many monitors / shims were found.
    pub helper_count: [usize; 2],
    /// Pause (infra) processes and their children.
    pub pause: [Mem; 2],
    /// How many pause processes (with children) were found.
    pub pause_count: [usize; 2],
}

impl MemLevel {
    /// Monitors / shims plus pause processes.
    pub fn per_pod_helpers(&self, rt: usize) -> Mem {
        self.helpers[rt].plus(self.pause[rt]).per(self.pods)
    }
}

/// A timing of runc alone (see [`crate::floor`]).
#[derive(Debug, Clone)]
pub struct Floor {
    /// Stable key.
    pub key: &'static str,
    /// What the row says.
    pub label: &'static str,
    /// The operation of the runtimes this is the floor of.
    pub under: &'static str,
    /// Latencies in milliseconds.
    pub samples: Vec<f64>,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct Results {
    /// The sizes used.
    pub plan: Plan,
    /// Timed operations, in report order.
    pub ops: Vec<Op>,
    /// Memory samples, by ascending pod count.
    pub memory: Vec<MemLevel>,
    /// runc alone: the floor under pod start and teardown.
    pub floors: Vec<Floor>,
    /// Things a reader must know (fallbacks, checks, caveats).
    pub notes: Vec<String>,
    /// Versions of everything involved, as (what, version).
    pub versions: Vec<(String, String)>,
    /// The machine, as (what, value).
    pub machine: Vec<(String, String)>,
    /// When the run started, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Results {
    /// Empty results with every operation of `plan` in report order; `pull_desc`
    /// describes the cold-pull image.
    pub fn new(plan: &Plan, pull_desc: &str) -> Results {
        let par = plan.parallelism;
        let pods = plan.running_pods;
        let op = |key, label: String, detail, target| Op {
            key,
            label,
            detail,
            samples: [Vec::new(), Vec::new()],
            unavailable: [None, None],
            target,
        };
        let ops = vec![
            op(
                "pull",
                format!("image pull, cold ({pull_desc})"),
                false,
                Target::median(0.6),
            ),
            op(
                "start",
                "pod start, sequential (run + create + start)".into(),
                false,
                Some(Target {
                    median: Some(0.4),
                    p95: Some(0.5),
                }),
            ),
            op("start.run", "RunPodSandbox".into(), true, None),
            op("start.create", "CreateContainer".into(), true, None),
            op("start.start", "StartContainer".into(), true, None),
            op(
                "par",
                format!("pod start, {par} in parallel (per pod)"),
                false,
                Target::median(0.5),
            ),
            op(
                "par.batch",
                format!("batch of {par}, wall time"),
                true,
                None,
            ),
            op(
                "teardown",
                "pod teardown, sequential (stop + remove)".into(),
                false,
                Target::median(0.5),
            ),
            op("teardown.stop", "StopPodSandbox".into(), true, None),
            op("teardown.remove", "RemovePodSandbox".into(), true, None),
            op(
                "teardown.par",
                format!("pod teardown, {par} in parallel (per pod)"),
                false,
                None,
            ),
            op(
                "list.containers",
                format!("ListContainers ({pods} pods)"),
                false,
                Target::median(1.0),
            ),
            op(
                "list.pods",
                format!("ListPodSandbox ({pods} pods)"),
                false,
                Target::median(1.0),
            ),
            op(
                "status.container",
                format!("ContainerStatus ({pods} pods)"),
                false,
                Target::median(1.0),
            ),
            op(
                "list.stats",
                format!("ListContainerStats ({pods} pods)"),
                false,
                Target::median(0.5),
            ),
            op(
                "exec.sync",
                "ExecSync `true` (an exec probe)".into(),
                false,
                Some(Target {
                    median: Some(0.5),
                    p95: Some(0.5),
                }),
            ),
            op(
                "exec.ttfb",
                "exec over SPDY: Exec to first stdout byte".into(),
                false,
                None,
            ),
            op(
                "exec.throughput",
                "exec over SPDY: 100 MiB of stdout".into(),
                false,
                Target::median(1.0),
            ),
            op(
                "call.version",
                "Version after 20 ms idle (no work: client and transport)".into(),
                false,
                None,
            ),
        ];
        Results {
            plan: plan.clone(),
            ops,
            memory: Vec::new(),
            floors: vec![
                Floor {
                    key: "runc.start",
                    label: "runc create + runc start (busybox sleep)",
                    under: "start",
                    samples: Vec::new(),
                },
                Floor {
                    key: "runc.start.warm",
                    label: "the same, after berth's no-op cgroup move (cgroup_warmup)",
                    under: "start",
                    samples: Vec::new(),
                },
                Floor {
                    key: "runc.delete",
                    label: "runc kill KILL + wait for the exit + runc delete",
                    under: "teardown",
                    samples: Vec::new(),
                },
            ],
            notes: Vec::new(),
            versions: Vec::new(),
            machine: Vec::new(),
            date: String::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// The operation `key`.
    pub fn op(&self, key: &str) -> Option<&Op> {
        self.ops.iter().find(|o| o.key == key)
    }

    fn op_mut(&mut self, key: &str) -> Option<&mut Op> {
        self.ops.iter_mut().find(|o| o.key == key)
    }

    /// Adds one latency sample of `key` for runtime `rt`.
    pub fn record(&mut self, key: &str, rt: usize, d: Duration) {
        if let Some(op) = self.op_mut(key) {
            op.samples[rt].push(d.as_secs_f64() * 1000.0);
        }
    }

    /// Adds one sample of floor `key`.
    pub fn record_floor(&mut self, key: &str, d: Duration) {
        if let Some(f) = self.floors.iter_mut().find(|f| f.key == key) {
            f.samples.push(d.as_secs_f64() * 1000.0);
        }
    }

    /// Marks `key` as unavailable on runtime `rt`.
    pub fn unavailable(&mut self, key: &str, rt: usize, why: &str) {
        if let Some(op) = self.op_mut(key) {
            op.unavailable[rt] = Some(why.to_string());
        }
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The memory sample with the most pods and the one with none.
    pub fn memory_extremes(&self) -> Option<(&MemLevel, &MemLevel)> {
        let zero = self.memory.iter().find(|m| m.pods == 0)?;
        let max = self.memory.iter().max_by_key(|m| m.pods)?;
        (max.pods > 0).then_some((zero, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Mode, Plan};

    #[test]
    fn records_and_ratios() {
        let mut r = Results::new(&Plan::for_mode(Mode::Smoke), "x");
        r.record("start", BERTH, Duration::from_millis(100));
        r.record("start", CONTAINERD, Duration::from_millis(400));
        r.record("nope", BERTH, Duration::from_millis(1));
        let op = r.op("start").expect("start op");
        assert_eq!(op.median_ratio(), Some(0.25));
        assert_eq!(op.p95_ratio(), Some(0.25));
        r.unavailable("list.stats", BERTH, "Unimplemented");
        assert!(r.op("list.stats").expect("op").unavailable[BERTH].is_some());
    }
}
