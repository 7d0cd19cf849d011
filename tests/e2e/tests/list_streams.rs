//! The streamed lists of CRI 1.36 (KEP-5825): each Stream* RPC carries exactly the items of
//! its unary twin, every item once, with the same filters, and ends (EOF) after the last
//! batch; an empty list is a stream that ends at once.

use std::collections::BTreeSet;

use anyhow::Result;
use e2e::cri_api as api;
use e2e::pods::PodEnv;
use futures_util::StreamExt;
use tonic::Streaming;

/// Every batch of `s` flattened by `items`, asserting that no batch is empty.
async fn collect<R, T>(mut s: Streaming<R>, items: fn(R) -> Vec<T>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while let Some(batch) = s.next().await {
        let batch = items(batch?);
        assert!(
            !batch.is_empty(),
            "a streamed response carries at least one item"
        );
        out.extend(batch);
    }
    Ok(out)
}

/// The IDs of `items`, checking none appears twice.
fn ids<T>(items: &[T], id: fn(&T) -> String) -> BTreeSet<String> {
    let set: BTreeSet<String> = items.iter().map(id).collect();
    assert_eq!(set.len(), items.len(), "no item is streamed twice");
    set
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_lists_carry_what_the_unary_lists_answer() -> Result<()> {
    let env = PodEnv::with_busybox().await?;
    let mut rt = env.cri.runtime.clone();
    let mut img = env.cri.images.clone();

    let empty = rt
        .stream_containers(api::StreamContainersRequest { filter: None })
        .await?
        .into_inner();
    assert!(collect(empty, |r| r.containers).await?.is_empty());

    let (a, b) = (env.pod_config("stream-a"), env.pod_config("stream-b"));
    let a_id = env.run_pod(&a).await?;
    let b_id = env.run_pod(&b).await?;
    let mut ctrs = Vec::new();
    for (pod_id, pod, n) in [(&a_id, &a, 2), (&b_id, &b, 1)] {
        for i in 0..n {
            let c = env.container_config(&format!("c{i}"), &["sleep", "86399"]);
            ctrs.push(env.run_container(pod_id, &c, pod).await?);
        }
    }

    let streamed = rt
        .stream_containers(api::StreamContainersRequest { filter: None })
        .await?
        .into_inner();
    let streamed = collect(streamed, |r| r.containers).await?;
    let unary = env.list_containers(None).await?;
    assert_eq!(
        ids(&streamed, |c| c.id.clone()),
        ids(&unary, |c| c.id.clone())
    );
    assert_eq!(streamed.len(), 3);

    let only_a = api::ContainerFilter {
        pod_sandbox_id: a_id.clone(),
        ..Default::default()
    };
    let streamed = rt
        .stream_containers(api::StreamContainersRequest {
            filter: Some(only_a),
        })
        .await?
        .into_inner();
    let streamed = collect(streamed, |r| r.containers).await?;
    assert_eq!(streamed.len(), 2, "the filter applies: {streamed:?}");
    assert!(streamed.iter().all(|c| c.pod_sandbox_id == a_id));

    let pods = rt
        .stream_pod_sandboxes(api::StreamPodSandboxesRequest { filter: None })
        .await?
        .into_inner();
    let pods = collect(pods, |r| r.pod_sandboxes).await?;
    let unary = env.list_pods(None).await?;
    assert_eq!(ids(&pods, |p| p.id.clone()), ids(&unary, |p| p.id.clone()));
    assert_eq!(pods.len(), 2);

    let stats = rt
        .stream_container_stats(api::StreamContainerStatsRequest { filter: None })
        .await?
        .into_inner();
    let stats = collect(stats, |r| r.container_stats).await?;
    let stat_id = |s: &api::ContainerStats| {
        s.attributes
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        ids(&stats, stat_id),
        ctrs.iter().cloned().collect::<BTreeSet<_>>()
    );

    let pod_stats = rt
        .stream_pod_sandbox_stats(api::StreamPodSandboxStatsRequest { filter: None })
        .await?
        .into_inner();
    let pod_stats = collect(pod_stats, |r| r.pod_sandbox_stats).await?;
    let pod_stat_id = |s: &api::PodSandboxStats| {
        s.attributes
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        ids(&pod_stats, pod_stat_id),
        BTreeSet::from([a_id.clone(), b_id.clone()])
    );

    let metrics = rt
        .stream_pod_sandbox_metrics(api::StreamPodSandboxMetricsRequest {})
        .await?
        .into_inner();
    let metrics = collect(metrics, |r| r.pod_sandbox_metrics).await?;
    assert_eq!(
        ids(&metrics, |m| m.pod_sandbox_id.clone()),
        BTreeSet::from([a_id.clone(), b_id.clone()])
    );

    let images = img
        .stream_images(api::StreamImagesRequest { filter: None })
        .await?
        .into_inner();
    let images = collect(images, |r| r.images).await?;
    let unary = env.cri.list_images().await?;
    assert_eq!(
        ids(&images, |i| i.id.clone()),
        ids(&unary, |i| i.id.clone())
    );
    assert!(!images.is_empty());

    for id in [&a_id, &b_id] {
        env.stop_pod(id).await?;
        env.remove_pod(id).await?;
    }
    Ok(())
}
