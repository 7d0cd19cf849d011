//! The CRI ImageService: each RPC maps onto one `runtime_core::image::ImageService` call;
//! StreamImages (1.36) is ListImages cut into batches (see `lists`).

use std::sync::Arc;
use std::time::Instant;

use berth_cri::v1 as cri;
use runtime_core::image::{Credentials, ImageRecord, ImageService};
use runtime_core::pods::PodService;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::status::IntoStatus;
use crate::work::Work;

/// gRPC front of the image service.
pub struct ImageApi {
    images: ImageService,
    pods: PodService,
    metrics: Arc<Metrics>,
    work: Work,
}

impl ImageApi {
    /// Wraps the image service; `pods` tells which images containers use; pulls and
    /// removals run on `work`.
    pub fn new(
        images: ImageService,
        pods: PodService,
        metrics: Arc<Metrics>,
        work: Work,
    ) -> ImageApi {
        ImageApi {
            images,
            pods,
            metrics,
            work,
        }
    }
}

/// The image string of a request's spec, which CRI marks optional.
fn spec_image(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Status::invalid_argument(
            "image spec with a non-empty image is required",
        )),
    }
}

/// Returns the allocator's free pages to the kernel (glibc keeps them per arena).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The CRI view of an image record.
pub fn to_cri_image(r: &ImageRecord) -> cri::Image {
    let (uid, username) = runtime_core::image::service::image_user(r);
    cri::Image {
        id: r.id.clone(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: r.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

impl ImageApi {
    /// ListImages' answer (and StreamImages').
    async fn list(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>, Status> {
        let filter = filter.and_then(|f| f.image).map(|s| s.image);
        // The store's lock may be held across an fsync by a pull finishing: never on an
        // async worker thread.
        let store = self.images.clone();
        let images = self
            .work
            .blocking(move || store.list(filter.as_deref()))
            .await?;
        Ok(images.iter().map(to_cri_image).collect())
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageApi {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = request.into_inner().filter;
        Ok(Response::new(cri::ListImagesResponse {
            images: self.list(filter).await?,
        }))
    }

    type StreamImagesStream = crate::lists::ListStream<cri::StreamImagesResponse>;

    async fn stream_images(
        &self,
        request: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.list(request.into_inner().filter).await?;
        Ok(Response::new(crate::lists::batched(images, |images| {
            cri::StreamImagesResponse { images }
        })))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let image = spec_image(req.image.as_ref())?.to_string();
        let store = self.images.clone();
        let verbose = req.verbose;
        let (found, info) = self
            .work
            .blocking(move || {
                let found = store.status(&image)?;
                let info = match (&found, verbose) {
                    (Some(r), true) => store.verbose_info(r).into_iter().collect(),
                    _ => Default::default(),
                };
                Ok((found, info))
            })
            .await?;
        Ok(Response::new(cri::ImageStatusResponse {
            image: found.as_ref().map(to_cri_image),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = request.into_inner();
        let image = spec_image(req.image.as_ref())?;
        let credentials = match &req.auth {
            Some(a) => Credentials::from_auth_config(
                &a.username,
                &a.password,
                &a.auth,
                &a.identity_token,
                &a.registry_token,
            )
            .status()?,
            None => Credentials::default(),
        };
        let start = Instant::now();
        tracing::info!(image, "pulling image");
        let outcome = {
            let images = self.images.clone();
            let image = image.to_string();
            self.work
                .detached(async move {
                    let outcome = images.pull(&image, credentials).await;
                    // A pull's buffers (downloads, decompression, unpacking on blocking
                    // threads) are freed into glibc's per-thread arenas, which keep them:
                    // without a trim berthd holds tens of MiB after pulling a large image
                    // for as long as it runs.
                    let _ = tokio::task::spawn_blocking(release_freed_memory).await;
                    if let Err(e) = &outcome {
                        tracing::warn!(image, error = %e, "pull failed");
                    }
                    outcome
                })
                .await?
        };
        let seconds = start.elapsed().as_secs_f64();
        self.metrics.record_pull(outcome.bytes_downloaded, seconds);
        tracing::info!(image, id = %outcome.image_id, bytes = outcome.bytes_downloaded, seconds, "pulled image");
        Ok(Response::new(cri::PullImageResponse {
            image_ref: outcome.image_id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let image = spec_image(req.image.as_ref())?;
        let pods = self.pods.clone();
        let images = self.images.clone();
        let spec = image.to_string();
        self.work
            .detached(async move { images.remove(&spec, move |id| pods.image_user(id)).await })
            .await?;
        tracing::info!(image, "removed image");
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let images = self.images.clone();
        let usage = self.work.blocking(move || Ok(images.usage())).await?;
        let fs = cri::FilesystemUsage {
            timestamp: runtime_core::image::pull::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.images.mountpoint().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: usage.bytes }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: vec![],
        }))
    }
}
