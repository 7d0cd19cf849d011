//! Images: reference normalization, registry configuration and access, pulling, the
//! content and layer store, and the image service the CRI ImageService maps onto.

mod beneath;
pub mod digest;
pub mod distribution;
pub mod inflight;
pub mod pull;
pub mod reference;
pub mod registries;
pub mod service;
pub mod spec;
pub mod store;
pub mod unpack;

pub use distribution::Credentials;
pub use pull::PullOutcome;
pub use service::{ImageService, ImageServiceOptions};
pub use store::ImageRecord;
