//! What an event must satisfy to be appended: everything a later read relies on, checked before
//! the database sees it, so a row that cannot be read back is never written through this API.

use crate::{EventData, Metadata, NewEvent};

/// Longest event type accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 255;

/// Largest payload (JSON text or binary) accepted per event, in bytes. PostgreSQL could store
/// more, but one event this size already dominates a batch and every read of it.
pub const MAX_EVENT_DATA_LEN: usize = 32 * 1024 * 1024;

/// Largest metadata accepted per event, in bytes of JSON text.
pub const MAX_METADATA_LEN: usize = 64 * 1024;

/// The metadata keys [`Metadata`] reads into typed fields; free key/values may not reuse them.
pub const RESERVED_METADATA_KEYS: [&str; 3] = ["correlation_id", "causation_id", "traceparent"];

/// Why an event is refused. Each rule protects a read: a refused event would be stored but could
/// never be decoded, or would be silently changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventRule {
    /// The event type is empty.
    #[error("the event type is empty")]
    EmptyEventType,
    /// The event type is longer than [`MAX_EVENT_TYPE_LEN`] bytes.
    #[error("the event type is {len} bytes, the limit is {MAX_EVENT_TYPE_LEN}")]
    EventTypeTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The event type holds a control character (NUL, newline, escape…).
    #[error("the event type holds the control character {0:?}")]
    ControlCharacterInEventType(char),
    /// The payload is larger than [`MAX_EVENT_DATA_LEN`].
    #[error("the payload is {len} bytes, the limit is {MAX_EVENT_DATA_LEN}")]
    DataTooLarge {
        /// Its size in bytes.
        len: usize,
    },
    /// The metadata is larger than [`MAX_METADATA_LEN`] once encoded.
    #[error("the metadata is {len} bytes, the limit is {MAX_METADATA_LEN}")]
    MetadataTooLarge {
        /// Its size in bytes.
        len: usize,
    },
    /// The JSON text of the payload does not parse (it was made with [`JsonData::from_text`](crate::JsonData::from_text)).
    #[error("the payload is not JSON that serde_json can read")]
    InvalidJson,
    /// A JSON string or key holds U+0000, which PostgreSQL's `jsonb` and `text` cannot store.
    #[error("the {0} holds a NUL character (U+0000), which PostgreSQL cannot store")]
    NulCharacter(&'static str),
    /// A free metadata key repeats a typed field's name (`Metadata::with("correlation_id", ..)`):
    /// set the typed field instead. Stored, it would either shadow the field in silence or make
    /// the event unreadable.
    #[error("metadata key {0:?} is reserved: set the typed field instead")]
    ReservedMetadataKey(String),
}

impl NewEvent {
    /// Checks the event against the rules reads rely on and the documented limits.
    ///
    /// # Errors
    /// The first [`EventRule`] the event breaks.
    pub fn validate(&self) -> Result<(), EventRule> {
        validate_event_type(&self.event_type)?;
        match &self.data {
            EventData::Json(json) => {
                // Text (a payload read back and appended again) is checked as the value it
                // parses to: the rules are the same, whatever the form.
                let value = json.value().map_err(|_| EventRule::InvalidJson)?;
                let walked = walk(value);
                if walked.nul {
                    return Err(EventRule::NulCharacter("payload"));
                }
                // Serialised only when the bound says it might be too large: the exact length
                // costs a full serialisation per event, the bound one walk.
                if walked.max_len > MAX_EVENT_DATA_LEN {
                    let len = json_len(value);
                    if len > MAX_EVENT_DATA_LEN {
                        return Err(EventRule::DataTooLarge { len });
                    }
                }
            }
            EventData::Binary(bytes) if bytes.len() > MAX_EVENT_DATA_LEN => {
                return Err(EventRule::DataTooLarge { len: bytes.len() });
            }
            EventData::Binary(_) => {}
        }
        validate_metadata(&self.metadata)
    }
}

fn validate_event_type(event_type: &str) -> Result<(), EventRule> {
    if event_type.is_empty() {
        return Err(EventRule::EmptyEventType);
    }
    if event_type.len() > MAX_EVENT_TYPE_LEN {
        return Err(EventRule::EventTypeTooLong {
            len: event_type.len(),
        });
    }
    match event_type.chars().find(|c| c.is_control()) {
        Some(c) => Err(EventRule::ControlCharacterInEventType(c)),
        None => Ok(()),
    }
}

fn validate_metadata(metadata: &Metadata) -> Result<(), EventRule> {
    if let Some(key) = metadata
        .extra
        .keys()
        .find(|k| RESERVED_METADATA_KEYS.contains(&k.as_str()))
    {
        return Err(EventRule::ReservedMetadataKey(key.clone()));
    }
    let typed = [
        &metadata.correlation_id,
        &metadata.causation_id,
        &metadata.traceparent,
    ];
    if typed
        .iter()
        .any(|v| v.as_deref().is_some_and(|s| s.contains('\0')))
        || metadata
            .extra
            .iter()
            .any(|(k, v)| k.contains('\0') || walk(v).nul)
    {
        return Err(EventRule::NulCharacter("metadata"));
    }
    if metadata.is_empty() {
        return Ok(());
    }
    let len = serde_json::to_vec(metadata).map_or(usize::MAX, |v| v.len());
    if len > MAX_METADATA_LEN {
        return Err(EventRule::MetadataTooLarge { len });
    }
    Ok(())
}

