//! The conformance suite: the behaviour every [`EventStore`] must have.
//!
//! Each check uses fresh stream and category names, so the suite can run on a store that already
//! holds data. Checks that look at the whole log (`ExpectedPosition::all`) assume no other writer
//! runs at the same time.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! eventrail_core::conformance::run(&eventrail_core::InMemoryStore::new()).await;
//! # }
//! ```

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use uuid::Uuid;

use crate::{
    AppendOutcome, AppendRequest, Category, CommandError, CommandHandler, Event, EventData,
    EventRegistry, EventStore, ExpectedPosition, ExpectedVersion, IgnoredSnapshot, Metadata,
    NewEvent, PositionScope, ProcessorError, ReadAllOptions, ReadStreamOptions, RecordedEvent,
    Snapshots, StatefulProcessor, StoreError, StreamName, append_consistent, catch_up,
};

/// Runs every check; panics with a message naming the first one that fails.
pub async fn run<S: EventStore>(store: &S) {
    append_and_read_stream(store).await;
    long_reads_are_whole(store).await;
    expected_versions(store).await;
    duplicate_and_invalid_requests(store).await;
    category_and_all_reads(store).await;
    payloads_round_trip(store).await;
    expected_positions(store).await;
    stateful_processor_catches_up_and_retries(store).await;
    stateful_processor_veto(store).await;
    command_handling(store).await;
    command_retries_on_concurrent_appends(store).await;
    command_snapshots(store).await;
}

fn unique_category() -> String {
    format!("c{}", Uuid::new_v4().simple())
}

fn stream_in(category: &str) -> StreamName {
    StreamName::new(category, &Uuid::new_v4().to_string()).expect("valid generated stream name")
}

