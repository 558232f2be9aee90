//! Command handling: load a stream, fold it into state, decide, append with the expected version,
//! retry on a concurrent append; optional snapshots for long streams.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{instrument, warn};

use crate::{
    AppendRequest, BoxError, Codec, CodecError, DecodeError, Event, EventData, EventRegistry,
    EventStore, ExpectedVersion, JsonCodec, Metadata, NewEvent, ReadStreamOptions, RecordedEvent,
    StoreError, StreamName,
};

/// The event type of snapshot events.
pub const SNAPSHOT_EVENT_TYPE: &str = "Snapshot";

/// Retries after a concurrent append, unless [`CommandHandler::retries`] says otherwise.
pub const DEFAULT_RETRIES: u32 = 3;

type Evolve<S, E> = Box<dyn Fn(S, &E) -> S + Send + Sync>;
type EncodeSnapshot<S> = Box<dyn Fn(&S, u64) -> Result<EventData, CodecError> + Send + Sync>;
type DecodeSnapshot<S> = Box<dyn Fn(&EventData) -> Result<(S, u64), CodecError> + Send + Sync>;

/// Handles commands against one kind of stream, the way Emmett's `CommandHandler` and Marten's
/// `FetchForWriting` do.
///
/// [`CommandHandler::handle`] loads the stream (from the latest usable snapshot, if enabled, then
/// only the events after it), folds every event into state with `evolve`, runs the caller's
/// `decide` on that state, and appends the events it returns with the version it saw as the
/// expected version. When another writer appended in between, the handler folds the new events
/// into its state and decides again, at most [`CommandHandler::retries`] times; then it gives up
/// with [`CommandError::Conflict`]. `decide` may therefore run more than once: keep it free of
/// side effects. Retries are immediate (the conflicting append has committed, so the next read
/// sees it); on a stream that many writers hit at once, allow more retries or route each stream's
/// commands through one task.
///
/// ```
/// use eventrail_core::{CommandError, CommandHandler, Event, EventRegistry, StreamName};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// #[serde(tag = "type")]
/// enum Account {
///     Opened,
///     Deposited { amount: u64 },
///     Withdrawn { amount: u64 },
/// }
///
/// impl Event for Account {
///     const EVENT_TYPES: &'static [&'static str] = &["Opened", "Deposited", "Withdrawn"];
///     fn event_type(&self) -> &'static str {
///         match self {
///             Self::Opened => "Opened",
///             Self::Deposited { .. } => "Deposited",
///             Self::Withdrawn { .. } => "Withdrawn",
///         }
///     }
/// }
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// struct Balance {
///     open: bool,
///     cents: u64,
/// }
///
/// fn evolve(mut state: Balance, event: &Account) -> Balance {
///     match event {
///         Account::Opened => state.open = true,
///         Account::Deposited { amount } => state.cents += amount,
///         Account::Withdrawn { amount } => state.cents -= amount,
///     }
///     state
/// }
///
/// #[derive(Debug, PartialEq, thiserror::Error)]
/// #[error("insufficient funds: {available} available")]
/// struct InsufficientFunds {
///     available: u64,
/// }
///
/// # #[cfg(not(feature = "test-util"))] fn main() {}
/// # #[cfg(feature = "test-util")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = eventrail_core::InMemoryStore::new(); // or a PgEventStore
/// let accounts = CommandHandler::new(EventRegistry::<Account>::new(), Balance::default, evolve);
/// let account: StreamName = "account-1".parse()?;
///
/// accounts
///     .handle(&store, &account, |_: &Balance| {
///         Ok::<_, InsufficientFunds>(vec![Account::Opened, Account::Deposited { amount: 50 }])
///     })
///     .await?;
/// let withdraw = |amount: u64| {
///     move |state: &Balance| {
///         if state.cents < amount {
///             return Err(InsufficientFunds { available: state.cents });
///         }
///         Ok(vec![Account::Withdrawn { amount }])
///     }
/// };
/// let done = accounts.handle(&store, &account, withdraw(30)).await?;
/// assert_eq!((done.state.cents, done.stream_version), (20, Some(2)));
/// match accounts.handle(&store, &account, withdraw(30)).await {
///     Err(CommandError::Rejected(InsufficientFunds { available: 20 })) => {}
///     other => panic!("{other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
pub struct CommandHandler<E, S, C = JsonCodec> {
    registry: EventRegistry<E, C>,
    initial: Box<dyn Fn() -> S + Send + Sync>,
    evolve: Evolve<S, E>,
    retries: u32,
    page_size: usize,
    snapshots: Option<SnapshotSupport<S>>,
}

