//! Validated table names on MySQL/MariaDB, the statements built from them once, and the
//! migration.

use eventrail_store_postgres::{ConfigError, MigrationError, validate_identifier};
use mysql_async::prelude::Queryable;

use super::error::db;
use crate::{OutboxError, OutboxTables};

/// The MySQL/MariaDB outbox schema (version 1): the outbox, its key locks and its backed-off
/// destinations. `{outbox}`, `{outbox_key_locks}` and `{outbox_destinations}` stand for the
/// tables.
pub const MYSQL_OUTBOX_MIGRATION: &str =
    include_str!("../../../../migrations/mysql/0001_outbox.sql");

/// The schema version [`MYSQL_OUTBOX_MIGRATION`] brings.
const VERSION: i64 = 1;

/// Key-lock buckets (rows of `<outbox>_key_locks`).
const BUCKETS: u32 = 65_536;

/// The key-lock bucket of a partition key: FNV-1a (32 bits) of its UTF-8 bytes, modulo
/// [`BUCKETS`]. Fixed forever: producers running two versions of this library must agree.
pub(crate) fn bucket(partition_key: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in partition_key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % BUCKETS
}

/// Longest partition key, destination and content type, in characters (`VARCHAR(255)`, and
/// `VARBINARY(1020)` for the UTF-8 bytes of keys and destinations).
pub(crate) const MAX_TEXT: usize = 255;

/// `name` or `database.name`, validated (the rules of PostgreSQL's names: lowercase letters,
/// digits and `_`, so that a name means the same table on every server whatever its
/// `lower_case_table_names`) and quoted with backticks; `suffix` is appended to the table.
fn qualify(what: &'static str, name: &str, suffix: &str) -> Result<String, ConfigError> {
    let (database, table) = match name.split_once('.') {
        Some((database, table)) => (Some(database), table),
        None => (None, name),
    };
    let table = format!("{table}{suffix}");
    validate_identifier(what, &table)?;
    if table.len() > 64 {
        return Err(ConfigError::InvalidIdentifier {
            what,
            value: table,
            reason: "MySQL names are at most 64 characters",
        });
    }
    match database {
        Some(database) => {
            validate_identifier("database", database)?;
            Ok(format!("`{database}`.`{table}`"))
        }
        None => Ok(format!("`{table}`")),
    }
}

/// Names and statements of one MySQL outbox. Unqualified names are tables of the connection's
/// database.
#[derive(Debug, Clone)]
pub(crate) struct MySqlTables {
    pub(crate) outbox: String,
    pub(crate) key_locks: String,
    pub(crate) destinations: String,
    /// The record of applied versions.
    migrations: String,
    pub(crate) heads: String,
    pub(crate) heads_of_keys: String,
    pub(crate) lock_heads: String,
    pub(crate) runs: String,
    pub(crate) lease: String,
    pub(crate) held: String,
    pub(crate) down: String,
    pub(crate) up: String,
    pub(crate) mark: String,
    pub(crate) delete_sent: String,
    pub(crate) renew: String,
    pub(crate) renewed: String,
    pub(crate) release_all: String,
    pub(crate) cleanup: String,
    pub(crate) forget_destinations: String,
    pub(crate) stats: String,
}

/// A JSON array of integers passed as one parameter, as a table of `v`.
fn json_ints(param: &str) -> String {
    format!("SELECT j.v FROM JSON_TABLE({param}, '$[*]' COLUMNS (v BIGINT PATH '$')) AS j")
}

/// A JSON array of strings passed as one parameter, as a table of `v`.
fn json_texts(param: &str) -> String {
    format!("SELECT j.v FROM JSON_TABLE({param}, '$[*]' COLUMNS (v VARCHAR(255) PATH '$')) AS j")
}

/// A JSON array of integers passed as one parameter, as a table `j` of `v` to join with
/// (single-table UPDATE and DELETE with an `IN` subquery scan the whole table; a join looks
/// each row up by its key).
fn join_ints(param: &str) -> String {
    format!("JSON_TABLE({param}, '$[*]' COLUMNS (v BIGINT PATH '$')) AS j")
}

/// A JSON array of strings passed as one parameter, as a table `j` of `v` to join with.
fn join_texts(param: &str) -> String {
    format!("JSON_TABLE({param}, '$[*]' COLUMNS (v VARCHAR(255) PATH '$')) AS j")
}

