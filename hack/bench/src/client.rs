//! The one CRI client that drives both runtimes: CRI v1 over a unix socket (tonic, the
//! e2e harness's channel), each call bounded by a timeout so that a hung runtime fails the
//! run instead of blocking it.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use berth_cri::v1::image_service_client::ImageServiceClient;
use berth_cri::v1::runtime_service_client::RuntimeServiceClient;
use e2e::cri_api as api;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Timeout of every call but image pulls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Timeout of PullImage.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// RuntimeService and ImageService clients on one channel. Cloning is cheap; clones share
/// the HTTP/2 connection, as kubelet's calls do.
#[derive(Clone)]
pub struct Client {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

async fn bounded<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::new(
            Code::DeadlineExceeded,
            format!("berth-bench: {what} got no answer within {limit:?}"),
        )),
    }
}

impl Client {
    /// Connects to the CRI socket at `socket`.
    pub async fn connect(socket: &Path) -> Result<Client> {
        let channel = e2e::cri::connect_channel(socket).await?;
        Ok(Client {
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            images: ImageServiceClient::new(channel).max_decoding_message_size(64 << 20),
        })
    }

    /// RuntimeService/Version.
    pub async fn version(&self) -> Result<api::VersionResponse, Status> {
        let mut c = self.runtime.clone();
        let req = api::VersionRequest {
            version: "v1".into(),
        };
        bounded("Version", CALL_TIMEOUT, c.version(req)).await
    }

    /// RuntimeService/Status.
    pub async fn status(&self) -> Result<api::StatusResponse, Status> {
        let mut c = self.runtime.clone();
        let req = api::StatusRequest { verbose: false };
        bounded("Status", CALL_TIMEOUT, c.status(req)).await
    }

    /// ImageService/PullImage; returns the image reference (ID).
    pub async fn pull(&self, image: &str) -> Result<String, Status> {
        let mut c = self.images.clone();
        let req = api::PullImageRequest {
            image: Some(e2e::spec(image)),
            auth: None,
            sandbox_config: None,
        };
        bounded("PullImage", PULL_TIMEOUT, c.pull_image(req))
            .await
            .map(|r| r.image_ref)
    }

    /// ImageService/RemoveImage.
    pub async fn remove_image(&self, image: &str) -> Result<(), Status> {
        let mut c = self.images.clone();
        let req = api::RemoveImageRequest {
            image: Some(e2e::spec(image)),
        };
        bounded("RemoveImage", CALL_TIMEOUT, c.remove_image(req))
            .await
            .map(|_| ())
    }

    /// ImageService/ImageStatus: whether the image is known.
    pub async fn has_image(&self, image: &str) -> Result<bool, Status> {
        let mut c = self.images.clone();
        let req = api::ImageStatusRequest {
            image: Some(e2e::spec(image)),
            verbose: false,
        };
        bounded("ImageStatus", CALL_TIMEOUT, c.image_status(req))
            .await
            .map(|r| r.image.is_some())
    }

    /// RunPodSandbox with the default runtime handler; returns the sandbox ID.
    pub async fn run_pod(&self, config: &api::PodSandboxConfig) -> Result<String, Status> {
        let mut c = self.runtime.clone();
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        bounded("RunPodSandbox", CALL_TIMEOUT, c.run_pod_sandbox(req))
            .await
            .map(|r| r.pod_sandbox_id)
    }

    /// CreateContainer; returns the container ID.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<String, Status> {
        let mut c = self.runtime.clone();
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        bounded("CreateContainer", CALL_TIMEOUT, c.create_container(req))
            .await
            .map(|r| r.container_id)
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        let req = api::StartContainerRequest {
            container_id: id.into(),
        };
        bounded("StartContainer", CALL_TIMEOUT, c.start_container(req))
            .await
            .map(|_| ())
    }

    /// StopPodSandbox.
    pub async fn stop_pod(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        bounded("StopPodSandbox", CALL_TIMEOUT, c.stop_pod_sandbox(req))
            .await
            .map(|_| ())
    }

    /// RemovePodSandbox.
    pub async fn remove_pod(&self, id: &str) -> Result<(), Status> {
        let mut c = self.runtime.clone();
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        bounded("RemovePodSandbox", CALL_TIMEOUT, c.remove_pod_sandbox(req))
            .await
            .map(|_| ())
    }

    /// PodSandboxStatus: the status and the verbose `info` map (empty unless `verbose`).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<api::ExecSyncResponse, Status> {
        let mut c = self.runtime.clone();
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        bounded("ExecSync", CALL_TIMEOUT, c.exec_sync(req)).await
    }

    /// RuntimeService/PodSandboxStatus; the verbose info map when asked for.
    pub async fn pod_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(api::PodSandboxStatus, HashMap<String, String>), Status> {
        let mut c = self.runtime.clone();
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose,
        };
        let r = bounded("PodSandboxStatus", CALL_TIMEOUT, c.pod_sandbox_status(req)).await?;
        let status = r
            .status
            .ok_or_else(|| Status::internal("PodSandboxStatus answered without a status"))?;
        Ok((status, r.info))
    }

    /// ContainerStatus (not verbose, as kubelet calls it).
    pub async fn container_status(&self, id: &str) -> Result<api::ContainerStatus, Status> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        bounded("ContainerStatus", CALL_TIMEOUT, c.container_status(req))
            .await?
            .status
            .ok_or_else(|| Status::internal("ContainerStatus answered without a status"))
    }

    /// ListPodSandbox without a filter (kubelet's relist).
    pub async fn list_pods(&self) -> Result<Vec<api::PodSandbox>, Status> {
        let mut c = self.runtime.clone();
        let req = api::ListPodSandboxRequest { filter: None };
        bounded("ListPodSandbox", CALL_TIMEOUT, c.list_pod_sandbox(req))
            .await
            .map(|r| r.items)
    }

    /// ListContainers without a filter (kubelet's relist).
    pub async fn list_containers(&self) -> Result<Vec<api::Container>, Status> {
        let mut c = self.runtime.clone();
        let req = api::ListContainersRequest { filter: None };
        bounded("ListContainers", CALL_TIMEOUT, c.list_containers(req))
            .await
            .map(|r| r.containers)
    }

    /// ListContainerStats without a filter.
    pub async fn list_container_stats(&self) -> Result<Vec<api::ContainerStats>, Status> {
        let mut c = self.runtime.clone();
        let req = api::ListContainerStatsRequest { filter: None };
        bounded(
            "ListContainerStats",
            CALL_TIMEOUT,
            c.list_container_stats(req),
        )
        .await
        .map(|r| r.stats)
    }
}
