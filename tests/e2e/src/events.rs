//! A GetContainerEvents subscription with deadlines on every read.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tonic::Status;

use crate::cri::Cri;
use crate::cri_api::{ContainerEventResponse, ContainerEventType, GetEventsRequest};

/// An open GetContainerEvents stream.
pub struct Events(tonic::Streaming<ContainerEventResponse>);

impl Events {
    /// Subscribes.
    pub async fn open(cri: &Cri) -> Result<Events> {
        let s = cri
            .runtime
            .clone()
            .get_container_events(GetEventsRequest {})
            .await
            .context("GetContainerEvents")?
            .into_inner();
        Ok(Events(s))
    }

    /// The next event, an error if the stream ends or fails, or none comes `within`.
    pub async fn next(&mut self, within: Duration) -> Result<ContainerEventResponse> {
        match tokio::time::timeout(within, self.0.message()).await {
            Err(_) => bail!("no container event within {within:?}"),
            Ok(Err(status)) => Err(anyhow::Error::new(status).context("event stream failed")),
            Ok(Ok(None)) => bail!("event stream ended"),
            Ok(Ok(Some(e))) => Ok(e),
        }
    }

    /// The next message or the status that ended the stream (`Ok(None)`: ended cleanly).
    pub async fn next_raw(
        &mut self,
        within: Duration,
    ) -> Result<Result<Option<ContainerEventResponse>, Status>> {
        tokio::time::timeout(within, self.0.message())
            .await
            .map_err(|_| anyhow::anyhow!("nothing on the event stream within {within:?}"))
    }

    /// Events until one of `id` of type `kind` (included), each within `within`.
    pub async fn until(
        &mut self,
        id: &str,
        kind: ContainerEventType,
        within: Duration,
    ) -> Result<Vec<ContainerEventResponse>> {
        let mut out = Vec::new();
        loop {
            let e = self.next(within).await.with_context(|| {
                format!("waiting for {kind:?} of {id}; got {:?}", summary(&out))
            })?;
            let done = e.container_id == id && e.container_event_type == kind as i32;
            out.push(e);
            if done {
                return Ok(out);
            }
        }
    }
}

/// (ID, type) of each event, for assertions and messages.
pub fn summary(events: &[ContainerEventResponse]) -> Vec<(String, ContainerEventType)> {
    events
        .iter()
        .map(|e| {
            (
                e.container_id.clone(),
                ContainerEventType::try_from(e.container_event_type)
                    .unwrap_or(ContainerEventType::ContainerCreatedEvent),
            )
        })
        .collect()
}
