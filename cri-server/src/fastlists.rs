//! ListPodSandbox, ListContainers and ContainerStatus answered from the pod service's
//! cached encodings.
//!
//! The generated RuntimeService server decodes, calls the handler and encodes a message
//! built field by field; for kubelet's once-a-second relist of every pod and container,
//! and the status calls that follow it, that means cloning and encoding every ID, label,
//! annotation and mount each time. This wrapper routes those methods to the same gRPC
//! unary machinery (decoding, size limits, status codes, framing) with a response type
//! that carries already-encoded bytes, and passes every other call to the generated
//! server unchanged. A verbose ContainerStatus (with `info`) is built and encoded per
//! call.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use runtime_core::pods::PodService;
use tonic::server::{NamedService, UnaryService};
use tonic_prost::ProstCodec;

use crate::runtime::RuntimeApi;
use crate::status::IntoStatus;

const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";
const LIST_CONTAINERS: &str = "/runtime.v1.RuntimeService/ListContainers";
const CONTAINER_STATUS: &str = "/runtime.v1.RuntimeService/ContainerStatus";

/// A protobuf message that is already encoded: sent as is.
#[derive(Clone, Default, PartialEq)]
pub struct Encoded(pub Vec<u8>);

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({} bytes)", self.0.len())
    }
}

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever encoded; decoding one skips its fields.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The RuntimeService with the two list calls answered from cached encodings.
#[derive(Clone)]
pub struct RuntimeServer {
    generated: RuntimeServiceServer<RuntimeApi>,
    pods: PodService,
    max_message_bytes: usize,
}

impl RuntimeServer {
    /// Serves `api` through its generated server, except the list calls, answered from
    /// `pods`; messages are limited to `max_message_bytes` both ways.
    pub fn new(api: RuntimeApi, pods: PodService, max_message_bytes: usize) -> RuntimeServer {
        RuntimeServer {
            generated: RuntimeServiceServer::new(api)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            pods,
            max_message_bytes,
        }
    }

    /// Decodes the request, answers with `answer`'s bytes, with tonic's unary handling
    /// (size limits, status codes, framing).
    fn serve_encoded<Req, B>(
        &self,
        req: http::Request<B>,
        answer: fn(&PodService, Req) -> Result<Vec<u8>, tonic::Status>,
    ) -> BoxFuture<'static, Result<http::Response<tonic::body::Body>, Infallible>>
    where
        Req: prost::Message + Default + Send + 'static,
        B: tonic::codegen::Body + Send + 'static,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<Encoded, Req>::default())
            .apply_max_message_size_config(
                Some(self.max_message_bytes),
                Some(self.max_message_bytes),
            );
        let svc = EncodedAnswer {
            pods: self.pods.clone(),
            answer,
        };
        Box::pin(async move { Ok(grpc.unary(svc, req).await) })
    }
}

impl NamedService for RuntimeServer {
    const NAME: &'static str = "runtime.v1.RuntimeService";
}

/// A list call answered by `answer` with already-encoded bytes.
struct EncodedAnswer<Req> {
    pods: PodService,
    answer: fn(&PodService, Req) -> Result<Vec<u8>, tonic::Status>,
}

impl<Req: Send + 'static> UnaryService<Req> for EncodedAnswer<Req> {
    type Response = Encoded;
    type Future = std::future::Ready<Result<tonic::Response<Encoded>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Req>) -> Self::Future {
        let answer = (self.answer)(&self.pods, request.into_inner());
        std::future::ready(answer.map(|bytes| tonic::Response::new(Encoded(bytes))))
    }
}

impl<B> tower::Service<http::Request<B>> for RuntimeServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            LIST_POD_SANDBOX => self.serve_encoded(req, |pods, r: cri::ListPodSandboxRequest| {
                Ok(pods.list_pod_sandbox_encoded(r.filter.as_ref()))
            }),
            LIST_CONTAINERS => self.serve_encoded(req, |pods, r: cri::ListContainersRequest| {
                Ok(pods.list_containers_encoded(r.filter.as_ref()))
            }),
            CONTAINER_STATUS => self.serve_encoded(req, |pods, r: cri::ContainerStatusRequest| {
                if r.verbose {
                    let answer = pods.container_status(&r.container_id, true).status()?;
                    return Ok(prost::Message::encode_to_vec(&answer));
                }
                pods.container_status_encoded(&r.container_id).status()
            }),
            _ => tower::Service::call(&mut self.generated, req),
        }
    }
}
