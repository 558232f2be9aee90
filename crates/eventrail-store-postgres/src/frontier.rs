//! The gap-safe frontier: how far a reader may go without passing a position that may still commit.
//!
//! The pure part ([`Snapshot`], [`HoleEvidence`], [`advance`]) is here and unit-tested; the store
//! does the I/O (`PgEventStore::probe_frontier`). The argument is in the crate docs.

use std::str::FromStr;
use std::time::SystemTime;

use eventrail_core::{RecordedEvent, StoreError};

/// A PostgreSQL `pg_snapshot`: which transactions were in progress when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Oldest transaction still in progress; every xid below has ended.
    pub xmin: u64,
    /// First xid not yet completed-or-listed: every xid at or above is in progress (or not started).
    pub xmax: u64,
    /// Xids in `[xmin, xmax)` that were in progress.
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Whether `xid` was in progress (or not yet started) when the snapshot was taken.
    #[must_use]
    pub fn is_in_progress(&self, xid: u64) -> bool {
        xid >= self.xmax || self.xip.contains(&xid)
    }
}

impl FromStr for Snapshot {
    type Err = StoreError;

    /// Parses PostgreSQL's text form `xmin:xmax:xip,xip`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StoreError::backend(format!("unexpected pg_snapshot {s:?}"));
        let mut parts = s.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let xip = if xip.is_empty() {
            Vec::new()
        } else {
            xip.split(',')
                .map(|x| x.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            xmin: xmin.parse().map_err(|_| bad())?,
            xmax: xmax.parse().map_err(|_| bad())?,
            xip,
        })
    }
}

/// What a reader saw when it first met a hole: enough to prove later that the hole is permanent.
///
/// The argument (details in the crate docs): whoever took a position in the hole took it inside
/// an append, which holds the log's appender lock from before it takes any position until it
/// ends, and had its xid before that. The hole was missing from the rows read under `observed`,
/// so its holder was in progress in `observed` (or had rolled back). `appenders` was read from
/// `pg_locks` after `observed` was taken: a holder still running then is among them. So once no
/// transaction of `appenders` that was in progress in `observed` is in progress in a later
/// snapshot, every holder has ended before that snapshot, and a hole still missing from the rows
/// read under it can never be filled. Unrelated transactions of the cluster never take part.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HoleEvidence {
    /// The snapshot in which the hole was seen (taken by the statement that read the positions).
    pub observed: Snapshot,
    /// The transactions appending to this log, read after `observed` was taken.
    pub appenders: Vec<u64>,
    /// When the hole was first seen (for reports only; never used to decide).
    pub first_seen: SystemTime,
}

impl HoleEvidence {
    /// Whether transaction `xid` may have taken a position in the hole.
    #[must_use]
    pub fn may_hold(&self, xid: u64) -> bool {
        self.appenders.contains(&xid) && self.observed.is_in_progress(xid)
    }

    /// The transactions that may hold the hole and are still in progress in `now`.
    #[must_use]
    pub fn holders_in_progress(&self, now: &Snapshot) -> Vec<u64> {
        let mut holders: Vec<u64> = self
            .appenders
            .iter()
            .copied()
            .filter(|x| self.may_hold(*x) && now.is_in_progress(*x))
            .collect();
        holders.sort_unstable();
        holders.dedup();
        holders
    }

    /// Whether `now` proves the hole permanent: no transaction that may hold it is in progress.
    /// `now` must have been taken after `appenders` was read (a later probe).
    #[must_use]
    pub fn is_proven_by(&self, now: &Snapshot) -> bool {
        self.holders_in_progress(now).is_empty()
    }

    /// The candidates as text (`xid,xid`), for audit records.
    #[must_use]
    pub fn candidates_text(&self) -> String {
        let candidates: Vec<String> = self
            .appenders
            .iter()
            .filter(|x| self.observed.is_in_progress(**x))
            .map(u64::to_string)
            .collect();
        candidates.join(",")
    }
}

/// Widens a 32-bit xid (as `pg_locks` and `pg_stat_activity` show them) to the 64-bit `xid8`
/// closest to `reference`, a 64-bit xid of the same moment (a running xid is never more than
/// 2^31 away from the current one).
#[must_use]
pub fn widen_xid(xid: u32, reference: u64) -> u64 {
    const HALF: u64 = 1 << 31;
    const WRAP: u64 = 1 << 32;
    let candidate = (reference & !(WRAP - 1)) | u64::from(xid);
    if candidate > reference.saturating_add(HALF) && candidate >= WRAP {
        candidate - WRAP
    } else if candidate.saturating_add(HALF) < reference {
        candidate + WRAP
    } else {
        candidate
    }
}

/// A permanent hole the reader skipped, with the evidence: audit it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GapSkip {
    /// First missing position.
    pub from: u64,
    /// Last missing position (inclusive).
    pub to: u64,
    /// What was seen when the hole was first observed.
    pub evidence: HoleEvidence,
    /// The snapshot that proved it: none of the possible holders was in progress.
    pub proven_by: Snapshot,
}

