//! JSON event data that is parsed only when somebody reads it.
//!
//! A store reads `jsonb` as text; a consumer that skips an event (or decodes it straight into its
//! own type) should not pay for building a `serde_json::Value` tree first. [`JsonData`] keeps the
//! text and builds the tree on first use, once.

use std::fmt;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CodecError;

/// A JSON payload: a value, or JSON text read from a store and parsed on first use.
///
/// Build one from a [`serde_json::Value`] (`value.into()`); read it with [`JsonData::value`],
/// [`JsonData::decode`] (straight from the text into your type, without a `Value` in between)
/// or [`JsonData::into_value`]. Reading can fail only on text that is valid JSON for PostgreSQL
/// but not for `serde_json` (nesting deeper than 128 levels, a number beyond `f64`): the error is
/// a [`CodecError`], returned to whoever reads the event, never to the ones that skip it.
#[derive(Clone)]
pub struct JsonData(Repr);

#[derive(Clone)]
enum Repr {
    Value(serde_json::Value),
    /// The text; its tree once parsed (`None` inside: it did not parse).
    Text(Box<str>, OnceLock<Option<serde_json::Value>>),
}

impl JsonData {
    /// JSON text, parsed the first time it is read. It is not checked here: reading it returns
    /// the parse error, and an append of it validates it first.
    pub fn from_text(text: impl Into<Box<str>>) -> Self {
        Self(Repr::Text(text.into(), OnceLock::new()))
    }

    /// The value, parsed now if it was not yet.
    ///
    /// # Errors
    /// [`CodecError::Serde`] when the text does not parse.
    pub fn value(&self) -> Result<&serde_json::Value, CodecError> {
        match &self.0 {
            Repr::Value(value) => Ok(value),
            Repr::Text(text, parsed) => parsed
                .get_or_init(|| serde_json::from_str(text).ok())
                .as_ref()
                .ok_or_else(|| parse_error(text)),
        }
    }

    /// The value, owned.
    ///
    /// # Errors
    /// [`CodecError::Serde`] when the text does not parse.
    pub fn into_value(self) -> Result<serde_json::Value, CodecError> {
        match self.0 {
            Repr::Value(value) => Ok(value),
            Repr::Text(text, mut parsed) => match parsed.take() {
                Some(Some(value)) => Ok(value),
                Some(None) => Err(parse_error(&text)),
                None => serde_json::from_str(&text).map_err(json_error),
            },
        }
    }

    /// Deserialises into `T`: from the text in one pass when it was not parsed yet.
    ///
    /// # Errors
    /// [`CodecError::Serde`] when the data does not match `T` (or does not parse).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        match &self.0 {
            Repr::Value(value) => T::deserialize(value).map_err(json_error),
            Repr::Text(text, parsed) => match parsed.get() {
                Some(Some(value)) => T::deserialize(value).map_err(json_error),
                _ => serde_json::from_str(text).map_err(json_error),
            },
        }
    }

    /// The JSON text, as read or as serialised from the value.
    ///
    /// # Errors
    /// [`CodecError::Serde`] when the value cannot be serialised (a map with non-string keys
    /// cannot come from `serde_json::Value`, so in practice never).
    pub fn to_text(&self) -> Result<std::borrow::Cow<'_, str>, CodecError> {
        match &self.0 {
            Repr::Value(value) => serde_json::to_string(value)
                .map(Into::into)
                .map_err(json_error),
            Repr::Text(text, _) => Ok(std::borrow::Cow::Borrowed(text)),
        }
    }

    /// The text, when this payload was read as text (whether parsed since or not).
    #[must_use]
    pub fn as_text(&self) -> Option<&str> {
        match &self.0 {
            Repr::Value(_) => None,
            Repr::Text(text, _) => Some(text),
        }
    }

    /// Whether the tree has been built (always, for a payload made from a value).
    #[must_use]
    pub fn is_parsed(&self) -> bool {
        match &self.0 {
            Repr::Value(_) => true,
            Repr::Text(_, parsed) => parsed.get().is_some_and(Option::is_some),
        }
    }
}

fn json_error(e: serde_json::Error) -> CodecError {
    CodecError::Serde {
        codec: "json",
        source: e.into(),
    }
}

/// The parse error of `text` (parsed again: errors are not cloneable, and this path is rare).
fn parse_error(text: &str) -> CodecError {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(e) => json_error(e),
        Ok(_) => CodecError::Serde {
            codec: "json",
            source: "JSON text did not parse".into(),
        },
    }
}

impl From<serde_json::Value> for JsonData {
    fn from(value: serde_json::Value) -> Self {
        Self(Repr::Value(value))
    }
}

/// Equal when both parse to the same value; text that does not parse equals the same text.
impl PartialEq for JsonData {
    fn eq(&self, other: &Self) -> bool {
        match (self.value(), other.value()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.as_text().is_some() && self.as_text() == other.as_text(),
        }
    }
}

impl PartialEq<serde_json::Value> for JsonData {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.value().is_ok_and(|value| value == other)
    }
}

// Payloads can hold personal data: Debug shows none of it.
impl fmt::Debug for JsonData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JsonData(..)")
    }
}

impl Serialize for JsonData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value()
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Order {
        sku: String,
        qty: u32,
    }

    #[test]
    fn text_is_parsed_only_when_read_and_once() {
        let data = JsonData::from_text(r#"{"sku": "tea", "qty": 2}"#);
        assert!(!data.is_parsed());
        // Decoding into a type goes straight from the text.
        let order: Order = data.decode().unwrap();
        assert_eq!(
            order,
            Order {
                sku: "tea".into(),
                qty: 2
            }
        );
        assert!(!data.is_parsed());
        assert_eq!(data.value().unwrap()["qty"], 2);
        assert!(data.is_parsed());
        assert_eq!(data.decode::<Order>().unwrap(), order);
        assert_eq!(data, serde_json::json!({"qty": 2, "sku": "tea"}));
        assert_eq!(
            data,
            JsonData::from(serde_json::json!({"qty": 2, "sku": "tea"}))
        );
    }

    #[test]
    fn text_that_does_not_parse_is_an_error_for_its_reader_only() {
        // Valid for PostgreSQL (jsonb nests deeper and holds wider numbers), not for serde_json.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for text in [deep.as_str(), "1e400"] {
            let data = JsonData::from_text(text);
            assert!(matches!(
                data.value(),
                Err(CodecError::Serde { codec: "json", .. })
            ));
            assert!(data.decode::<serde_json::Value>().is_err());
            assert!(data.clone().into_value().is_err());
            assert_eq!(data.to_text().unwrap(), text);
            assert_eq!(data, JsonData::from_text(text));
            assert_ne!(data, JsonData::from_text("[]"));
            assert!(serde_json::to_string(&data).is_err());
        }
    }

    #[test]
    fn values_serialise_as_plain_json() {
        let data = JsonData::from(serde_json::json!({"a": [1, 2]}));
        assert_eq!(data.to_text().unwrap(), r#"{"a":[1,2]}"#);
        assert_eq!(serde_json::to_string(&data).unwrap(), r#"{"a":[1,2]}"#);
        let back: JsonData = serde_json::from_str(r#"{"a":[1,2]}"#).unwrap();
        assert_eq!(back, data);
        assert_eq!(data.into_value().unwrap(), serde_json::json!({"a": [1, 2]}));
    }
}
