//! Plain reads of a stream, a category and `$all`: whole results fetched in pages
//! ([`Paged`]), and the same as a stream of events ([`PgEventStore::stream_all`],
//! [`PgEventStore::stream_category`]). These read what is committed; following the log without
//! passing a position that may still commit is the gap-safe read's job (`safe.rs`).

use eventrail_core::{
    Category, Direction, EventStore, ReadAllOptions, ReadStreamOptions, RecordedEvent, StoreError,
    StreamName,
};
use futures::{Stream, TryStreamExt};
use postgres_types::{ToSql, Type};

use super::{PgEventStore, backend, limit};
use crate::rows::{recorded_events, to_i64};

impl PgEventStore {
    /// Reads `$all` from a position as a stream of events, fetching pages of `page_size` (up to
    /// `max_count` events in all, when set), so only one page is held in memory.
    pub fn stream_all(
        &self,
        options: ReadAllOptions,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + '_ {
        self.paged(None, options)
    }

    /// Reads a category from a position as a stream of events, fetching pages of `page_size` (up
    /// to `max_count` events in all, when set), so only one page is held in memory.
    pub fn stream_category<'a>(
        &'a self,
        category: &'a Category,
        options: ReadAllOptions,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'a {
        self.paged(Some(category), options)
    }

    fn paged<'a>(
        &'a self,
        category: Option<&'a Category>,
        options: ReadAllOptions,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'a {
        let page = options.page_size.max(1);
        let remaining = options.max_count.unwrap_or(usize::MAX);
        futures::stream::try_unfold(Some((options, remaining)), move |next| async move {
            let Some((opts, remaining)) = next.filter(|(_, r)| *r > 0) else {
                return Ok::<_, StoreError>(None);
            };
            let want = page.min(remaining);
            let opts = opts.max_count(want);
            let events = match category {
                Some(c) => self.read_category(c, opts.clone()).await?,
                None => self.read_all(opts.clone()).await?,
            };
            let Some(last) = events.last() else {
                return Ok(None);
            };
            let next = (events.len() == want).then(|| {
                (
                    opts.from_position(last.global_position + 1),
                    remaining - want,
                )
            });
            Ok(Some((
                futures::stream::iter(events.into_iter().map(Ok)),
                next,
            )))
        })
        .try_flatten()
    }

    pub(super) async fn read_stream_paged(
        &self,
        stream: &StreamName,
        options: ReadStreamOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let name = stream.as_str();
        let sql = self.inner.sql.of(self.learned_layout().await?);
        let read = Paged {
            key: Some(&name),
            bounds: sql.stream_bounds.as_deref(),
            event_types: &options.event_types,
            max_count: options.max_count,
            page_size: options.page_size,
            what: "version",
        };
        match options.direction {
            Direction::Forward => {
                read.run(
                    self,
                    &sql.read_stream_forward,
                    options.from_version.unwrap_or(0),
                    |e| e.stream_version.checked_add(1),
                )
                .await
            }
            Direction::Backward => {
                read.run(
                    self,
                    &sql.read_stream_backward,
                    options.from_version.unwrap_or(i64::MAX as u64),
                    |e| e.stream_version.checked_sub(1),
                )
                .await
            }
        }
    }

    pub(super) async fn read_category_paged(
        &self,
        category: &Category,
        options: ReadAllOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let name = category.as_str();
        Paged {
            key: Some(&name),
            bounds: None,
            event_types: &options.event_types,
            max_count: options.max_count,
            page_size: options.page_size,
            what: "position",
        }
        .run(
            self,
            &self.inner.sql.read_category,
            options.from_position,
            |e| e.global_position.checked_add(1),
        )
        .await
    }

    pub(super) async fn read_all_paged(
        &self,
        options: ReadAllOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Paged {
            key: None,
            bounds: None,
            event_types: &options.event_types,
            max_count: options.max_count,
            page_size: options.page_size,
            what: "position",
        }
        .run(self, &self.inner.sql.read_all, options.from_position, |e| {
            e.global_position.checked_add(1)
        })
        .await
    }
}

/// A read that returns every matching row (or `max_count` of them) in pages of `page_size`, so a
/// long stream is neither cut off nor fetched in one result set. Each page is a query
/// `(key?, cursor, event_types, limit)` ordered by the cursor column; the next page starts after
/// the last row returned. Pages are separate statements: a later page may include events
/// appended after the first was read, never fewer than a single statement would return.
///
/// With `bounds`, a statement that gives the key's first and last positions: it runs first (no
/// row: nothing to read) and its two values are the pages' `$5` and `$6`. A stream's events come
/// after its first and up to its last position as of that statement: every later append to the
/// stream draws its positions after the one before it committed (the stream lock), so the
/// pages then read the stream as it was then, whole.
struct Paged<'a> {
    key: Option<&'a (dyn ToSql + Sync)>,
    bounds: Option<&'a str>,
    event_types: &'a Option<Vec<String>>,
    max_count: Option<usize>,
    page_size: usize,
    what: &'static str,
}

impl Paged<'_> {
    async fn run(
        self,
        store: &PgEventStore,
        sql: &str,
        mut cursor: u64,
        next: impl Fn(&RecordedEvent) -> Option<u64>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let page = self.page_size.max(1);
        let mut remaining = self.max_count.unwrap_or(usize::MAX);
        let mut events = Vec::new();
        if remaining == 0 {
            return Ok(events);
        }
        let client = store.client().await?;
        let bounds: Option<(i64, i64)> = match (self.bounds, self.key) {
            (Some(sql), Some(key)) => {
                let row = store
                    .statements()
                    .query_opt(&*client, sql, &[(key, Type::TEXT)])
                    .await
                    .map_err(backend)?;
                let Some(row) = row else {
                    return Ok(events);
                };
                Some((
                    row.try_get(0).map_err(backend)?,
                    row.try_get(1).map_err(backend)?,
                ))
            }
            _ => None,
        };
        while remaining > 0 {
            let want = page.min(remaining);
            let from = to_i64(cursor, self.what)?;
            let want_sql = limit(want);
            let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::with_capacity(6);
            params.extend(self.key.map(|k| (k, Type::TEXT)));
            params.extend([
                (&from as &(dyn ToSql + Sync), Type::INT8),
                (self.event_types, Type::TEXT_ARRAY),
                (&want_sql, Type::INT8),
            ]);
            if let Some((first, last)) = &bounds {
                params.extend([
                    (first as &(dyn ToSql + Sync), Type::INT8),
                    (last as &(dyn ToSql + Sync), Type::INT8),
                ]);
            }
            let rows = store
                .statements()
                .query(&*client, sql, &params)
                .await
                .map_err(backend)?;
            let batch = recorded_events(&rows)?;
            remaining -= batch.len();
            let following = if batch.len() == want {
                batch.last().and_then(&next)
            } else {
                None
            };
            events.extend(batch);
            match following {
                Some(c) => cursor = c,
                None => break,
            }
        }
        Ok(events)
    }
}
