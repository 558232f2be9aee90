use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    BoxError, Codec, CodecError, DecodeError, EventData, JsonCodec, NewEvent, RecordedEvent,
};

/// A user's event type, usually an enum with one variant per event type.
///
/// ```
/// use eventrail_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// #[serde(tag = "type")]
/// enum Account {
///     Opened { owner: String },
///     Deposited { amount: u64 },
/// }
///
/// impl Event for Account {
///     const EVENT_TYPES: &'static [&'static str] = &["Opened", "Deposited"];
///     fn event_type(&self) -> &'static str {
///         match self {
///             Self::Opened { .. } => "Opened",
///             Self::Deposited { .. } => "Deposited",
///         }
///     }
/// }
/// ```
///
/// With [`JsonCodec`] an internally tagged enum (`#[serde(tag = "type")]`) stores flat, queryable
/// JSON. Binary codecs need serde's default (external) tagging.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Every event type name this type can decode.
    const EVENT_TYPES: &'static [&'static str];

    /// The stored event type name of this value; one of [`Event::EVENT_TYPES`].
    fn event_type(&self) -> &'static str;
}

/// Turns data written with schema version `n` into data of version `n + 1`.
pub type Upcaster = Box<dyn Fn(EventData) -> Result<EventData, BoxError> + Send + Sync>;