fn events(types: &[&str]) -> Vec<NewEvent> {
    types
        .iter()
        .enumerate()
        .map(|(i, t)| NewEvent::json(*t, serde_json::json!({ "n": i })))
        .collect()
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

/// Appends, then reads forwards, backwards, from a version, limited, and filtered by type.
pub async fn append_and_read_stream<S: EventStore>(store: &S) {
    let stream = stream_in(&unique_category());
    let out = store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            events(&["A", "B", "A"]),
        ))
        .await
        .expect("first append");
    assert_eq!(out.stream_version, 2, "version after three events");
    assert_eq!(out.positions.len(), 3);
    assert!(
        out.positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase"
    );

    let all = store
        .read_stream(&stream, ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(versions(&all), [0, 1, 2]);
    assert_eq!(
        all.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        out.positions
    );
    assert!(all.iter().all(|e| e.stream == stream));
    assert_eq!(
        all[0].transaction_id, all[2].transaction_id,
        "one transaction per append"
    );

    let back = store
        .read_stream(&stream, ReadStreamOptions::default().backward())
        .await
        .unwrap();
    assert_eq!(versions(&back), [2, 1, 0]);
    let back_from = store
        .read_stream(
            &stream,
            ReadStreamOptions::default().backward().from_version(1),
        )
        .await
        .unwrap();
    assert_eq!(versions(&back_from), [1, 0]);
    let from = store
        .read_stream(
            &stream,
            ReadStreamOptions::default().from_version(1).max_count(1),
        )
        .await
        .unwrap();
    assert_eq!(versions(&from), [1]);
    let only_a = store
        .read_stream(&stream, ReadStreamOptions::default().event_types(["A"]))
        .await
        .unwrap();
    assert_eq!(versions(&only_a), [0, 2]);
    assert_eq!(store.stream_version(&stream).await.unwrap(), Some(2));
    let missing = stream_in(&unique_category());
    assert_eq!(store.stream_version(&missing).await.unwrap(), None);
    assert!(
        store
            .read_stream(&missing, ReadStreamOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// Default reads return a long stream and category whole (stores page internally); an explicit
/// `max_count` is honoured; paging with a type filter and a small page loses nothing.
pub async fn long_reads_are_whole<S: EventStore>(store: &S) {
    const LEN: u64 = 2_500;
    let category = unique_category();
    let stream = stream_in(&category);
    let types: Vec<&str> = (0..LEN)
        .map(|i| if i % 2 == 0 { "A" } else { "B" })
        .collect();
    // Three appends, so no read can be one append's batch by accident.
    let mut expected = ExpectedVersion::NoStream;
    for chunk in types.chunks(900) {
        let out = store
            .append(AppendRequest::new(stream.clone(), expected, events(chunk)))
            .await
            .expect("append a chunk of a long stream");
        expected = ExpectedVersion::Exact(out.stream_version);
    }
    let whole = store
        .read_stream(&stream, ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(
        versions(&whole),
        (0..LEN).collect::<Vec<_>>(),
        "a default read returns the whole stream"
    );
    let back = store
        .read_stream(&stream, ReadStreamOptions::default().backward())
        .await
        .unwrap();
    assert_eq!(
        versions(&back),
        (0..LEN).rev().collect::<Vec<_>>(),
        "a default backward read returns the whole stream"
    );
    let small_pages = store
        .read_stream(&stream, ReadStreamOptions::default().page_size(7))
        .await
        .unwrap();
    assert_eq!(versions(&small_pages), versions(&whole));
    let only_b = store
        .read_stream(
            &stream,
            ReadStreamOptions::default()
                .event_types(["B"])
                .page_size(100)
                .from_version(1000),
        )
        .await
        .unwrap();
    assert_eq!(
        versions(&only_b),
        (1000..LEN).filter(|v| v % 2 == 1).collect::<Vec<_>>()
    );
    let back_from = store
        .read_stream(
            &stream,
            ReadStreamOptions::default()
                .backward()
                .from_version(1500)
                .page_size(333),
        )
        .await
        .unwrap();
    assert_eq!(versions(&back_from), (0..=1500).rev().collect::<Vec<_>>());
    let limited = store
        .read_stream(
            &stream,
            ReadStreamOptions::default().max_count(1001).page_size(250),
        )
        .await
        .unwrap();
    assert_eq!(versions(&limited), (0..1001).collect::<Vec<_>>());

    let cat: Category = category.parse().unwrap();
    let in_category = store
        .read_category(&cat, ReadAllOptions::default())
        .await
        .unwrap();
    assert_eq!(
        versions(&in_category),
        versions(&whole),
        "a default category read returns every event"
    );
    let page = store
        .read_category(
            &cat,
            ReadAllOptions::default()
                .from_position(whole[10].global_position)
                .max_count(1200)
                .page_size(500),
        )
        .await
        .unwrap();
    assert_eq!(versions(&page), (10..1210).collect::<Vec<_>>());
    let all = store
        .read_all(
            ReadAllOptions::default()
                .from_position(whole[0].global_position)
                .page_size(600),
        )
        .await
        .unwrap();
    let mine: Vec<u64> = all
        .iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(
        mine,
        versions(&whole),
        "a default $all read returns every event"
    );
}

/// Every expectation kind, met and unmet, with the typed conflict.
pub async fn expected_versions<S: EventStore>(store: &S) {
    let stream = stream_in(&unique_category());
    let append =
        |expected| store.append(AppendRequest::new(stream.clone(), expected, events(&["E"])));
    match append(ExpectedVersion::StreamExists).await {
        Err(StoreError::WrongExpectedVersion {
            actual: None,
            expected: ExpectedVersion::StreamExists,
            ..
        }) => {}
        other => panic!("StreamExists on a missing stream: {other:?}"),
    }
    append(ExpectedVersion::NoStream)
        .await
        .expect("NoStream on a missing stream");
    match append(ExpectedVersion::NoStream).await {
        Err(StoreError::WrongExpectedVersion {
            stream: s,
            expected: ExpectedVersion::NoStream,
            actual: Some(0),
        }) => {
            assert_eq!(s, stream.as_str());
        }
        other => panic!("NoStream on an existing stream: {other:?}"),
    }
    match append(ExpectedVersion::Exact(5)).await {
        Err(StoreError::WrongExpectedVersion {
            expected: ExpectedVersion::Exact(5),
            actual: Some(0),
            ..
        }) => {}
        other => panic!("Exact(5) at version 0: {other:?}"),
    }
    assert_eq!(
        append(ExpectedVersion::Exact(0))
            .await
            .unwrap()
            .stream_version,
        1
    );
    assert_eq!(
        append(ExpectedVersion::StreamExists)
            .await
            .unwrap()
            .stream_version,
        2
    );
    assert_eq!(
        append(ExpectedVersion::Any).await.unwrap().stream_version,
        3
    );
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        Some(3),
        "failed appends wrote nothing"
    );
}

/// Duplicate ids (within a batch and across appends) and empty batches are typed errors that write
/// nothing.
pub async fn duplicate_and_invalid_requests<S: EventStore>(store: &S) {
    let stream = stream_in(&unique_category());
    let first = NewEvent::json("E", serde_json::json!({}));
    let id = first.id;
    let twice = vec![first.clone(), first.clone()];
    match store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Any,
            twice,
        ))
        .await
    {
        Err(StoreError::DuplicateEventId { event_id }) => assert_eq!(event_id, Some(id)),
        other => panic!("duplicate id in one batch: {other:?}"),
    }
    store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Any,
            vec![first.clone()],
        ))
        .await
        .unwrap();
    let other = stream_in(&unique_category());
    match store
        .append(AppendRequest::new(
            other.clone(),
            ExpectedVersion::Any,
            vec![NewEvent::json("F", serde_json::json!({})), first],
        ))
        .await
    {
        Err(StoreError::DuplicateEventId { event_id }) => assert!(event_id.is_none_or(|e| e == id)),
        other => panic!("duplicate id across appends: {other:?}"),
    }
    assert_eq!(
        store.stream_version(&other).await.unwrap(),
        None,
        "nothing of the failed batch written"
    );
    assert!(matches!(
        store
            .append(AppendRequest::new(
                other.clone(),
                ExpectedVersion::Any,
                vec![]
            ))
            .await,
        Err(StoreError::InvalidRequest(_))
    ));
    assert!(matches!(
        store
            .append(AppendRequest::new(
                other,
                ExpectedVersion::Any,
                events(&[""])
            ))
            .await,
        Err(StoreError::InvalidEvent {
            index: 0,
            rule: crate::EventRule::EmptyEventType,
            ..
        })
    ));
    // What a read relies on is checked at append time: a number where the typed correlation id
    // is read back would make the event unreadable for good.
    let unreadable = NewEvent::json("Ok", serde_json::json!({}))
        .with_metadata(crate::Metadata::default().with("correlation_id", 42));
    let bad_type = NewEvent::json("Bad\nType", serde_json::json!({}));
    for (index, event) in [(0, unreadable), (1, bad_type)] {
        let mut batch = events(&["Ok"]);
        batch.truncate(index);
        batch.push(event);
        let stream: StreamName = format!("conformance_limits-{}", uuid::Uuid::now_v7().simple())
            .parse()
            .expect("valid name");
        let refused = store
            .append(AppendRequest::new(
                stream.clone(),
                ExpectedVersion::Any,
                batch,
            ))
            .await;
        assert!(
            matches!(refused, Err(StoreError::InvalidEvent { index: i, .. }) if i == index),
            "{refused:?}"
        );
        assert_eq!(store.stream_version(&stream).await.expect("version"), None);
    }
}

