//! What the Amazon sinks share: turning an SDK failure into a [`SinkError`].

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::SinkError;

/// Requests the service refused for what they are (`permanent` lists the service's error codes
/// that retrying cannot fix, such as a malformed or oversized message) are permanent; so is a
/// request the SDK could not even build. Everything else (throttling, a missing queue or stream
/// that may be created, timeouts, broken connections, 5xx) is transient, and the attempts limit
/// dead-letters what never heals.
pub(crate) fn classify<E, R>(error: SdkError<E, R>, permanent: &[&str]) -> SinkError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let refused = match &error {
        SdkError::ConstructionFailure(_) => true,
        SdkError::ServiceError(context) => context
            .err()
            .code()
            .is_some_and(|code| permanent.contains(&code)),
        _ => false,
    };
    if refused {
        SinkError::permanent(error)
    } else {
        SinkError::transient(error)
    }
}
