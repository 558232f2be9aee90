use eventrail_store_postgres::{ConfigError, Migration, Migrator, validate_identifier};

use crate::{OutboxOptions, OutboxTables};

/// The outbox's migration (number 3, after the event log and the worker tables).
pub const OUTBOX_MIGRATION: Migration = Migration {
    version: 3,
    name: "outbox",
    template: include_str!("../../../migrations/0003_outbox.sql"),
};

/// The outbox's backed-off destinations (number 5; 4 belongs to the worker).
pub const OUTBOX_DESTINATIONS_MIGRATION: Migration = Migration {
    version: 5,
    name: "outbox_destinations",
    template: include_str!("../../../migrations/0005_outbox_destinations.sql"),
};

/// The outbox's keys with unsent messages and how far each was sent (number 11: sending a run
/// writes the key's row instead of each message's).
pub const OUTBOX_KEYS_MIGRATION: Migration = Migration {
    version: 11,
    name: "outbox_keys",
    template: include_str!("../../../migrations/0011_outbox_keys.sql"),
};

/// The index a claim walks the keys by, least sent first (number 12).
pub const OUTBOX_KEYS_PROGRESS_MIGRATION: Migration = Migration {
    version: 12,
    name: "outbox_keys_progress",
    template: include_str!("../../../migrations/0012_outbox_keys_progress.sql"),
};

/// Whether the message `o`, with its key's row `k` left-joined, was sent: marked sent (before
/// migration 11), or at or below its key's progress, or of a key without a row (a key keeps its
/// row while it has unsent messages).
pub(crate) const SENT: &str =
    "(o.state = 'sent' OR k.partition_key IS NULL OR o.sequence <= k.sent_through)";

/// Advisory lock class of a partition key, taken by enqueue until commit, so that a key's
/// sequence order is its commit order (key: the hash of the qualified outbox table and the
/// partition key, so outboxes of two schemas never wait for each other).
pub(crate) const KEY_LOCK: i32 = eventrail_store_postgres::keys::OUTBOX_KEY_LOCK;

/// `name` or `schema.name` validated: the qualified name, its quoted schema, its bare name.
fn qualify(
    what: &'static str,
    name: &str,
    default_schema: &str,
) -> Result<(String, String, String), ConfigError> {
    let q = eventrail_store_postgres::qualify_table(what, name, default_schema)?;
    Ok((q.qualified, q.schema, q.table))
}

/// Validated names and the statements built from them once.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub(crate) outbox: String,
    pub(crate) outbox_bare: String,
    pub(crate) inbox: String,
    pub(crate) destinations: String,
    pub(crate) keys: String,
    /// The function of the outbox's trigger that inserts missing key rows.
    pub(crate) keys_row: String,
    pub(crate) channel: String,
    schemas: Vec<String>,
    pub(crate) lock_keys: String,
    pub(crate) insert: String,
    pub(crate) claim_keys: String,
    pub(crate) claim_named_keys: String,
    pub(crate) claim_rows: String,
    pub(crate) settle: String,
    pub(crate) renew: String,
    pub(crate) release_all: String,
    pub(crate) cleanup: String,
    pub(crate) idle_keys: String,
    /// `FROM` items naming every unsent message `o` (and its key's row `k`).
    pub(crate) unsent: String,
    /// `FROM` items naming every message `o` (and its key's row `k`, if any), for [`SENT`].
    pub(crate) all_messages: String,
    pub(crate) forget_keys: String,
    pub(crate) forget_destinations: String,
    pub(crate) stats: String,
}

impl Tables {
    pub(crate) fn new(options: &OutboxOptions) -> Result<Self, ConfigError> {
        let channel = options.notify_channel.clone().unwrap_or_else(|| {
            eventrail_store_postgres::keys::default_channel(&options.schema, "outbox")
        });
        Self::from_names(&options.tables, &options.schema, &channel)
    }

