//! The RabbitMQ (AMQP 0.9.1) sink.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use tracing::{debug, warn};

use crate::{OutboxMessage, Sink, SinkError};

/// Header carrying the partition key (AMQP has no ordering key of its own; a consistent-hash
/// exchange can route on it).
pub const AMQP_PARTITION_KEY_HEADER: &str = "eventrail-partition-key";

/// Publishes to RabbitMQ on a channel with publisher confirms: the exchange is the sink's, the
/// routing key the message's destination; the message id goes in the `message_id` property,
/// the partition key in [`AMQP_PARTITION_KEY_HEADER`], delivery is persistent and mandatory. A
/// message counts as sent once the broker confirmed it.
///
/// Failures are classified by AMQP reply code (see [`SinkError`]): the connection refused or
/// lost, access refused (403), a locked resource (405), no consumers (313) and connection-level
/// errors make the destination unavailable; a missing exchange (404, the channel is closed) or
/// an unroutable message (312, returned: no queue is bound for its routing key yet) make it
/// missing — an operator may create it — so it is backed off without spending attempts; content
/// too large (311) and a precondition failure (406, which RabbitMQ also answers to a message over
/// its `max_message_size`) are permanent for the message; a negative acknowledgement counts
/// against the message.
///
/// When the broker closes the channel (for example on a publish to an exchange that does not
/// exist) the publish fails and the next one opens a new channel; when the
/// connection is lost, a sink made by [`AmqpSink::connect`] (or [`AmqpSink::connect_with`])
/// connects again (one attempt per
/// publish, so the relay's backoff paces the attempts), while a sink made by [`AmqpSink::new`]
/// on a connection of yours needs that connection to recover (give it lapin's
/// `ConnectionProperties::enable_auto_recover`).
#[derive(Clone)]
pub struct AmqpSink {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where and how to connect again; `None` when the connection is the caller's.
    reconnect: Option<(String, ConnectionProperties)>,
    exchange: String,
    channel: Mutex<Channel>,
    /// Locked while reopening, so that concurrent publishes open one channel, not one each.
    connection: tokio::sync::Mutex<Connection>,
}

impl fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSink")
            .field("exchange", &self.inner.exchange)
            .field("reconnects", &self.inner.reconnect.is_some())
            .finish_non_exhaustive()
    }
}

impl AmqpSink {
    /// Connects to `uri` (`amqp://user:password@host:5672/%2f`), opens a channel and turns on
    /// publisher confirms; publishes to `exchange` (`""` is the default exchange, which routes
    /// to the queue named by the routing key). The sink connects again after a connection loss.
    ///
    /// # Errors
    /// [`lapin::Error`] when the broker cannot be reached or refuses the channel.
    pub async fn connect(uri: &str, exchange: impl Into<String>) -> Result<Self, lapin::Error> {
        Self::connect_with(uri, ConnectionProperties::default(), exchange).await
    }

    /// [`connect`](Self::connect) with connection properties of your choice (a connection name,
    /// client properties); a reconnection uses them too.
    ///
    /// # Errors
    /// [`lapin::Error`] when the broker cannot be reached or refuses the channel.
    pub async fn connect_with(
        uri: &str,
        properties: ConnectionProperties,
        exchange: impl Into<String>,
    ) -> Result<Self, lapin::Error> {
        let connection = Connection::connect(uri, properties.clone()).await?;
        let channel = confirmed_channel(&connection).await?;
        Ok(Self::from_parts(
            Some((uri.to_owned(), properties)),
            exchange.into(),
            connection,
            channel,
        ))
    }

    /// A sink on a new channel of `connection` (which it keeps), with publisher confirms turned
    /// on.
    ///
    /// # Errors
    /// [`lapin::Error`] when the channel cannot be opened.
    pub async fn new(
        connection: Connection,
        exchange: impl Into<String>,
    ) -> Result<Self, lapin::Error> {
        let channel = confirmed_channel(&connection).await?;
        Ok(Self::from_parts(None, exchange.into(), connection, channel))
    }