/// Category and `$all` reads by position, with type filters and limits.
pub async fn category_and_all_reads<S: EventStore>(store: &S) {
    let category = unique_category();
    let (a, b) = (stream_in(&category), stream_in(&category));
    let elsewhere = stream_in(&unique_category());
    let mut positions = Vec::new();
    for (stream, types) in [(&a, ["X", "Y"]), (&elsewhere, ["X", "X"]), (&b, ["Y", "X"])] {
        let out = store
            .append(AppendRequest::new(
                stream.clone(),
                ExpectedVersion::Any,
                events(&types),
            ))
            .await
            .unwrap();
        positions.extend(out.positions);
    }
    let cat: Category = category.parse().unwrap();
    let read = store
        .read_category(&cat, ReadAllOptions::default())
        .await
        .unwrap();
    let got: Vec<_> = read.iter().map(|e| e.global_position).collect();
    assert_eq!(
        got,
        [positions[0], positions[1], positions[4], positions[5]]
    );
    let from = store
        .read_category(
            &cat,
            ReadAllOptions::default()
                .from_position(positions[1])
                .max_count(2),
        )
        .await
        .unwrap();
    assert_eq!(
        from.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        [positions[1], positions[4]]
    );
    let xs = store
        .read_category(&cat, ReadAllOptions::default().event_types(["X"]))
        .await
        .unwrap();
    assert_eq!(
        xs.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        [positions[0], positions[5]]
    );
    let all = store
        .read_all(
            ReadAllOptions::default()
                .from_position(positions[0])
                .max_count(10_000),
        )
        .await
        .unwrap();
    let mine: Vec<_> = all
        .iter()
        .map(|e| e.global_position)
        .filter(|p| positions.contains(p))
        .collect();
    assert_eq!(mine, positions, "$all holds every event in position order");
    assert!(
        all.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
}

/// Metadata, schema versions and binary data come back as written.
pub async fn payloads_round_trip<S: EventStore>(store: &S) {
    let stream = stream_in(&unique_category());
    let metadata = Metadata::default()
        .with_correlation_id("corr-1")
        .with_causation_id("cause-1")
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .with("tenant", "acme");
    let json = NewEvent::json(
        "J",
        serde_json::json!({"nested": {"list": [1, 2, 3]}, "s": "é"}),
    )
    .with_metadata(metadata.clone())
    .with_schema_version(3);
    let binary = NewEvent::new("B", EventData::Binary(vec![0, 159, 146, 150, 255]));
    store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![json.clone(), binary.clone()],
        ))
        .await
        .unwrap();
    let read = store
        .read_stream(&stream, ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(
        (read[0].id, &read[0].event_type, read[0].schema_version),
        (json.id, &json.event_type, 3)
    );
    assert_eq!(read[0].data, json.data);
    assert_eq!(read[0].metadata, metadata);
    assert_eq!(read[1].data, binary.data);
    assert!(read[1].metadata.is_empty());
}

