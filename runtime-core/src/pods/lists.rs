//! ListPodSandbox and ListContainers, the calls kubelet makes every second.
//!
//! The service gives the answers already encoded: each entry
//! keeps the protobuf encoding of its list item (see `Entry::with_encoded`), so a list call
//! copies bytes instead of cloning every ID, label and annotation into a message and
//! encoding it again. A container's state is not part of its cached item (it changes
//! without its record changing) and is appended per call: protobuf allows fields in any
//! order and a later field just adds to the message.
//!
//! The unfiltered answers (kubelet's relist) are kept whole with the change count they were
//! built at (`Changes`: every record added, updated or removed, every exit the watcher
//! sees) and sent again while the count stands, so a relist with nothing changed is one
//! copy instead of a walk over every pod or container. A container that runs unwatched
//! (its exit file is read on every call) keeps its list from being kept.

use std::cmp::Reverse;
use std::sync::{Arc, OnceLock};

use k8s_cri::v1 as cri;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::records::{ContainerRecord, SandboxRecord};
use super::sandbox::sandbox_state;
use super::{Encoding, Entry, Kept, ListSnapshots, PodService, labels_match, lock};

/// Listed containers with the state each is answered with.
type Listed = Vec<(Arc<Entry<ContainerRecord>>, cri::ContainerState)>;

/// Field number of `items` in ListPodSandboxResponse and of `containers` in
/// ListContainersResponse.
const LIST_FIELD: u32 = 1;

impl PodService {
    /// The pods a ListPodSandbox with `filter` (ID or ID prefix, state, label selector)
    /// returns, newest first.
    fn listed_sandboxes(
        &self,
        filter: Option<&cri::PodSandboxFilter>,
    ) -> Vec<Arc<Entry<SandboxRecord>>> {
        let mut out: Vec<(i64, Arc<Entry<SandboxRecord>>)> = self
            .sandbox_entries()
            .into_iter()
            .filter_map(|e| {
                let keep = e.with(|r| match filter {
                    None => Some(r.created_at_ns),
                    Some(f) => ((f.id.is_empty() || r.id.starts_with(&f.id))
                        && f.state
                            .as_ref()
                            .is_none_or(|s| s.state == sandbox_state(r) as i32)
                        && labels_match(&r.config.labels, &f.label_selector))
                    .then_some(r.created_at_ns),
                });
                keep.map(|created| (created, e))
            })
            .collect();
        out.sort_by_key(|(created, _)| Reverse(*created));
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// ListPodSandbox's answer as an encoded ListPodSandboxResponse.
    pub fn list_pod_sandbox_encoded(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<u8> {
        if filter.is_some_and(|f| *f != cri::PodSandboxFilter::default()) {
            return self.encode_sandboxes(filter);
        }
        self.kept_or_built(|k| &mut k.sandboxes, || (self.encode_sandboxes(None), true))
    }

    /// The unfiltered answer kept in `slot` if nothing changed since it was built, else
    /// `build`'s, kept when `build` says it can be.
    fn kept_or_built(
        &self,
        slot: fn(&mut ListSnapshots) -> &mut Kept,
        build: impl FnOnce() -> (Vec<u8>, bool),
    ) -> Vec<u8> {
        let at = self.inner.changes.now();
        if let Some((built, bytes)) = slot(&mut lock(&self.inner.lists))
            && *built == at
        {
            return bytes.clone();
        }
        let (bytes, keep) = build();
        *slot(&mut lock(&self.inner.lists)) = keep.then(|| (at, bytes.clone()));
        bytes
    }

    fn encode_sandboxes(&self, filter: Option<&cri::PodSandboxFilter>) -> Vec<u8> {
        let listed = self.listed_sandboxes(filter);
        let mut out = Vec::with_capacity(listed.len() * 256);
        for e in &listed {
            e.with_encoded(
                Encoding::ListItem,
                |r| sandbox_item(r).encode_to_vec(),
                |_, item| put_item(&mut out, item, &[]),
            );
        }
        out
    }

    /// The containers a ListContainers with `filter` (ID or ID prefix, pod ID or prefix,
    /// state, label selector) returns with their CRI state, newest first, and whether every
    /// state is one only a counted change can change (see `listing_state`).
    fn listed_containers(&self, filter: Option<&cri::ContainerFilter>) -> (Listed, bool) {
        let mut stable = true;
        let mut out: Vec<(i64, Arc<Entry<ContainerRecord>>, cri::ContainerState)> = self
            .container_entries()
            .into_iter()
            .filter_map(|e| {
                let keep = e.with(|r| {
                    let (life, settled) = self.listing_state(r);
                    stable &= settled;
                    let state = Self::cri_state(&life);
                    let keep = match filter {
                        None => true,
                        Some(f) => {
                            (f.id.is_empty() || r.id.starts_with(&f.id))
                                && (f.pod_sandbox_id.is_empty()
                                    || r.pod_id.starts_with(&f.pod_sandbox_id))
                                && f.state.as_ref().is_none_or(|s| s.state == state as i32)
                                && labels_match(&r.config.labels, &f.label_selector)
                        }
                    };
                    keep.then_some((r.created_at_ns, state))
                });
                keep.map(|(created, state)| (created, e, state))
            })
            .collect();
        out.sort_by_key(|(created, _, _)| Reverse(*created));
        let listed = out.into_iter().map(|(_, e, state)| (e, state)).collect();
        (listed, stable)
    }

    /// ListContainers' answer as an encoded ListContainersResponse.
    pub fn list_containers_encoded(&self, filter: Option<&cri::ContainerFilter>) -> Vec<u8> {
        if filter.is_some_and(|f| *f != cri::ContainerFilter::default()) {
            return self.encode_containers(filter).0;
        }
        self.kept_or_built(|k| &mut k.containers, || self.encode_containers(None))
    }

    fn encode_containers(&self, filter: Option<&cri::ContainerFilter>) -> (Vec<u8>, bool) {
        let (listed, stable) = self.listed_containers(filter);
        let mut out = Vec::with_capacity(listed.len() * 384);
        for (e, state) in &listed {
            e.with_encoded(
                Encoding::ListItem,
                |r| container_item(r).encode_to_vec(),
                |_, item| put_item(&mut out, item, state_field(*state)),
            );
        }
        (out, stable)
    }
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

/// A container's ListContainers item, without its state (see the module comment).
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
        state: cri::ContainerState::ContainerCreated as i32,
        created_at: r.created_at_ns,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        image_id: r.image_id.clone(),
    }
}

/// The encoding of a Container's `state` field alone (empty for the default state, which
/// protobuf leaves out).
fn state_field(state: cri::ContainerState) -> &'static [u8] {
    static FIELDS: OnceLock<[Vec<u8>; 4]> = OnceLock::new();
    let fields = FIELDS.get_or_init(|| {
        [
            cri::ContainerState::ContainerCreated,
            cri::ContainerState::ContainerRunning,
            cri::ContainerState::ContainerExited,
            cri::ContainerState::ContainerUnknown,
        ]
        .map(|s| {
            cri::Container {
                state: s as i32,
                ..Default::default()
            }
            .encode_to_vec()
        })
    });
    match state {
        cri::ContainerState::ContainerCreated => &fields[0],
        cri::ContainerState::ContainerRunning => &fields[1],
        cri::ContainerState::ContainerExited => &fields[2],
        cri::ContainerState::ContainerUnknown => &fields[3],
    }
}

