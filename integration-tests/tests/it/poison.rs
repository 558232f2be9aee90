//! Rows that cannot be read back: appends refuse what reads rely on, and a row written around the
//! API (raw SQL, an older version, a bug) reads as a typed decode error naming its position.

use eventrail_core::{
    AppendRequest, Codec, CodecError, EventRule, EventStore, ExpectedVersion, JsonCodec, Metadata,
    NewEvent, ReadStreamOptions, StoreError, StreamName,
};
use eventrail_store_postgres::GapWatch;

use crate::harness::TestDb;

fn tick() -> NewEvent {
    NewEvent::json("Tick", serde_json::json!({}))
}

/// Inserts a row the way raw SQL would, returning its position.
async fn raw_insert(db: &TestDb, stream: &str, metadata: &str) -> anyhow::Result<u64> {
    let position: i64 = db
        .client()
        .await?
        .query_one(
            "INSERT INTO eventrail.events (stream_name, stream_version, event_id, event_type, data, metadata)
             VALUES ($1, 0, gen_random_uuid(), 'Raw', '{}', $2::text::jsonb) RETURNING global_position",
            &[&stream, &metadata],
        )
        .await?
        .get(0);
    Ok(u64::try_from(position)?)
}

#[tokio::test]
async fn appends_refuse_metadata_and_types_that_could_not_be_read_back() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let stream: StreamName = "limits-1".parse()?;
    let cases = [
        (
            NewEvent::json("A", serde_json::json!({}))
                .with_metadata(Metadata::default().with("correlation_id", 42)),
            EventRule::ReservedMetadataKey("correlation_id".into()),
        ),
        (
            // Last-wins in jsonb would silently drop one of the two values.
            NewEvent::json("A", serde_json::json!({})).with_metadata(
                Metadata::default()
                    .with_traceparent("00-a")
                    .with("traceparent", "00-b"),
            ),
            EventRule::ReservedMetadataKey("traceparent".into()),
        ),
        (
            NewEvent::json("A\u{7}", serde_json::json!({})),
            EventRule::ControlCharacterInEventType('\u{7}'),
        ),
        (
            NewEvent::json("A", serde_json::json!({ "text": "nul \u{0} inside" })),
            EventRule::NulCharacter("payload"),
        ),
        (
            NewEvent::json("T".repeat(300), serde_json::json!({})),
            EventRule::EventTypeTooLong { len: 300 },
        ),
    ];
    for (event, expected) in cases {
        let refused = store
            .append(AppendRequest::new(
                stream.clone(),
                ExpectedVersion::Any,
                vec![tick(), event],
            ))
            .await;
        match refused {
            Err(StoreError::InvalidEvent { index: 1, rule, .. }) => assert_eq!(rule, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }
    assert_eq!(
        store.stream_version(&stream).await?,
        None,
        "nothing written"
    );
    Ok(())
}

#[tokio::test]
async fn an_undecodable_row_is_a_decode_error_naming_its_position() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let good = store
        .append(AppendRequest::new(
            "poison-1".parse()?,
            ExpectedVersion::Any,
            vec![tick()],
        ))
        .await?
        .last_position();
    let bad_metadata = raw_insert(&db, "poison-2", r#"{"correlation_id": 42}"#).await?;
    let bad_name = raw_insert(&db, "no dash", "{}").await?;

    let read = store
        .read_stream(&"poison-2".parse()?, ReadStreamOptions::default())
        .await;
    assert!(
        matches!(read, Err(StoreError::Decode { position, .. }) if position == bad_metadata),
        "{read:?}"
    );
    let read = store
        .read_safe(&mut GapWatch::new(), 0, 100, None, None)
        .await;
    match read {
        Err(e @ StoreError::Decode { .. }) => {
            assert!(!e.is_retryable(), "retrying cannot help");
            let StoreError::Decode { position, source } = e else {
                unreachable!()
            };
            assert_eq!(position, bad_metadata);
            assert!(!source.to_string().is_empty());
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // Reads that do not reach the row are unaffected, and one past it goes on.
    let before = store
        .read_safe(&mut GapWatch::new(), 0, 1, None, None)
        .await?;
    assert_eq!(before.events.len(), 1);
    assert_eq!(before.events[0].global_position, good);
    let after = store
        .read_safe(&mut GapWatch::new(), bad_metadata, 100, None, None)
        .await;
    assert!(
        matches!(after, Err(StoreError::Decode { position, .. }) if position == bad_name),
        "{after:?}"
    );
    let past = store
        .read_safe(&mut GapWatch::new(), bad_name, 100, None, None)
        .await?;
    assert!(past.events.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_payload_serde_json_cannot_parse_fails_its_reader_not_the_read() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let stream: StreamName = "deep-1".parse()?;
    // jsonb takes 200 levels of nesting and numbers beyond f64; serde_json parses neither.
    store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![tick(), NewEvent::json("Nested", crate::worker::nested(200))],
        ))
        .await?;
    db.client()
        .await?
        .execute(
            "INSERT INTO eventrail.events (stream_name, stream_version, event_id, event_type, data)
             VALUES ('deep-1', 2, gen_random_uuid(), 'Wide', '{\"n\": 1e400}')",
            &[],
        )
        .await?;
    store
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Exact(2),
            vec![tick()],
        ))
        .await?;

    // Reads hand the payloads over unparsed: the stream and the log read whole.
    let read = store
        .read_stream(&stream, ReadStreamOptions::default())
        .await?;
    assert_eq!(read.len(), 4);
    let safe = store
        .read_safe(&mut GapWatch::new(), 0, 100, None, None)
        .await?;
    assert_eq!(safe.events.len(), 4);
    // Whoever reads a payload gets its parse error, typed; the others decode.
    for event in [&read[1], &read[2], &safe.events[1], &safe.events[2]] {
        let decoded = JsonCodec.decode::<serde_json::Value>(&event.data);
        assert!(
            matches!(decoded, Err(CodecError::Serde { codec: "json", .. })),
            "{}: {decoded:?}",
            event.event_type
        );
    }
    for event in [&read[0], &read[3]] {
        assert_eq!(
            JsonCodec.decode::<serde_json::Value>(&event.data)?,
            serde_json::json!({})
        );
    }

    // Appended again as read, the unparseable payload is refused by name, and nothing written.
    let again = store
        .append(AppendRequest::new(
            "deep-2".parse()?,
            ExpectedVersion::Any,
            read.iter()
                .map(|e| NewEvent::new(e.event_type.clone(), e.data.clone()))
                .collect(),
        ))
        .await;
    assert!(
        matches!(
            again,
            Err(StoreError::InvalidEvent {
                index: 1,
                rule: EventRule::InvalidJson,
                ..
            })
        ),
        "{again:?}"
    );
    assert_eq!(store.stream_version(&"deep-2".parse()?).await?, None);
    Ok(())
}