impl<E, S, C> fmt::Debug for CommandHandler<E, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandHandler")
            .field("event", &std::any::type_name::<E>())
            .field("state", &std::any::type_name::<S>())
            .field("retries", &self.retries)
            .field("page_size", &self.page_size)
            .field("snapshots", &self.snapshots)
            .finish_non_exhaustive()
    }
}

/// When and how a [`CommandHandler`] takes snapshots of its folded state.
///
/// A snapshot is an event of type [`SNAPSHOT_EVENT_TYPE`] in the stream's snapshot stream
/// ([`Snapshots::stream_for`]: `account-42` → `account:snapshot-42`, as in Eventide), holding the
/// state and the stream version it was folded up to; its schema version is the state's
/// [`Snapshots::state_version`]. After an append that leaves at least [`Snapshots::every`] events
/// after the last snapshot, the handler writes a new one; loading starts from the latest snapshot
/// and reads only the events after it. A snapshot written for another state version, or that
/// does not decode, is ignored (the stream is folded from its start, and the next command writes
/// a fresh snapshot): bump the state version whenever the state's shape or the meaning of
/// `evolve` changes.
///
/// Snapshot streams live in their own category (`account:snapshot`), so category readers and
/// consumers of `account` never see them; readers of the whole log (`$all`) do, and should skip
/// events of type [`SNAPSHOT_EVENT_TYPE`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Snapshots<C = JsonCodec> {
    every: u64,
    state_version: u32,
    codec: C,
}

impl Snapshots<JsonCodec> {
    /// A snapshot after every `n` events (at least 1), state version 1, encoded as JSON.
    pub fn every(n: u64) -> Self {
        Self {
            every: n.max(1),
            state_version: 1,
            codec: JsonCodec,
        }
    }

    /// The snapshot stream of `stream`: the category gains the type `snapshot` (`account-42` →
    /// `account:snapshot-42`, `account:command-42` → `account:command+snapshot-42`). `None` when
    /// that name would be too long; such a stream is handled without snapshots.
    #[must_use]
    pub fn stream_for(stream: &StreamName) -> Option<StreamName> {
        let category = stream.category();
        let separator = if category.contains(':') { '+' } else { ':' };
        StreamName::new(&format!("{category}{separator}snapshot"), stream.id()).ok()
    }
}

impl<C: Codec> Snapshots<C> {
    /// The version of the state's schema: snapshots of any other version are ignored.
    pub fn state_version(mut self, version: u32) -> Self {
        self.state_version = version;
        self
    }

    /// Encodes snapshots with `codec` instead of JSON.
    pub fn codec<C2: Codec>(self, codec: C2) -> Snapshots<C2> {
        Snapshots {
            every: self.every,
            state_version: self.state_version,
            codec,
        }
    }
}

struct SnapshotSupport<S> {
    every: u64,
    state_version: u32,
    encode: EncodeSnapshot<S>,
    decode: DecodeSnapshot<S>,
}

impl<S> fmt::Debug for SnapshotSupport<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshots")
            .field("every", &self.every)
            .field("state_version", &self.state_version)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct SnapshotOut<'a, S> {
    stream_version: u64,
    state: &'a S,
}

#[derive(Deserialize)]
struct SnapshotIn<S> {
    stream_version: u64,
    state: S,
}

/// A stream folded into state by [`CommandHandler::load`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Loaded<S> {
    /// The folded state.
    pub state: S,
    /// The version of the last event folded in (`None`: no stream).
    pub version: Option<u64>,
    /// The stream version of the snapshot loading started from, if one was used.
    pub snapshot_version: Option<u64>,
    /// A snapshot that exists but was not used, and why.
    pub ignored_snapshot: Option<IgnoredSnapshot>,
    /// How many events of the stream were read and folded (after the snapshot, if any).
    pub events_read: usize,
}