/// Global preconditions on the whole log and on a category.
pub async fn expected_positions<S: EventStore>(store: &S) {
    let category = unique_category();
    let cat: Category = category.parse().unwrap();
    let first = store
        .append(
            AppendRequest::new(stream_in(&category), ExpectedVersion::Any, events(&["E"]))
                .with_expected_position(ExpectedPosition::category(cat.clone(), None)),
        )
        .await
        .expect("empty category satisfies `after: None`");
    let seen = first.last_position();
    match store
        .append(
            AppendRequest::new(stream_in(&category), ExpectedVersion::Any, events(&["E"]))
                .with_expected_position(ExpectedPosition::category(cat.clone(), None)),
        )
        .await
    {
        Err(StoreError::PositionConflict { head, .. }) => assert_eq!(head, seen),
        other => panic!("category moved past `None`: {other:?}"),
    }
    // Another category moving does not conflict.
    store
        .append(AppendRequest::new(
            stream_in(&unique_category()),
            ExpectedVersion::Any,
            events(&["E"]),
        ))
        .await
        .unwrap();
    let second = store
        .append(
            AppendRequest::new(stream_in(&category), ExpectedVersion::Any, events(&["E"]))
                .with_expected_position(ExpectedPosition::category(cat, Some(seen))),
        )
        .await
        .expect("category unchanged since `seen`");
    match store
        .append(
            AppendRequest::new(stream_in(&category), ExpectedVersion::Any, events(&["E"]))
                .with_expected_position(ExpectedPosition::all(Some(seen))),
        )
        .await
    {
        Err(StoreError::PositionConflict { head, .. }) => assert!(head >= second.last_position()),
        other => panic!("the log moved past `seen`: {other:?}"),
    }
    store
        .append(
            AppendRequest::new(stream_in(&category), ExpectedVersion::Any, events(&["E"]))
                .with_expected_position(ExpectedPosition::all(Some(second.last_position()))),
        )
        .await
        .expect("nothing appended since the head");
}

