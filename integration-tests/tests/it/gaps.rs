//! Gap safety: a reader following `read_safe` never passes a position that may still commit,
//! skips rolled-back holes only after proof, and sees every committed event exactly once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventrail_core::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StreamName};
use eventrail_store_postgres::{GapWatch, PgEventStore};
use rand::Rng;

use crate::harness::TestDb;

fn event() -> NewEvent {
    NewEvent::json("Tick", serde_json::json!({}))
}

fn request(stream: &str, n: usize) -> anyhow::Result<AppendRequest> {
    Ok(AppendRequest::new(
        stream.parse::<StreamName>()?,
        ExpectedVersion::Any,
        (0..n).map(|_| event()).collect(),
    ))
}

#[tokio::test]
async fn the_position_sequence_has_cache_1() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let row = db
        .client()
        .await?
        .query_one("SELECT cache_size FROM pg_sequences WHERE schemaname = 'eventrail' AND sequencename = 'events_global_position_seq'", &[])
        .await?;
    assert_eq!(
        row.get::<_, i64>(0),
        1,
        "a sequence cache breaks the gap proof"
    );
    Ok(())
}

#[tokio::test]
async fn an_open_transaction_holding_a_lower_position_is_never_passed() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let first = store.append(request("a-1", 1)?).await?.last_position();

    let mut holder = db.client().await?;
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let tx = holder.transaction().await?;
    let held = store
        .append_in(&tx, request("a-2", 1)?)
        .await?
        .last_position();
    let later = store.append(request("a-3", 2)?).await?.positions;
    assert!(later[0] > held);

    let mut watch = GapWatch::new();
    for _ in 0..3 {
        let read = store.read_safe(&mut watch, 0, 100, None, None).await?;
        assert_eq!(
            read.frontier.safe, first,
            "the frontier stops below the open transaction"
        );
        assert_eq!(
            read.events
                .iter()
                .map(|e| e.global_position)
                .collect::<Vec<_>>(),
            [first]
        );
        assert!(read.frontier.skipped.is_empty());
        let stall = read.frontier.stall.expect("the stall is reported");
        assert_eq!((stall.from, stall.to), (held, held));
        let sessions = store.blocking_sessions(&stall.holders).await?;
        assert!(
            sessions.iter().any(|s| s.pid == holder_pid),
            "the holder's pid is reported: {sessions:?}"
        );
    }

    tx.commit().await?;
    let read = store.read_safe(&mut watch, first, 100, None, None).await?;
    let positions: Vec<u64> = read.events.iter().map(|e| e.global_position).collect();
    assert_eq!(
        positions,
        [held, later[0], later[1]],
        "delivered in order once committed"
    );
    assert!(
        read.frontier.skipped.is_empty(),
        "a filled hole is not a skip"
    );
    assert!(read.frontier.stall.is_none());
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_hole_is_skipped_only_after_proof_and_reported() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let mut holder = db.client().await?;
    let tx = holder.transaction().await?;
    let hole = store.append_in(&tx, request("b-1", 3)?).await?.positions;
    let after = store.append(request("b-2", 1)?).await?.last_position();

    let mut watch = GapWatch::new();
    let read = store.read_safe(&mut watch, 0, 100, None, None).await?;
    assert_eq!(
        read.frontier.safe,
        hole[0] - 1,
        "not skipped while the holder is in progress"
    );
    assert!(read.events.is_empty());
    assert!(read.frontier.skipped.is_empty());
    assert_eq!(watch.len(), 1);

    tx.rollback().await?;
    // Proven once every transaction that could hold the hole has ended; in a shared cluster an
    // unrelated transaction that was running when the hole was seen can delay that a little.
    let read = prove(&store, &mut watch).await?;
    assert_eq!(
        read.events
            .iter()
            .map(|e| e.global_position)
            .collect::<Vec<_>>(),
        [after]
    );
    assert_eq!(read.frontier.safe, after);
    let [skip] = read.frontier.skipped.as_slice() else {
        panic!("one skip expected: {:?}", read.frontier.skipped)
    };
    assert_eq!((skip.from, skip.to), (hole[0], hole[2]));
    assert!(
        skip.proven_by.xmax > skip.evidence.horizon,
        "the proof saw the horizon complete"
    );
    assert!(
        skip.evidence
            .holders_in_progress(&skip.proven_by)
            .is_empty()
    );
    assert!(watch.is_empty(), "passed holes are forgotten");
    Ok(())
}

#[tokio::test]
async fn a_hole_rolled_back_before_the_reader_looks_is_proven_without_any_timeout()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let mut holder = db.client().await?;
    let tx = holder.transaction().await?;
    store.append_in(&tx, request("c-1", 1)?).await?;
    let committed = store.append(request("c-2", 1)?).await?.last_position();
    tx.rollback().await?;
    let read = prove(&store, &mut GapWatch::new()).await?;
    assert_eq!(read.frontier.safe, committed);
    assert_eq!(read.frontier.skipped.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_long_writer_elsewhere_does_not_stall_a_reader_without_holes() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let mut other = db.client().await?;
    other
        .batch_execute("CREATE TABLE unrelated (x int)")
        .await?;
    let tx = other.transaction().await?;
    tx.execute("INSERT INTO unrelated VALUES (1)", &[]).await?; // holds an xid, takes no position
    let last = store.append(request("d-1", 3)?).await?.last_position();
    let read = store
        .read_safe(&mut GapWatch::new(), 0, 100, None, None)
        .await?;
    assert_eq!(
        read.frontier.safe, last,
        "an xmin-based reader would stall here"
    );
    assert_eq!(read.events.len(), 3);
    tx.rollback().await?;
    Ok(())
}

