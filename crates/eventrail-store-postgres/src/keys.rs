//! Every advisory lock class and notification channel eventrail uses, in one place, keyed by
//! schema so that two eventrail schemas in one database never wait for, or wake, each other.
//!
//! Advisory locks take two 32-bit keys: the class says what is locked, the key which one. Keys
//! are `hashtext` of a text that starts with the schema's lock namespace (`<schema>/`), computed
//! by PostgreSQL on both sides: in `append_events` (rendered by the migration) and in the queries
//! of this crate, the worker and the outbox. A hash collision only makes two unrelated holders
//! wait for each other, never lets two holders of one key through.

use md5::Digest;

/// Class of the migration lock (key: `hashtext(<schema>)`).
pub const MIGRATION_LOCK: i32 = 1_701_147_136;
/// Class of the whole-log scope lock, which is also the appender lock: every append holds it
/// (shared) after its transaction id and before a position, so a reader can tell which
/// transactions may still fill a hole (key: `hashtext(<schema>/)`; `0` before migration 7).
pub const SCOPE_ALL_LOCK: i32 = 1_701_147_137;
/// Class of category scope locks (key: `hashtext(<schema>/<category>)`).
pub const SCOPE_CATEGORY_LOCK: i32 = 1_701_147_138;
/// Class of stream locks (key: `hashtext(<schema>/<stream>)`).
pub const STREAM_LOCK: i32 = 1_701_147_139;
/// Class of a worker's identity lock (key: `hashtext(<worker id>)`, a uuid).
pub const WORKER_IDENTITY_LOCK: i32 = 1_701_147_140;
/// Class of worker leadership (key: `hashtext(<qualified checkpoint table>)`).
pub const WORKER_LEADER_LOCK: i32 = 1_701_147_141;
/// Class of outbox partition keys (key: `hashtext(<qualified outbox table>/<partition key>)`).
pub const OUTBOX_KEY_LOCK: i32 = 1_701_147_150;

/// The text every lock key of `schema` starts with.
#[must_use]
pub fn lock_namespace(schema: &str) -> String {
    format!("{schema}/")
}

/// The default notification channel of `purpose` (`events`, `checkpoints`, `outbox`) in
/// `schema`: `<schema>_<purpose>`, which for the default schema `eventrail` is the channel
/// earlier versions used. A name that would pass PostgreSQL's 63 bytes gets a hash of the schema
/// instead.
#[must_use]
pub fn default_channel(schema: &str, purpose: &str) -> String {
    let channel = format!("{schema}_{purpose}");
    if channel.len() <= 63 {
        return channel;
    }
    let hash: String = md5::Md5::digest(schema.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("eventrail_{hash}_{purpose}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_channels_keep_the_old_names_and_stay_within_63_bytes() {
        assert_eq!(default_channel("eventrail", "events"), "eventrail_events");
        assert_eq!(
            default_channel("tenant_a", "checkpoints"),
            "tenant_a_checkpoints"
        );
        let long = "s".repeat(63);
        let channel = default_channel(&long, "checkpoints");
        assert!(
            channel.len() <= 63 && channel.ends_with("_checkpoints"),
            "{channel}"
        );
        assert_ne!(channel, default_channel(&"t".repeat(63), "checkpoints"));
    }
}