    pub(crate) fn from_names(
        names: &OutboxTables,
        default_schema: &str,
        channel: &str,
    ) -> Result<Self, ConfigError> {
        let (outbox, outbox_schema, outbox_bare) =
            qualify("outbox table", &names.outbox, default_schema)?;
        let (inbox, inbox_schema, _) = qualify("inbox table", &names.inbox, default_schema)?;
        let (destinations, destinations_schema, _) =
            qualify("destinations table", &names.destinations, default_schema)?;
        let (keys, keys_schema, keys_bare) = qualify("keys table", &names.keys, default_schema)?;
        let keys_row = format!(
            "{keys_schema}.{}",
            validate_identifier("keys trigger function", &format!("{keys_bare}_row"))?
        );
        validate_identifier("notify channel", channel)?;
        let mut schemas = vec![
            outbox_schema,
            inbox_schema,
            destinations_schema,
            keys_schema,
        ];
        schemas.sort();
        schemas.dedup();
        let eligible_o = "o.state = 'pending' AND (o.lease_owner IS NULL OR o.lease_expires_at < now()) AND o.next_attempt_at <= now()";
        // A head `o` that may be claimed: eligible, and not to a backed-off destination.
        let due_head = format!(
            "{eligible_o} AND NOT EXISTS (
                 SELECT 1 FROM {destinations} AS d
                 WHERE d.destination = o.destination AND d.next_attempt_at > now()
             )"
        );
        // The head of the key row `k`: its oldest unsent message, by one descent of the
        // (partition_key, sequence) index from the key's `sent_through` on. No message above a
        // key's `sent_through` is marked sent in its row (migration 11 started each key's
        // progress just below its oldest unsent message), so the index answers alone.
        let head_of = |k: &str| {
            format!(
                "SELECT sequence FROM {outbox}
                 WHERE partition_key = {k}.partition_key AND sequence > {k}.sent_through
                 ORDER BY sequence LIMIT 1"
            )
        };
        // The heads of every key that has a row.
        let key_heads = format!(
            "SELECT h.sequence FROM {keys} AS k CROSS JOIN LATERAL ({}) AS h",
            head_of("k")
        );
        // The key of the enqueue lock (class `KEY_LOCK`) of the partition key `key` (an SQL
        // expression); the outbox's trigger (migration 11) takes the same.
        let key_hash = |key: &str| format!("hashtext('{outbox}/' || {key})");
        // The unsent messages (pending and dead) of every key that has some.
        let unsent = format!(
            "{keys} AS k JOIN {outbox} AS o
                 ON o.partition_key = k.partition_key AND o.sequence > k.sent_through"
        );
        let eligible_c = "c.state = 'pending' AND (c.lease_owner IS NULL OR c.lease_expires_at < now()) AND c.next_attempt_at <= now()";
        Ok(Self {
            // Sorted, so that two producers locking several keys cannot deadlock each other.
            lock_keys: format!(
                "SELECT pg_advisory_xact_lock({KEY_LOCK}, h) FROM (SELECT DISTINCT {} AS h FROM unnest($1::text[]) AS k ORDER BY 1) AS s",
                key_hash("k")
            ),
            // The outbox's trigger inserts the row of a key that has none (migration 11).
            insert: format!(
                "INSERT INTO {outbox} (message_id, partition_key, destination, headers, payload, content_type)
                 SELECT id, k, d, h, p, c
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::bytea[], $6::text[])
                      WITH ORDINALITY AS m(id, k, d, h, p, c, n)
                 ORDER BY n
                 RETURNING message_id"
            ),
            // Due keys: the keys whose oldest unsent message (the head) is due and not leased,
            // least sent first, until $1 are locked. Locking the head row with SKIP LOCKED is
            // the key's claim lock: a key another relay is claiming right now is skipped. Dead
            // rows are unsent: a dead head parks its key. The lock's recheck of the head sees a
            // claim committed meanwhile.
            // The walk goes through the keys table (the keys with unsent messages, and idle ones
            // until the upkeep forgets them) in the order of its (sent_through) index, finds each
            // head by one descent of the (partition_key, sequence) index, and stops at the $1th
            // head it locks: it visits the keys before those (in flight, parked, backed off or
            // idle), not every key; a key in flight it passes by its row alone, while the hint
            // its claim left there (`claimed_until`) runs. A key's progress stands for the age
            // of its head (the next message after it): least sent first is about oldest head
            // first, and no key starves, as each claim moves its keys' progress forward and a
            // new key starts past the messages already enqueued.
            // Each head is looked up and locked in a subquery of its own, by its sequence: as a
            // join, with stale statistics (an outbox analyzed while it was empty) the planner
            // would compare every key's head with every eligible row of the outbox. Each head is
            // locked as the walk reaches it, so the walk locks only the heads it returns.
            // A key whose head goes to a backed-off destination is not claimed at all, so a
            // destination that is down costs no claim, lease or publish until its backoff ends.
            claim_keys: format!(
                "SELECT o.partition_key
                 FROM {keys} AS k
                 CROSS JOIN LATERAL ({}) AS h
                 CROSS JOIN LATERAL (
                     SELECT o.partition_key FROM {outbox} AS o
                     WHERE o.sequence = h.sequence AND {due_head}
                     FOR UPDATE OF o SKIP LOCKED
                 ) AS o
                 WHERE k.claimed_until IS NULL OR k.claimed_until < now()
                 ORDER BY k.sent_through LIMIT $1",
                head_of("k")
            ),
            // `claim_keys` for the keys in $1 only (oldest head first, at most $2): each key's
            // head by one descent of the (partition_key, sequence) index, then the same
            // eligibility and the same claim lock, so that a relay following up its keys and
            // another relay walking the keys are arbitrated by the head's row lock and lease as
            // two walks are.
            claim_named_keys: format!(
                "SELECT o.partition_key FROM {outbox} AS o
                 WHERE o.sequence = ANY (ARRAY(
                     SELECT h.sequence FROM {keys} AS k CROSS JOIN LATERAL ({}) AS h
                     WHERE k.partition_key = ANY ($1::text[])
                 )) AND {due_head}
                 ORDER BY o.sequence LIMIT $2
                 FOR UPDATE OF o SKIP LOCKED",
                head_of("k")
            ),
            // Runs in a later statement than `claim_keys`, so its snapshot sees every claim
            // committed before the head locks were granted. Per key (in the order of $1), it
            // takes the longest run of eligible messages from the oldest unsent one on, at most
            // $2 (a leased, delayed or dead message ends the run), then whole runs until $3
            // messages. Only the head is leased (and its attempt counted): no other relay can
            // claim a key whose head is leased, so the head's lease holds the whole run, and a
            // claim writes one row per key instead of one per message (and the key's row, whose
            // `claimed_until` lets walks pass the key while it is in flight). The others' attempts
            // are counted when they settle; `attempts` is returned as this attempt's number.
            // The run is read with its payloads, so that no row is looked up twice. The last
            // filter is written `(… IN …) IS TRUE` so that it stays a hashed subplan: as a plain
            // `IN`, the planner makes it a semi join, and a generic plan (which estimates `runs`
            // and `leased` at a row or two) a nested loop comparing every row with every leased
            // head. The rows come unsorted (the relay sorts them: a sort of the rows with their
            // payloads cost the server a tenth of the statement). A message
            // to a backed-off destination ends the run too; `probe` says that the message's
            // destination was backed off and its backoff has ended: the relay publishes one
            // message to it first, and the others only if that one got through.
            claim_rows: format!(
                "WITH runs AS (
                     SELECT r.*
                     FROM unnest($1::text[]) WITH ORDINALITY AS k(key, rank)
                     CROSS JOIN LATERAL (
                         SELECT c.sequence, c.message_id, c.partition_key, c.destination, c.headers,
                                c.payload, c.content_type, c.created_at, c.attempts,
                                row_number() OVER w AS n,
                                first_value(c.sequence) OVER w AS head,
                                count(*) FILTER (
                                    WHERE NOT ({eligible_c}) OR d.next_attempt_at > now()
                                ) OVER w AS blocked,
                                d.destination IS NOT NULL AS probe
                         FROM (
                             SELECT * FROM {outbox}
                             WHERE partition_key = k.key
                               AND sequence > (SELECT sent_through FROM {keys} WHERE partition_key = k.key)
                             ORDER BY sequence LIMIT $2
                         ) AS c
                         LEFT JOIN {destinations} AS d ON d.destination = c.destination
                         WINDOW w AS (ORDER BY c.sequence)
                     ) AS r
                     WHERE r.blocked = 0
                     ORDER BY k.rank, r.n LIMIT $3
                 ), leased AS (
                     UPDATE {outbox} AS o
                     SET lease_owner = $4, lease_expires_at = now() + $5::float8 * interval '1 millisecond', attempts = o.attempts + 1
                     WHERE o.sequence = ANY (ARRAY(SELECT sequence FROM runs WHERE n = 1)) AND {eligible_o}
                     RETURNING o.sequence, o.partition_key
                 ), claimed AS (
                     UPDATE {keys} SET claimed_until = now() + $5::float8 * interval '1 millisecond'
                     WHERE partition_key IN (SELECT partition_key FROM leased)
                 )
                 SELECT sequence, message_id, partition_key, destination, headers, payload, content_type, created_at, attempts + 1, head, probe
                 FROM runs
                 WHERE (head IN (SELECT sequence FROM leased)) IS TRUE"
            ),
            // One statement settles a whole batch: `s` sent, `f` failed (retry or dead), `p`
            // permanently failed (dead), `r` handed back untried, `u` and `m` handed back
            // because the destination ($9) is unavailable or missing. $8 is each message's head:
            // only keys whose head this relay still leases change, and their heads are locked
            // first, so a relay whose lease expired cannot overwrite its successor's work.
            // The head's attempt was counted at the claim, the others' are counted here; `r`,
            // `u` and `m` give the head's back. Backoff: initial * 2^(attempts-1), capped,
            // then jittered to [1/2, 1] of it.
            // A destination failure backs its destination off: a new row, or, when the
            // backoff had ended (this was a probe), the next, doubled backoff; a failure
            // reported while the backoff still runs (a publish started before it) leaves it.
            // Any answer of a destination (sent, or a failure of the message) ends its backoff.
            // A key's sent messages are a prefix of its run, and come as one row per key ($13
            // key, $14 head, $15 last sent, $16 how many): the key's `sent_through` moves to the
            // last one (and its claim hint is cleared, as for the keys $18 of the other outcomes),
            // and the messages themselves are not written (without retention, $12
            // false, the key's range from its head to the last one is deleted: a key's sequences
            // follow its enqueues' commit order, so no other message of it lies in between).
            // $1 to $3, $8, $9 and $18 are the other outcomes, which update their messages; $17
            // the destinations that answered.
            settle: format!(
                "WITH held AS (
                     SELECT sequence FROM {outbox}
                     WHERE sequence = ANY($8::bigint[] || $14::bigint[]) AND lease_owner = $7
                     FOR UPDATE
                 ), f AS (
                     SELECT seq, outcome, error, key, CASE WHEN seq = head THEN 0 ELSE 1 END AS uncounted
                     FROM unnest($1::bigint[], $2::text[], $3::text[], $8::bigint[], $18::text[])
                          AS f(seq, outcome, error, head, key)
                     WHERE head IN (SELECT sequence FROM held)
                 ), runs AS (
                     SELECT key, head, last, n
                     FROM unnest($13::text[], $14::bigint[], $15::bigint[], $16::bigint[]) AS r(key, head, last, n)
                     WHERE head IN (SELECT sequence FROM held)
                 ), progressed AS (
                     UPDATE {keys} AS k SET
                         sent_through = greatest(k.sent_through, coalesce(p.last, k.sent_through)),
                         sent_at = CASE WHEN p.last IS NULL THEN k.sent_at ELSE now() END,
                         claimed_until = NULL
                     FROM (
                         SELECT key, max(last) AS last FROM (
                             SELECT key, last FROM runs
                             UNION ALL
                             SELECT key, NULL FROM f
                         ) AS s GROUP BY key
                     ) AS p
                     WHERE k.partition_key = p.key
                 ), reported AS (
                     SELECT outcome, error, destination
                     FROM unnest($2::text[], $3::text[], $9::text[]) AS r(outcome, error, destination)
                 ), down AS (
                     INSERT INTO {destinations} AS d (destination, reason, next_attempt_at, last_error)
                     SELECT DISTINCT ON (destination) destination,
                            CASE WHEN outcome = 'm' THEN 'missing' ELSE 'unavailable' END,
                            now() + least($11::float8, $10::float8) * (0.5 + random() / 2) * interval '1 millisecond',
                            coalesce(error, '')
                     FROM reported WHERE outcome IN ('u', 'm')
                     ORDER BY destination
                     ON CONFLICT (destination) DO UPDATE SET
                         reason = excluded.reason,
                         last_error = excluded.last_error,
                         failures = CASE WHEN d.next_attempt_at <= now() THEN d.failures + 1 ELSE d.failures END,
                         next_attempt_at = CASE WHEN d.next_attempt_at <= now() THEN
                             now() + least($11::float8, $10::float8 * power(2::float8, least(d.failures, 40)))
                                     * (0.5 + random() / 2) * interval '1 millisecond'
                             ELSE d.next_attempt_at END
                 ), up AS (
                     DELETE FROM {destinations}
                     WHERE destination = ANY ($17::text[])
                       AND destination NOT IN (SELECT destination FROM reported WHERE outcome IN ('u', 'm'))
                 ), gone AS (
                     DELETE FROM {outbox} AS o
                     USING runs AS r
                     WHERE NOT $12::bool AND o.partition_key = r.key AND o.sequence BETWEEN r.head AND r.last
                 ), marked AS (
                     UPDATE {outbox} AS o SET
                         state = CASE WHEN f.outcome = 'p' OR (f.outcome = 'f' AND o.attempts + f.uncounted >= $4) THEN 'dead'
                                      ELSE 'pending' END,
                         last_error = CASE WHEN f.outcome IN ('f', 'p', 'u', 'm') THEN f.error ELSE o.last_error END,
                         next_attempt_at = CASE WHEN f.outcome = 'f' THEN
                             now() + least($6::float8, $5::float8 * power(2::float8, least(greatest(o.attempts + f.uncounted - 1, 0), 40)))
                                     * (0.5 + random() / 2) * interval '1 millisecond'
                             ELSE o.next_attempt_at END,
                         attempts = CASE WHEN f.outcome IN ('r', 'u', 'm') THEN greatest(o.attempts + f.uncounted - 1, 0)
                                         ELSE o.attempts + f.uncounted END,
                         lease_owner = NULL,
                         lease_expires_at = NULL
                     FROM f
                     WHERE o.sequence = f.seq
                     RETURNING o.state, o.destination, f.outcome
                 )
                 SELECT state, destination, outcome FROM marked
                 UNION ALL
                 SELECT 'sent', '', 's' FROM runs CROSS JOIN LATERAL generate_series(1, runs.n)"
            ),
            // Extends the leases of the heads this relay still holds; a head missing from the
            // result was taken over (or settled) and its key must stop publishing. The keys'
            // claim hints are left to run out: extended here, a hint could outlive the settle
            // that cleared it, and hide a free key from the walks until it ran out.
            renew: format!(
                "UPDATE {outbox} SET lease_expires_at = now() + $3::float8 * interval '1 millisecond'
                 WHERE sequence = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'pending'
                 RETURNING sequence"
            ),
            // Only heads are leased; their keys' claim hints go with their leases.
            release_all: format!(
                "WITH released AS (
                     UPDATE {outbox} SET lease_owner = NULL, lease_expires_at = NULL, attempts = greatest(attempts - 1, 0)
                     WHERE sequence = ANY (ARRAY({key_heads}))
                       AND lease_owner = $1 AND state = 'pending'
                     RETURNING partition_key
                 )
                 UPDATE {keys} SET claimed_until = NULL
                 WHERE partition_key IN (SELECT partition_key FROM released)"
            ),
            // Sent messages enqueued before the retention (a message is sent after it was
            // enqueued, so none sent within it goes), oldest first.
            cleanup: format!(
                "DELETE FROM {outbox} WHERE sequence IN (
                     SELECT o.sequence FROM {outbox} AS o
                     LEFT JOIN {keys} AS k ON k.partition_key = o.partition_key
                     WHERE o.created_at < now() - $1::float8 * interval '1 millisecond'
                       AND {SENT}
                     ORDER BY o.created_at LIMIT $2
                 )"
            ),
            // Keys whose messages are all sent in this snapshot, each locked with its enqueue
            // lock if no enqueue holds it (the keys' rows are deleted by `forget_keys` in the
            // same transaction, under these locks).
            idle_keys: format!(
                "SELECT partition_key FROM (
                     SELECT k.partition_key FROM {keys} AS k
                     WHERE NOT EXISTS ({}) LIMIT $1 OFFSET 0
                 ) AS idle
                 WHERE pg_try_advisory_xact_lock({KEY_LOCK}, {})",
                head_of("k"),
                key_hash("partition_key")
            ),
            // Of the keys in $1, locked by `idle_keys`, those still without unsent messages in
            // this later snapshot (no enqueue of them is in flight: each holds its key's lock).
            forget_keys: format!(
                "DELETE FROM {keys} AS k WHERE k.partition_key = ANY ($1::text[]) AND NOT EXISTS ({})",
                head_of("k")
            ),
            // A backed-off destination with no pending message left (purged, or all sent by a
            // relay that missed the row) has nothing to probe it: forget it, so that status does
            // not show a stale outage; a new message to it simply tries it.
            forget_destinations: format!(
                "DELETE FROM {destinations} AS d
                 WHERE NOT EXISTS (
                     SELECT 1 FROM {unsent} WHERE o.state = 'pending' AND o.destination = d.destination
                 )"
            ),
            // Each key's unsent messages by its own range of the (partition_key, sequence)
            // index: the count costs the keys and the backlog, not the sent messages kept for
            // the retention. (`OFFSET 0` keeps the subquery a per-key scan: as a join, the
            // planner hashes the keys and scans the whole outbox, history included.)
            stats: format!(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(o.created_at))::float8, 0)
                 FROM {keys} AS k CROSS JOIN LATERAL (
                     SELECT created_at FROM {outbox}
                     WHERE partition_key = k.partition_key AND sequence > k.sent_through
                       AND state = 'pending'
                     OFFSET 0
                 ) AS o"
            ),
            all_messages: format!(
                "{outbox} AS o LEFT JOIN {keys} AS k ON k.partition_key = o.partition_key"
            ),
            unsent,
            channel: channel.to_owned(),
            outbox,
            outbox_bare,
            inbox,
            destinations,
            keys,
            keys_row,
            schemas,
        })
    }
}

