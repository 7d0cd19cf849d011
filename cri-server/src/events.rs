//! GetContainerEvents: the pod service's events, streamed to one subscriber.
//!
//! Each call subscribes to the store (a bounded broadcast queue) and sends every event as
//! it comes; the stream is polled only as fast as the client reads. A client that falls
//! more than the queue behind gets RESOURCE_EXHAUSTED and its stream ends, as kubelet
//! expects of a watch it must restart with a relist; it never slows the runtime, the
//! other subscribers or berthd's memory (the queue is shared and fixed in size).

use std::pin::Pin;

use berth_cri::v1 as cri;
use futures_util::Stream;
use runtime_core::pods::{PodService, container_event};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

/// The stream a GetContainerEvents call answers with.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

/// Every change of `pods` from now on, until the client goes or falls behind.
pub fn subscribe(pods: &PodService) -> EventStream {
    let rx = pods.subscribe();
    Box::pin(futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(event) => Some((Ok(container_event(&event)), Some(rx))),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "GetContainerEvents subscriber fell behind; ending its stream"
                );
                Some((
                    Err(Status::resource_exhausted(format!(
                        "container events: this subscriber fell {missed} events behind and was cut off; subscribe again and relist"
                    ))),
                    None,
                ))
            }
            Err(RecvError::Closed) => None,
        }
    }))
}
