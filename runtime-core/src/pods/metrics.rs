//! ListMetricDescriptors and ListPodSandboxMetrics (KEP-2371, CRI-provided cAdvisor
//! metrics): the metric families kubelet serves on /metrics/cadvisor, as containerd 2.x
//! answers them, from the same cgroup, writable-layer and network-namespace readings as
//! the stats RPCs (see `stats` and [`crate::cgroups::CgroupDetail`]).
//!
//! Conventions, those of containerd 2.x (CRI-O differs only in the order of the label
//! keys and in naming the pod-level container `POD`):
//! - every family has the label keys `pod`, `namespace`, `container`, `id`, `image`
//!   ([`BASE_LABEL_KEYS`]), some a few more (`interface`, `device`, ...), and every metric
//!   has exactly as many label values, in that order;
//! - pod-level metrics (the network of the pod's namespace, one series per interface but
//!   `lo`) have an empty `container` and `image` and the pod's ID as `id`;
//! - `*_seconds_total` values are whole seconds, truncated: CRI's values are integers
//!   (UInt64Value) and both containerd and CRI-O divide nanoseconds by 10^9;
//! - `container_last_seen` and `container_start_time_seconds` are Unix seconds;
//! - limits with no limit set (`container_spec_memory_limit_bytes`, `..._swap_limit_bytes`,
//!   `container_threads_max`) are 0;
//! - the timestamp of every metric is the time of the reading, ns.
//!
//! Only ready pods and their running containers are reported; a container whose cgroup
//! cannot be read is reported with the metrics that could be read.

use std::collections::HashMap;
use std::path::Path;

use berth_cri::v1 as cri;

use super::container::Lifecycle;
use super::records::{ContainerRecord, SandboxRecord, SandboxState};
use super::stats::{NetDev, net_dev_path, netns_pid, read_net_dev};
use super::{PodService, now_ns};
use crate::cgroups::CgroupDetail;

/// The label keys every metric family starts with.
pub const BASE_LABEL_KEYS: [&str; 5] = ["pod", "namespace", "container", "id", "image"];

use cri::MetricType::{Counter, Gauge};

/// One metric family: name, help, type and the label keys after [`BASE_LABEL_KEYS`].
struct Family {
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    extra: &'static [&'static str],
}

const fn fam(
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    extra: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind,
        extra,
    }
}

const NET: &[&str] = &["interface"];
const DEV: &[&str] = &["device"];

