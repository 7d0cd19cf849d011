//! A CRI v1 client over berthd's unix socket, with shortcuts for the calls the tests make.
//! Every shortcut has a harness timeout, so a hung berthd fails the test instead of
//! blocking it forever.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use berth_cri::v1::image_service_client::ImageServiceClient;
use berth_cri::v1::runtime_service_client::RuntimeServiceClient;
use berth_cri::v1::{
    AuthConfig, Image, ImageFilter, ImageFsInfoRequest, ImageFsInfoResponse, ImageSpec,
    ImageStatusRequest, ImageStatusResponse, ListImagesRequest, PullImageRequest,
    RemoveImageRequest, StatusRequest, StatusResponse, VersionRequest, VersionResponse,
};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

/// How long a shortcut waits for berthd before failing with [`Code::Unknown`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Opens a gRPC channel over the unix socket at `socket`.
pub async fn connect_channel(socket: &Path) -> Result<Channel> {
    let path: PathBuf = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(Duration::from_secs(5))
        // As grpc-go (kubelet, crictl) does: accept response headers up to 16 MiB, so a
        // long grpc-message (e.g. one echoing a huge reference) does not kill the connection.
        .http2_max_header_list_size(16 << 20)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok(channel)
}

/// Both CRI services on one channel. Cloning is cheap.
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService client.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService client.
    pub images: ImageServiceClient<Channel>,
}

/// An `ImageSpec` for `image`.
pub fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// AuthConfig with a user name and password.
pub fn auth_userpass(username: &str, password: &str) -> AuthConfig {
    AuthConfig {
        username: username.into(),
        password: password.into(),
        ..Default::default()
    }
}

async fn timed<T>(
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::new(
            Code::Unknown,
            format!("e2e harness: {what} got no answer within {CALL_TIMEOUT:?}"),
        )),
    }
}

impl Cri {
    /// Connects to berthd's socket.
    pub async fn connect(socket: &Path) -> Result<Cri> {
        let ch = connect_channel(socket).await?;
        Ok(Cri {
            // kubelet's receive limit (pkg/kubelet/cri/remote: maxMsgSize), so that a list
            // kubelet would refuse is refused here too.
            runtime: RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(16 << 20),
            images: ImageServiceClient::new(ch)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        })
    }

    /// RuntimeService/Version.
    pub async fn version(&self) -> Result<VersionResponse, Status> {
        let mut c = self.runtime.clone();
        timed(
            "Version",
            c.version(VersionRequest {
                version: "v1".into(),
            }),
        )
        .await
    }

    /// RuntimeService/Status.
    pub async fn status(&self, verbose: bool) -> Result<StatusResponse, Status> {
        let mut c = self.runtime.clone();
        timed("Status", c.status(StatusRequest { verbose })).await
    }

    /// ImageService/PullImage without auth; returns `image_ref`.
    pub async fn pull(&self, image: &str) -> Result<String, Status> {
        self.pull_with(image, None).await
    }

    /// ImageService/PullImage with optional auth; returns `image_ref`.
    pub async fn pull_with(&self, image: &str, auth: Option<AuthConfig>) -> Result<String, Status> {
        self.pull_request(PullImageRequest {
            image: Some(spec(image)),
            auth,
            sandbox_config: None,
        })
        .await
    }

    /// ImageService/PullImage with a raw request.
    pub async fn pull_request(&self, req: PullImageRequest) -> Result<String, Status> {
        let mut c = self.images.clone();
        timed("PullImage", c.pull_image(req))
            .await
            .map(|r| r.image_ref)
    }

    /// ImageService/ImageStatus (not verbose); `Ok(None)` for an unknown image.
    pub async fn image_status(&self, image: &str) -> Result<Option<Image>, Status> {
        Ok(self.image_status_full(image, false).await?.image)
    }

    /// ImageService/ImageStatus with the whole response.
    pub async fn image_status_full(
        &self,
        image: &str,
        verbose: bool,
    ) -> Result<ImageStatusResponse, Status> {
        self.image_status_request(ImageStatusRequest {
            image: Some(spec(image)),
            verbose,
        })
        .await
    }

    /// ImageService/ImageStatus with a raw request.
    pub async fn image_status_request(
        &self,
        req: ImageStatusRequest,
    ) -> Result<ImageStatusResponse, Status> {
        let mut c = self.images.clone();
        timed("ImageStatus", c.image_status(req)).await
    }

    /// ImageService/ListImages without filter.
    pub async fn list_images(&self) -> Result<Vec<Image>, Status> {
        self.list_images_request(ListImagesRequest { filter: None })
            .await
    }

    /// ImageService/ListImages filtered by image reference.
    pub async fn list_images_filtered(&self, image: &str) -> Result<Vec<Image>, Status> {
        self.list_images_request(ListImagesRequest {
            filter: Some(ImageFilter {
                image: Some(spec(image)),
            }),
        })
        .await
    }

    /// ImageService/ListImages with a raw request.
    pub async fn list_images_request(&self, req: ListImagesRequest) -> Result<Vec<Image>, Status> {
        let mut c = self.images.clone();
        timed("ListImages", c.list_images(req))
            .await
            .map(|r| r.images)
    }

    /// ImageService/RemoveImage.
    pub async fn remove_image(&self, image: &str) -> Result<(), Status> {
        self.remove_image_request(RemoveImageRequest {
            image: Some(spec(image)),
        })
        .await
    }

    /// ImageService/RemoveImage with a raw request.
    pub async fn remove_image_request(&self, req: RemoveImageRequest) -> Result<(), Status> {
        let mut c = self.images.clone();
        timed("RemoveImage", c.remove_image(req)).await.map(|_| ())
    }

    /// ImageService/ImageFsInfo.
    pub async fn image_fs_info(&self) -> Result<ImageFsInfoResponse, Status> {
        let mut c = self.images.clone();
        timed("ImageFsInfo", c.image_fs_info(ImageFsInfoRequest {})).await
    }
}
