//! The store's events as CRI's GetContainerEvents sends them: the pod sandbox's status and
//! its containers' statuses as they were right after the change, which is what kubelet's
//! evented PLEG reads instead of asking again.

use berth_cri::v1 as cri;

use super::container::status_of;
use super::sandbox::sandbox_status_of;
use super::store::{Event, EventKind};

/// The ContainerEventResponse for `event`.
pub fn container_event(event: &Event) -> cri::ContainerEventResponse {
    let kind = match event.kind {
        EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    };
    cri::ContainerEventResponse {
        container_id: event.id.clone(),
        container_event_type: kind as i32,
        created_at: event.at_ns,
        pod_sandbox_status: event.pod.as_deref().map(sandbox_status_of),
        containers_statuses: event.containers.iter().map(|c| status_of(c)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::ExitInfo;
    use crate::pods::Lifecycle;
    use crate::pods::records::SandboxState;
    use crate::pods::store::tests::{container, sandbox};

    #[test]
    fn an_exit_event_carries_the_final_status() {
        let mut c = container("c1", "p1", 5);
        c.started_at_ns = 6;
        c.state = Lifecycle::Exited(ExitInfo {
            exit_code: 137,
            signal: Some(9),
            finished_at_ns: 9,
            oom_killed: true,
        });
        let ev = Event {
            kind: EventKind::Stopped,
            id: "c1".into(),
            at_ns: 10,
            pod: Some(std::sync::Arc::new(sandbox("p1", SandboxState::Ready))),
            containers: vec![std::sync::Arc::new(c)],
        };
        let r = container_event(&ev);
        assert_eq!(r.container_id, "c1");
        assert_eq!(
            r.container_event_type,
            cri::ContainerEventType::ContainerStoppedEvent as i32
        );
        assert_eq!(r.created_at, 10);
        let pod = r.pod_sandbox_status.expect("pod status");
        assert_eq!(pod.id, "p1");
        assert_eq!(pod.state, cri::PodSandboxState::SandboxReady as i32);
        let st = &r.containers_statuses[0];
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!((st.exit_code, st.reason.as_str()), (137, "OOMKilled"));
        assert_eq!((st.started_at, st.finished_at), (6, 9));
    }

    #[test]
    fn a_deleted_sandbox_event_names_the_sandbox() {
        let ev = Event {
            kind: EventKind::Deleted,
            id: "p1".into(),
            at_ns: 1,
            pod: Some(std::sync::Arc::new(sandbox("p1", SandboxState::NotReady))),
            containers: vec![],
        };
        let r = container_event(&ev);
        assert_eq!(
            r.container_event_type,
            cri::ContainerEventType::ContainerDeletedEvent as i32
        );
        assert_eq!(
            r.pod_sandbox_status.map(|p| p.state),
            Some(cri::PodSandboxState::SandboxNotready as i32)
        );
        assert!(r.containers_statuses.is_empty());
    }
}
