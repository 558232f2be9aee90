#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod error;
mod message;
pub mod names;
mod options;
mod subscription;

pub use client::MessageDb;
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