/// Maps a user's [`Event`] type to stored events and back, with schema versions and upcasters.
///
/// ```
/// # use eventrail_core::{Event, EventRegistry, EventData, RecordedEvent};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// # #[serde(tag = "type")]
/// # enum Account { Deposited { cents: u64 } }
/// # impl Event for Account {
/// #     const EVENT_TYPES: &'static [&'static str] = &["Deposited"];
/// #     fn event_type(&self) -> &'static str { "Deposited" }
/// # }
/// // Version 1 stored whole units in `amount`; version 2 stores `cents`.
/// let registry = EventRegistry::<Account>::new()
///     .current_version("Deposited", 2)
///     .upcaster("Deposited", 1, |data| match data {
///         EventData::Json(json) => {
///             let mut v = json.into_value()?;
///             let amount = v["amount"].as_u64().ok_or("amount missing")?;
///             v["cents"] = (amount * 100).into();
///             Ok(EventData::json(v))
///         }
///         EventData::Binary(_) => Err("binary data".into()),
///     });
/// let new = registry.encode(&Account::Deposited { cents: 5 })?;
/// assert_eq!(new.schema_version, 2);
/// # Ok::<(), eventrail_core::CodecError>(())
/// ```
pub struct EventRegistry<E, C = JsonCodec> {
    codec: C,
    versions: HashMap<String, u32>,
    upcasters: HashMap<(String, u32), Upcaster>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event> EventRegistry<E, JsonCodec> {
    /// A registry using the JSON codec; every type at schema version 1.
    #[must_use]
    pub fn new() -> Self {
        Self::with_codec(JsonCodec)
    }
}

impl<E: Event> Default for EventRegistry<E, JsonCodec> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E, C> fmt::Debug for EventRegistry<E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRegistry")
            .field("event", &std::any::type_name::<E>())
            .field("versions", &self.versions)
            .field("upcasters", &self.upcasters.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<E: Event, C: Codec> EventRegistry<E, C> {
    /// A registry using `codec`.
    #[must_use]
    pub fn with_codec(codec: C) -> Self {
        Self {
            codec,
            versions: HashMap::new(),
            upcasters: HashMap::new(),
            _event: PhantomData,
        }
    }

    /// Declares the current schema version of `event_type` (1 when not declared).
    #[must_use]
    pub fn current_version(mut self, event_type: &str, version: u32) -> Self {
        self.versions.insert(event_type.to_owned(), version.max(1));
        self
    }

    /// Registers the upcaster from `from_version` to `from_version + 1` of `event_type`.
    #[must_use]
    pub fn upcaster(
        mut self,
        event_type: &str,
        from_version: u32,
        upcast: impl Fn(EventData) -> Result<EventData, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.upcasters
            .insert((event_type.to_owned(), from_version), Box::new(upcast));
        self
    }

    fn version_of(&self, event_type: &str) -> u32 {
        self.versions.get(event_type).copied().unwrap_or(1)
    }

    /// Encodes a value as a [`NewEvent`] at its type's current schema version.
    ///
    /// # Errors
    /// [`CodecError`] when the value cannot be serialised.
    pub fn encode(&self, event: &E) -> Result<NewEvent, CodecError> {
        let event_type = event.event_type();
        Ok(NewEvent::new(event_type, self.codec.encode(event)?)
            .with_schema_version(self.version_of(event_type)))
    }

    /// Encodes several values.
    ///
    /// # Errors
    /// [`CodecError`] when a value cannot be serialised.
    pub fn encode_all<'a>(
        &self,
        events: impl IntoIterator<Item = &'a E>,
    ) -> Result<Vec<NewEvent>, CodecError> {
        events.into_iter().map(|e| self.encode(e)).collect()
    }

    /// Decodes a stored event, upcasting old schema versions first.
    ///
    /// # Errors
    /// [`DecodeError::UnknownEventType`] for a type not in [`Event::EVENT_TYPES`],
    /// [`DecodeError::UnsupportedSchemaVersion`] for data newer than this program,
    /// [`DecodeError::Upcast`] when an upcaster is missing or fails, and
    /// [`DecodeError::Codec`] when the data does not match.
    pub fn decode(&self, event: &RecordedEvent) -> Result<E, DecodeError> {
        let event_type = event.event_type.as_str();
        if !E::EVENT_TYPES.contains(&event_type) {
            return Err(DecodeError::UnknownEventType {
                event_type: event_type.to_owned(),
            });
        }
        let current = self.version_of(event_type);
        if event.schema_version > current {
            return Err(DecodeError::UnsupportedSchemaVersion {
                event_type: event_type.to_owned(),
                found: event.schema_version,
                current,
            });
        }
        let mut data = event.data.clone();
        for from in event.schema_version..current {
            let upcast_error = |source: BoxError| DecodeError::Upcast {
                event_type: event_type.to_owned(),
                from,
                source,
            };
            let upcaster = self
                .upcasters
                .get(&(event_type.to_owned(), from))
                .ok_or_else(|| upcast_error("no upcaster registered".into()))?;
            data = upcaster(data).map_err(upcast_error)?;
        }
        self.codec
            .decode(&data)
            .map_err(|source| DecodeError::Codec {
                event_type: event_type.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde::Deserialize;
    use uuid::Uuid;

    use super::*;
    use crate::Metadata;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    enum Account {
        Opened { owner: String },
        Deposited { cents: u64 },
    }

    impl Event for Account {
        const EVENT_TYPES: &'static [&'static str] = &["Opened", "Deposited"];
        fn event_type(&self) -> &'static str {
            match self {
                Self::Opened { .. } => "Opened",
                Self::Deposited { .. } => "Deposited",
            }
        }
    }

    fn recorded(event_type: &str, schema_version: u32, data: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            id: Uuid::now_v7(),
            stream: "account-1".parse().unwrap(),
            stream_version: 0,
            global_position: 1,
            event_type: event_type.into(),
            schema_version,
            data: EventData::json(data),
            metadata: Metadata::default(),
            recorded_at: SystemTime::now(),
            transaction_id: 1,
        }
    }

    fn registry() -> EventRegistry<Account> {
        EventRegistry::new()
            .current_version("Deposited", 3)
            .upcaster("Deposited", 1, |data| match data {
                EventData::Json(json) => {
                    let mut v = json.into_value()?;
                    let units = v["amount"].as_u64().ok_or("amount missing")?;
                    v["units"] = units.into();
                    Ok(EventData::json(v))
                }
                EventData::Binary(_) => Err("binary".into()),
            })
            .upcaster("Deposited", 2, |data| match data {
                EventData::Json(json) => {
                    let mut v = json.into_value()?;
                    let units = v["units"].as_u64().ok_or("units missing")?;
                    v["cents"] = (units * 100).into();
                    Ok(EventData::json(v))
                }
                EventData::Binary(_) => Err("binary".into()),
            })
    }

    #[test]
    fn round_trip_at_current_version() {
        let r = registry();
        let new = r.encode(&Account::Deposited { cents: 7 }).unwrap();
        assert_eq!(
            (new.event_type.as_str(), new.schema_version),
            ("Deposited", 3)
        );
        let EventData::Json(data) = new.data else {
            panic!("json codec")
        };
        let data = data.into_value().unwrap();
        let back = r.decode(&recorded("Deposited", 3, data)).unwrap();
        assert_eq!(back, Account::Deposited { cents: 7 });
    }

    #[test]
    fn upcasts_through_every_version() {
        let old = recorded(
            "Deposited",
            1,
            serde_json::json!({"type": "Deposited", "amount": 4}),
        );
        assert_eq!(
            registry().decode(&old).unwrap(),
            Account::Deposited { cents: 400 }
        );
    }

    #[test]
    fn typed_decode_errors() {
        let r = registry();
        assert!(matches!(
            r.decode(&recorded("Closed", 1, serde_json::json!({}))),
            Err(DecodeError::UnknownEventType { .. })
        ));
        assert!(matches!(
            r.decode(&recorded("Deposited", 4, serde_json::json!({}))),
            Err(DecodeError::UnsupportedSchemaVersion {
                found: 4,
                current: 3,
                ..
            })
        ));
        assert!(matches!(
            r.decode(&recorded(
                "Deposited",
                1,
                serde_json::json!({"type": "Deposited"})
            )),
            Err(DecodeError::Upcast { from: 1, .. })
        ));
        assert!(matches!(
            r.decode(&recorded(
                "Opened",
                1,
                serde_json::json!({"type": "Opened"})
            )),
            Err(DecodeError::Codec { .. })
        ));
        let no_upcaster = EventRegistry::<Account>::new().current_version("Opened", 2);
        assert!(matches!(
            no_upcaster.decode(&recorded(
                "Opened",
                1,
                serde_json::json!({"type": "Opened", "owner": "a"})
            )),
            Err(DecodeError::Upcast { from: 1, .. })
        ));
    }
}