/// A projection kept outside the log: counts events per type and vetoes a type on demand.
#[derive(Debug)]
pub struct CountingProjection {
    scope: PositionScope,
    veto_type: Option<String>,
    state: Mutex<ProjectionState>,
}

/// What a [`CountingProjection`] has applied and staged.
#[derive(Debug, Default, Clone)]
pub struct ProjectionState {
    /// Last applied position.
    pub position: Option<u64>,
    /// Positions applied, in order.
    pub applied: Vec<u64>,
    /// Positions staged by `prepare`.
    pub staged: Vec<u64>,
    /// How many rollbacks ran.
    pub rollbacks: usize,
}

impl CountingProjection {
    /// A projection of `scope`; `veto_type` makes `prepare` refuse events of that type.
    #[must_use]
    pub fn new(scope: PositionScope, veto_type: Option<&str>) -> Self {
        Self {
            scope,
            veto_type: veto_type.map(str::to_owned),
            state: Mutex::new(ProjectionState::default()),
        }
    }

    /// A copy of the state.
    ///
    /// # Panics
    /// If a previous holder of the lock panicked.
    #[must_use]
    pub fn state(&self) -> ProjectionState {
        self.state.lock().expect("projection lock").clone()
    }

    fn record(&self, events: &[RecordedEvent]) {
        let mut state = self.state.lock().expect("projection lock");
        for e in events {
            assert!(
                state.position < Some(e.global_position),
                "applied out of order"
            );
            state.position = Some(e.global_position);
            state.applied.push(e.global_position);
        }
    }
}

impl StatefulProcessor for CountingProjection {
    fn name(&self) -> &str {
        "counting-projection"
    }

    fn scope(&self) -> PositionScope {
        self.scope.clone()
    }

    async fn position(&self) -> Result<Option<u64>, ProcessorError> {
        Ok(self.state.lock().expect("projection lock").position)
    }

    async fn apply(&self, events: &[RecordedEvent]) -> Result<(), ProcessorError> {
        self.record(events);
        Ok(())
    }

    async fn prepare(&self, events: &[RecordedEvent]) -> Result<(), ProcessorError> {
        if let Some(t) = &self.veto_type
            && events.iter().any(|e| &e.event_type == t)
        {
            return Err(ProcessorError::veto(format!("{t} is not allowed")));
        }
        self.state.lock().expect("projection lock").staged =
            events.iter().map(|e| e.global_position).collect();
        Ok(())
    }

    async fn commit(&self) {
        let mut state = self.state.lock().expect("projection lock");
        let staged = std::mem::take(&mut state.staged);
        for p in staged {
            state.position = Some(p);
            state.applied.push(p);
        }
    }

    async fn rollback(&self) {
        let mut state = self.state.lock().expect("projection lock");
        state.staged.clear();
        state.rollbacks += 1;
    }
}

/// A stateful processor behind the log catches up and the append is retried.
pub async fn stateful_processor_catches_up_and_retries<S: EventStore>(store: &S) {
    let category = unique_category();
    let cat: Category = category.parse().unwrap();
    let projection = CountingProjection::new(PositionScope::Category(cat), None);
    let stream = stream_in(&category);
    let mut calls = 0;
    let out = append_consistent(store, &projection, 3, |_| {
        calls += 1;
        Ok(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Any,
            events(&["E"]),
        ))
    })
    .await
    .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(
        projection.state().applied,
        out.positions,
        "commit applied the staged events"
    );

    // Another writer moves the category: the projection is now behind.
    let other = store
        .append(AppendRequest::new(
            stream_in(&category),
            ExpectedVersion::Any,
            events(&["E", "E"]),
        ))
        .await
        .unwrap();
    let mut calls = 0;
    let retried = append_consistent(store, &projection, 3, |p| {
        calls += 1;
        assert_eq!(
            p.state().position,
            if calls == 1 {
                Some(out.last_position())
            } else {
                Some(other.last_position())
            }
        );
        Ok(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Any,
            events(&["E"]),
        ))
    })
    .await
    .unwrap();
    assert_eq!(calls, 2, "one conflict, one retry");
    let mut expected = out.positions.clone();
    expected.extend(&other.positions);
    expected.extend(&retried.positions);
    assert_eq!(
        projection.state().applied,
        expected,
        "caught up in order, then committed"
    );
    assert_eq!(
        catch_up(store, &projection).await.unwrap(),
        Some(retried.last_position())
    );
}