#[tokio::test]
async fn scoped_reads_filter_events_but_follow_the_unscoped_frontier() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    store.append(request("cats-1", 2)?).await?;
    let dog = store.append(request("dogs-1", 1)?).await?.last_position();
    let last = store.append(request("cats-2", 1)?).await?.last_position();
    let dogs = vec!["dogs".to_owned()];
    let read = store
        .read_safe(&mut GapWatch::new(), 0, 100, Some(&dogs), None)
        .await?;
    assert_eq!(
        read.events
            .iter()
            .map(|e| e.global_position)
            .collect::<Vec<_>>(),
        [dog]
    );
    assert_eq!(
        read.frontier.safe, last,
        "the checkpoint follows the whole log"
    );
    let none = vec!["Nothing".to_owned()];
    let read = store
        .read_safe(&mut GapWatch::new(), 0, 100, None, Some(&none))
        .await?;
    assert!(read.events.is_empty());
    assert_eq!(read.frontier.safe, last);
    Ok(())
}

/// Reads from 0 until a skip is proven (at most 10 s); every read before it must stop below the
/// hole.
async fn prove(
    store: &PgEventStore,
    watch: &mut GapWatch,
) -> anyhow::Result<eventrail_store_postgres::SafeRead> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = store.read_safe(watch, 0, 100, None, None).await?;
        if !read.frontier.skipped.is_empty() {
            return Ok(read);
        }
        anyhow::ensure!(
            read.events.is_empty(),
            "delivered past an unproven hole: {:?}",
            read.events
        );
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the hole was not proven within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A reader that follows the frontier until it reaches `stop_at` (set when the writers are done).
async fn follow(
    store: PgEventStore,
    done: Arc<AtomicBool>,
    stop_at: Arc<tokio::sync::Mutex<Option<u64>>>,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let mut watch = GapWatch::new();
    let (mut position, mut seen, mut skips) = (0, Vec::new(), 0);
    loop {
        let read = store
            .read_safe(&mut watch, position, 64, None, None)
            .await?;
        for e in &read.events {
            anyhow::ensure!(
                e.global_position > position,
                "event {} at or below the checkpoint {position}",
                e.global_position
            );
            seen.push(e.global_position);
        }
        skips += read.frontier.skipped.len();
        anyhow::ensure!(
            read.frontier.safe >= position,
            "the frontier went backwards"
        );
        position = read.frontier.safe;
        if done.load(Ordering::Acquire)
            && let Some(stop) = *stop_at.lock().await
            && position >= stop
        {
            return Ok((seen, skips));
        }
        if read.events.is_empty() {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_sees_every_committed_event_exactly_once_in_order_over_1000_random_interleavings()
-> anyhow::Result<()> {
    const TRANSACTIONS: usize = 1000;
    const WRITERS: usize = 8;
    let db = TestDb::new().await?;
    let store = db.store();
    let done = Arc::new(AtomicBool::new(false));
    let stop_at = Arc::new(tokio::sync::Mutex::new(None));
    let reader = tokio::spawn(follow(store.clone(), done.clone(), stop_at.clone()));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            let mut rolled_back = 0;
            for t in 0..TRANSACTIONS / WRITERS {
                let (events, delay_us, commit) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(1..=3),
                        rng.random_range(0..2000u64),
                        rng.random_bool(0.75),
                    )
                };
                let mut client = pool.get().await?;
                let tx = client.transaction().await?;
                store
                    .append_in(&tx, request(&format!("w{w}-{t}"), events)?)
                    .await?;
                // Random hold times make commits land out of position order.
                tokio::time::sleep(Duration::from_micros(delay_us)).await;
                if commit {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                    rolled_back += 1;
                }
            }
            anyhow::Ok(rolled_back)
        }));
    }
    let mut rolled_back = 0;
    for w in writers {
        rolled_back += w.await??;
    }
    let committed: BTreeSet<u64> = db
        .client()
        .await?
        .query("SELECT global_position FROM eventrail.events", &[])
        .await?
        .iter()
        .map(|r| u64::try_from(r.get::<_, i64>(0)).expect("positive"))
        .collect();
    // Holes above the last committed event are never passed (nothing proves them yet).
    *stop_at.lock().await = Some(committed.last().copied().unwrap_or(0));
    done.store(true, Ordering::Release);
    let (seen, skips) = tokio::time::timeout(Duration::from_secs(60), reader).await???;

    assert!(
        rolled_back > 0 && skips > 0,
        "the run produced holes ({rolled_back} rollbacks, {skips} skips)"
    );
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no event seen twice");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "seen in position order"
    );
    assert_eq!(
        unique, committed,
        "every committed event seen, nothing else"
    );
    Ok(())
}