/// Why a snapshot was not used; loading folded the whole stream instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IgnoredSnapshot {
    /// The snapshot holds state of another schema version: the next command that appends writes
    /// a snapshot of the current version.
    #[error("the snapshot has state version {found}, the handler expects {expected}")]
    StateVersion {
        /// The snapshot's state version.
        found: u32,
        /// The handler's state version.
        expected: u32,
    },
    /// The snapshot event cannot be decoded as the state (or is not a snapshot): bump the state
    /// version when the state's shape changes.
    #[error("the snapshot at position {position} cannot be decoded")]
    Undecodable {
        /// The snapshot event's global position.
        position: u64,
        /// What failed.
        #[source]
        source: BoxError,
    },
}

/// What [`CommandHandler::handle`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct Handled<S, E> {
    /// The state after the new events.
    pub state: S,
    /// The events `decide` returned and the handler appended (empty: nothing appended).
    pub events: Vec<E>,
    /// The stream's version after the command (`None`: the stream still does not exist).
    pub stream_version: Option<u64>,
    /// Global positions of the appended events (wait for a consumer to reach the last one to
    /// read your writes).
    pub positions: Vec<u64>,
    /// How many times `decide` ran: 1, plus one per concurrent append met.
    pub attempts: u32,
    /// The stream version of the snapshot written after the append, if one was.
    pub snapshot_written: Option<u64>,
}

/// Loading a stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// An event of the stream is not one of the handler's event types or does not decode: fix
    /// the registry (an upcaster, a missing type) or the data; retrying does not help.
    #[error("the event at position {position} cannot be folded into the state")]
    Decode {
        /// The event's global position.
        position: u64,
        /// What failed.
        #[source]
        source: DecodeError,
    },
    /// Reading failed: see [`StoreError::is_retryable`].
    #[error("reading the stream failed")]
    Store(#[source] StoreError),
}

/// Handling a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<R> {
    /// `decide` refused the command: nothing was written; show the rejection to the user.
    #[error("command rejected: {0}")]
    Rejected(R),
    /// Every attempt met a concurrent append to the stream: nothing was written; try again
    /// later or allow more [`CommandHandler::retries`].
    #[error("{attempts} attempts on stream {stream} met a concurrent append")]
    Conflict {
        /// The stream.
        stream: String,
        /// How many times the handler decided and tried to append.
        attempts: u32,
        /// The last conflict ([`StoreError::WrongExpectedVersion`]).
        #[source]
        source: StoreError,
    },
    /// An event of the stream cannot be folded into the state: see [`LoadError::Decode`].
    #[error("the event at position {position} cannot be folded into the state")]
    Decode {
        /// The event's global position.
        position: u64,
        /// What failed.
        #[source]
        source: DecodeError,
    },
    /// An event `decide` returned cannot be encoded: nothing was written; fix the event type.
    #[error("encoding a decided event failed")]
    Encode(#[source] CodecError),
    /// The store failed or refused the append (a processor's veto, an invalid event, the
    /// backend): nothing was written; the source says which.
    #[error("the event store failed")]
    Store(#[source] StoreError),
}

impl<R> From<LoadError> for CommandError<R> {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Decode { position, source } => Self::Decode { position, source },
            LoadError::Store(source) => Self::Store(source),
        }
    }
}

impl<E: Event, S, C: Codec> CommandHandler<E, S, C> {
    /// A handler whose state starts as `initial()` and takes each event with `evolve`; events
    /// are decoded and encoded with `registry`.
    #[must_use]
    pub fn new(
        registry: EventRegistry<E, C>,
        initial: impl Fn() -> S + Send + Sync + 'static,
        evolve: impl Fn(S, &E) -> S + Send + Sync + 'static,
    ) -> Self {
        Self {
            registry,
            initial: Box::new(initial),
            evolve: Box::new(evolve),
            retries: DEFAULT_RETRIES,
            page_size: crate::DEFAULT_PAGE_SIZE,
            snapshots: None,
        }
    }