    fn from_parts(
        reconnect: Option<(String, ConnectionProperties)>,
        exchange: String,
        connection: Connection,
        channel: Channel,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                reconnect,
                exchange,
                channel: Mutex::new(channel),
                connection: tokio::sync::Mutex::new(connection),
            }),
        }
    }

    /// The current channel (to declare exchanges and queues).
    #[must_use]
    pub fn channel(&self) -> Channel {
        self.inner
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current channel when it is open; otherwise a new one, on a new connection when the
    /// old one is gone and the sink knows the broker's address.
    async fn open_channel(&self) -> Result<Channel, lapin::Error> {
        let channel = self.channel();
        if channel.status().connected() {
            return Ok(channel);
        }
        let mut connection = self.inner.connection.lock().await;
        let channel = self.channel();
        if channel.status().connected() {
            return Ok(channel);
        }
        if !connection.status().connected()
            && let Some((uri, properties)) = &self.inner.reconnect
        {
            *connection = Connection::connect(uri, properties.clone()).await?;
            warn!("reconnected to RabbitMQ");
        }
        let channel = confirmed_channel(&connection).await?;
        debug!("opened a new RabbitMQ channel");
        *self
            .inner
            .channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = channel.clone();
        Ok(channel)
    }
}

async fn confirmed_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("unroutable: {code} {text}")]
    Returned { code: u16, text: String },
    #[error("negatively acknowledged by the broker")]
    Nacked,
    #[error("the channel has no publisher confirms")]
    NoConfirms,
}

impl Sink for AmqpSink {
    async fn publish(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let mut headers = FieldTable::default();
        for (name, value) in &message.headers {
            headers.insert(
                name.as_str().into(),
                AMQPValue::LongString(LongString::from(value.as_str())),
            );
        }
        headers.insert(
            AMQP_PARTITION_KEY_HEADER.into(),
            AMQPValue::LongString(LongString::from(message.partition_key.as_str())),
        );
        let properties = BasicProperties::default()
            .with_message_id(message.id.to_string().into())
            .with_content_type(message.content_type.as_str().into())
            .with_delivery_mode(2)
            .with_headers(headers);
        // Not even a channel: the broker is unreachable or refuses this client.
        let channel = self
            .open_channel()
            .await
            .map_err(|e| match reply_code(&e) {
                Some(404) => SinkError::missing(e),
                _ => SinkError::unavailable(e),
            })?;
        let confirm = channel
            .basic_publish(
                self.inner.exchange.as_str().into(),
                message.destination.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.payload,
                properties,
            )
            .await
            .map_err(classify)?
            .await
            .map_err(classify)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                let code = returned.reply_code;
                let refused = Refused::Returned {
                    code,
                    text: returned.reply_text.to_string(),
                };
                Err(by_code(code, refused))
            }
            Confirmation::Nack(None) => Err(SinkError::transient(Refused::Nacked)),
            Confirmation::NotRequested => Err(SinkError::permanent(Refused::NoConfirms)),
        }
    }
}

/// The AMQP reply code of a broker's error, when it is one.
fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// A failed publish: a broker's error by its reply code, anything else (the connection or the
/// channel broken, an IO error) makes the destination unavailable.
fn classify(error: lapin::Error) -> SinkError {
    match reply_code(&error) {
        Some(code) => by_code(code, error),
        None => SinkError::unavailable(error),
    }
}

/// AMQP reply codes: whom the failure is about.
fn by_code(code: u16, error: impl Into<eventrail_core::BoxError>) -> SinkError {
    match code {
        // CONTENT_TOO_LARGE, PRECONDITION_FAILED (RabbitMQ's answer to a message over its
        // max_message_size, or to malformed properties): this message will never pass.
        311 | 406 => SinkError::permanent(error),
        // NO_ROUTE (no queue bound for the routing key), NOT_FOUND (no such exchange).
        312 | 404 => SinkError::missing(error),
        // NO_CONSUMERS, ACCESS_REFUSED, RESOURCE_LOCKED, and the connection-level (hard)
        // errors: the broker, not the message.
        313 | 403 | 405 | 320.. => SinkError::unavailable(error),
        _ => SinkError::transient(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailureClass;

    #[test]
    fn reply_codes_are_classified_by_whom_they_are_about() {
        let class = |code| by_code(code, "refused").class();
        assert_eq!(class(311), FailureClass::MessagePermanent);
        assert_eq!(class(406), FailureClass::MessagePermanent);
        assert_eq!(class(312), FailureClass::DestinationMissing);
        assert_eq!(class(404), FailureClass::DestinationMissing);
        for code in [313, 403, 405, 320, 501, 541] {
            assert_eq!(class(code), FailureClass::DestinationUnavailable, "{code}");
        }
    }
}