/// A hole the reader waits on: a transaction that took a position in it is still in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrontierStall {
    /// First missing position.
    pub from: u64,
    /// Last missing position (inclusive).
    pub to: u64,
    /// When the hole was first seen.
    pub since: SystemTime,
    /// Transactions that may hold it and are still in progress (look them up with
    /// `PgEventStore::blocking_sessions`).
    pub holders: Vec<u64>,
}

/// A session holding a transaction that blocks the frontier.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockingSession {
    /// Backend process id (`pg_terminate_backend` takes it).
    pub pid: i32,
    /// The transaction id (32-bit form, as `pg_stat_activity.backend_xid` shows it).
    pub xid: u32,
    /// When its transaction started.
    pub transaction_start: Option<SystemTime>,
    /// Its state (`active`, `idle in transaction`, …).
    pub state: Option<String>,
    /// Its `application_name`.
    pub application_name: Option<String>,
    /// The database it is connected to.
    pub database: Option<String>,
}

/// The holes one reader has seen and not yet passed, with their evidence.
///
/// Keep one per subscription and pass it to every read. Losing it (a restart) is safe: the
/// reader observes the holes again and proves them again.
#[derive(Debug, Clone, Default)]
pub struct GapWatch {
    holes: Vec<(u64, u64, HoleEvidence)>,
}

impl GapWatch {
    /// An empty watch.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many holes are being watched.
    #[must_use]
    pub fn len(&self) -> usize {
        self.holes.len()
    }

    /// Whether no hole is being watched.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.holes.is_empty()
    }

    /// Evidence that covers the whole hole `[from, to]`: it was entirely missing when observed.
    fn evidence_for(&self, from: u64, to: u64) -> Option<&HoleEvidence> {
        self.holes
            .iter()
            .find(|(f, t, _)| *f <= from && to <= *t)
            .map(|(_, _, e)| e)
    }

    pub(crate) fn record(&mut self, from: u64, to: u64, evidence: HoleEvidence) {
        self.holes.push((from, to, evidence));
    }

    /// Forgets holes at or below `position`: the reader has passed them.
    pub(crate) fn prune(&mut self, position: u64) {
        self.holes.retain(|(_, to, _)| *to > position);
    }
}

/// Where the frontier is after one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Frontier {
    /// Every position at or below is committed or proven permanently missing; read up to here.
    pub safe: u64,
    /// Holes skipped by this probe, with evidence.
    pub skipped: Vec<GapSkip>,
    /// The hole the frontier waits on, if any.
    pub stall: Option<FrontierStall>,
    /// Whether the probe's limit cut the positions short (more may be readable at once).
    pub more: bool,
    /// The primary's WAL insert position (`pg_lsn` text), read by the probe's statement after
    /// its snapshot was taken: every event up to `safe` committed before that snapshot, so a
    /// standby that has replayed this far shows all of them
    /// ([`PgEventStore::read_frontier_on`](crate::PgEventStore::read_frontier_on)). `None` when
    /// the probe ran on a server in recovery.
    pub wal_insert: Option<String>,
}

/// One pass over the positions after `after`: the pure decision.
#[derive(Debug)]
pub(crate) struct Advance {
    pub(crate) frontier: Frontier,
    /// Holes in the window with no evidence yet: observe them all at once, so they mature
    /// together instead of one after the other.
    pub(crate) new_holes: Vec<(u64, u64)>,
}

pub(crate) fn advance(
    after: u64,
    positions: &[u64],
    now: &Snapshot,
    watch: &GapWatch,
    limit_hit: bool,
) -> Advance {
    let mut safe = after;
    let mut skipped = Vec::new();
    let mut stall = None;
    let mut new_holes = Vec::new();
    // `blocked`: the frontier stopped; later holes are still collected for observation.
    let mut blocked = false;
    let mut previous = after;
    for &p in positions {
        if p <= previous {
            continue;
        }
        if p > previous + 1 {
            let (from, to) = (previous + 1, p - 1);
            match watch.evidence_for(from, to) {
                Some(evidence) if !blocked && evidence.is_proven_by(now) => {
                    skipped.push(GapSkip {
                        from,
                        to,
                        evidence: evidence.clone(),
                        proven_by: now.clone(),
                    });
                }
                Some(evidence) => {
                    if !blocked {
                        stall = Some(FrontierStall {
                            from,
                            to,
                            since: evidence.first_seen,
                            holders: evidence.holders_in_progress(now),
                        });
                        blocked = true;
                    }
                }
                None => {
                    new_holes.push((from, to));
                    blocked = true;
                }
            }
        }
        previous = p;
        if !blocked {
            safe = p;
        }
    }
    Advance {
        frontier: Frontier {
            safe,
            skipped,
            stall,
            more: limit_hit && !blocked,
            wal_insert: None,
        },
        new_holes,
    }
}

