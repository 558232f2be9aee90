use serde::{Deserialize, Serialize};

use crate::{InvalidArgument, MessageDb, MessageDbError, NewMessage};

/// Where a subscription records its position: a stream of `Recorded` messages whose data is
/// `{"position": n}` (the last processed position), written every N processed messages.
///
/// [`for_consumer`](Self::for_consumer) follows Eventide's convention: the stream
/// `{category}:position-{consumer_id}`, in a category of its own so that readers of `category`
/// never see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct PositionStore {
    pub(crate) stream_name: String,
    pub(crate) every: u64,
}

/// The message type of a recorded position.
pub const POSITION_RECORDED: &str = "Recorded";

#[derive(Serialize, Deserialize)]
struct Recorded {
    position: u64,
}

impl PositionStore {
    /// Records in `stream_name`, every 100 messages.
    pub fn new(stream_name: impl Into<String>) -> Self {
        Self {
            stream_name: stream_name.into(),
            every: 100,
        }
    }

    /// Records in `{category}:position-{consumer_id}`, every 100 messages. Give each consumer
    /// group member its own id (for example `worker-0`, `worker-1`).
    ///
    /// # Errors
    /// [`InvalidArgument::EmptyConsumerId`] for an empty id; [`InvalidArgument::NotACategory`]
    /// when `category` has an id part.
    pub fn for_consumer(category: &str, consumer_id: &str) -> Result<Self, InvalidArgument> {
        if consumer_id.is_empty() {
            return Err(InvalidArgument::EmptyConsumerId);
        }
        if !crate::names::is_category(category) {
            return Err(InvalidArgument::NotACategory(category.to_owned()));
        }
        Ok(Self::new(format!("{category}:position-{consumer_id}")))
    }

    /// Records every `n` processed messages (default 100; at least 1). A restart re-reads at most
    /// `n - 1` messages, so handlers must be idempotent anyway.
    pub fn every(mut self, n: u64) -> Self {
        self.every = n;
        self
    }

    /// The position stream's name.
    #[must_use]
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidArgument> {
        if self.every == 0 {
            return Err(InvalidArgument::Setting {
                what: "position store",
                reason: "must record at least every 1 message",
            });
        }
        if crate::names::is_category(&self.stream_name) {
            return Err(InvalidArgument::NotAStreamName(self.stream_name.clone()));
        }
        Ok(())
    }

    /// The last recorded position, if any.
    ///
    /// # Errors
    /// [`MessageDbError::Decode`] when the last message of the stream is not a recorded position;
    /// otherwise as [`MessageDb::get_last_stream_message_of_type`].
    pub async fn load(&self, db: &MessageDb) -> Result<Option<u64>, MessageDbError> {
        let Some(message) = db
            .get_last_stream_message_of_type(&self.stream_name, POSITION_RECORDED)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(message.data::<Recorded>()?.position))
    }

    /// Records `position`.
    ///
    /// # Errors
    /// As [`MessageDb::write_message`].
    pub async fn record(&self, db: &MessageDb, position: u64) -> Result<(), MessageDbError> {
        let message = NewMessage::serialize(POSITION_RECORDED, &Recorded { position })?;
        db.write_message(&self.stream_name, &message).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventide_stream_names() {
        assert_eq!(
            PositionStore::for_consumer("account", "worker-1")
                .unwrap()
                .stream_name(),
            "account:position-worker-1"
        );
        assert_eq!(
            PositionStore::for_consumer("account", ""),
            Err(InvalidArgument::EmptyConsumerId)
        );
        assert!(PositionStore::for_consumer("account-1", "w").is_err());
        assert!(PositionStore::new("x").validate().is_err());
        assert!(PositionStore::new("x-1").every(0).validate().is_err());
    }
}
