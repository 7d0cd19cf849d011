//! The one place where `runtime-core` errors become gRPC statuses.

use runtime_core::{Error, ErrorKind};
use tonic::{Code, Status};

/// Maps a runtime-core error to the gRPC status kubelet and crictl see.
pub fn to_status(e: Error) -> Status {
    let code = match e.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// Shorthand for `result.map_err(to_status)`.
pub trait IntoStatus<T> {
    /// Converts the error side to a gRPC status.
    fn status(self) -> Result<T, Status>;
}

impl<T> IntoStatus<T> for Result<T, Error> {
    fn status(self) -> Result<T, Status> {
        self.map_err(to_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_codes_and_keep_message() {
        let s = to_status(Error::NotFound("image x not found".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "image x not found");
        assert_eq!(
            to_status(Error::PermissionDenied(String::new())).code(),
            Code::PermissionDenied
        );
        assert_eq!(
            to_status(Error::DataLoss(String::new())).code(),
            Code::DataLoss
        );
        assert_eq!(
            to_status(Error::ResourceExhausted(String::new())).code(),
            Code::ResourceExhausted
        );
    }
}