impl MySqlTables {
    pub(crate) fn new(names: &OutboxTables) -> Result<Self, ConfigError> {
        let outbox = qualify("outbox table", &names.outbox, "")?;
        let key_locks = qualify("outbox table", &names.outbox, "_key_locks")?;
        let migrations = qualify("outbox table", &names.outbox, "_migrations")?;
        let destinations = qualify("destinations table", &names.destinations, "")?;
        let now = "UTC_TIMESTAMP(6)";
        let eligible = |o: &str| {
            format!(
                "{o}.state = 'pending' AND ({o}.lease_owner IS NULL OR {o}.lease_expires_at < {now}) AND {o}.next_attempt_at <= {now}"
            )
        };
        let eligible_o = eligible("o");
        let eligible_c = eligible("c");
        let int_list = json_ints("?");
        let text_list = json_texts("?");
        let int_join = join_ints("?");
        let text_join = join_texts("?");
        Ok(Self {
            // Each key's oldest unsent message, by a plain (non-locking) read: the next
            // statement locks the due ones. A key's lower sequences commit before its higher
            // ones exist (the producers' key locks), so a head read here stays the head until
            // it is sent.
            heads: format!(
                "SELECT MIN(sequence) FROM {outbox} WHERE state IN ('pending', 'dead') GROUP BY partition_key"
            ),
            // `heads` of the keys in the JSON array ? only (a relay following up its keys).
            heads_of_keys: format!(
                "SELECT MIN(sequence) FROM {outbox}
                 WHERE state IN ('pending', 'dead') AND partition_key IN ({text_list})
                 GROUP BY partition_key"
            ),
            // The due heads, oldest first, locked without waiting: a head another relay is
            // claiming now is skipped. A locking read sees the latest committed row, so a head
            // leased by a claim committed meanwhile is not eligible any more. A key whose head
            // goes to a backed-off destination is not claimed.
            lock_heads: format!(
                "SELECT o.sequence, o.partition_key FROM {outbox} AS o
                 WHERE o.sequence IN ({int_list}) AND {eligible_o}
                   AND NOT EXISTS (
                       SELECT 1 FROM {destinations} AS d
                       WHERE d.destination = o.destination AND d.next_attempt_at > {now}
                   )
                 ORDER BY o.sequence LIMIT ?
                 FOR UPDATE SKIP LOCKED"
            ),
            // Up to ? unsent messages of each locked key from its head on, with whether each is
            // eligible (a leased, delayed or dead message, or one to a backed-off destination,
            // ends the key's run: the relay cuts the runs) and whether its destination's backoff
            // has ended (a probe).
            runs: format!(
                "SELECT c.sequence, c.message_id, c.partition_key, c.destination, c.headers, c.payload,
                        c.content_type, TIMESTAMPDIFF(MICROSECOND, '1970-01-01', c.created_at), c.attempts,
                        ({eligible_c} AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= {now})),
                        d.destination IS NOT NULL
                 FROM (
                     SELECT o.*, ROW_NUMBER() OVER (PARTITION BY o.partition_key ORDER BY o.sequence) AS n
                     FROM {outbox} AS o
                     WHERE o.state <> 'sent' AND o.partition_key IN ({text_list})
                 ) AS c
                 LEFT JOIN {destinations} AS d ON d.destination = c.destination
                 WHERE c.n <= ?
                 ORDER BY c.partition_key, c.sequence"
            ),
            // Only the heads are leased (and their attempts counted): a key whose head is
            // leased cannot be claimed, so the head's lease holds the whole run.
            // Parameters: the heads, the owner, the lease in µs.
            lease: format!(
                "UPDATE {outbox} AS o JOIN {int_join} ON o.sequence = j.v
                 SET o.lease_owner = ?, o.lease_expires_at = {now} + INTERVAL ? MICROSECOND, o.attempts = o.attempts + 1"
            ),
            // The heads this relay still leases, locked: a relay whose lease lapsed cannot
            // overwrite its successor's work.
            held: format!(
                "SELECT sequence FROM {outbox} WHERE sequence IN ({int_list}) AND lease_owner = ? FOR UPDATE"
            ),
            // A destination failure backs its destination off: a new row, or, when the backoff
            // had ended (this was a probe), the next, doubled backoff; a failure reported while
            // the backoff still runs leaves it. Assignments run left to right: `failures` is
            // raised before `next_attempt_at` uses it, and both test the old `next_attempt_at`.
            // Parameters: destination, reason, initial µs, max µs, error; reason, error, initial
            // µs, max µs.
            down: format!(
                "INSERT INTO {destinations} (destination, reason, since, failures, next_attempt_at, last_error)
                 VALUES (?, ?, {now}, 1, {now} + INTERVAL ROUND(LEAST(?, ?) * (0.5 + RAND() / 2)) MICROSECOND, ?)
                 ON DUPLICATE KEY UPDATE
                     reason = ?,
                     last_error = ?,
                     failures = IF(next_attempt_at <= {now}, failures + 1, failures),
                     next_attempt_at = IF(next_attempt_at <= {now},
                         {now} + INTERVAL ROUND(LEAST(?, ? * POW(2, LEAST(failures - 1, 40))) * (0.5 + RAND() / 2)) MICROSECOND,
                         next_attempt_at)"
            ),
            // Any answer of a destination ends its backoff.
            up: format!("DELETE d FROM {destinations} AS d JOIN {text_join} ON d.destination = j.v"),
            // Marks settled messages: the relay computed each one's state and attempts (it holds
            // the key, so nothing else changed them); the retry backoff, initial (?) × 2^(attempts
            // - 1) capped at ?, jittered to [1/2, 1] of it, is computed on the database clock.
            mark: format!(
                "UPDATE {outbox} AS o
                 JOIN JSON_TABLE(?, '$[*]' COLUMNS (
                     seq BIGINT PATH '$.s', outcome VARCHAR(1) PATH '$.o', error LONGTEXT PATH '$.e',
                     new_state VARCHAR(7) PATH '$.t', new_attempts INT PATH '$.a'
                 )) AS f ON o.sequence = f.seq
                 SET o.state = f.new_state,
                     o.sent_at = IF(f.outcome = 's', {now}, NULL),
                     o.last_error = IF(f.outcome IN ('f', 'p', 'u', 'm'), f.error, o.last_error),
                     o.next_attempt_at = IF(f.outcome = 'f',
                         {now} + INTERVAL ROUND(LEAST(?, ? * POW(2, LEAST(GREATEST(f.new_attempts - 1, 0), 40))) * (0.5 + RAND() / 2)) MICROSECOND,
                         o.next_attempt_at),
                     o.attempts = f.new_attempts,
                     o.lease_owner = NULL,
                     o.lease_expires_at = NULL"
            ),
            // Parameters: the heads, the lease in µs, the owner.
            renew: format!(
                "UPDATE {outbox} AS o JOIN {int_join} ON o.sequence = j.v
                 SET o.lease_expires_at = {now} + INTERVAL ? MICROSECOND
                 WHERE o.lease_owner = ? AND o.state = 'pending'"
            ),
            renewed: format!(
                "SELECT sequence FROM {outbox}
                 WHERE sequence IN ({int_list}) AND lease_owner = ? AND state = 'pending'"
            ),
            // Without retention, sent messages are deleted at once instead of marked.
            delete_sent: format!("DELETE o FROM {outbox} AS o JOIN {int_join} ON o.sequence = j.v"),
            release_all: format!(
                "UPDATE {outbox} SET lease_owner = NULL, lease_expires_at = NULL, attempts = GREATEST(attempts - 1, 0)
                 WHERE lease_owner = ? AND state = 'pending'"
            ),
            cleanup: format!(
                "DELETE FROM {outbox}
                 WHERE state = 'sent' AND sent_at < {now} - INTERVAL ? MICROSECOND
                 ORDER BY sent_at LIMIT ?"
            ),
            forget_destinations: format!(
                "DELETE FROM {destinations}
                 WHERE NOT EXISTS (
                     SELECT 1 FROM {outbox} AS o
                     WHERE o.state = 'pending' AND o.destination = {destinations}.destination
                 )"
            ),
            stats: format!(
                "SELECT COUNT(*), COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(created_at), {now}) / 1e6, 0)
                 FROM {outbox} WHERE state = 'pending'"
            ),
            outbox,
            key_locks,
            destinations,
            migrations,
        })
    }

    /// The statement locking these buckets' rows (sorted and deduplicated by the caller) until
    /// the transaction ends. A literal list: the primary key's ranges are read, and locked, in
    /// ascending order.
    pub(crate) fn lock_buckets(&self, buckets: &[u32]) -> String {
        let list: Vec<String> = buckets.iter().map(u32::to_string).collect();
        format!(
            "SELECT bucket FROM {} WHERE bucket IN ({}) ORDER BY bucket FOR UPDATE",
            self.key_locks,
            list.join(", ")
        )
    }

    /// The migration with these names.
    pub(crate) fn migration_sql(&self) -> String {
        MYSQL_OUTBOX_MIGRATION
            .replace("{outbox_destinations}", &self.destinations)
            .replace("{outbox_key_locks}", &self.key_locks)
            .replace("{outbox}", &self.outbox)
    }

    /// Applies the schema when it is missing, under a named lock (one migrating session at a
    /// time), and records the version; refuses a database with a newer version than this one
    /// knows. DDL commits implicitly in MySQL: every statement is idempotent, so a failed run
    /// is simply run again.
    pub(crate) async fn migrate(&self, conn: &mut mysql_async::Conn) -> Result<(), OutboxError> {
        let lock = format!("eventrail_outbox_migrate {}", self.outbox);
        let got: Option<Option<i64>> = conn
            .exec_first("SELECT GET_LOCK(?, 60)", (lock.as_str(),))
            .await
            .map_err(db)?;
        if got.flatten() != Some(1) {
            return Err(OutboxError::Migration(MigrationError::Locked {
                pid: None,
                application_name: None,
            }));
        }
        let result = self.migrate_locked(conn).await;
        let released = conn
            .exec_drop("SELECT RELEASE_LOCK(?)", (lock.as_str(),))
            .await
            .map_err(db);
        result.and(released)
    }

    async fn migrate_locked(&self, conn: &mut mysql_async::Conn) -> Result<(), OutboxError> {
        let m = &self.migrations;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {m} (
                 version    BIGINT       NOT NULL PRIMARY KEY,
                 applied_at DATETIME(6)  NOT NULL
             ) ENGINE = InnoDB"
        ))
        .await
        .map_err(db)?;
        let applied: Option<Option<i64>> = conn
            .query_first(format!("SELECT MAX(version) FROM {m}"))
            .await
            .map_err(db)?;
        let applied = applied.flatten().unwrap_or(0);
        if applied > VERSION {
            return Err(OutboxError::Migration(MigrationError::UnknownMigration {
                version: i32::try_from(applied).unwrap_or(i32::MAX),
                name: format!("mysql outbox schema {applied}"),
            }));
        }
        if applied == VERSION {
            return Ok(());
        }
        for statement in statements(&self.migration_sql()) {
            conn.query_drop(statement).await.map_err(db)?;
        }
        conn.exec_drop(
            format!("INSERT IGNORE INTO {m} (version, applied_at) VALUES (?, UTC_TIMESTAMP(6))"),
            (VERSION,),
        )
        .await
        .map_err(db)
    }
}