    /// Decides again at most `n` times after a concurrent append (default
    /// [`DEFAULT_RETRIES`]); 0 gives up at the first conflict.
    #[must_use]
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Folds the stream in pages of `n` events (at least 1; default
    /// [`DEFAULT_PAGE_SIZE`](crate::DEFAULT_PAGE_SIZE)), so loading holds one page of events in
    /// memory at a time.
    #[must_use]
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// Takes snapshots of the state (see [`Snapshots`]).
    #[must_use]
    pub fn snapshots<SC: Codec>(mut self, policy: Snapshots<SC>) -> Self
    where
        S: Serialize + DeserializeOwned + 'static,
    {
        let codec = Arc::new(policy.codec);
        let decoder = Arc::clone(&codec);
        self.snapshots = Some(SnapshotSupport {
            every: policy.every,
            state_version: policy.state_version,
            encode: Box::new(move |state, stream_version| {
                codec.encode(&SnapshotOut {
                    stream_version,
                    state,
                })
            }),
            decode: Box::new(move |data| {
                let SnapshotIn {
                    stream_version,
                    state,
                } = decoder.decode(data)?;
                Ok((state, stream_version))
            }),
        });
        self
    }

    /// Loads `stream` and folds it into state: from the latest usable snapshot when snapshots
    /// are on, then every event after it, in pages.
    ///
    /// # Errors
    /// [`LoadError::Decode`] for an event that is not one of the handler's types or does not
    /// decode, [`LoadError::Store`] when reading fails.
    #[instrument(skip_all, fields(stream = %stream))]
    pub async fn load<St: EventStore>(
        &self,
        store: &St,
        stream: &StreamName,
    ) -> Result<Loaded<S>, LoadError> {
        let mut ignored_snapshot = None;
        let mut start = None;
        if let Some(support) = &self.snapshots
            && let Some(snapshot_stream) = Snapshots::stream_for(stream)
        {
            let latest = store
                .read_stream(
                    &snapshot_stream,
                    ReadStreamOptions::default().backward().max_count(1),
                )
                .await
                .map_err(LoadError::Store)?;
            if let Some(event) = latest.first() {
                match support.read(event) {
                    Ok(found) => start = Some(found),
                    Err(why) => {
                        warn!(error = %crate::error_chain(&why), "snapshot ignored");
                        ignored_snapshot = Some(why);
                    }
                }
            }
        }
        let snapshot_version = start.as_ref().map(|(_, version)| *version);
        let (state, version) =
            start.map_or_else(|| ((self.initial)(), None), |(s, v)| (s, Some(v)));
        let (state, version, events_read) = self.fold_after(store, stream, state, version).await?;
        Ok(Loaded {
            state,
            version,
            snapshot_version,
            ignored_snapshot,
            events_read,
        })
    }

    /// Folds the events after `version` into `state`, page by page.
    async fn fold_after<St: EventStore>(
        &self,
        store: &St,
        stream: &StreamName,
        mut state: S,
        mut version: Option<u64>,
    ) -> Result<(S, Option<u64>, usize), LoadError> {
        let mut read = 0;
        loop {
            let from = version.map_or(0, |v| v + 1);
            let page = store
                .read_stream(
                    stream,
                    ReadStreamOptions::default()
                        .from_version(from)
                        .max_count(self.page_size)
                        .page_size(self.page_size),
                )
                .await
                .map_err(LoadError::Store)?;
            for recorded in &page {
                let event = self
                    .registry
                    .decode(recorded)
                    .map_err(|source| LoadError::Decode {
                        position: recorded.global_position,
                        source,
                    })?;
                state = (self.evolve)(state, &event);
                version = Some(recorded.stream_version);
            }
            read += page.len();
            if page.len() < self.page_size {
                return Ok((state, version, read));
            }
        }
    }

    /// Handles one command on `stream`: load, `decide`, append with the expected version, and
    /// on a concurrent append fold the new events in and decide again (see the type's docs).
    /// When `decide` returns no events nothing is appended.
    ///
    /// # Errors
    /// [`CommandError::Rejected`] with `decide`'s error, [`CommandError::Conflict`] when the
    /// retries are spent, [`CommandError::Decode`] and [`CommandError::Encode`] for events that
    /// do not convert, [`CommandError::Store`] for every other store error (a veto, the backend).
    pub async fn handle<St, R>(
        &self,
        store: &St,
        stream: &StreamName,
        decide: impl FnMut(&S) -> Result<Vec<E>, R>,
    ) -> Result<Handled<S, E>, CommandError<R>>
    where
        St: EventStore,
    {
        self.handle_with_metadata(store, stream, &Metadata::default(), decide)
            .await
    }

    /// Handles one command like [`CommandHandler::handle`], writing `metadata` (a correlation
    /// id, a causation id, a `traceparent`) on every appended event.
    ///
    /// # Errors
    /// As [`CommandHandler::handle`].
    #[instrument(skip_all, fields(stream = %stream))]
    pub async fn handle_with_metadata<St, R>(
        &self,
        store: &St,
        stream: &StreamName,
        metadata: &Metadata,
        mut decide: impl FnMut(&S) -> Result<Vec<E>, R>,
    ) -> Result<Handled<S, E>, CommandError<R>>
    where
        St: EventStore,
    {
        let loaded = self.load(store, stream).await?;
        let snapshot_version = loaded.snapshot_version;
        let (mut state, mut version) = (loaded.state, loaded.version);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let decided = decide(&state).map_err(CommandError::Rejected)?;
            if decided.is_empty() {
                return Ok(Handled {
                    state,
                    events: decided,
                    stream_version: version,
                    positions: Vec::new(),
                    attempts,
                    snapshot_written: None,
                });
            }
            let events = decided
                .iter()
                .map(|e| {
                    self.registry
                        .encode(e)
                        .map(|n| n.with_metadata(metadata.clone()))
                })
                .collect::<Result<Vec<NewEvent>, _>>()
                .map_err(CommandError::Encode)?;
            let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            match store
                .append(AppendRequest::new(stream.clone(), expected, events))
                .await
            {
                Ok(outcome) => {
                    for event in &decided {
                        state = (self.evolve)(state, event);
                    }
                    let snapshot_written = self
                        .snapshot_if_due(
                            store,
                            stream,
                            &state,
                            snapshot_version,
                            outcome.stream_version,
                        )
                        .await;
                    return Ok(Handled {
                        state,
                        events: decided,
                        stream_version: Some(outcome.stream_version),
                        positions: outcome.positions,
                        attempts,
                        snapshot_written,
                    });
                }
                Err(conflict @ StoreError::WrongExpectedVersion { .. }) => {
                    if attempts > self.retries {
                        return Err(CommandError::Conflict {
                            stream: stream.to_string(),
                            attempts,
                            source: conflict,
                        });
                    }
                    // The state is good up to `version`: fold only what the other writer added.
                    (state, version, _) = self.fold_after(store, stream, state, version).await?;
                }
                Err(other) => return Err(CommandError::Store(other)),
            }
        }
    }