/// Every family berth reports; ListMetricDescriptors lists exactly these.
const FAMILIES: &[Family] = &[
    // CPU
    fam(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
        Counter,
        &[],
    ),
    fam(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed in seconds.",
        Counter,
        &[],
    ),
    fam(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed in seconds.",
        Counter,
        &[],
    ),
    fam(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        Counter,
        &[],
    ),
    fam(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        Counter,
        &[],
    ),
    fam(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        Counter,
        &[],
    ),
    // Memory
    fam(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        Gauge,
        &[],
    ),
    fam(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Gauge,
        &[],
    ),
    fam("container_memory_rss", "Size of RSS in bytes.", Gauge, &[]),
    fam(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        Gauge,
        &[],
    ),
    fam(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        Gauge,
        &[],
    ),
    fam(
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
        Gauge,
        &[],
    ),
    fam(
        "container_memory_swap",
        "Container swap usage in bytes.",
        Gauge,
        &[],
    ),
    fam(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
        Gauge,
        &[],
    ),
    fam(
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        Counter,
        &[],
    ),
    fam(
        "container_memory_total_active_file_bytes",
        "Current total active file in bytes.",
        Gauge,
        &[],
    ),
    fam(
        "container_memory_total_inactive_file_bytes",
        "Current total inactive file in bytes.",
        Gauge,
        &[],
    ),
    fam(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        Counter,
        &["failure_type", "scope"],
    ),
    fam(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        Counter,
        &[],
    ),
    // Processes
    fam(
        "container_processes",
        "Number of processes running inside the container.",
        Gauge,
        &[],
    ),
    fam(
        "container_threads",
        "Number of threads running inside the container.",
        Gauge,
        &[],
    ),
    fam(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero.",
        Gauge,
        &[],
    ),
    fam(
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
        Gauge,
        &[],
    ),
    fam(
        "container_sockets",
        "Number of open sockets for the container.",
        Gauge,
        &[],
    ),
    // Writable layer
    fam(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        Gauge,
        DEV,
    ),
    fam(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        Gauge,
        DEV,
    ),
    fam("container_fs_inodes_total", "Number of inodes.", Gauge, DEV),
    fam(
        "container_fs_inodes_free",
        "Number of available inodes.",
        Gauge,
        DEV,
    ),
    // Block I/O
    fam(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read.",
        Counter,
        DEV,
    ),
    fam(
        "container_fs_reads_total",
        "Cumulative count of reads completed.",
        Counter,
        DEV,
    ),
    fam(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written.",
        Counter,
        DEV,
    ),
    fam(
        "container_fs_writes_total",
        "Cumulative count of writes completed.",
        Counter,
        DEV,
    ),
    fam(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        Counter,
        &["device", "major", "minor", "operation"],
    ),
    // Network (pod level)
    fam(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        Counter,
        NET,
    ),
    fam(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        Counter,
        NET,
    ),
    fam(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        Counter,
        NET,
    ),
    fam(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        Counter,
        NET,
    ),
    fam(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        Counter,
        NET,
    ),
    fam(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        Counter,
        NET,
    ),
    fam(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        Counter,
        NET,
    ),
    fam(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        Counter,
        NET,
    ),
    // Spec and misc
    fam(
        "container_spec_cpu_period",
        "CPU period of the container.",
        Gauge,
        &[],
    ),
    fam(
        "container_spec_cpu_shares",
        "CPU share of the container.",
        Gauge,
        &[],
    ),
    fam(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container in bytes, 0 if unlimited.",
        Gauge,
        &[],
    ),
    fam(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container in bytes, 0 if unlimited.",
        Gauge,
        &[],
    ),
    fam(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        Gauge,
        &[],
    ),
    fam(
        "container_last_seen",
        "Last time a container was seen by the exporter.",
        Gauge,
        &[],
    ),
];

/// The descriptors of every metric ListPodSandboxMetrics reports.
pub fn metric_descriptors() -> Vec<cri::MetricDescriptor> {
    FAMILIES
        .iter()
        .map(|f| cri::MetricDescriptor {
            name: f.name.to_string(),
            help: f.help.to_string(),
            label_keys: BASE_LABEL_KEYS
                .iter()
                .chain(f.extra)
                .map(|k| k.to_string())
                .collect(),
        })
        .collect()
}

const NS_PER_S: u64 = 1_000_000_000;

/// Builds the metrics of one pod or container: the base label values, one timestamp.
struct Emitter {
    ts: i64,
    base: [String; 5],
    out: Vec<cri::Metric>,
}

impl Emitter {
    fn new(ts: i64, base: [String; 5]) -> Emitter {
        Emitter {
            ts,
            base,
            out: Vec::new(),
        }
    }

    /// Adds metric `name` with the family's type and `extra` label values; nothing when
    /// the value is unknown. A name without a family is a bug (the unit tests cover every
    /// emitting path) and is dropped rather than sent undescribed.
    fn put(&mut self, name: &'static str, extra: &[&str], value: Option<u64>) {
        let Some(value) = value else { return };
        let Some(f) = FAMILIES.iter().find(|f| f.name == name) else {
            debug_assert!(false, "metric {name} has no descriptor");
            return;
        };
        debug_assert_eq!(f.extra.len(), extra.len(), "labels of {name}");
        self.out.push(cri::Metric {
            name: name.to_string(),
            timestamp: self.ts,
            metric_type: f.kind as i32,
            label_values: self
                .base
                .iter()
                .cloned()
                .chain(extra.iter().map(|s| s.to_string()))
                .collect(),
            value: Some(cri::UInt64Value { value }),
        });
    }
}