/// A veto in `prepare` writes nothing and rolls the processor back.
pub async fn stateful_processor_veto<S: EventStore>(store: &S) {
    let category = unique_category();
    let projection = CountingProjection::new(
        PositionScope::Category(category.parse().unwrap()),
        Some("Forbidden"),
    );
    let stream = stream_in(&category);
    let result = append_consistent(store, &projection, 3, |_| {
        Ok(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Any,
            events(&["Fine", "Forbidden"]),
        ))
    })
    .await;
    match result {
        Err(StoreError::Vetoed { by, reason }) => {
            assert_eq!(by, "counting-projection");
            assert!(reason.contains("Forbidden"));
        }
        other => panic!("veto expected: {other:?}"),
    }
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        None,
        "vetoed append wrote nothing"
    );
    let state = projection.state();
    assert_eq!(
        (state.rollbacks, state.applied.len(), state.staged.len()),
        (1, 0, 0)
    );
}

/// The events of a tally, for the command-handling checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Tally {
    Added { n: u64 },
    Closed,
}

impl Event for Tally {
    const EVENT_TYPES: &'static [&'static str] = &["Added", "Closed"];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Added { .. } => "Added",
            Self::Closed => "Closed",
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct TallyState {
    total: u64,
    events: u64,
    closed: bool,
}

fn tally_evolve(mut state: TallyState, event: &Tally) -> TallyState {
    state.events += 1;
    match event {
        Tally::Added { n } => state.total += n,
        Tally::Closed => state.closed = true,
    }
    state
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the tally is closed")]
struct TallyClosed;

fn add(n: u64) -> impl FnMut(&TallyState) -> Result<Vec<Tally>, TallyClosed> {
    move |state| {
        if state.closed {
            return Err(TallyClosed);
        }
        Ok(vec![Tally::Added { n }])
    }
}

fn tally_handler() -> CommandHandler<Tally, TallyState> {
    CommandHandler::new(EventRegistry::new(), TallyState::default, tally_evolve)
}

/// Load, evolve, decide, append with the expected version; typed rejections and decode errors.
pub async fn command_handling<S: EventStore>(store: &S) {
    let handler = tally_handler().page_size(2);
    let stream = stream_in(&unique_category());
    let done = handler
        .handle(store, &stream, |state: &TallyState| {
            assert_eq!(state, &TallyState::default(), "a new stream starts empty");
            Ok::<_, TallyClosed>(vec![Tally::Added { n: 2 }, Tally::Added { n: 3 }])
        })
        .await
        .expect("first command");
    assert_eq!(
        (done.state.total, done.stream_version, done.attempts),
        (5, Some(1), 1)
    );
    assert_eq!(done.positions.len(), 2);
    let read = store
        .read_stream(&stream, ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(
        read.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Added", "Added"]
    );

    // Metadata reaches every appended event.
    let metadata = Metadata::default().with_correlation_id("command-1");
    let done = handler
        .handle_with_metadata(store, &stream, &metadata, add(4))
        .await
        .unwrap();
    assert_eq!((done.state.total, done.stream_version), (9, Some(2)));
    let last = store
        .read_stream(
            &stream,
            ReadStreamOptions::default().backward().max_count(1),
        )
        .await
        .unwrap();
    assert_eq!(last[0].metadata, metadata);

    // No events: nothing appended.
    let nothing = handler
        .handle(store, &stream, |_: &TallyState| {
            Ok::<_, TallyClosed>(vec![])
        })
        .await
        .unwrap();
    assert_eq!((nothing.stream_version, nothing.events.len()), (Some(2), 0));

    handler
        .handle(store, &stream, |_: &TallyState| {
            Ok::<_, TallyClosed>(vec![Tally::Closed])
        })
        .await
        .unwrap();
    match handler.handle(store, &stream, add(1)).await {
        Err(CommandError::Rejected(TallyClosed)) => {}
        other => panic!("a closed tally rejects: {other:?}"),
    }
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        Some(3),
        "a rejected command writes nothing"
    );
    let loaded = handler.load(store, &stream).await.unwrap();
    assert_eq!(
        (loaded.state.total, loaded.state.closed, loaded.version),
        (9, true, Some(3))
    );
    assert_eq!(loaded.events_read, 4, "folded in pages of 2");

    // An event the handler does not know is a typed error naming its position.
    let foreign = store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Any,
            events(&["Unknown"]),
        ))
        .await
        .unwrap();
    match handler.handle(store, &stream, add(1)).await {
        Err(CommandError::Decode { position, .. }) => {
            assert_eq!(position, foreign.last_position());
        }
        other => panic!("an unknown event type: {other:?}"),
    }
}

