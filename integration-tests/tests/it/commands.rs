//! The command handler and whole-stream reads against PostgreSQL (the conformance suite runs the
//! same checks with an in-process interloper; these use real concurrent writers).

use std::fmt;
use std::sync::Arc;

use eventrail_core::{
    AppendRequest, CommandError, CommandHandler, Event, EventRegistry, EventStore, ExpectedVersion,
    NewEvent, ReadStreamOptions, Snapshots, StoreError, StreamName,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;

use crate::harness::TestDb;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum Seat {
    Reserved { seat: u32 },
}

impl Event for Seat {
    const EVENT_TYPES: &'static [&'static str] = &["Reserved"];

    fn event_type(&self) -> &'static str {
        "Reserved"
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Hall {
    taken: Vec<u32>,
}

fn evolve(mut hall: Hall, event: &Seat) -> Hall {
    match event {
        Seat::Reserved { seat } => hall.taken.push(*seat),
    }
    hall
}

#[derive(Debug, PartialEq)]
struct SeatTaken(u32);

impl fmt::Display for SeatTaken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seat {} is taken", self.0)
    }
}

fn reserve(seat: u32) -> impl FnMut(&Hall) -> Result<Vec<Seat>, SeatTaken> {
    move |hall| {
        if hall.taken.contains(&seat) {
            return Err(SeatTaken(seat));
        }
        Ok(vec![Seat::Reserved { seat }])
    }
}

fn halls() -> CommandHandler<Seat, Hall> {
    CommandHandler::new(EventRegistry::new(), Hall::default, evolve)
}

/// Another writer (its own connection) appends between the handler's load and its append: the
/// handler decides again on the new state; the second time it is a typed rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_append_between_load_and_append_is_retried() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let other = db.store();
    let stream: StreamName = "hall-1".parse()?;
    let handler = halls();
    handler.handle(&store, &stream, reserve(1)).await?;

    let mut calls = 0;
    let done = handler
        .handle(&store, &stream, |hall: &Hall| {
            calls += 1;
            if calls == 1 {
                // The other writer commits seat 7 after our load, before our append.
                let append = other.append(AppendRequest::new(
                    stream.clone(),
                    ExpectedVersion::Any,
                    vec![NewEvent::json(
                        "Reserved",
                        serde_json::json!({"type": "Reserved", "seat": 7}),
                    )],
                ));
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(append))
                    .expect("the other writer appends");
            }
            reserve(2)(hall)
        })
        .await?;
    assert_eq!((done.attempts, done.stream_version), (2, Some(2)));
    assert_eq!(done.state.taken, [1, 7, 2]);

    // The same race where the other writer takes our seat: decided again, rejected, typed.
    let mut calls = 0;
    let result = handler
        .handle(&store, &stream, |hall: &Hall| {
            calls += 1;
            if calls == 1 {
                let append = other.append(AppendRequest::new(
                    stream.clone(),
                    ExpectedVersion::Any,
                    vec![NewEvent::json(
                        "Reserved",
                        serde_json::json!({"type": "Reserved", "seat": 9}),
                    )],
                ));
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(append))
                    .expect("the other writer appends");
            }
            reserve(9)(hall)
        })
        .await;
    match result {
        Err(CommandError::Rejected(SeatTaken(9))) => {}
        other => panic!("seat 9 was taken meanwhile: {other:?}"),
    }
    assert_eq!(calls, 2);
    assert_eq!(store.stream_version(&stream).await?, Some(3));
    Ok(())
}

/// Sixteen handlers race on one stream: with enough retries every command lands exactly once;
/// with none, the losers get a typed conflict and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commands_lose_no_update() -> anyhow::Result<()> {
    const TASKS: u32 = 16;
    let db = TestDb::new().await?;
    let store = Arc::new(db.store());
    for (stream, retries) in [("hall-race", 64), ("hall-noretry", 0)] {
        let stream: StreamName = stream.parse()?;
        let handler = Arc::new(halls().retries(retries));
        let barrier = Arc::new(Barrier::new(TASKS as usize));
        let tasks: Vec<_> = (0..TASKS)
            .map(|seat| {
                let (store, handler, barrier, stream) = (
                    Arc::clone(&store),
                    Arc::clone(&handler),
                    Arc::clone(&barrier),
                    stream.clone(),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    handler.handle(&*store, &stream, reserve(seat)).await
                })
            })
            .collect();
        let mut won = Vec::new();
        let mut conflicts = 0;
        for (seat, task) in (0..TASKS).zip(tasks) {
            match task.await? {
                Ok(done) => {
                    assert!(done.attempts <= retries + 1);
                    won.push(seat);
                }
                Err(CommandError::Conflict {
                    source: StoreError::WrongExpectedVersion { .. },
                    attempts,
                    ..
                }) => {
                    assert_eq!(attempts, retries + 1);
                    conflicts += 1;
                }
                Err(e) => panic!("unexpected: {e:?}"),
            }
        }
        let mut taken = halls().load(&*store, &stream).await?.state.taken;
        taken.sort_unstable();
        assert_eq!(
            taken, won,
            "{stream}: exactly the winners' events, once each"
        );
        if retries > 0 {
            assert_eq!(
                won.len(),
                TASKS as usize,
                "with retries every command lands"
            );
        } else {
            assert!(!won.is_empty(), "someone wins");
            assert_eq!(won.len() + conflicts, TASKS as usize);
        }
    }
    Ok(())
}

/// A long stream handled with snapshots: a load reads the snapshot and only the tail, and the
/// state equals a fold of the whole stream read with default options (no 1,000 cut-off).
#[tokio::test]
async fn snapshots_keep_loads_short_on_a_long_stream() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let stream: StreamName = "hall-long".parse()?;
    let handler = halls().snapshots(Snapshots::every(1000));
    for batch in 0..5u32 {
        let done = handler
            .handle(&store, &stream, |_: &Hall| {
                Ok::<_, SeatTaken>(
                    (batch * 500..(batch + 1) * 500)
                        .map(|seat| Seat::Reserved { seat })
                        .collect(),
                )
            })
            .await?;
        let expected = [None, Some(999), None, Some(1999), None][batch as usize];
        assert_eq!(done.snapshot_written, expected, "batch {batch}");
    }
    let loaded = handler.load(&store, &stream).await?;
    assert_eq!(
        (loaded.snapshot_version, loaded.events_read, loaded.version),
        (Some(1999), 500, Some(2499))
    );
    let whole = store
        .read_stream(&stream, ReadStreamOptions::default())
        .await?;
    assert_eq!(whole.len(), 2500, "a default read returns the whole stream");
    let registry = EventRegistry::<Seat>::new();
    let folded = whole.iter().try_fold(Hall::default(), |hall, e| {
        registry.decode(e).map(|event| evolve(hall, &event))
    })?;
    assert_eq!(loaded.state, folded);
    let without = halls().load(&store, &stream).await?;
    assert_eq!((without.events_read, without.state), (2500, folded));
    Ok(())
}