#[tokio::test]
async fn payloads_read_and_appended_again_are_written_as_they_were_read() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let store = db.store();
    let payload = |i: usize| serde_json::json!({ "i": i, "text": format!("caf\u{e9} \"{i}\""), "list": [1.5, null, true] });
    // 40 events go by COPY, 2 by the one-statement append: both write stored text back.
    for (from, to, n) in [("src-1", "dst-1", 40), ("src-2", "dst-2", 2)] {
        store
            .append(AppendRequest::new(
                from.parse()?,
                ExpectedVersion::NoStream,
                (0..n)
                    .map(|i| NewEvent::json("Copied", payload(i)))
                    .collect(),
            ))
            .await?;
        let read = store
            .read_stream(&from.parse()?, ReadStreamOptions::default())
            .await?;
        assert!(read.iter().all(
            |e| matches!(&e.data, eventrail_core::EventData::Json(j) if j.as_text().is_some())
        ));
        store
            .append(AppendRequest::new(
                to.parse()?,
                ExpectedVersion::NoStream,
                read.iter()
                    .map(|e| NewEvent::new(e.event_type.clone(), e.data.clone()))
                    .collect(),
            ))
            .await?;
        let copied = store
            .read_stream(&to.parse()?, ReadStreamOptions::default())
            .await?;
        assert_eq!(copied.len(), n);
        for (i, event) in copied.iter().enumerate() {
            assert_eq!(
                JsonCodec.decode::<serde_json::Value>(&event.data)?,
                payload(i)
            );
        }
    }
    Ok(())
}
