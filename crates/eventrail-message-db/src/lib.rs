//! A client for [Message DB](https://github.com/message-db/message-db), the PostgreSQL message
//! store of the Eventide project.
//!
//! - [`MessageDb`] calls every Message DB procedure over a deadpool-postgres pool, and
//!   [`MessageDbTx`] the same on a caller's transaction. Each call puts `message_store` on the
//!   search path itself.
//! - [`NewMessage`] and [`Message`] carry JSON data and metadata, encoded and decoded with serde;
//!   failures are typed ([`EncodeError`], [`DecodeError`]).
//! - A wrong expected version is [`MessageDbError::WrongExpectedVersion`], parsed from Message
//!   DB's exception text ([`parse_wrong_expected_version`]).
//! - [`names`] holds Rust twins of Message DB's pure stream-name functions.
//! - [`Subscription`]s follow a stream or a category with polling strategies, consumer groups,
//!   a position store, liveness and dropped callbacks, as a handler loop or a `futures::Stream`.
//!
//! ```no_run
//! use eventrail_message_db::{
//!     CategoryReadOptions, ExpectedVersion, MessageDb, NewMessage, PositionStore,
//! };
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let db = MessageDb::connect("postgres://message_store@localhost/message_store")?;
//! let position = db
//!     .write_message(
//!         "account-123",
//!         &NewMessage::new("Deposited", json!({ "amount": 10 }))
//!             .expected_version(ExpectedVersion::NoStream),
//!     )
//!     .await?;
//! assert_eq!(position, 0);
//! for message in db.get_category_messages("account", &CategoryReadOptions::new()).await? {
//!     println!("{} {}", message.global_position, message.message_type);
//! }
//! // Member 0 of a group of 2, resuming where it left off.
//! db.subscribe_category("account")
//!     .consumer_group(0, 2)
//!     .position_store(PositionStore::for_consumer("account", "mailer-0")?.every(100))
//!     .run(|message| async move {
//!         println!("{}", message.stream_name);
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod error;
mod message;
pub mod names;
mod options;
mod subscription;

pub use client::{MessageDb, MessageDbTx};
pub use error::{
    BoxError, DecodeError, EncodeError, InvalidArgument, MessageDbError, WrongVersionText,
    parse_wrong_expected_version,
};
pub use message::{ExpectedVersion, Message, MessageMetadata, NewMessage};
pub use options::{
    BatchSize, CategoryFilter, CategoryReadOptions, MAX_CONSUMER_GROUP_SIZE, MessageDbOptions,
    StreamReadOptions, SummaryRow, SummaryView,
};
pub use subscription::{
    ConstantPolling, DynamicPolling, ExponentialBackoff, Liveness, POSITION_RECORDED, PollingFn,
    PollingStrategy, PositionStore, Subscription, SubscriptionError, polling_fn,
};
/// The cancellation token subscriptions stop on.
pub use tokio_util::sync::CancellationToken;
