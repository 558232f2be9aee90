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

/// The store's own plain append is one statement (no plpgsql call): it must still hold its
/// transaction id and the appender lock before it draws a position. Here it draws one, then
/// waits inside its INSERT for another transaction that wrote the same event id (a raw writer,
/// not an appender); a reader must wait for it rather than skip its position.
#[tokio::test]
async fn a_plain_append_waiting_after_taking_its_position_is_never_passed() -> anyhow::Result<()> {
    append_waiting_after_taking_positions_is_never_passed(1).await
}

/// The same for a large plain append, which goes by COPY: its positions are drawn in a statement
/// of their own, after the one that takes the id and the locks.
#[tokio::test]
async fn a_copy_append_waiting_after_taking_its_positions_is_never_passed() -> anyhow::Result<()> {
    append_waiting_after_taking_positions_is_never_passed(40).await
}

/// An append of `n` events, the last with an event id a raw writer holds uncommitted.
async fn append_waiting_after_taking_positions_is_never_passed(n: usize) -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let first = store.append(request("a-1", 1)?).await?.last_position();

    // The raw writer: not an appender (no appender lock), holding event id `id` uncommitted.
    let id = uuid::Uuid::now_v7();
    let mut raw = db.client().await?;
    let raw_tx = raw.transaction().await?;
    raw_tx
        .execute(
            "INSERT INTO eventrail.events (stream_name, stream_version, event_id, event_type, data) \
             VALUES ('raw-1', 0, $1, 'Tick', '{}')",
            &[&id],
        )
        .await?;
    let blocked = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append(AppendRequest::new(
                    "b-1".parse::<StreamName>()?,
                    ExpectedVersion::Any,
                    (1..n)
                        .map(|_| event())
                        .chain([event().with_id(id)])
                        .collect(),
                ))
                .await
                .map_err(anyhow::Error::from)
        }
    });
    // It has drawn its position and waits on the raw writer's transaction id.
    let watcher = db.client().await?;
    integration_tests::servers::eventually(
        10,
        "the plain append waits on the raw writer",
        || async { Ok(TestDb::lock_waits(&watcher, "transactionid").await? >= 1) },
    )
    .await?;
    let later = store.append(request("c-1", 1)?).await?.last_position();

    let mut watch = GapWatch::new();
    for _ in 0..3 {
        let read = store.read_safe(&mut watch, first, 100, None, None).await?;
        assert_eq!(
            read.frontier.safe, first,
            "the frontier stops below the waiting append: {:?}",
            read.frontier
        );
        assert!(read.events.is_empty());
    }

    raw_tx.rollback().await?;
    let held = blocked.await??.positions;
    assert_eq!(held.len(), n);
    assert!(
        first < held[0] && held[n - 1] < later,
        "{first} < {held:?} < {later}"
    );
    let mut seen = Vec::new();
    let mut after = first;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while after < later {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader did not reach {later}"
        );
        let read = store.read_safe(&mut watch, after, 100, None, None).await?;
        seen.extend(read.events.iter().map(|e| e.global_position));
        after = read.frontier.safe;
        if after < later {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let expected: Vec<u64> = held.iter().copied().chain([later]).collect();
    assert_eq!(seen, expected, "the waiting append is delivered, in order");
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_hole_is_skipped_only_after_proof_and_reported() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let mut holder = db.client().await?;
    let tx = holder.transaction().await?;
    let hole = store.append_in(&tx, request("b-1", 3)?).await?.positions;
    let holder_xid: String = tx
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await?
        .get(0);
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
    assert_eq!(
        skip.evidence.candidates_text(),
        holder_xid,
        "the only transaction that could fill the hole was its holder"
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

/// An open transaction that holds an xid in another database of the cluster.
async fn unrelated_transaction_elsewhere(db: &TestDb) -> anyhow::Result<tokio_postgres::Client> {
    let other = crate::harness::connect(&eventrail_devdb::database_url().await?).await?;
    other.batch_execute("BEGIN").await?;
    other.query_one("SELECT pg_current_xact_id()", &[]).await?;
    let _ = db;
    Ok(other)
}

#[tokio::test]
async fn a_long_transaction_in_another_database_never_delays_a_rolled_back_hole()
-> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    // Running before the hole is seen: a proof that waits for the whole cluster waits for it.
    let elsewhere = unrelated_transaction_elsewhere(&db).await?;
    let mut same_db = db.client().await?;
    let unrelated = same_db.transaction().await?;
    unrelated
        .query_one("SELECT pg_current_xact_id()", &[])
        .await?;

    let mut holder = db.client().await?;
    let tx = holder.transaction().await?;
    let hole = store.append_in(&tx, request("e-1", 2)?).await?.positions;
    let committed = store.append(request("e-2", 1)?).await?.last_position();
    let mut watch = GapWatch::new();
    let read = store.read_safe(&mut watch, 0, 100, None, None).await?;
    assert_eq!(read.frontier.safe, hole[0] - 1);
    tx.rollback().await?;

    // Proven while both unrelated transactions still run.
    let read = prove(&store, &mut watch).await?;
    assert_eq!(read.frontier.safe, committed);
    assert_eq!(read.frontier.skipped.len(), 1);
    unrelated.rollback().await?;
    elsewhere.batch_execute("ROLLBACK").await?;
    Ok(())
}

#[tokio::test]
async fn a_stall_report_names_only_the_appenders_that_could_fill_the_hole() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let elsewhere = unrelated_transaction_elsewhere(&db).await?;
    let mut holder = db.client().await?;
    holder
        .batch_execute("SET application_name = 'slow-appender'")
        .await?;
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let tx = holder.transaction().await?;
    let held = store
        .append_in(&tx, request("f-1", 1)?)
        .await?
        .last_position();
    let holder_xid: String = tx
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await?
        .get(0);
    store.append(request("f-2", 1)?).await?;

    let mut watch = GapWatch::new();
    let mut stall = None;
    for _ in 0..3 {
        let read = store.read_safe(&mut watch, 0, 100, None, None).await?;
        assert_eq!(read.frontier.safe, held - 1);
        stall = read.frontier.stall.or(stall);
    }
    let stall = stall.expect("the stall is reported");
    assert_eq!(
        stall.holders.iter().map(u64::to_string).collect::<Vec<_>>(),
        [holder_xid],
        "only the appender, not the transaction in the other database"
    );
    let sessions = store.blocking_sessions(&stall.holders).await?;
    let [session] = sessions.as_slice() else {
        panic!("one blocking session expected: {sessions:?}")
    };
    assert_eq!(session.pid, holder_pid);
    assert_eq!(session.database.as_deref(), Some(db.name.as_str()));
    assert_eq!(session.application_name.as_deref(), Some("slow-appender"));
    assert!(session.transaction_start.is_some());
    tx.rollback().await?;
    elsewhere.batch_execute("ROLLBACK").await?;
    Ok(())
}

