//! The error every `runtime-core` operation returns. Each variant is a *kind* of failure
//! that `cri-server` maps to one gRPC code in one place; the message names the thing that
//! is wrong. Module-level errors (`ReferenceError`, `UnpackError`, ...) convert into it.

use std::path::Path;

/// The result type of `runtime-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, classified by what the caller can do about it. Messages are complete
/// sentences for an operator; `Clone` lets one outcome be shared by coalesced requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is in the wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller has no right to do this (e.g. a blocked registry, a forbidden repository).
    #[error("{0}")]
    PermissionDenied(String),
    /// Credentials are missing or wrong.
    #[error("{0}")]
    Unauthenticated(String),
    /// A remote service (registry, plugin) could not be reached or failed transiently.
    #[error("{0}")]
    Unavailable(String),
    /// A deadline passed before the operation finished.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Data does not match its digest or is otherwise corrupt.
    #[error("{0}")]
    DataLoss(String),
    /// Not supported by berth.
    #[error("{0}")]
    Unimplemented(String),
    /// A resource ran out: no space left on a filesystem (ENOSPC) or a disk quota reached
    /// (EDQUOT). The message names the path that could not be written.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A failure inside berth or the host (I/O, a runtime binary).
    #[error("{0}")]
    Internal(String),
}

/// The kind of an [`Error`], for mapping to a protocol status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// See [`Error::InvalidArgument`].
    InvalidArgument,
    /// See [`Error::NotFound`].
    NotFound,
    /// See [`Error::AlreadyExists`].
    AlreadyExists,
    /// See [`Error::FailedPrecondition`].
    FailedPrecondition,
    /// See [`Error::PermissionDenied`].
    PermissionDenied,
    /// See [`Error::Unauthenticated`].
    Unauthenticated,
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::DeadlineExceeded`].
    DeadlineExceeded,
    /// See [`Error::DataLoss`].
    DataLoss,
    /// See [`Error::Unimplemented`].
    Unimplemented,
    /// See [`Error::ResourceExhausted`].
    ResourceExhausted,
    /// See [`Error::Internal`].
    Internal,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            Error::DataLoss(_) => ErrorKind::DataLoss,
            Error::Unimplemented(_) => ErrorKind::Unimplemented,
            Error::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// An I/O failure on `path`, described as `what` ("create", "read", ...). A full
    /// filesystem or quota (ENOSPC, EDQUOT) is [`Error::ResourceExhausted`], anything else
    /// [`Error::Internal`]; both messages name the path.
    pub fn io(what: &str, path: &Path, err: std::io::Error) -> Error {
        if is_no_space(&err) {
            Error::ResourceExhausted(format!(
                "no space left on device: {what} {}: {err}",
                path.display()
            ))
        } else {
            Error::Internal(format!("{what} {}: {err}", path.display()))
        }
    }

    /// Prefixes the message with `context`, keeping the kind.
    pub fn context(self, context: impl std::fmt::Display) -> Error {
        let wrap = |m: String| format!("{context}: {m}");
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(wrap(m)),
            Error::NotFound(m) => Error::NotFound(wrap(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(wrap(m)),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(wrap(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(wrap(m)),
            Error::Unauthenticated(m) => Error::Unauthenticated(wrap(m)),
            Error::Unavailable(m) => Error::Unavailable(wrap(m)),
            Error::DeadlineExceeded(m) => Error::DeadlineExceeded(wrap(m)),
            Error::DataLoss(m) => Error::DataLoss(wrap(m)),
            Error::Unimplemented(m) => Error::Unimplemented(wrap(m)),
            Error::ResourceExhausted(m) => Error::ResourceExhausted(wrap(m)),
            Error::Internal(m) => Error::Internal(wrap(m)),
        }
    }
}

/// Whether `err` says the filesystem is full (ENOSPC) or a disk quota is reached (EDQUOT).
pub fn is_no_space(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl From<crate::image::reference::ReferenceError> for Error {
    fn from(e: crate::image::reference::ReferenceError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl From<crate::image::registries::RegistriesError> for Error {
    fn from(e: crate::image::registries::RegistriesError) -> Self {
        match e {
            crate::image::registries::RegistriesError::Blocked { .. } => {
                Error::PermissionDenied(e.to_string())
            }
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

impl From<crate::image::unpack::UnpackError> for Error {
    fn from(e: crate::image::unpack::UnpackError) -> Self {
        if e.io_source().is_some_and(is_no_space) {
            Error::ResourceExhausted(format!("no space left on device: unpack layer: {e}"))
        } else {
            Error::Internal(format!("unpack layer: {e}"))
        }
    }
}

impl From<cni::CniError> for Error {
    fn from(e: cni::CniError) -> Self {
        let msg = format!("pod network: {e}");
        match e {
            cni::CniError::NoNetwork { .. } | cni::CniError::PluginNotFound { .. } => {
                Error::FailedPrecondition(msg)
            }
            cni::CniError::Timeout { .. } => Error::DeadlineExceeded(msg),
            cni::CniError::InvalidArgument(_) => Error::InvalidArgument(msg),
            _ => Error::Internal(msg),
        }
    }
}

impl From<crate::monitor::MonitorError> for Error {
    fn from(e: crate::monitor::MonitorError) -> Self {
        use crate::monitor::MonitorError as M;
        let msg = format!("pod monitor: {e}");
        match e {
            M::Unreachable { .. } => Error::Unavailable(msg),
            M::NotFound { .. } => Error::NotFound(msg),
            M::Timeout { .. } => Error::DeadlineExceeded(msg),
            _ => Error::Internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_and_quotas_are_resource_exhausted_naming_the_path() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = Error::io(
                "write",
                Path::new("/var/lib/berth/blobs/sha256/ab"),
                std::io::Error::from_raw_os_error(errno),
            );
            assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
            assert!(
                e.to_string().contains("/var/lib/berth/blobs/sha256/ab"),
                "{e}"
            );
            assert_eq!(
                e.context("pull x").kind(),
                ErrorKind::ResourceExhausted,
                "context keeps the kind"
            );
        }
        let e = Error::io(
            "write",
            Path::new("/x"),
            std::io::Error::from_raw_os_error(libc::EIO),
        );
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