/// Usage and size of the filesystem holding a writable layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LayerFs {
    /// The filesystem's device (mount source, e.g. `/dev/vda1`, else `MAJ:MIN`).
    pub device: String,
    /// Bytes the layer uses.
    pub used_bytes: u64,
    /// Size of the filesystem, bytes.
    pub capacity_bytes: u64,
    /// Inodes of the filesystem.
    pub inodes_total: u64,
    /// Free inodes of the filesystem.
    pub inodes_free: u64,
}

/// What one container's metrics are made of, all read beforehand.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerReading {
    /// The cgroup.
    pub cgroup: CgroupDetail,
    /// The writable layer, when its filesystem could be measured.
    pub layer: Option<LayerFs>,
    /// (open file descriptors, of which sockets) of the container's processes.
    pub fds: Option<(u64, u64)>,
    /// Start time, Unix ns (0: not started).
    pub started_at_ns: i64,
    /// Block devices by `(major, minor)`: their names, for the `device` label.
    pub devices: HashMap<(u64, u64), String>,
}

/// The metrics of one container from its reading.
fn container_metrics(ts: i64, base: [String; 5], r: &ContainerReading) -> Vec<cri::Metric> {
    let mut e = Emitter::new(ts, base);
    let c = &r.cgroup;
    let b = &c.base;
    let secs = |ns: Option<u64>| ns.map(|n| n / NS_PER_S);
    e.put(
        "container_cpu_usage_seconds_total",
        &[],
        secs(b.cpu_usage_ns),
    );
    e.put("container_cpu_user_seconds_total", &[], secs(c.cpu_user_ns));
    e.put(
        "container_cpu_system_seconds_total",
        &[],
        secs(c.cpu_system_ns),
    );
    e.put("container_cpu_cfs_periods_total", &[], c.cfs_periods);
    e.put(
        "container_cpu_cfs_throttled_periods_total",
        &[],
        c.cfs_throttled_periods,
    );
    e.put(
        "container_cpu_cfs_throttled_seconds_total",
        &[],
        secs(c.cfs_throttled_ns),
    );

    e.put("container_memory_usage_bytes", &[], b.memory_usage);
    e.put(
        "container_memory_working_set_bytes",
        &[],
        b.memory_working_set,
    );
    e.put("container_memory_rss", &[], b.memory_rss);
    e.put("container_memory_cache", &[], c.memory_cache);
    e.put("container_memory_mapped_file", &[], c.memory_mapped_file);
    e.put("container_memory_kernel_usage", &[], c.memory_kernel);
    e.put("container_memory_swap", &[], c.memory_swap);
    e.put("container_memory_max_usage_bytes", &[], c.memory_max_usage);
    e.put("container_memory_failcnt", &[], c.memory_failcnt);
    e.put(
        "container_memory_total_active_file_bytes",
        &[],
        c.memory_active_file,
    );
    e.put(
        "container_memory_total_inactive_file_bytes",
        &[],
        c.memory_inactive_file,
    );
    e.put(
        "container_memory_failures_total",
        &["pgfault", "container"],
        b.page_faults,
    );
    e.put(
        "container_memory_failures_total",
        &["pgmajfault", "container"],
        b.major_page_faults,
    );
    e.put("container_oom_events_total", &[], c.oom_kills);

    e.put("container_processes", &[], Some(c.procs.len() as u64));
    e.put("container_threads", &[], c.threads);
    e.put("container_threads_max", &[], c.threads_max);
    e.put("container_file_descriptors", &[], r.fds.map(|f| f.0));
    e.put("container_sockets", &[], r.fds.map(|f| f.1));

    if let Some(l) = &r.layer {
        let dev = [l.device.as_str()];
        e.put("container_fs_usage_bytes", &dev, Some(l.used_bytes));
        e.put("container_fs_limit_bytes", &dev, Some(l.capacity_bytes));
        e.put("container_fs_inodes_total", &dev, Some(l.inodes_total));
        e.put("container_fs_inodes_free", &dev, Some(l.inodes_free));
    }
    for io in &c.io {
        let name = r
            .devices
            .get(&(io.major, io.minor))
            .cloned()
            .unwrap_or_else(|| format!("{}:{}", io.major, io.minor));
        let dev = [name.as_str()];
        e.put("container_fs_reads_bytes_total", &dev, Some(io.read_bytes));
        e.put("container_fs_reads_total", &dev, Some(io.reads));
        e.put(
            "container_fs_writes_bytes_total",
            &dev,
            Some(io.write_bytes),
        );
        e.put("container_fs_writes_total", &dev, Some(io.writes));
        let (major, minor) = (io.major.to_string(), io.minor.to_string());
        for (op, v) in [("Read", io.read_bytes), ("Write", io.write_bytes)] {
            e.put(
                "container_blkio_device_usage_total",
                &[&name, &major, &minor, op],
                Some(v),
            );
        }
    }

    e.put("container_spec_cpu_period", &[], c.cpu_period);
    e.put("container_spec_cpu_shares", &[], c.cpu_shares);
    e.put("container_spec_memory_limit_bytes", &[], c.memory_limit);
    e.put(
        "container_spec_memory_swap_limit_bytes",
        &[],
        c.memory_swap_limit,
    );
    e.put(
        "container_start_time_seconds",
        &[],
        (r.started_at_ns > 0).then_some(r.started_at_ns as u64 / NS_PER_S),
    );
    e.put(
        "container_last_seen",
        &[],
        Some(ts.max(0) as u64 / NS_PER_S),
    );
    e.out
}

