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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoleEvidence {
    /// The snapshot in which the hole was seen (taken by the statement that read the positions).
    pub observed: Snapshot,
    /// An xid assigned after that snapshot: every transaction that may hold the hole has a
    /// smaller xid.
    pub horizon: u64,
    /// When the hole was first seen (for reports only; never used to decide).
    pub first_seen: SystemTime,
}

impl HoleEvidence {
    /// Whether transaction `xid` may have taken a position in the hole.
    #[must_use]
    pub fn may_hold(&self, xid: u64) -> bool {
        self.observed.xip.contains(&xid) || (xid >= self.observed.xmax && xid < self.horizon)
    }

    /// The transactions that may hold the hole and are still in progress in `now`.
    #[must_use]
    pub fn holders_in_progress(&self, now: &Snapshot) -> Vec<u64> {
        let mut holders: Vec<u64> = now
            .xip
            .iter()
            .copied()
            .filter(|x| self.may_hold(*x))
            .collect();
        // Candidates at or above `now.xmax` count as in progress too.
        if now.xmax < self.horizon {
            holders.extend(now.xmax.max(self.observed.xmax)..self.horizon);
            holders.extend(self.observed.xip.iter().copied().filter(|x| *x >= now.xmax));
        }
        holders.sort_unstable();
        holders.dedup();
        holders
    }

    /// Whether `now` proves the hole permanent: no transaction that may hold it is in progress.
    #[must_use]
    pub fn is_proven_by(&self, now: &Snapshot) -> bool {
        now.xmax > self.horizon && self.holders_in_progress(now).is_empty()
    }
}

/// A permanent hole the reader skipped, with the evidence: audit it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
pub struct Frontier {
    /// Every position at or below is committed or proven permanently missing; read up to here.
    pub safe: u64,
    /// Holes skipped by this probe, with evidence.
    pub skipped: Vec<GapSkip>,
    /// The hole the frontier waits on, if any.
    pub stall: Option<FrontierStall>,
    /// Whether the probe's limit cut the positions short (more may be readable at once).
    pub more: bool,
}

/// One pass over the positions after `after`: the pure decision.
#[derive(Debug)]
pub(crate) struct Advance {
    pub(crate) frontier: Frontier,
    /// A hole with no evidence yet: observe it.
    pub(crate) new_hole: Option<(u64, u64)>,
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
    for &p in positions {
        if p <= safe {
            continue;
        }
        if p > safe + 1 {
            let (from, to) = (safe + 1, p - 1);
            match watch.evidence_for(from, to) {
                Some(evidence) if evidence.is_proven_by(now) => skipped.push(GapSkip {
                    from,
                    to,
                    evidence: evidence.clone(),
                    proven_by: now.clone(),
                }),
                Some(evidence) => {
                    let stall = FrontierStall {
                        from,
                        to,
                        since: evidence.first_seen,
                        holders: evidence.holders_in_progress(now),
                    };
                    return Advance {
                        frontier: Frontier {
                            safe,
                            skipped,
                            stall: Some(stall),
                            more: false,
                        },
                        new_hole: None,
                    };
                }
                None => {
                    return Advance {
                        frontier: Frontier {
                            safe,
                            skipped,
                            stall: None,
                            more: false,
                        },
                        new_hole: Some((from, to)),
                    };
                }
            }
        }
        safe = p;
    }
    Advance {
        frontier: Frontier {
            safe,
            skipped,
            stall: None,
            more: limit_hit,
        },
        new_hole: None,
    }
}

/// Events up to a proven-safe frontier, and what it took to get there.
#[derive(Debug, Clone)]
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

    fn evidence(observed: Snapshot, horizon: u64) -> HoleEvidence {
        HoleEvidence {
            observed,
            horizon,
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
    fn contiguous_positions_advance_without_evidence() {
        let a = advance(3, &[4, 5, 6], &snap(1, 1, &[]), &GapWatch::new(), true);
        assert_eq!(
            (a.frontier.safe, a.frontier.more, a.new_hole),
            (6, true, None)
        );
    }

    #[test]
    fn a_new_hole_stops_and_asks_for_evidence() {
        let a = advance(3, &[4, 6, 7], &snap(1, 1, &[]), &GapWatch::new(), false);
        assert_eq!((a.frontier.safe, a.new_hole), (4, Some((5, 5))));
    }

    #[test]
    fn a_hole_is_proven_only_when_every_possible_holder_ended() {
        // Observed with 12 in progress; 20 was the next xid; horizon 25.
        let e = evidence(snap(12, 20, &[12]), 25);
        let mut watch = GapWatch::new();
        watch.record(5, 5, e.clone());
        // 12 still running.
        let a = advance(4, &[6], &snap(12, 30, &[12]), &watch, false);
        assert_eq!(a.frontier.safe, 4);
        assert_eq!(a.frontier.stall.as_ref().unwrap().holders, [12]);
        // 12 ended but 22 (started before the horizon, above observed xmax) runs: may hold it.
        let a = advance(4, &[6], &snap(22, 30, &[22]), &watch, false);
        assert_eq!(a.frontier.safe, 4);
        assert_eq!(a.frontier.stall.unwrap().holders, [22]);
        // The horizon itself not yet completed in `now`: not proven.
        assert!(!e.is_proven_by(&snap(25, 25, &[])));
        // A transaction started after the horizon does not block.
        let a = advance(4, &[6, 7], &snap(26, 30, &[26]), &watch, false);
        assert_eq!(a.frontier.safe, 7);
        assert_eq!(a.frontier.skipped.len(), 1);
        assert_eq!(
            (a.frontier.skipped[0].from, a.frontier.skipped[0].to),
            (5, 5)
        );
    }

    #[test]
    fn evidence_must_cover_the_whole_hole() {
        let mut watch = GapWatch::new();
        watch.record(5, 6, evidence(snap(1, 2, &[]), 3));
        // A hole [5, 8] was not entirely observed by that evidence (7 and 8 were beyond).
        let a = advance(4, &[9], &snap(9, 9, &[]), &watch, false);
        assert_eq!(a.new_hole, Some((5, 8)));
        // A hole that shrank to [6, 6] is covered.
        let a = advance(5, &[7], &snap(9, 9, &[]), &watch, false);
        assert_eq!(a.frontier.safe, 7);
        watch.prune(7);
        assert!(watch.is_empty());
    }
}