/// Adds the outbox's migrations (3, 5, 11 and 12), with these table names, to `migrator` (for
/// example one from `eventrail_worker::worker_migrator`), so that one runner applies everything.
///
/// The names are fixed by the first run on a schema, as for the worker tables.
///
/// # Errors
/// [`ConfigError::InvalidIdentifier`] for a schema or table name that is not a plain identifier.
pub fn with_outbox_migration(
    migrator: Migrator,
    schema: &str,
    names: &OutboxTables,
) -> Result<Migrator, ConfigError> {
    let tables = Tables::from_names(
        names,
        schema,
        &eventrail_store_postgres::keys::default_channel(schema, "outbox"),
    )?;
    let mut migrator = migrator
        .with_migrations(&[
            OUTBOX_MIGRATION,
            OUTBOX_DESTINATIONS_MIGRATION,
            OUTBOX_KEYS_MIGRATION,
            OUTBOX_KEYS_PROGRESS_MIGRATION,
        ])
        .with_roles(include_str!(
            "../../../migrations/optional/roles_outbox.sql"
        ))
        .with_replacement("{outbox_destinations}", &tables.destinations)
        .with_replacement("{outbox_keys_row}", &tables.keys_row)
        .with_replacement("{outbox_keys}", &tables.keys)
        .with_replacement("{outbox}", &tables.outbox)
        .with_replacement("{inbox}", &tables.inbox);
    for s in &tables.schemas {
        migrator = migrator.with_schema(s);
    }
    Ok(migrator)
}