/// A store that lets another writer append to `stream` just before each of the next `times`
/// appends to it: a concurrent append between a command's load and its append.
struct Interfering<'a, S> {
    inner: &'a S,
    stream: StreamName,
    times: AtomicU32,
}

impl<S: EventStore> EventStore for Interfering<'_, S> {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        if request.stream == self.stream
            && self
                .times
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| t.checked_sub(1))
                .is_ok()
        {
            let other = NewEvent::json("Added", serde_json::json!({ "type": "Added", "n": 100 }));
            self.inner
                .append(AppendRequest::new(
                    self.stream.clone(),
                    ExpectedVersion::Any,
                    vec![other],
                ))
                .await?;
        }
        self.inner.append(request).await
    }

    async fn append_staged<P: StatefulProcessor + ?Sized>(
        &self,
        request: AppendRequest,
        processor: &P,
    ) -> Result<AppendOutcome, StoreError> {
        self.inner.append_staged(request, processor).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        options: ReadStreamOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, options).await
    }

    async fn read_category(
        &self,
        category: &Category,
        options: ReadAllOptions,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_category(category, options).await
    }

    async fn read_all(&self, options: ReadAllOptions) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(options).await
    }

    async fn read_scope_complete(
        &self,
        scope: &PositionScope,
        after: Option<u64>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_scope_complete(scope, after, max_count)
            .await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }
}

