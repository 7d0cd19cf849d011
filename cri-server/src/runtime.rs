//! The CRI RuntimeService: each RPC maps onto one `runtime_core::pods::PodService` call.
//! Exec, Attach and PortForward check the request and answer a URL on the streaming
//! server. The streamed lists of 1.36 (Stream*) are the unary lists cut into batches (see
//! `lists`). CheckpointContainer is not implemented yet and answers Unimplemented.

use std::collections::HashMap;

use berth_cri::v1 as cri;
use runtime_core::pods::PodService;
use tonic::{Request, Response, Status};

use crate::lists::{ListStream, batched, warn_if_too_large};
use crate::status::IntoStatus;
use crate::streaming::{AttachTarget, ExecTarget, Pending, Streaming};
use crate::work::Work;

/// Name reported by Version.
pub const RUNTIME_NAME: &str = "berth";
/// CRI API version served.
pub const RUNTIME_API_VERSION: &str = "v1";

/// gRPC front of the runtime service.
pub struct RuntimeApi {
    config_json: String,
    pods: PodService,
    work: Work,
    streaming: Streaming,
}

impl RuntimeApi {
    /// `config_json` is the effective configuration, shown by a verbose Status; `work` runs
    /// the operations that take more than a lookup; `streaming` hands out the URLs of
    /// Exec, Attach and PortForward.
    pub fn new(
        config_json: String,
        pods: PodService,
        work: Work,
        streaming: Streaming,
    ) -> RuntimeApi {
        RuntimeApi {
            config_json,
            pods,
            work,
            streaming,
        }
    }

    /// Parks a streaming request and returns its URL.
    fn stream_url(&self, request: Pending) -> Result<String, Status> {
        self.streaming
            .url(request)
            .map_err(|e| Status::resource_exhausted(e.to_string()))
    }

    /// Runs blocking `f` on the work runtime's blocking threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PodService) -> runtime_core::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let pods = self.pods.clone();
        self.work.blocking(move || f(&pods)).await
    }
}

