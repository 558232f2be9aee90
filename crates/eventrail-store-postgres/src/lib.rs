//! eventrail's PostgreSQL event store.
//!
//! - [`PgEventStore`] appends in one round trip with race-free expected-version and
//!   expected-position checks, runs [`StatelessProcessor`](eventrail_core::StatelessProcessor)s in
//!   the append transaction, joins a caller's transaction ([`PgEventStore::append_in`]) and reads
//!   streams, categories and the whole log.
//! - [`PgEventStore::read_safe`] follows the log without ever passing a position that may still
//!   commit: holes in `global_position` are skipped only when proven permanent, and every skip
//!   comes back with its evidence ([`GapSkip`]).
//! - [`Migrator`] applies the embedded migrations under an advisory lock, with checksums.
//!
//! # Gap safety: the argument
//!
//! Positions come from a sequence with `CACHE 1`, so a smaller position was handed out earlier.
//! `append_events` takes the transaction's xid before it takes any position. When a reader sees a
//! hole at `h` below a committed position, the transaction that took `h` had its xid before the
//! reader's snapshot was taken. The reader then takes a fresh xid `R` (the *horizon*): every
//! transaction that may hold `h` is in the observed snapshot's in-progress list or has an xid in
//! `[observed xmax, R)`. Once a later snapshot shows none of them in progress, `h` can never
//! commit, and it is skipped. No clock is involved.
//!
//! The alternative used by Emmett and Watermill (read only `transaction_id < xmin`) needs no proof
//! but stalls every reader on any long writer in the cluster, even when there is no hole; this
//! store stalls only on an actual hole, and reports who holds it ([`FrontierStall`]).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod frontier;
mod migrate;
mod options;
mod rows;
mod store;

pub use error::{ConfigError, MigrationError};
pub use frontier::{
    BlockingSession, Frontier, FrontierStall, GapSkip, GapWatch, HoleEvidence, SafeRead, Snapshot,
    widen_xid,
};
pub use migrate::{Migration, Migrator};
pub use options::{PgStoreOptions, validate_identifier};
pub use store::{PgEventStore, PgStatelessProcessor};