/// Appends one element of the response's repeated list field: `item` followed by `extra`
/// fields of the same message.
fn put_item(out: &mut Vec<u8>, item: &[u8], extra: &[u8]) {
    put_message_field(out, LIST_FIELD, item, extra);
}

/// Appends message field `field`: the encoded message `fixed` followed by `extra` fields
/// of the same message (protobuf merges a message's fields in any order).
pub(super) fn put_message_field(out: &mut Vec<u8>, field: u32, fixed: &[u8], extra: &[u8]) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint((fixed.len() + extra.len()) as u64, out);
    out.extend_from_slice(fixed);
    out.extend_from_slice(extra);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::records::SandboxState;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn container(id: &str, created: i64) -> ContainerRecord {
        ContainerRecord {
            id: id.repeat(64 / id.len()),
            pod_id: "p".repeat(64),
            config: cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: format!("c-{id}"),
                    attempt: 2,
                }),
                labels: labels(&[("app", "x"), ("io.kubernetes.container.name", id)]),
                annotations: labels(&[("io.kubernetes.container.hash", "1234")]),
                ..Default::default()
            },
            image_id: "sha256:".to_string() + &"a".repeat(64),
            image_ref: "docker.io/library/busybox:latest".into(),
            image_digest_ref: "docker.io/library/busybox@sha256:".to_string() + &"b".repeat(64),
            created_at_ns: created,
            started_at_ns: 0,
            log_path: None,
            bundle: PathBuf::from("/b"),
            dir: PathBuf::from("/d"),
            pid: 0,
            start_error: None,
            stop_signal: None,
            cgroup_path: String::new(),
        }
    }

    fn sandbox(id: &str, state: SandboxState) -> SandboxRecord {
        SandboxRecord {
            id: id.repeat(64 / id.len()),
            config: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: format!("pod-{id}"),
                    uid: "u".into(),
                    namespace: "ns".into(),
                    attempt: 1,
                }),
                labels: labels(&[("app", "x")]),
                annotations: labels(&[("k", "v")]),
                ..Default::default()
            },
            created_at_ns: 42,
            state,
            runtime_handler: "runc".into(),
            dir: PathBuf::from("/p"),
            namespaces: Default::default(),
            pause_pid: None,
            cgroup_parent: String::new(),
            cgroups_created: vec![],
            hostname_file: PathBuf::new(),
            hosts_file: PathBuf::new(),
            resolv_file: PathBuf::new(),
            shm: None,
            monitor_pid: None,
            monitor_socket: PathBuf::new(),
            network_attached: false,
            ips: vec![],
        }
    }

    #[test]
    fn encoded_containers_decode_to_the_messages_with_their_states() {
        let states = [
            cri::ContainerState::ContainerRunning,
            cri::ContainerState::ContainerCreated,
            cri::ContainerState::ContainerExited,
            cri::ContainerState::ContainerUnknown,
        ];
        let recs: Vec<ContainerRecord> = ["1", "2", "3", "4"]
            .iter()
            .enumerate()
            .map(|(i, id)| container(id, 100 - i as i64))
            .collect();
        let mut out = Vec::new();
        let mut want = Vec::new();
        for (r, s) in recs.iter().zip(states) {
            put_item(&mut out, &container_item(r).encode_to_vec(), state_field(s));
            let mut c = container_item(r);
            c.state = s as i32;
            want.push(c);
        }
        let got = cri::ListContainersResponse::decode(&out[..]).unwrap();
        assert_eq!(got.containers, want);
        assert_eq!(
            got.encode_to_vec().len(),
            out.len(),
            "same size as prost's own encoding"
        );
    }

    #[test]
    fn encoded_sandboxes_decode_to_the_messages() {
        let recs = [
            sandbox("a", SandboxState::Ready),
            sandbox("b", SandboxState::NotReady),
        ];
        let mut out = Vec::new();
        for r in &recs {
            put_item(&mut out, &sandbox_item(r).encode_to_vec(), &[]);
        }
        let got = cri::ListPodSandboxResponse::decode(&out[..]).unwrap();
        let want: Vec<cri::PodSandbox> = recs.iter().map(sandbox_item).collect();
        assert_eq!(got.items, want);
        assert_eq!(
            got.items[1].state,
            cri::PodSandboxState::SandboxNotready as i32
        );
        assert!(
            cri::ListPodSandboxResponse::decode(&[][..])
                .unwrap()
                .items
                .is_empty()
        );
    }

    #[test]
    fn every_table_and_entry_change_is_counted() {
        let changes = super::super::Changes::default();
        let table = super::super::Table::new(&changes);
        let start = changes.now();
        table.insert("a".into(), sandbox("a", SandboxState::Ready));
        let added = changes.now();
        assert!(added > start, "insert counted");
        let e = table.read().get("a").cloned().expect("entry");
        // Reading (and encoding for a list) changes nothing.
        e.with_encoded(
            Encoding::ListItem,
            |r| sandbox_item(r).encode_to_vec(),
            |_, _| (),
        );
        assert!(e.get().id.starts_with('a'));
        assert_eq!(changes.now(), added);
        e.update(|r| r.state = SandboxState::NotReady);
        let updated = changes.now();
        assert!(updated > added, "update counted");
        table.remove("a");
        assert!(changes.now() > updated, "remove counted");
        assert!(table.read().is_empty());
    }

    #[test]
    fn an_entry_update_drops_its_cached_encoding() {
        let e = Entry::new(
            sandbox("c", SandboxState::Ready),
            &super::super::Changes::default(),
        );
        let enc = |r: &SandboxRecord| sandbox_item(r).encode_to_vec();
        let before = e.with_encoded(Encoding::ListItem, enc, |_, b| b.to_vec());
        e.update(|r| r.state = SandboxState::NotReady);
        let after = e.with_encoded(Encoding::ListItem, enc, |_, b| b.to_vec());
        assert_ne!(before, after);
        let item = cri::PodSandbox::decode(&after[..]).unwrap();
        assert_eq!(item.state, cri::PodSandboxState::SandboxNotready as i32);
    }
}
