//! Vocabulary and traits of eventrail.
//!
//! This crate has no PostgreSQL dependency: it defines what an event, a stream, an expected
//! version and a processor are, so that stores (PostgreSQL, in-memory) and runtimes (worker,
//! outbox, sagas) speak the same language.
//!
//! - [`StreamName`] parses and validates Message DB style names (`category-id`, `category:type-id`).
//! - [`NewEvent`] goes in, [`RecordedEvent`] comes out; [`EventData`] is JSON (parsed on first
//!   use, [`JsonData`]) or binary.
//! - [`ExpectedVersion`] and [`ExpectedPosition`] are the optimistic concurrency checks.
//! - [`Codec`] turns values into [`EventData`]; [`Event`] and [`EventRegistry`] give typed events
//!   with schema versions and upcasters.
//! - [`CommandHandler`] is the write side: load a stream, fold it with `evolve`, `decide`, append
//!   with the expected version, retry on a concurrent append; optional [`Snapshots`].
//! - [`EventStore`] is the store trait; [`StatelessProcessor`], [`StatefulProcessor`] and
//!   [`Reactor`] are the three module kinds.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod codec;
mod command;
mod error;
mod event;
mod json;
mod limits;
mod processor;
mod registry;
mod retry;
mod store;
mod stream_name;
mod version;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;
#[cfg(feature = "test-util")]
mod memory;

#[cfg(feature = "bincode")]
#[cfg_attr(docsrs, doc(cfg(feature = "bincode")))]
pub use codec::BincodeCodec;
pub use codec::{Codec, JsonCodec};
pub use command::{
    CommandError, CommandHandler, DEFAULT_RETRIES, Handled, IgnoredSnapshot, LoadError, Loaded,
    SNAPSHOT_EVENT_TYPE, Snapshots,
};
pub use error::{
    BoxError, CodecError, DatabaseError, DecodeError, ProcessorError, StoreError, StreamNameError,
    error_chain, find_database_error,
};
pub use event::{EventData, Metadata, NewEvent, RecordedEvent};
pub use json::JsonData;
pub use limits::{
    EventRule, MAX_EVENT_DATA_LEN, MAX_EVENT_TYPE_LEN, MAX_METADATA_LEN, RESERVED_METADATA_KEYS,
};
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use memory::InMemoryStore;
pub use processor::{
    NoStatefulProcessor, Reactor, StatefulProcessor, StatelessProcessor, append_consistent,
    catch_up,
};
pub use registry::{Event, EventRegistry, Upcaster};
pub use retry::RetryPolicy;
pub use store::{
    AppendOutcome, AppendRequest, DEFAULT_PAGE_SIZE, Direction, EventStore, ReadAllOptions,
    ReadStreamOptions,
};
pub use stream_name::{Category, StreamName};
pub use version::{ExpectedPosition, ExpectedVersion, PositionScope};
