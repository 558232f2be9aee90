//! What the Amazon sinks share: turning an SDK failure into a [`SinkError`].

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::{FailureClass, SinkError};

/// Requests the service refused for what they are (`permanent` lists the service's error codes
/// that retrying cannot fix, such as a malformed or oversized message) are permanent; so is a
/// request the SDK could not even build. A queue or stream that does not exist (`missing` lists
/// the service's codes for it) makes the destination missing: an operator may create it, and
/// its messages keep their attempts meanwhile. No answer (timeouts, refused or broken
/// connections, a garbled response), throttling, refused credentials and server errors (5xx)
/// make the destination unavailable. Any other refusal counts against the message.
pub(crate) fn classify<E, R>(
    error: SdkError<E, R>,
    permanent: &[&str],
    missing: &[&str],
) -> SinkError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let class = match &error {
        SdkError::ConstructionFailure(_) => FailureClass::MessagePermanent,
        SdkError::ServiceError(context) => match context.err().code() {
            Some(code) if permanent.contains(&code) => FailureClass::MessagePermanent,
            Some(code) if missing.contains(&code) => FailureClass::DestinationMissing,
            Some(code) if UNAVAILABLE.contains(&code) => FailureClass::DestinationUnavailable,
            _ => FailureClass::MessageTransient,
        },
        _ => FailureClass::DestinationUnavailable,
    };
    match class {
        FailureClass::MessagePermanent => SinkError::permanent(error),
        FailureClass::DestinationMissing => SinkError::missing(error),
        FailureClass::DestinationUnavailable => SinkError::unavailable(error),
        _ => SinkError::transient(error),
    }
}

/// Error codes every AWS service uses for throttling, refused credentials and its own failures:
/// about the service, not the message.
const UNAVAILABLE: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "KMSThrottlingException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
    "RequestExpired",
];
