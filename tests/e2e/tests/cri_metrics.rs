//! CRI metrics (KEP-2371): ListMetricDescriptors and ListPodSandboxMetrics against a real
//! pod: the running container appears with CPU (after some work), memory, its limit, its
//! processes and the writable layer; every metric matches its descriptor's label keys; a
//! stopped pod is no longer reported.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use e2e::cri_api::{self as api, LinuxContainerResources};
use e2e::pods::{PodEnv, now_ns};
use e2e::poll_until;

const MIB: i64 = 1 << 20;

async fn descriptors(env: &PodEnv) -> Result<HashMap<String, api::MetricDescriptor>> {
    let mut rt = env.cri.runtime.clone();
    let descs = rt
        .list_metric_descriptors(api::ListMetricDescriptorsRequest {})
        .await?
        .into_inner()
        .descriptors;
    let n = descs.len();
    let map: HashMap<_, _> = descs.into_iter().map(|d| (d.name.clone(), d)).collect();
    assert_eq!(map.len(), n, "descriptor names are unique");
    Ok(map)
}

async fn pod_metrics(env: &PodEnv) -> Result<Vec<api::PodSandboxMetrics>> {
    let mut rt = env.cri.runtime.clone();
    Ok(rt
        .list_pod_sandbox_metrics(api::ListPodSandboxMetricsRequest {})
        .await?
        .into_inner()
        .pod_metrics)
}

/// The value of the first metric `name` in `metrics`.
fn value(metrics: &[api::Metric], name: &str) -> Option<u64> {
    metrics
        .iter()
        .find(|m| m.name == name)
        .and_then(|m| m.value.map(|v| v.value))
}

/// Every metric has a descriptor, as many label values as it has label keys, and the
/// expected values for the base keys.
fn check_labels(
    metrics: &[api::Metric],
    descs: &HashMap<String, api::MetricDescriptor>,
    expect: &HashMap<&str, &str>,
) {
    for m in metrics {
        let d = descs
            .get(&m.name)
            .unwrap_or_else(|| panic!("metric {} has no descriptor", m.name));
        assert_eq!(
            m.label_values.len(),
            d.label_keys.len(),
            "{}: values {:?} for keys {:?}",
            m.name,
            m.label_values,
            d.label_keys
        );
        for (k, v) in d.label_keys.iter().zip(&m.label_values) {
            if let Some(want) = expect.get(k.as_str()) {
                assert_eq!(v, want, "{}: label {k}", m.name);
            }
        }
        assert!(m.value.is_some(), "{} has a value", m.name);
        assert!(m.timestamp > 0, "{} has a timestamp", m.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_and_container_metrics_match_descriptors() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let descs = descriptors(&env).await?;
    for name in [
        "container_cpu_usage_seconds_total",
        "container_cpu_user_seconds_total",
        "container_cpu_system_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_usage_bytes",
        "container_memory_cache",
        "container_memory_swap",
        "container_memory_failcnt",
        "container_spec_memory_limit_bytes",
        "container_last_seen",
        "container_oom_events_total",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_network_receive_packets_total",
        "container_network_transmit_packets_total",
        "container_network_receive_errors_total",
        "container_network_transmit_errors_total",
    ] {
        let d = descs
            .get(name)
            .unwrap_or_else(|| panic!("descriptor {name}"));
        assert!(!d.help.is_empty(), "{name} has help");
        assert_eq!(
            &d.label_keys[..5],
            &["pod", "namespace", "container", "id", "image"],
            "{name}"
        );
    }
    assert_eq!(
        descs["container_network_receive_bytes_total"].label_keys[5],
        "interface"
    );

    let pod = env.pod_config("metrics");
    let pod_id = env.run_pod(&pod).await?;
    // Burns well over a second of CPU, then idles.
    let mut c = env.sh_container(
        "burner",
        "i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done; echo burnt; exec sleep 1000",
    );
    c.linux = Some(api::LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 * MIB,
            ..Default::default()
        }),
        security_context: None,
    });
    let cid = env.run_container(&pod_id, &c, &pod).await?;

    // CPU seconds are whole seconds (as containerd and CRI-O report them): wait for 1.
    let found = poll_until(
        Duration::from_secs(90),
        "the container to have used a CPU second",
        || async {
            let all = pod_metrics(&env).await?;
            let Some(p) = all.into_iter().find(|p| p.pod_sandbox_id == pod_id) else {
                return Ok(None);
            };
            let Some(cm) = p.container_metrics.iter().find(|c| c.container_id == cid) else {
                return Ok(None);
            };
            let cpu = value(&cm.metrics, "container_cpu_usage_seconds_total").unwrap_or(0);
            Ok((cpu >= 1).then_some(p))
        },
    )
    .await
    .context("no CPU second reported")?;

    assert_eq!(found.container_metrics.len(), 1, "one running container");
    let cm = &found.container_metrics[0];
    let ctr_labels = HashMap::from([
        ("pod", "metrics"),
        ("namespace", "e2e"),
        ("container", "burner"),
        ("id", cid.as_str()),
        ("image", "busybox"),
    ]);
    check_labels(&cm.metrics, &descs, &ctr_labels);
    let pod_labels = HashMap::from([
        ("pod", "metrics"),
        ("namespace", "e2e"),
        ("container", ""),
        ("id", pod_id.as_str()),
        ("image", ""),
    ]);
    check_labels(&found.metrics, &descs, &pod_labels);
    for m in &found.metrics {
        assert!(
            m.name.starts_with("container_network_"),
            "pod-level metrics are the pod's network: {}",
            m.name
        );
        assert_ne!(m.label_values[5], "lo", "lo is not reported");
    }

    let v = |name: &str| value(&cm.metrics, name).unwrap_or_else(|| panic!("{name} reported"));
    assert!(v("container_cpu_usage_seconds_total") >= 1);
    assert!(
        v("container_cpu_user_seconds_total") + v("container_cpu_system_seconds_total")
            <= v("container_cpu_usage_seconds_total") + 1,
        "user + system is about the usage"
    );
    assert!(v("container_memory_usage_bytes") > 0);
    assert!(v("container_memory_working_set_bytes") > 0);
    assert!(v("container_memory_working_set_bytes") <= v("container_memory_usage_bytes"));
    assert_eq!(
        v("container_spec_memory_limit_bytes"),
        64 * MIB as u64,
        "the memory limit the cgroup enforces"
    );
    assert_eq!(v("container_oom_events_total"), 0);
    assert!(v("container_processes") >= 1);
    assert!(v("container_threads") >= 1);
    assert!(
        v("container_file_descriptors") >= 1,
        "stdout and stderr at least"
    );
    assert!(v("container_fs_usage_bytes") < v("container_fs_limit_bytes"));
    let now_s = (now_ns() / 1_000_000_000) as u64;
    let seen = v("container_last_seen");
    assert!(
        seen <= now_s && seen + 120 >= now_s,
        "last seen {seen}, now {now_s}"
    );
    let started = v("container_start_time_seconds");
    assert!(
        started <= seen && started + 120 >= seen,
        "started {started}"
    );

    // Stopped pods are not reported.
    env.stop_pod(&pod_id).await?;
    let all = pod_metrics(&env).await?;
    assert!(
        all.iter().all(|p| p.pod_sandbox_id != pod_id),
        "a stopped pod has no metrics"
    );
    Ok(())
}