    /// Writes a snapshot when `every` events or more follow the last one. The command already
    /// succeeded: a failed snapshot write is logged, not returned.
    async fn snapshot_if_due<St: EventStore>(
        &self,
        store: &St,
        stream: &StreamName,
        state: &S,
        last_snapshot: Option<u64>,
        stream_version: u64,
    ) -> Option<u64> {
        let support = self.snapshots.as_ref()?;
        let since = stream_version + 1 - last_snapshot.map_or(0, |v| v + 1);
        if since < support.every {
            return None;
        }
        let snapshot_stream = Snapshots::stream_for(stream)?;
        let written = match (support.encode)(state, stream_version) {
            Ok(data) => store
                .append(AppendRequest::new(
                    snapshot_stream,
                    ExpectedVersion::Any,
                    vec![
                        NewEvent::new(SNAPSHOT_EVENT_TYPE, data)
                            .with_schema_version(support.state_version),
                    ],
                ))
                .await
                .map_err(BoxError::from),
            Err(e) => Err(e.into()),
        };
        match written {
            Ok(_) => Some(stream_version),
            Err(e) => {
                warn!(error = %crate::error_chain(&*e), "writing a snapshot failed");
                None
            }
        }
    }
}

impl<S> SnapshotSupport<S> {
    fn read(&self, event: &RecordedEvent) -> Result<(S, u64), IgnoredSnapshot> {
        if event.event_type != SNAPSHOT_EVENT_TYPE {
            return Err(IgnoredSnapshot::Undecodable {
                position: event.global_position,
                source: format!("event type {:?} is not a snapshot", event.event_type).into(),
            });
        }
        if event.schema_version != self.state_version {
            return Err(IgnoredSnapshot::StateVersion {
                found: event.schema_version,
                expected: self.state_version,
            });
        }
        (self.decode)(&event.data).map_err(|e| IgnoredSnapshot::Undecodable {
            position: event.global_position,
            source: e.into(),
        })
    }
}