/// A migrator for the event store (migration 1) and the outbox with these names (migrations 3,
/// 5, 11 and 12).
/// To apply the worker tables with the same runner, pass
/// `eventrail_worker::worker_migrator(schema, &names)` to [`with_outbox_migration`] instead.
///
/// # Errors
/// [`ConfigError::InvalidIdentifier`] for a schema or table name that is not a plain identifier.
pub fn outbox_migrator(schema: &str, names: &OutboxTables) -> Result<Migrator, ConfigError> {
    with_outbox_migration(Migrator::new(schema)?, schema, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_migrations_are_in_the_catalogue() {
        assert!(
            [
                OUTBOX_MIGRATION,
                OUTBOX_DESTINATIONS_MIGRATION,
                OUTBOX_KEYS_MIGRATION,
                OUTBOX_KEYS_PROGRESS_MIGRATION
            ]
            .iter()
            .all(eventrail_store_postgres::is_known_migration)
        );
    }

    #[test]
    fn the_keys_trigger_takes_the_enqueue_lock() {
        let sql = outbox_migrator("eventrail", &OutboxTables::default())
            .unwrap()
            .print_sql();
        assert!(sql.contains(&format!(
            "pg_advisory_xact_lock({KEY_LOCK}, hashtext('\"eventrail\".\"outbox\"/' || NEW.partition_key))"
        )));
        assert!(sql.contains("CREATE FUNCTION \"eventrail\".\"outbox_keys_row\"()"));
    }

    #[test]
    fn names_are_qualified_and_validated() {
        let names = OutboxTables {
            outbox: "ops.messages".into(),
            ..OutboxTables::default()
        };
        let sql = outbox_migrator("eventrail", &names).unwrap().print_sql();
        assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS \"ops\""));
        assert!(sql.contains("CREATE TABLE \"ops\".\"messages\""));
        assert!(sql.contains("CREATE TABLE \"eventrail\".\"inbox\""));
        assert!(sql.contains("CREATE TABLE \"eventrail\".\"outbox_destinations\""));
        assert!(
            !sql.contains("{outbox}")
                && !sql.contains("{inbox}")
                && !sql.contains("{outbox_destinations}")
        );
        let versions: Vec<i32> = outbox_migrator("eventrail", &names)
            .unwrap()
            .migrations()
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(
            versions,
            [1, 3, 5, 6, 7, 11, 12, 13, 14],
            "the event store and the outbox, no worker tables"
        );
        for bad in ["a.b.c", "x;drop", "Ops.outbox", ".outbox", "ops."] {
            let names = OutboxTables {
                outbox: bad.into(),
                ..OutboxTables::default()
            };
            assert!(outbox_migrator("eventrail", &names).is_err(), "{bad}");
        }
        assert!(Tables::from_names(&OutboxTables::default(), "eventrail", "bad channel").is_err());
    }
}