/// The pod-level metrics: the counters of each interface of the pod's network namespace.
fn pod_metrics(ts: i64, base: [String; 5], net: &[NetDev]) -> Vec<cri::Metric> {
    let mut e = Emitter::new(ts, base);
    for d in net {
        let i = [d.name.as_str()];
        e.put(
            "container_network_receive_bytes_total",
            &i,
            Some(d.rx_bytes),
        );
        e.put(
            "container_network_receive_packets_total",
            &i,
            Some(d.rx_packets),
        );
        e.put(
            "container_network_receive_packets_dropped_total",
            &i,
            Some(d.rx_dropped),
        );
        e.put(
            "container_network_receive_errors_total",
            &i,
            Some(d.rx_errors),
        );
        e.put(
            "container_network_transmit_bytes_total",
            &i,
            Some(d.tx_bytes),
        );
        e.put(
            "container_network_transmit_packets_total",
            &i,
            Some(d.tx_packets),
        );
        e.put(
            "container_network_transmit_packets_dropped_total",
            &i,
            Some(d.tx_dropped),
        );
        e.put(
            "container_network_transmit_errors_total",
            &i,
            Some(d.tx_errors),
        );
    }
    e.out
}

/// Open file descriptors and sockets of `pids` (processes gone meanwhile count nothing).
fn count_fds(pids: &[i32]) -> (u64, u64) {
    let (mut fds, mut sockets) = (0, 0);
    for pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
            {
                sockets += 1;
            }
        }
    }
    (fds, sockets)
}

/// The mount source of each `major:minor` in a mountinfo text (the first mount wins).
fn mount_sources(mountinfo: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(dev), Some(source)) = (left.split(' ').nth(2), right.split(' ').nth(1)) else {
            continue;
        };
        out.entry(dev.to_string())
            .or_insert_with(|| crate::sandbox::ns::unescape_mountinfo(source));
    }
    out
}

/// Block device names by number, from /sys/dev/block/MAJ:MIN/uevent (`DEVNAME=`).
fn block_device_name(major: u64, minor: u64) -> Option<String> {
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| format!("/dev/{n}"))
}

/// Size, inodes and device of the filesystem holding `dir`.
fn layer_fs(dir: &Path, used_bytes: u64, sources: &HashMap<String, String>) -> Option<LayerFs> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let vfs = nix::sys::statvfs::statvfs(dir).ok()?;
    let key = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    Some(LayerFs {
        device: sources.get(&key).cloned().unwrap_or(key),
        used_bytes,
        capacity_bytes: vfs.blocks() as u64 * vfs.fragment_size() as u64,
        inodes_total: vfs.files() as u64,
        inodes_free: vfs.files_free() as u64,
    })
}