/// Events up to a proven-safe frontier, and what it took to get there.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SafeRead {
    /// Events after the reader's position up to `frontier.safe`, in position order (only those
    /// matching the read's filter).
    pub events: Vec<RecordedEvent>,
    /// The new position to checkpoint: `frontier.safe`, even when a filter left no event.
    pub frontier: Frontier,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(xmin: u64, xmax: u64, xip: &[u64]) -> Snapshot {
        Snapshot {
            xmin,
            xmax,
            xip: xip.to_vec(),
        }
    }

    fn evidence(observed: Snapshot, appenders: &[u64]) -> HoleEvidence {
        HoleEvidence {
            observed,
            appenders: appenders.to_vec(),
            first_seen: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn parses_snapshots() {
        assert_eq!(
            "10:20:10,14".parse::<Snapshot>().unwrap(),
            snap(10, 20, &[10, 14])
        );
        assert_eq!("7:7:".parse::<Snapshot>().unwrap(), snap(7, 7, &[]));
        for bad in ["", "1:2", "a:2:", "1:2:3:4", "1:2:x"] {
            assert!(bad.parse::<Snapshot>().is_err(), "{bad}");
        }
    }

    #[test]
    fn widens_32_bit_xids_around_the_reference() {
        let epoch = 5u64 << 32;
        assert_eq!(widen_xid(100, epoch + 200), epoch + 100);
        // Just before the reference wrapped: the previous epoch.
        assert_eq!(widen_xid(u32::MAX - 10, epoch + 5), epoch - 11);
        // Running xids may be slightly above the reference, across a wrap.
        assert_eq!(widen_xid(3, epoch - 2), epoch + 3);
        // Epoch 0 never underflows.
        assert_eq!(widen_xid(u32::MAX, 10), u64::from(u32::MAX));
        assert_eq!(widen_xid(7, 10), 7);
    }

    #[test]
    fn contiguous_positions_advance_without_evidence() {
        let a = advance(3, &[4, 5, 6], &snap(1, 1, &[]), &GapWatch::new(), true);
        assert_eq!((a.frontier.safe, a.frontier.more), (6, true));
        assert!(a.new_holes.is_empty());
    }

    #[test]
    fn every_new_hole_in_the_window_is_observed_at_once() {
        let a = advance(3, &[4, 6, 7, 10], &snap(1, 1, &[]), &GapWatch::new(), true);
        assert_eq!(a.frontier.safe, 4);
        assert!(!a.frontier.more, "stopped at a hole");
        assert_eq!(a.new_holes, [(5, 5), (8, 9)]);
    }

    #[test]
    fn only_appenders_in_progress_when_observed_can_hold_a_hole() {
        // Observed: 12 and 15 in progress, 20 the first unassigned xid. Appenders then: 12 and 21
        // (21 started after the observation: in progress in `observed` too, a candidate).
        // 15 is not appending to this log: it never blocks.
        let e = evidence(snap(12, 20, &[12, 15]), &[12, 21, 9]);
        let mut watch = GapWatch::new();
        watch.record(5, 5, e.clone());
        // 12 still running: it may hold the hole.
        let a = advance(4, &[6], &snap(12, 30, &[12, 15]), &watch, false);
        assert_eq!(a.frontier.safe, 4);
        assert_eq!(a.frontier.stall.as_ref().unwrap().holders, [12]);
        // 12 ended; 21 still runs.
        let a = advance(4, &[6], &snap(15, 30, &[15, 21]), &watch, false);
        assert_eq!(a.frontier.stall.unwrap().holders, [21]);
        // Only the unrelated 15 (even as xmin) and newer transactions run: proven.
        let a = advance(4, &[6, 7], &snap(15, 40, &[15, 33]), &watch, false);
        assert_eq!(a.frontier.safe, 7);
        assert_eq!(a.frontier.skipped.len(), 1);
        assert_eq!(
            (a.frontier.skipped[0].from, a.frontier.skipped[0].to),
            (5, 5)
        );
        // 9 had ended before `observed` (below xmin): never a candidate.
        assert!(!e.may_hold(9));
        assert_eq!(e.candidates_text(), "12,21");
    }

    #[test]
    fn holes_with_evidence_mature_together() {
        let e = evidence(snap(12, 20, &[12]), &[12]);
        let mut watch = GapWatch::new();
        watch.record(5, 5, e.clone());
        watch.record(8, 9, e);
        let a = advance(4, &[6, 7, 10, 11], &snap(20, 20, &[]), &watch, true);
        assert_eq!(a.frontier.safe, 11);
        assert_eq!(a.frontier.skipped.len(), 2);
        assert!(a.frontier.more);
    }

    #[test]
    fn evidence_must_cover_the_whole_hole() {
        let mut watch = GapWatch::new();
        watch.record(5, 6, evidence(snap(1, 2, &[]), &[]));
        // A hole [5, 8] was not entirely observed by that evidence (7 and 8 were beyond).
        let a = advance(4, &[9], &snap(9, 9, &[]), &watch, false);
        assert_eq!(a.new_holes, [(5, 8)]);
        // A hole that shrank to [6, 6] is covered.
        let a = advance(5, &[7], &snap(9, 9, &[]), &watch, false);
        assert_eq!(a.frontier.safe, 7);
        watch.prune(7);
        assert!(watch.is_empty());
    }
}