/// A concurrent append between load and append is folded in and decided again, within the
/// retry bound; past it, a typed conflict and nothing written.
pub async fn command_retries_on_concurrent_appends<S: EventStore>(store: &S) {
    let handler = tally_handler().retries(3);
    let stream = stream_in(&unique_category());
    handler.handle(store, &stream, add(1)).await.unwrap();
    let racing = Interfering {
        inner: store,
        stream: stream.clone(),
        times: AtomicU32::new(2),
    };
    let mut seen = Vec::new();
    let done = handler
        .handle(&racing, &stream, |state: &TallyState| {
            seen.push(state.total);
            Ok::<_, TallyClosed>(vec![Tally::Added { n: 5 }])
        })
        .await
        .expect("two conflicts, three retries allowed");
    assert_eq!(
        seen,
        [1, 101, 201],
        "each retry decides on the other writer's events"
    );
    assert_eq!(
        (done.attempts, done.state.total, done.stream_version),
        (3, 206, Some(3))
    );

    let racing = Interfering {
        inner: store,
        stream: stream.clone(),
        times: AtomicU32::new(10),
    };
    match handler.retries(1).handle(&racing, &stream, add(5)).await {
        Err(CommandError::Conflict {
            attempts,
            source: StoreError::WrongExpectedVersion { .. },
            stream: s,
        }) => {
            assert_eq!((attempts, s.as_str()), (2, stream.as_str()));
        }
        other => panic!("retries exhausted: {other:?}"),
    }
    let read = store
        .read_stream(&stream, ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(
        read.len(),
        6,
        "only the other writer's two appends were added"
    );
    assert!(
        read[4..]
            .iter()
            .all(|e| e.data == EventData::json(serde_json::json!({ "type": "Added", "n": 100 })))
    );
}

/// Snapshots every N events: loading reads the snapshot and only the tail; a snapshot of
/// another state version is ignored (typed) and replaced by the next command.
pub async fn command_snapshots<S: EventStore>(store: &S) {
    let evolved = Arc::new(AtomicUsize::new(0));
    let counting = |version: u32| {
        let evolved = Arc::clone(&evolved);
        CommandHandler::new(
            EventRegistry::<Tally>::new(),
            TallyState::default,
            move |state, event| {
                evolved.fetch_add(1, Ordering::SeqCst);
                tally_evolve(state, event)
            },
        )
        .snapshots(Snapshots::every(10).state_version(version))
    };
    let v1 = counting(1);
    let stream = stream_in(&unique_category());
    let snapshot_stream = Snapshots::stream_for(&stream).expect("short name");
    assert_eq!(
        snapshot_stream.category(),
        format!("{}:snapshot", stream.category())
    );

    let first = v1
        .handle(store, &stream, |_: &TallyState| {
            Ok::<_, TallyClosed>((1..=25).map(|n| Tally::Added { n }).collect())
        })
        .await
        .unwrap();
    assert_eq!(first.snapshot_written, Some(24));
    let second = v1.handle(store, &stream, add(1000)).await.unwrap();
    assert_eq!(
        second.snapshot_written, None,
        "one event since the snapshot"
    );
    let full_total = 325 + 1000;

    evolved.store(0, Ordering::SeqCst);
    let loaded = v1.load(store, &stream).await.unwrap();
    assert_eq!(
        (loaded.snapshot_version, loaded.events_read, loaded.version),
        (Some(24), 1, Some(25))
    );
    assert_eq!(
        evolved.load(Ordering::SeqCst),
        1,
        "only the tail was folded"
    );
    assert_eq!((loaded.state.total, loaded.state.events), (full_total, 26));
    assert!(loaded.ignored_snapshot.is_none());

    // The state's schema changed: the old snapshot is ignored and the stream folded whole.
    let v2 = counting(2);
    evolved.store(0, Ordering::SeqCst);
    let loaded = v2.load(store, &stream).await.unwrap();
    match loaded.ignored_snapshot {
        Some(IgnoredSnapshot::StateVersion {
            found: 1,
            expected: 2,
        }) => {}
        other => panic!("a v1 snapshot for a v2 handler: {other:?}"),
    }
    assert_eq!((loaded.snapshot_version, loaded.events_read), (None, 26));
    assert_eq!(evolved.load(Ordering::SeqCst), 26);
    assert_eq!(loaded.state.total, full_total);
    // The next command writes a v2 snapshot, which the next load uses.
    let third = v2.handle(store, &stream, add(1)).await.unwrap();
    assert_eq!(third.snapshot_written, Some(26));
    let loaded = v2.load(store, &stream).await.unwrap();
    assert_eq!(
        (
            loaded.snapshot_version,
            loaded.events_read,
            loaded.state.total
        ),
        (Some(26), 0, full_total + 1)
    );
    // A snapshot that does not decode is ignored too.
    store
        .append(AppendRequest::new(
            snapshot_stream.clone(),
            ExpectedVersion::Any,
            vec![
                NewEvent::json(
                    crate::SNAPSHOT_EVENT_TYPE,
                    serde_json::json!({"garbage": 1}),
                )
                .with_schema_version(2),
            ],
        ))
        .await
        .unwrap();
    let loaded = v2.load(store, &stream).await.unwrap();
    assert!(
        matches!(
            loaded.ignored_snapshot,
            Some(IgnoredSnapshot::Undecodable { .. })
        ),
        "{:?}",
        loaded.ignored_snapshot
    );
    assert_eq!(
        (loaded.events_read, loaded.state.total),
        (27, full_total + 1)
    );
    // Category readers of the stream's category never see snapshots.
    let cat: Category = stream.category().parse().unwrap();
    let in_category = store
        .read_category(&cat, ReadAllOptions::default())
        .await
        .unwrap();
    assert!(
        in_category
            .iter()
            .all(|e| e.event_type != crate::SNAPSHOT_EVENT_TYPE)
    );
    assert_eq!(in_category.len(), 27);
}
