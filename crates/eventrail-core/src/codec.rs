use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{CodecError, EventData};

/// Turns values into [`EventData`] and back.
///
/// [`JsonCodec`] is the default: its data is stored as `jsonb` and can be queried in SQL.
/// `BincodeCodec` (feature `bincode`) is smaller and faster but opaque to SQL.
pub trait Codec: Send + Sync + 'static {
    /// Encodes a value.
    ///
    /// # Errors
    /// [`CodecError::Serde`] when the value cannot be serialised.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<EventData, CodecError>;

    /// Decodes a value.
    ///
    /// # Errors
    /// [`CodecError::WrongDataKind`] when the data was written by another kind of codec,
    /// [`CodecError::Serde`] when it does not match `T`.
    fn decode<T: DeserializeOwned>(&self, data: &EventData) -> Result<T, CodecError>;
}

/// JSON through `serde_json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<EventData, CodecError> {
        serde_json::to_value(value)
            .map(EventData::json)
            .map_err(|e| CodecError::Serde {
                codec: "json",
                source: e.into(),
            })
    }

    fn decode<T: DeserializeOwned>(&self, data: &EventData) -> Result<T, CodecError> {
        match data {
            EventData::Json(json) => json.decode(),
            EventData::Binary(_) => Err(CodecError::WrongDataKind {
                expected: "json",
                found: "binary",
            }),
        }
    }
}

/// bincode 2 (standard configuration) through its serde support.
#[cfg(feature = "bincode")]
#[derive(Debug, Clone, Copy, Default)]
pub struct BincodeCodec;

#[cfg(feature = "bincode")]
use crate::limits::MAX_EVENT_DATA_LEN;

#[cfg(feature = "bincode")]
impl Codec for BincodeCodec {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<EventData, CodecError> {
        bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map(EventData::Binary)
            .map_err(|e| CodecError::Serde {
                codec: "bincode",
                source: e.into(),
            })
    }

    fn decode<T: DeserializeOwned>(&self, data: &EventData) -> Result<T, CodecError> {
        match data {
            EventData::Binary(bytes) => {
                // No valid payload is longer than an event's data may be: a length prefix claiming
                // more is garbage, refused before bincode allocates it (it would abort on one
                // claiming more than the address space).
                let config = bincode::config::standard().with_limit::<MAX_EVENT_DATA_LEN>();
                let (value, read) =
                    bincode::serde::decode_from_slice(bytes, config).map_err(|e| {
                        CodecError::Serde {
                            codec: "bincode",
                            source: e.into(),
                        }
                    })?;
                if read == bytes.len() {
                    Ok(value)
                } else {
                    Err(CodecError::Serde {
                        codec: "bincode",
                        source: format!("{} trailing bytes", bytes.len() - read).into(),
                    })
                }
            }
            EventData::Json(_) => Err(CodecError::WrongDataKind {
                expected: "binary",
                found: "json",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Opened { owner: String, limit: i64 },
        Deposited { amount: u64, note: Option<String> },
        Closed,
    }

    fn sample() -> impl Strategy<Value = Sample> {
        prop_oneof![
            (".*", any::<i64>()).prop_map(|(owner, limit)| Sample::Opened { owner, limit }),
            (any::<u64>(), proptest::option::of(".*"))
                .prop_map(|(amount, note)| Sample::Deposited { amount, note }),
            Just(Sample::Closed),
        ]
    }

    proptest! {
        #[test]
        fn json_round_trips(value in sample()) {
            let data = JsonCodec.encode(&value).unwrap();
            prop_assert_eq!(JsonCodec.decode::<Sample>(&data).unwrap(), value);
        }

        #[cfg(feature = "bincode")]
        #[test]
        fn bincode_round_trips(value in sample()) {
            let data = BincodeCodec.encode(&value).unwrap();
            prop_assert_eq!(BincodeCodec.decode::<Sample>(&data).unwrap(), value);
        }

        #[cfg(feature = "bincode")]
        #[test]
        fn bincode_garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = BincodeCodec.decode::<Sample>(&EventData::Binary(bytes));
        }

        #[test]
        fn json_mismatch_is_an_error(n in any::<i64>()) {
            let data = EventData::json(serde_json::json!(n));
            let is_serde_error = matches!(JsonCodec.decode::<Sample>(&data), Err(CodecError::Serde { .. }));
            prop_assert!(is_serde_error);
        }
    }

    /// A string whose length prefix claims `u64::MAX` bytes (varint marker 253, then the u64).
    #[cfg(feature = "bincode")]
    #[test]
    fn bincode_length_beyond_any_payload_is_an_error_not_an_abort() {
        let mut bytes = vec![253];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        let decoded = BincodeCodec.decode::<String>(&EventData::Binary(bytes));
        assert!(
            matches!(decoded, Err(CodecError::Serde { .. })),
            "{decoded:?}"
        );
    }

    #[test]
    fn wrong_kind_is_typed() {
        let err = JsonCodec
            .decode::<Sample>(&EventData::Binary(vec![1]))
            .unwrap_err();
        assert!(matches!(
            err,
            CodecError::WrongDataKind {
                expected: "json",
                found: "binary"
            }
        ));
    }
}