/// The stdio rules of Exec and Attach (kubelet's streaming server checks the same).
fn check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Status> {
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true",
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument(
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

pub(crate) fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by berth yet"))
}

/// Lists shorter than this cannot reach the clients' 16 MiB limit (a CRI container or pod
/// is at most a few KiB with kubelet's labels and annotations): not worth sizing.
const LARGE_LIST: usize = 2000;

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for RuntimeApi {
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".to_string(),
            runtime_name: RUNTIME_NAME.to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_api_version: RUNTIME_API_VERSION.to_string(),
        }))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".to_string(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            match self.pods.network_status() {
                Ok(()) => cri::RuntimeCondition {
                    r#type: "NetworkReady".to_string(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                Err((reason, message)) => cri::RuntimeCondition {
                    r#type: "NetworkReady".to_string(),
                    status: false,
                    reason,
                    message,
                },
            },
        ];
        let mut info = HashMap::new();
        if request.into_inner().verbose {
            info.insert("config".to_string(), self.config_json.clone());
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            // As containerd: the default handler under "" and every configured one by
            // name. User namespaces where the kernel makes overlays of idmapped layers
            // (probed at start); recursive read-only mounts (mount_setattr, Linux 5.12).
            runtime_handlers: self
                .pods
                .handler_names()
                .into_iter()
                .map(|name| cri::RuntimeHandler {
                    name,
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: self.pods.recursive_read_only(),
                        user_namespaces: self.pods.user_namespaces(),
                    }),
                })
                .collect(),
            features: Some(cri::RuntimeFeatures {
                // Merge and Strict (oci/spec.rs); ContainerStatus.user says what came of it.
                supplemental_groups_policy: true,
                // A pod with its own user namespace owns its network namespace too.
                user_namespaces_host_network: false,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("pod sandbox config is required"))?;
        let pods = self.pods.clone();
        let id = self
            .work
            .detached(async move { pods.run_pod_sandbox(config, &req.runtime_handler).await })
            .await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        self.work
            .detached(async move { pods.stop_pod_sandbox(&req.pod_sandbox_id).await })
            .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        self.work
            .detached(async move { pods.remove_pod_sandbox(&req.pod_sandbox_id).await })
            .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        let (status, info) = self
            .pods
            .pod_sandbox_status(&req.pod_sandbox_id, req.verbose)
            .status()?;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: vec![],
            timestamp: 0,
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let answer = cri::ListPodSandboxResponse {
            items: self.pods.list_pod_sandbox(req.filter.as_ref()),
        };
        if answer.items.len() > LARGE_LIST {
            warn_if_too_large(
                "ListPodSandbox",
                "StreamPodSandboxes",
                &answer,
                answer.items.len(),
            );
        }
        Ok(Response::new(answer))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("container config is required"))?;
        let pods = self.pods.clone();
        let id = self
            .work
            .detached(async move {
                pods.create_container(&req.pod_sandbox_id, config, req.sandbox_config)
                    .await
            })
            .await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        self.work
            .detached(async move { pods.start_container(&req.container_id).await })
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        self.work
            .detached(async move { pods.stop_container(&req.container_id, req.timeout).await })
            .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        self.work
            .detached(async move { pods.remove_container(&req.container_id).await })
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let req = request.into_inner();
        let answer = cri::ListContainersResponse {
            containers: self.pods.list_containers(req.filter.as_ref()),
        };
        if answer.containers.len() > LARGE_LIST {
            warn_if_too_large(
                "ListContainers",
                "StreamContainers",
                &answer,
                answer.containers.len(),
            );
        }
        Ok(Response::new(answer))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        let answer = if req.verbose {
            // A verbose answer reads the container's OCI spec from its bundle.
            self.blocking(move |pods| pods.container_status(&req.container_id, true))
                .await?
        } else {
            self.pods
                .container_status(&req.container_id, false)
                .status()?
        };
        Ok(Response::new(answer))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        self.work
            .detached(async move {
                pods.update_container_resources(&req.container_id, req.linux)
                    .await
            })
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        self.work
            .detached(async move { pods.reopen_container_log(&req.container_id).await })
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        let out = self
            .work
            .detached(async move {
                pods.exec_sync(&req.container_id, &req.cmd, req.timeout)
                    .await
            })
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = request.into_inner();
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(Status::invalid_argument("cmd must not be empty"));
        }
        check_stdio(req.tty, req.stdin, req.stdout, req.stderr)?;
        self.pods.check_running(&req.container_id).await.status()?;
        let url = self.stream_url(Pending::Exec(ExecTarget {
            container_id: req.container_id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let req = request.into_inner();
        check_stdio(req.tty, req.stdin, req.stdout, req.stderr)?;
        self.pods.check_running(&req.container_id).await.status()?;
        let url = self.stream_url(Pending::Attach(AttachTarget {
            container_id: req.container_id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = request.into_inner();
        if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!(
                "port {p} is not a TCP port (1-65535)"
            )));
        }
        self.pods.port_forward_netns(&req.pod_sandbox_id).status()?;
        let url = self.stream_url(Pending::PortForward(req.pod_sandbox_id))?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let req = request.into_inner();
        let stats = self
            .blocking(move |pods| pods.container_stats(&req.container_id))
            .await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let req = request.into_inner();
        let stats = self
            .blocking(move |pods| Ok(pods.list_container_stats(req.filter.as_ref())))
            .await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let req = request.into_inner();
        let stats = self
            .blocking(move |pods| pods.pod_sandbox_stats(&req.pod_sandbox_id))
            .await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let req = request.into_inner();
        let stats = self
            .blocking(move |pods| Ok(pods.list_pod_sandbox_stats(req.filter.as_ref())))
            .await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let req = request.into_inner();
        let cidr = req
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        self.pods.set_pod_cidr(&cidr).status()?;
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(unimplemented("CheckpointContainer"))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        let descriptors = runtime_core::pods::metrics::metric_descriptors();
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors,
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics = self
            .blocking(|pods| Ok(pods.list_pod_sandbox_metrics()))
            .await?;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        let req = request.into_inner();
        let pods = self.pods.clone();
        self.work
            .detached(async move {
                pods.update_pod_sandbox_resources(&req.pod_sandbox_id, req.overhead, req.resources)
                    .await
            })
            .await?;
        Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
    }

    // The streamed lists of 1.36 (KEP-5825, kubelet feature gate CRIListStreaming): the
    // unary answers cut into batches (see `lists`).
    type StreamPodSandboxesStream = ListStream<cri::StreamPodSandboxesResponse>;
    type StreamContainersStream = ListStream<cri::StreamContainersResponse>;
    type StreamContainerStatsStream = ListStream<cri::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = ListStream<cri::StreamPodSandboxStatsResponse>;
    type StreamPodSandboxMetricsStream = ListStream<cri::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandboxes(
        &self,
        request: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let req = request.into_inner();
        let items = self.pods.list_pod_sandbox(req.filter.as_ref());
        Ok(Response::new(batched(items, |pod_sandboxes| {
            cri::StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn stream_containers(
        &self,
        request: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let req = request.into_inner();
        let items = self.pods.list_containers(req.filter.as_ref());
        Ok(Response::new(batched(items, |containers| {
            cri::StreamContainersResponse { containers }
        })))
    }

    async fn stream_container_stats(
        &self,
        request: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let req = request.into_inner();
        let items = self
            .blocking(move |pods| Ok(pods.list_container_stats(req.filter.as_ref())))
            .await?;
        Ok(Response::new(batched(items, |container_stats| {
            cri::StreamContainerStatsResponse { container_stats }
        })))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let req = request.into_inner();
        let items = self
            .blocking(move |pods| Ok(pods.list_pod_sandbox_stats(req.filter.as_ref())))
            .await?;
        Ok(Response::new(batched(items, |pod_sandbox_stats| {
            cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        })))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let items = self
            .blocking(|pods| Ok(pods.list_pod_sandbox_metrics()))
            .await?;
        Ok(Response::new(batched(items, |pod_sandbox_metrics| {
            cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }
        })))
    }

    type GetContainerEventsStream = crate::events::EventStream;

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(crate::events::subscribe(&self.pods)))
    }
}
