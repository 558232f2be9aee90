//! Row ↔ Rust conversions shared by every read.

use std::time::SystemTime;

use eventrail_core::{EventData, JsonData, Metadata, RecordedEvent, StoreError, StreamName};
use postgres_types::Json;
use tokio_postgres::Row;
use uuid::Uuid;

/// The columns every event read selects, in the order [`recorded_event`] expects.
pub(crate) const EVENT_COLUMNS: &str = "global_position, stream_name, stream_version, event_id, \
    event_type, schema_version, data, data_binary, metadata, recorded_at, transaction_id::text";

pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::InvalidRequest(format!("{what} {value} is out of range")))
}

pub(crate) use crate::from_sql_int as to_u64;

pub(crate) fn parse_xid(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::backend(format!("unexpected transaction id {text:?}")))
}

pub(crate) fn recorded_event(row: &Row) -> Result<RecordedEvent, StoreError> {
    // The position is a NOT NULL bigint: reading it fails only on a broken query. Whatever fails
    // after it is the row's content, named by its position, so a subscriber can park at it.
    let global_position = to_u64(row.try_get(0).map_err(StoreError::backend)?);
    let undecodable = |source: eventrail_core::BoxError| StoreError::Decode {
        position: global_position,
        source,
    };
    let stream: &str = row.try_get(1).map_err(|e| undecodable(e.into()))?;
    let stream: StreamName = stream.parse().map_err(|e| undecodable(Box::new(e)))?;
    let data: Option<JsonColumn> = row.try_get(6).map_err(|e| undecodable(e.into()))?;
    let data = match data {
        Some(JsonColumn(json)) => EventData::Json(json),
        None => EventData::Binary(
            row.try_get::<_, Option<Vec<u8>>>(7)
                .map_err(|e| undecodable(e.into()))?
                .unwrap_or_default(),
        ),
    };
    let MetadataColumn(metadata) = row.try_get(8).map_err(|e| undecodable(e.into()))?;
    let schema_version: i32 = row.try_get(5).map_err(|e| undecodable(e.into()))?;
    Ok(RecordedEvent {
        global_position,
        stream,
        stream_version: to_u64(row.try_get(2).map_err(|e| undecodable(e.into()))?),
        id: row
            .try_get::<_, Uuid>(3)
            .map_err(|e| undecodable(e.into()))?,
        event_type: row.try_get(4).map_err(|e| undecodable(e.into()))?,
        schema_version: u32::try_from(schema_version).unwrap_or_default(),
        data,
        metadata,
        recorded_at: row
            .try_get::<_, SystemTime>(9)
            .map_err(|e| undecodable(e.into()))?,
        transaction_id: parse_xid(row.try_get(10).map_err(|e| undecodable(e.into()))?)?,
    })
}

/// The JSON text of a `jsonb` (or `json`) value in PostgreSQL's binary form, as bytes.
fn json_bytes<'a>(
    ty: &postgres_types::Type,
    raw: &'a [u8],
) -> Result<&'a [u8], Box<dyn std::error::Error + Sync + Send>> {
    // jsonb's binary form is a version byte (1) followed by the JSON text.
    if *ty != postgres_types::Type::JSONB {
        return Ok(raw);
    }
    match raw.split_first() {
        Some((1, text)) => Ok(text),
        _ => Err("unsupported jsonb binary version".into()),
    }
}

/// The `data` column kept as text: [`JsonData`] parses it when somebody reads the payload, so a
/// consumer that skips the event (or decodes it straight into its own type) never builds a
/// `serde_json::Value` of it.
struct JsonColumn(JsonData);

impl<'a> postgres_types::FromSql<'a> for JsonColumn {
    fn from_sql(
        ty: &postgres_types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(JsonData::from_text(std::str::from_utf8(json_bytes(
            ty, raw,
        )?)?)))
    }

    fn accepts(ty: &postgres_types::Type) -> bool {
        <Json<serde_json::Value> as postgres_types::FromSql<'_>>::accepts(ty)
    }
}

/// A payload as a `jsonb` parameter: text read from the store goes back as it came, without a
/// parse and a serialisation.
#[derive(Debug)]
pub(crate) struct JsonParam<'a>(pub(crate) &'a JsonData);

impl postgres_types::ToSql for JsonParam<'_> {
    fn to_sql(
        &self,
        ty: &postgres_types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0.as_text() {
            Some(text) => {
                if *ty == postgres_types::Type::JSONB {
                    out.extend_from_slice(&[1]);
                }
                out.extend_from_slice(text.as_bytes());
                Ok(postgres_types::IsNull::No)
            }
            None => Json(self.0.value()?).to_sql(ty, out),
        }
    }

    fn accepts(ty: &postgres_types::Type) -> bool {
        <Json<serde_json::Value> as postgres_types::ToSql>::accepts(ty)
    }

    postgres_types::to_sql_checked!();
}

/// The `metadata` column, with a fast path for the common empty object (serde's `flatten` makes
/// even `{}` cost a buffered pass).
struct MetadataColumn(Metadata);

impl<'a> postgres_types::FromSql<'a> for MetadataColumn {
    fn from_sql(
        ty: &postgres_types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // Compared as bytes: the parse below checks the UTF-8 of anything else, once.
        if json_bytes(ty, raw)? == b"{}" {
            return Ok(Self(Metadata::default()));
        }
        let Json(metadata) = Json::<Metadata>::from_sql(ty, raw)?;
        Ok(Self(metadata))
    }

    fn accepts(ty: &postgres_types::Type) -> bool {
        <Json<Metadata> as postgres_types::FromSql<'_>>::accepts(ty)
    }
}

pub(crate) fn recorded_events(rows: &[Row]) -> Result<Vec<RecordedEvent>, StoreError> {
    rows.iter().map(recorded_event).collect()
}
