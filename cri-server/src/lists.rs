//! The streamed lists of CRI 1.36 (KEP-5825: StreamPodSandboxes, StreamContainers,
//! StreamContainerStats, StreamPodSandboxStats, StreamPodSandboxMetrics, StreamImages),
//! and the size check of their unary twins.
//!
//! A stream carries the same list the unary RPC answers, taken at one moment (so no item
//! appears twice or is missed across responses), cut into responses of at most
//! [`BATCH_BYTES`] encoded bytes, each with at least one item; an empty list is a stream
//! that ends at once. kubelet (feature gate CRIListStreaming) collects the whole stream
//! before using it, and falls back to the unary RPC on Unimplemented.

use futures_util::stream;
use prost::Message;
use tonic::Status;

/// The most encoded bytes of items in one streamed response: far below gRPC's 4 MiB
/// default receive limit, and large enough that a 20,000-container list is a few dozen
/// messages.
pub const BATCH_BYTES: usize = 1 << 20;

/// kubelet's (and crictl's) gRPC receive limit: a unary list answer larger than this is
/// refused by the client.
pub const CLIENT_LIMIT_BYTES: usize = 16 << 20;

/// The stream of a streamed list.
pub type ListStream<R> = stream::Iter<std::vec::IntoIter<Result<R, Status>>>;

/// `items` cut into responses built by `wrap`, each at most [`BATCH_BYTES`] of encoded
/// items (a larger single item goes alone).
pub fn batched<T: Message, R>(items: Vec<T>, wrap: fn(Vec<T>) -> R) -> ListStream<R> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        // The field tag and length prefix of a repeated message field: at most 1 + 10.
        let len = item.encoded_len() + 11;
        if !batch.is_empty() && bytes + len > BATCH_BYTES {
            out.push(Ok(wrap(std::mem::take(&mut batch))));
            bytes = 0;
        }
        bytes += len;
        batch.push(item);
    }
    if !batch.is_empty() {
        out.push(Ok(wrap(batch)));
    }
    stream::iter(out)
}

/// Logs a warning when a unary list answer is larger than the clients' receive limit,
/// saying what to do: the client will refuse it with a message naming only the sizes.
pub fn warn_if_too_large(rpc: &str, stream_rpc: &str, answer: &impl Message, items: usize) {
    let len = answer.encoded_len();
    if len > CLIENT_LIMIT_BYTES {
        tracing::warn!(
            rpc,
            items,
            bytes = len,
            limit = CLIENT_LIMIT_BYTES,
            "{rpc} answer is larger than kubelet's 16 MiB gRPC limit: enable kubelet's \
             CRIListStreaming feature gate (it then calls {stream_rpc}), or remove exited \
             containers and pods"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cri::v1 as cri;
    use futures_util::StreamExt;

    fn container(i: usize, label_bytes: usize) -> cri::Container {
        cri::Container {
            id: format!("{i:064x}"),
            labels: [("l".to_string(), "x".repeat(label_bytes))].into(),
            ..Default::default()
        }
    }

    async fn collect(s: ListStream<cri::StreamContainersResponse>) -> Vec<Vec<cri::Container>> {
        s.map(|r| r.unwrap().containers).collect().await
    }

    #[tokio::test]
    async fn every_item_once_in_order_in_bounded_batches() {
        let items: Vec<_> = (0..5000).map(|i| container(i, 1000)).collect();
        let want: Vec<String> = items.iter().map(|c| c.id.clone()).collect();
        let batches = collect(batched(items, |containers| cri::StreamContainersResponse {
            containers,
        }))
        .await;
        assert!(
            batches.len() > 1,
            "5 MB of containers is more than one batch"
        );
        for b in &batches {
            assert!(!b.is_empty());
            let msg = cri::StreamContainersResponse {
                containers: b.clone(),
            };
            assert!(msg.encoded_len() <= BATCH_BYTES, "{}", msg.encoded_len());
        }
        let got: Vec<String> = batches.into_iter().flatten().map(|c| c.id).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn empty_list_is_an_empty_stream_and_a_huge_item_goes_alone() {
        let none = collect(batched(Vec::new(), |containers| {
            cri::StreamContainersResponse { containers }
        }))
        .await;
        assert!(none.is_empty());
        let items = vec![
            container(0, 10),
            container(1, BATCH_BYTES + 10),
            container(2, 10),
        ];
        let batches = collect(batched(items, |containers| cri::StreamContainersResponse {
            containers,
        }))
        .await;
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
