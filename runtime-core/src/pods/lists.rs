//! ListPodSandbox and ListContainers, the calls kubelet makes every second: answered from
//! the store's records, whose states are fields (no file is read per call).

use std::cmp::Reverse;

use berth_cri::v1 as cri;

use super::records::{ContainerRecord, SandboxRecord};
use super::sandbox::sandbox_state;
use super::{PodService, labels_match};

impl PodService {
    /// ListPodSandbox with `filter` (ID or ID prefix, state, label selector), newest first.
    pub fn list_pod_sandbox(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let mut out: Vec<cri::PodSandbox> = self
            .sandbox_entries()
            .iter()
            .filter_map(|e| e.with(|r| sandbox_matches(r, filter).then(|| sandbox_item(r))))
            .collect();
        out.sort_by_key(|p| Reverse(p.created_at));
        out
    }

    /// ListContainers with `filter` (ID or ID prefix, pod ID or prefix, state, label
    /// selector), newest first.
    pub fn list_containers(&self, filter: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        let mut out: Vec<cri::Container> = self
            .container_entries()
            .iter()
            .filter_map(|e| e.with(|r| container_matches(r, filter).then(|| container_item(r))))
            .collect();
        out.sort_by_key(|c| Reverse(c.created_at));
        out
    }
}

fn sandbox_matches(r: &SandboxRecord, filter: Option<&cri::PodSandboxFilter>) -> bool {
    let Some(f) = filter else {
        return true;
    };
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && f.state
            .as_ref()
            .is_none_or(|s| s.state == sandbox_state(r) as i32)
        && labels_match(&r.config.labels, &f.label_selector)
}

fn container_matches(r: &ContainerRecord, filter: Option<&cri::ContainerFilter>) -> bool {
    let Some(f) = filter else {
        return true;
    };
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || r.pod_id.starts_with(&f.pod_sandbox_id))
        && f.state
            .as_ref()
            .is_none_or(|s| s.state == PodService::cri_state(&r.state) as i32)
        && labels_match(&r.config.labels, &f.label_selector)
}

/// A pod's ListPodSandbox item.
fn sandbox_item(r: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: sandbox_state(r) as i32,
        created_at: r.created_at_ns,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        runtime_handler: r.runtime_handler.clone(),
    }
}

/// A container's ListContainers item.
fn container_item(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.pod_id.clone(),
        metadata: Some(r.metadata()),
        image: Some(cri::ImageSpec {
            image: r.image_ref.clone(),
            ..Default::default()
        }),
        // The image ID, as containerd answers here (ContainerStatus gives the digested
        // reference): kubelets before 1.30 take it as the image in use for image GC,
        // matching it against ListImages' IDs.
        image_ref: r.image_id.clone(),
        state: PodService::cri_state(&r.state) as i32,
        created_at: r.created_at_ns,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        image_id: r.image_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::ExitInfo;
    use crate::pods::Lifecycle;
    use crate::pods::records::SandboxState;
    use crate::pods::store::tests::{container, sandbox};
    use std::collections::HashMap;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn container_filters_match_ids_prefixes_states_and_labels() {
        let mut c = container("abcdef", "pod1", 1);
        c.config.labels = labels(&[("app", "x"), ("tier", "db")]);
        c.state = Lifecycle::Exited(ExitInfo {
            exit_code: 0,
            signal: None,
            finished_at_ns: 2,
            oom_killed: false,
        });
        let f = |id: &str, pod: &str, state: Option<cri::ContainerState>, sel: &[(&str, &str)]| {
            cri::ContainerFilter {
                id: id.into(),
                pod_sandbox_id: pod.into(),
                state: state.map(|s| cri::ContainerStateValue { state: s as i32 }),
                label_selector: labels(sel),
            }
        };
        assert!(container_matches(&c, None));
        assert!(container_matches(&c, Some(&f("abc", "pod", None, &[]))));
        assert!(!container_matches(&c, Some(&f("abd", "", None, &[]))));
        assert!(!container_matches(&c, Some(&f("", "pod2", None, &[]))));
        assert!(container_matches(
            &c,
            Some(&f(
                "",
                "",
                Some(cri::ContainerState::ContainerExited),
                &[("app", "x")]
            ))
        ));
        assert!(!container_matches(
            &c,
            Some(&f("", "", Some(cri::ContainerState::ContainerRunning), &[]))
        ));
        assert!(!container_matches(
            &c,
            Some(&f("", "", None, &[("app", "y")]))
        ));
        assert_eq!(
            container_item(&c).state,
            cri::ContainerState::ContainerExited as i32
        );
    }

    #[test]
    fn sandbox_filters_match_states() {
        let ready = sandbox("aaaa", SandboxState::Ready);
        let stopped = sandbox("bbbb", SandboxState::NotReady);
        let by_state = |s: cri::PodSandboxState| cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue { state: s as i32 }),
            ..Default::default()
        };
        let f = by_state(cri::PodSandboxState::SandboxReady);
        assert!(sandbox_matches(&ready, Some(&f)));
        assert!(!sandbox_matches(&stopped, Some(&f)));
        let id = cri::PodSandboxFilter {
            id: "bb".into(),
            ..Default::default()
        };
        assert!(sandbox_matches(&stopped, Some(&id)));
        assert!(!sandbox_matches(&ready, Some(&id)));
        assert_eq!(
            sandbox_item(&stopped).state,
            cri::PodSandboxState::SandboxNotready as i32
        );
    }
}