/// The statements of a migration: comments dropped, split at the semicolons ending lines.
fn statements(sql: &str) -> Vec<String> {
    let code: String = sql
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(";\n")
        .map(|s| s.trim().trim_end_matches(';').trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_fixed() {
        // FNV-1a test vectors: the buckets must never change.
        assert_eq!(bucket(""), 0x811c_9dc5 % BUCKETS);
        assert_eq!(bucket("a"), 0xe40c_292c % BUCKETS);
        assert_eq!(bucket("foobar"), 0xbf9c_f968 % BUCKETS);
        assert_ne!(bucket("k"), bucket("k "));
    }

    #[test]
    fn names_are_validated_and_quoted() {
        let t = MySqlTables::new(&OutboxTables::default()).unwrap();
        assert_eq!(t.outbox, "`outbox`");
        assert_eq!(t.key_locks, "`outbox_key_locks`");
        assert_eq!(t.destinations, "`outbox_destinations`");
        let sql = t.migration_sql();
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS `outbox` ("));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS `outbox_key_locks` ("));
        assert!(!sql.contains('{'), "every placeholder replaced");
        assert_eq!(statements(&sql).len(), 4);
        let ops = MySqlTables::new(&OutboxTables {
            outbox: "ops.messages".into(),
            ..OutboxTables::default()
        })
        .unwrap();
        assert_eq!(ops.outbox, "`ops`.`messages`");
        assert_eq!(ops.key_locks, "`ops`.`messages_key_locks`");
        for bad in [
            "a.b.c",
            "x;drop",
            "Ops.outbox",
            ".outbox",
            "ops.",
            "o`x",
            &"x".repeat(60),
        ] {
            let names = OutboxTables {
                outbox: bad.into(),
                ..OutboxTables::default()
            };
            assert!(MySqlTables::new(&names).is_err(), "{bad}");
        }
    }
}