#[tokio::test]
async fn every_hole_in_a_probe_window_matures_at_once() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(db.client().await?);
    }
    let holders =
        futures::future::try_join_all(clients.iter_mut().map(tokio_postgres::Client::transaction))
            .await?;
    let mut holes = Vec::new();
    // A transaction per hole, each followed by a committed event.
    for (i, tx) in holders.iter().enumerate() {
        let p = store
            .append_in(tx, request(&format!("g-{i}"), 1)?)
            .await?
            .positions;
        holes.push(p[0]);
        store.append(request(&format!("h-{i}"), 1)?).await?;
    }
    let mut watch = GapWatch::new();
    let read = store.read_safe(&mut watch, 0, 100, None, None).await?;
    assert_eq!(read.frontier.safe, holes[0] - 1);
    assert_eq!(
        watch.len(),
        5,
        "every hole of the window is observed by the first probe"
    );
    for tx in holders {
        tx.rollback().await?;
    }
    let read = prove(&store, &mut watch).await?;
    assert_eq!(
        read.frontier.skipped.len(),
        5,
        "all five proven by one probe"
    );
    assert_eq!(read.events.len(), 5);
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

/// About 30 writers whose transactions last up to 300 ms, 15 % of them rolled back: a reader
/// must stay within about the longest appending transaction of the head, not crawl from hole to
/// hole waiting on every transaction of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_keeps_up_with_thirty_writers_that_roll_back() -> anyhow::Result<()> {
    use std::sync::atomic::AtomicU64;
    const WRITERS: usize = 30;
    const CHURN: Duration = Duration::from_secs(8);
    // The bound checked: the reader has passed what was committed this long before the end.
    const BEHIND: Duration = Duration::from_secs(2);
    let db = TestDb::new().await?;
    let store = db.store();
    let pool = eventrail_devdb::pool(&db.url, WRITERS + 2)?;
    let head = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, pool, head, done) = (store.clone(), pool.clone(), head.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut t = 0;
            while !done.load(Ordering::Acquire) {
                let (events, hold_ms, commit) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(1..=3),
                        rng.random_range(0..300u64),
                        rng.random_bool(0.85),
                    )
                };
                let mut client = pool.get().await?;
                let tx = client.transaction().await?;
                let last = store
                    .append_in(&tx, request(&format!("churn{w}-{t}"), events)?)
                    .await?
                    .last_position();
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                if commit {
                    tx.commit().await?;
                    head.fetch_max(last, Ordering::AcqRel);
                } else {
                    tx.rollback().await?;
                }
                t += 1;
            }
            anyhow::Ok(())
        }));
    }
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut watch = GapWatch::new();
            let (mut position, mut last_seen) = (0, 0);
            let reached = Arc::new(AtomicU64::new(0));
            while !done.load(Ordering::Acquire) {
                let read = store
                    .read_safe(&mut watch, position, 1000, None, None)
                    .await?;
                for e in &read.events {
                    anyhow::ensure!(e.global_position > last_seen, "out of order or twice");
                    last_seen = e.global_position;
                }
                position = read.frontier.safe;
                reached.store(position, Ordering::Release);
                if !read.frontier.more {
                    tokio::time::sleep(Duration::from_millis(20)).await; // one poll of the head
                }
            }
            anyhow::Ok(position)
        })
    };
    let start = tokio::time::Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < CHURN {
        samples.push((start.elapsed(), head.load(Ordering::Acquire)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let target = samples
        .iter()
        .rev()
        .find(|(at, _)| *at + BEHIND <= start.elapsed())
        .map_or(0, |(_, h)| *h);
    let final_head = head.load(Ordering::Acquire);
    done.store(true, Ordering::Release);
    let reached = reader.await??;
    for w in writers {
        w.await??;
    }
    assert!(
        target > 500,
        "the churn produced too little to judge: {target}"
    );
    assert!(
        reached >= target,
        "the reader reached {reached}, but {target} was committed {BEHIND:?} before the end \
         (head {final_head})"
    );
    Ok(())
}
