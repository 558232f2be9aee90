use std::future::Future;

use crate::{
    Category, ExpectedPosition, ExpectedVersion, NewEvent, PositionScope, RecordedEvent,
    StatefulProcessor, StoreError, StreamName,
};

/// One append: events for one stream with their preconditions.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// The stream appended to.
    pub stream: StreamName,
    /// The stream version the writer expects.
    pub expected_version: ExpectedVersion,
    /// An optional global precondition.
    pub expected_position: Option<ExpectedPosition>,
    /// The events, in order; at least one.
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    /// Events for `stream`, checked against `expected_version`.
    #[must_use]
    pub fn new(
        stream: StreamName,
        expected_version: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        Self {
            stream,
            expected_version,
            expected_position: None,
            events,
        }
    }

    /// Adds a global precondition.
    #[must_use]
    pub fn with_expected_position(mut self, expected: ExpectedPosition) -> Self {
        self.expected_position = Some(expected);
        self
    }

    /// Checks what every store checks before touching storage.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for an empty batch, [`StoreError::InvalidEvent`] for an
    /// event that breaks an [`EventRule`](crate::EventRule), [`StoreError::DuplicateEventId`]
    /// for ids repeated in the batch.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Err(StoreError::InvalidRequest(
                "an append needs at least one event".into(),
            ));
        }
        for (index, event) in self.events.iter().enumerate() {
            event.validate().map_err(|rule| StoreError::InvalidEvent {
                index,
                event_type: event.event_type.clone(),
                rule,
            })?;
        }
        let mut ids: Vec<_> = self.events.iter().map(|e| e.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(StoreError::DuplicateEventId {
                event_id: Some(w[0]),
            });
        }
        Ok(())
    }
}

/// What an append produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendOutcome {
    /// The stream's version after the append (version of its last event).
    pub stream_version: u64,
    /// Global positions of the appended events, in order.
    pub positions: Vec<u64>,
}

impl AppendOutcome {
    /// The outcome of an append that left the stream at `stream_version` and wrote `positions`
    /// (for backends).
    #[must_use]
    pub fn new(stream_version: u64, positions: Vec<u64>) -> Self {
        Self {
            stream_version,
            positions,
        }
    }

    /// Position of the last appended event: wait for a consumer to reach it to read your writes.
    #[must_use]
    pub fn last_position(&self) -> u64 {
        self.positions.last().copied().unwrap_or_default()
    }
}

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// Rows a store fetches per query when it pages through a long read.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// Options of a stream read.
///
/// By default a read returns every matching event: a store pages through a long stream
/// internally ([`ReadStreamOptions::page_size`] rows per query), so nothing is cut off behind the
/// caller's back. [`ReadStreamOptions::max_count`] asks for at most `n` events; to learn whether
/// more exist, ask for `n + 1` and show `n`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ReadStreamOptions {
    /// Read direction.
    pub direction: Direction,
    /// First version to return (inclusive); `None`: the start (forward) or the end (backward).
    pub from_version: Option<u64>,
    /// Most events to return; `None` (the default): every matching event.
    pub max_count: Option<usize>,
    /// Rows fetched per query when paging (at least 1).
    pub page_size: usize,
    /// Only these event types (all when `None`).
    pub event_types: Option<Vec<String>>,
}

impl Default for ReadStreamOptions {
    fn default() -> Self {
        Self {
            direction: Direction::Forward,
            from_version: None,
            max_count: None,
            page_size: DEFAULT_PAGE_SIZE,
            event_types: None,
        }
    }
}

impl ReadStreamOptions {
    /// Reads newest first.
    pub fn backward(mut self) -> Self {
        self.direction = Direction::Backward;
        self
    }

    /// Starts at this version (inclusive).
    pub fn from_version(mut self, version: u64) -> Self {
        self.from_version = Some(version);
        self
    }

    /// Returns at most `n` events (without it: every matching event).
    pub fn max_count(mut self, n: usize) -> Self {
        self.max_count = Some(n);
        self
    }

    /// Fetches `n` rows per query when paging (1 when `n` is 0).
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// Returns only these event types.
    pub fn event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }
}

/// Options of a category or `$all` read, by global position.
///
/// As with [`ReadStreamOptions`], the default returns every matching event from
/// [`ReadAllOptions::from_position`] on, fetched in pages; set [`ReadAllOptions::max_count`] to
/// read a bounded page (ask for `n + 1` to learn whether more exist), or use the store's
/// streaming reads (`PgEventStore::stream_all`) to hold one page in memory at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ReadAllOptions {
    /// First global position to return (inclusive).
    pub from_position: u64,
    /// Most events to return; `None` (the default): every matching event.
    pub max_count: Option<usize>,
    /// Rows fetched per query when paging (at least 1).
    pub page_size: usize,
    /// Only these event types (all when `None`).
    pub event_types: Option<Vec<String>>,
}

impl Default for ReadAllOptions {
    fn default() -> Self {
        Self {
            from_position: 0,
            max_count: None,
            page_size: DEFAULT_PAGE_SIZE,
            event_types: None,
        }
    }
}

impl ReadAllOptions {
    /// Starts at this global position (inclusive).
    pub fn from_position(mut self, position: u64) -> Self {
        self.from_position = position;
        self
    }

    /// Returns at most `n` events (without it: every matching event).
    pub fn max_count(mut self, n: usize) -> Self {
        self.max_count = Some(n);
        self
    }

    /// Fetches `n` rows per query when paging (1 when `n` is 0).
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// Returns only these event types.
    pub fn event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }
}

/// An event store: append with optimistic concurrency, read streams, categories and the log.
///
/// Reads by global position return committed events. To *follow* the log without ever skipping
/// an event that commits late, use the store's gap-safe subscription read (for PostgreSQL,
/// `PgEventStore::read_safe`), not [`EventStore::read_all`] in a loop.
pub trait EventStore: Send + Sync {
    /// Appends events to one stream, atomically, if the preconditions hold.
    ///
    /// # Errors
    /// [`StoreError::WrongExpectedVersion`], [`StoreError::PositionConflict`],
    /// [`StoreError::DuplicateEventId`], [`StoreError::Vetoed`] (a processor refused),
    /// [`StoreError::InvalidRequest`], [`StoreError::Backend`].
    fn append(
        &self,
        request: AppendRequest,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send;

    /// Appends like [`EventStore::append`], and runs `processor`'s two-phase hooks: `prepare`
    /// before the append commits (it may veto), `commit` after, `rollback` if it does not commit.
    ///
    /// # Errors
    /// As [`EventStore::append`].
    fn append_staged<P: StatefulProcessor + ?Sized>(
        &self,
        request: AppendRequest,
        processor: &P,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send;

    /// Reads one stream: every matching event unless `options` set a
    /// [`max_count`](ReadStreamOptions::max_count).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStreamOptions,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Reads one category by global position: every matching event from the start position
    /// unless `options` set a [`max_count`](ReadAllOptions::max_count).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn read_category(
        &self,
        category: &Category,
        options: ReadAllOptions,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Reads the whole log by global position: every matching event from the start position
    /// unless `options` set a [`max_count`](ReadAllOptions::max_count).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn read_all(
        &self,
        options: ReadAllOptions,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Reads events of `scope` after `after` such that no event of `scope` at or below the last
    /// one returned can still appear later (no append in that scope is in flight). This is the
    /// read a [`StatefulProcessor`] catches up with.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn read_scope_complete(
        &self,
        scope: &PositionScope,
        after: Option<u64>,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// The stream's current version (`None`: no stream).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn stream_version(
        &self,
        stream: &StreamName,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
}