fn pod_base(pod: &SandboxRecord) -> (String, String) {
    let m = pod.metadata();
    (m.name, m.namespace)
}

impl PodService {
    /// ListPodSandboxMetrics: every ready pod with its pod-level metrics and the metrics
    /// of each running container. Reads cgroup and /proc files: call it off the async
    /// threads.
    pub fn list_pod_sandbox_metrics(&self) -> Vec<cri::PodSandboxMetrics> {
        let sources = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| mount_sources(&t))
            .unwrap_or_default();
        let mut devices: HashMap<(u64, u64), String> = HashMap::new();
        let mut out = Vec::new();
        for entry in self.sandbox_entries() {
            let pod = entry.get();
            if pod.state != SandboxState::Ready {
                continue;
            }
            let (pod_name, namespace) = pod_base(&pod);
            let containers: Vec<ContainerRecord> = self
                .containers_of(&pod.id)
                .iter()
                .map(|e| e.get())
                .filter(|c| matches!(c.state, Lifecycle::Running))
                .collect();
            let ts = now_ns();
            let net = netns_pid(&pod, &containers)
                .and_then(|pid| read_net_dev(&net_dev_path(pid)))
                .unwrap_or_default();
            let base = [
                pod_name.clone(),
                namespace.clone(),
                String::new(),
                pod.id.clone(),
                String::new(),
            ];
            let mut metrics = cri::PodSandboxMetrics {
                pod_sandbox_id: pod.id.clone(),
                metrics: pod_metrics(ts, base, &net),
                container_metrics: Vec::new(),
            };
            for c in &containers {
                let cgroup = match self.inner.cgroups.detail(&c.cgroup_path) {
                    Ok(d) => d,
                    Err(err) => {
                        tracing::debug!(container = %c.id, error = %err, "container metrics: cgroup");
                        CgroupDetail::default()
                    }
                };
                for io in &cgroup.io {
                    devices.entry((io.major, io.minor)).or_insert_with(|| {
                        block_device_name(io.major, io.minor)
                            .unwrap_or_else(|| format!("{}:{}", io.major, io.minor))
                    });
                }
                let (used, _) = self.layer_usage(c);
                let reading = ContainerReading {
                    fds: Some(count_fds(&cgroup.procs)),
                    layer: layer_fs(&c.dir.join("upper"), used, &sources),
                    cgroup,
                    started_at_ns: c.started_at_ns,
                    devices: devices.clone(),
                };
                let base = [
                    pod_name.clone(),
                    namespace.clone(),
                    c.metadata().name,
                    c.id.clone(),
                    c.image_ref.clone(),
                ];
                metrics.container_metrics.push(cri::ContainerMetrics {
                    container_id: c.id.clone(),
                    metrics: container_metrics(now_ns(), base, &reading),
                });
            }
            out.push(metrics);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{IoDevice, Layout};

    fn base(container: &str) -> [String; 5] {
        [
            "web".into(),
            "default".into(),
            container.into(),
            "id".into(),
            "busybox".into(),
        ]
    }

    fn descriptors() -> HashMap<String, cri::MetricDescriptor> {
        metric_descriptors()
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect()
    }

    /// Every metric has a descriptor and as many label values as it has keys.
    fn check_labels(metrics: &[cri::Metric], descs: &HashMap<String, cri::MetricDescriptor>) {
        for m in metrics {
            let d = descs
                .get(&m.name)
                .unwrap_or_else(|| panic!("{} has no descriptor", m.name));
            assert_eq!(
                m.label_values.len(),
                d.label_keys.len(),
                "labels of {}: {:?} for {:?}",
                m.name,
                m.label_values,
                d.label_keys
            );
            assert!(m.value.is_some(), "{} has a value", m.name);
        }
    }

    fn full_reading() -> ContainerReading {
        let mut cgroup = CgroupDetail::default();
        cgroup.base.cpu_usage_ns = Some(2_999_999_999);
        cgroup.base.memory_usage = Some(1 << 20);
        cgroup.base.memory_working_set = Some(1 << 19);
        cgroup.base.memory_rss = Some(4096);
        cgroup.base.page_faults = Some(10);
        cgroup.base.major_page_faults = Some(1);
        cgroup.cpu_user_ns = Some(1_500_000_000);
        cgroup.cpu_system_ns = Some(999_999_999);
        cgroup.cfs_periods = Some(1);
        cgroup.cfs_throttled_periods = Some(1);
        cgroup.cfs_throttled_ns = Some(1);
        cgroup.memory_cache = Some(1);
        cgroup.memory_mapped_file = Some(1);
        cgroup.memory_kernel = Some(1);
        cgroup.memory_swap = Some(0);
        cgroup.memory_max_usage = Some(1);
        cgroup.memory_failcnt = Some(0);
        cgroup.memory_active_file = Some(1);
        cgroup.memory_inactive_file = Some(1);
        cgroup.oom_kills = Some(0);
        cgroup.threads = Some(2);
        cgroup.threads_max = Some(0);
        cgroup.procs = vec![1, 2];
        cgroup.io = vec![IoDevice {
            major: 8,
            minor: 0,
            read_bytes: 1,
            write_bytes: 2,
            reads: 3,
            writes: 4,
        }];
        cgroup.cpu_period = Some(100_000);
        cgroup.cpu_shares = Some(1024);
        cgroup.memory_limit = Some(64 << 20);
        cgroup.memory_swap_limit = Some(64 << 20);
        ContainerReading {
            cgroup,
            layer: Some(LayerFs {
                device: "/dev/vda1".into(),
                used_bytes: 8192,
                capacity_bytes: 1 << 30,
                inodes_total: 1000,
                inodes_free: 900,
            }),
            fds: Some((3, 1)),
            started_at_ns: 1_700_000_000_500_000_000,
            devices: HashMap::from([((8, 0), "/dev/sda".to_string())]),
        }
    }

    #[test]
    fn descriptors_are_unique_and_complete() {
        let list = metric_descriptors();
        let descs = descriptors();
        assert_eq!(descs.len(), list.len(), "names are unique");
        for d in &list {
            assert!(!d.help.is_empty(), "{} has help", d.name);
            assert_eq!(&d.label_keys[..5], &BASE_LABEL_KEYS, "{}", d.name);
        }
        for name in [
            "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes",
            "container_network_receive_bytes_total",
            "container_oom_events_total",
        ] {
            assert!(descs.contains_key(name), "{name}");
        }
        assert_eq!(
            descs["container_network_transmit_errors_total"].label_keys[5],
            "interface"
        );
    }

    #[test]
    fn every_family_is_emitted_with_its_labels() {
        let descs = descriptors();
        let net = vec![NetDev {
            name: "eth0".into(),
            rx_bytes: 100,
            rx_packets: 2,
            tx_bytes: 50,
            tx_packets: 1,
            ..Default::default()
        }];
        let pod = pod_metrics(1, base(""), &net);
        let ctr = container_metrics(1, base("app"), &full_reading());
        check_labels(&pod, &descs);
        check_labels(&ctr, &descs);
        let emitted: std::collections::HashSet<&str> =
            pod.iter().chain(&ctr).map(|m| m.name.as_str()).collect();
        for d in descs.keys() {
            assert!(emitted.contains(d.as_str()), "{d} is never emitted");
        }
        let get = |name: &str| {
            ctr.iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        // Whole seconds, truncated, as containerd and CRI-O report them.
        assert_eq!(
            get("container_cpu_usage_seconds_total")
                .value
                .unwrap()
                .value,
            2
        );
        assert_eq!(
            get("container_cpu_user_seconds_total").value.unwrap().value,
            1
        );
        assert_eq!(
            get("container_cpu_system_seconds_total")
                .value
                .unwrap()
                .value,
            0
        );
        assert_eq!(
            get("container_cpu_usage_seconds_total").metric_type,
            cri::MetricType::Counter as i32
        );
        let ws = get("container_memory_working_set_bytes");
        assert_eq!(ws.metric_type, cri::MetricType::Gauge as i32);
        assert_eq!(ws.value.unwrap().value, 1 << 19);
        assert_eq!(ws.label_values, base("app").to_vec());
        assert_eq!(
            get("container_start_time_seconds").value.unwrap().value,
            1_700_000_000
        );
        assert_eq!(get("container_processes").value.unwrap().value, 2);
        let blk = get("container_fs_reads_bytes_total");
        assert_eq!(blk.label_values[5], "/dev/sda");
        let rx = &pod[0];
        assert_eq!(rx.name, "container_network_receive_bytes_total");
        assert_eq!(
            rx.label_values,
            ["web", "default", "", "id", "busybox", "eth0"]
        );
        assert_eq!(rx.value.unwrap().value, 100);
    }

    #[test]
    fn unknown_values_are_left_out() {
        let r = ContainerReading::default();
        let m = container_metrics(1, base("c"), &r);
        check_labels(&m, &descriptors());
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["container_processes", "container_last_seen"],
            "an unreadable cgroup gives only what is known"
        );
        assert!(pod_metrics(1, base(""), &[]).is_empty());
    }

    /// The cgroup-v2 path from fixture files to metrics.
    #[test]
    fn v2_fixture_to_metrics() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("pod/c");
        std::fs::create_dir_all(&d).unwrap();
        for (f, t) in [
            (
                "cpu.stat",
                "usage_usec 3500000\nuser_usec 3000000\nsystem_usec 500000\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
            ),
            ("memory.current", "2097152\n"),
            (
                "memory.stat",
                "anon 1048576\nfile 4096\ninactive_file 4096\npgfault 5\npgmajfault 0\n",
            ),
            ("memory.max", "max\n"),
            ("memory.events", "max 0\noom_kill 0\n"),
            ("cgroup.procs", "1\n"),
        ] {
            std::fs::write(d.join(f), t).unwrap();
        }
        let l = Layout::V2 {
            root: root.path().to_path_buf(),
        };
        let r = ContainerReading {
            cgroup: l.detail("/pod/c").unwrap(),
            ..Default::default()
        };
        let m = container_metrics(5, base("c"), &r);
        check_labels(&m, &descriptors());
        let v = |n: &str| {
            m.iter()
                .find(|x| x.name == n)
                .map(|x| x.value.unwrap().value)
        };
        assert_eq!(v("container_cpu_usage_seconds_total"), Some(3));
        assert_eq!(v("container_cpu_user_seconds_total"), Some(3));
        assert_eq!(v("container_memory_usage_bytes"), Some(2 << 20));
        assert_eq!(
            v("container_memory_working_set_bytes"),
            Some((2 << 20) - 4096)
        );
        assert_eq!(v("container_memory_rss"), Some(1 << 20));
        assert_eq!(v("container_spec_memory_limit_bytes"), Some(0));
        assert_eq!(v("container_memory_max_usage_bytes"), None);
    }

    #[test]
    fn mount_sources_by_device() {
        let info = "22 1 253:1 / / rw,relatime - ext4 /dev/vda1 rw\n\
                    40 22 0:45 / /run rw - tmpfs tmpfs rw\n\
                    41 22 253:1 /var /var rw - ext4 /dev/vda1 rw\n";
        let s = mount_sources(info);
        assert_eq!(s["253:1"], "/dev/vda1");
        assert_eq!(s["0:45"], "tmpfs");
    }

    #[test]
    fn fds_of_this_process() {
        let (fds, sockets) = count_fds(&[std::process::id() as i32]);
        assert!(fds >= 3, "{fds}");
        assert!(sockets <= fds);
        assert_eq!(count_fds(&[-1]), (0, 0));
    }
}