/// What one walk of a JSON value finds: whether a string or key holds NUL, and an upper bound
/// of its serialised length (every string byte escaped as `\u00XX`; numbers counted exactly, as
/// serde_json's `arbitrary_precision` may make them long).
struct Walked {
    nul: bool,
    max_len: usize,
}

fn walk(value: &serde_json::Value) -> Walked {
    fn text(s: &str) -> usize {
        s.len().saturating_mul(6).saturating_add(2)
    }
    let mut nul = false;
    let mut max_len = 0usize;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        let len = match v {
            serde_json::Value::Null | serde_json::Value::Bool(_) => 5,
            serde_json::Value::Number(n) => json_len(n),
            serde_json::Value::String(s) => {
                nul |= s.contains('\0');
                text(s)
            }
            serde_json::Value::Array(items) => {
                stack.extend(items);
                items.len() + 2
            }
            serde_json::Value::Object(map) => {
                let mut len = map.len() * 2 + 2;
                for (k, v) in map {
                    nul |= k.contains('\0');
                    len = len.saturating_add(text(k));
                    stack.push(v);
                }
                len
            }
        };
        max_len = max_len.saturating_add(len);
    }
    Walked { nul, max_len }
}

/// The JSON text length, counted without building the text.
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_walk_bounds_the_serialised_length_and_finds_nul() {
        for value in [
            json!(null),
            json!({ "a": [1, -2.5e300, "x\u{1}\"y", { "k\\": true }], "": "" }),
            json!([[[]], {}, u64::MAX, i64::MIN, "é€𝄞"]),
            json!("\u{7}".repeat(1000)),
        ] {
            let walked = walk(&value);
            assert!(walked.max_len >= json_len(&value), "{value}");
            assert!(!walked.nul);
        }
        assert!(walk(&json!({ "a": ["ok", "n\u{0}l"] })).nul);
        assert!(walk(&json!({ "k\u{0}": 1 })).nul);
    }

    fn rule(event: &NewEvent) -> Option<EventRule> {
        event.validate().err()
    }

    #[test]
    fn ordinary_events_pass() {
        let e = NewEvent::json("OrderPlaced", json!({ "sku": "tea", "n": [1, 2] })).with_metadata(
            Metadata::default()
                .with_correlation_id("c")
                .with("tenant", 7),
        );
        assert_eq!(rule(&e), None);
        assert_eq!(
            rule(&NewEvent::new("Blob", EventData::Binary(vec![0; 16]))),
            None
        );
    }

    #[test]
    fn event_types_are_checked() {
        assert_eq!(
            rule(&NewEvent::json("", json!({}))),
            Some(EventRule::EmptyEventType)
        );
        assert_eq!(
            rule(&NewEvent::json("x".repeat(256), json!({}))),
            Some(EventRule::EventTypeTooLong { len: 256 })
        );
        assert_eq!(rule(&NewEvent::json("x".repeat(255), json!({}))), None);
        for c in ['\0', '\n', '\u{1b}', '\u{7f}'] {
            assert_eq!(
                rule(&NewEvent::json(format!("A{c}"), json!({}))),
                Some(EventRule::ControlCharacterInEventType(c))
            );
        }
    }

    #[test]
    fn nul_characters_are_refused_wherever_they_hide() {
        for data in [json!("a\0"), json!({ "k\0": 1 }), json!([[{ "x": "\0" }]])] {
            assert_eq!(
                rule(&NewEvent::json("A", data)),
                Some(EventRule::NulCharacter("payload"))
            );
        }
        let meta = Metadata::default().with_causation_id("\0");
        assert_eq!(
            rule(&NewEvent::json("A", json!({})).with_metadata(meta)),
            Some(EventRule::NulCharacter("metadata"))
        );
    }

    #[test]
    fn reserved_metadata_keys_are_refused() {
        for key in RESERVED_METADATA_KEYS {
            let meta = Metadata::default().with(key, 42);
            assert_eq!(
                rule(&NewEvent::json("A", json!({})).with_metadata(meta)),
                Some(EventRule::ReservedMetadataKey(key.to_owned()))
            );
        }
    }

    #[test]
    fn sizes_are_limited() {
        let big = "x".repeat(MAX_EVENT_DATA_LEN);
        assert!(matches!(
            rule(&NewEvent::json("A", json!(big))),
            Some(EventRule::DataTooLarge { len }) if len == MAX_EVENT_DATA_LEN + 2
        ));
        let meta = Metadata::default().with("k", "y".repeat(MAX_METADATA_LEN));
        assert!(matches!(
            rule(&NewEvent::json("A", json!({})).with_metadata(meta)),
            Some(EventRule::MetadataTooLarge { .. })
        ));
    }
}
