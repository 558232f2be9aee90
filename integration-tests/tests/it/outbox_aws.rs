//! The Amazon SQS and Kinesis sinks against `moto_server` on loopback (127.0.0.1:5000, or
//! `AWS_ENDPOINT_URL`; `scripts/ensure-brokers.sh` starts it). The tests fail when it is
//! unreachable.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use eventrail_outbox::aws_sdk_kinesis::types::ShardIteratorType;
use eventrail_outbox::aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use eventrail_outbox::{
    KinesisSink, NewMessage, SQS_BODY_ENCODING_ATTRIBUTE, SQS_CONTENT_TYPE_ATTRIBUTE,
    SQS_MESSAGE_ID_ATTRIBUTE, SQS_PARTITION_KEY_ATTRIBUTE, Sink, SqsSink, aws_sdk_kinesis,
    aws_sdk_sqs,
};
use uuid::Uuid;

use crate::harness::{TestDb, eventually};
use crate::outbox::{claimed, enqueue, relay_all};

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

fn sqs() -> aws_sdk_sqs::Client {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .build(),
    )
}

fn kinesis() -> aws_sdk_kinesis::Client {
    use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .build(),
    )
}

/// Message `i`: key `key-{i % 3}`, a header `n`, and a payload that is JSON text for even `i`
/// and bytes that are not UTF-8 for odd `i`.
fn message(destination: &str, i: u8) -> NewMessage {
    let message = if i.is_multiple_of(2) {
        NewMessage::json(
            destination,
            format!("key-{}", i % 3),
            &serde_json::json!({ "n": i }),
        )
    } else {
        NewMessage::new(destination, format!("key-{}", i % 3), vec![0xff, i])
    };
    message.header("n", i.to_string())
}

#[tokio::test]
async fn sqs_fifo_sink_orders_by_group_and_deduplicates_by_message_id() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = SqsSink::new(sqs());
    let name = format!("outbox-test-{}.fifo", Uuid::now_v7().simple());
    let url = sink
        .client()
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .context("moto_server (SQS) must be running for this test")?
        .queue_url
        .context("queue url")?;
    let messages: Vec<NewMessage> = (0..20).map(|i| message(&name, i)).collect();
    let ids = enqueue(&db, messages.clone()).await?;
    relay_all(&db, sink.clone(), 20).await?;

    // A republish after a crash before the mark is dropped by the FIFO deduplication id.
    sink.publish(&claimed(&messages[0], 1)).await?;

    let mut seen: Vec<usize> = Vec::new();
    let mut groups: HashMap<usize, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < 20 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {seen:?} of 20 messages received from the FIFO queue"
        );
        let received = sink
            .client()
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
            .send()
            .await?;
        for m in received.messages() {
            let attribute = |name: &str| {
                m.message_attributes()
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.string_value())
                    .map(str::to_owned)
            };
            let n: usize = attribute("n").context("header n")?.parse()?;
            let id: Uuid = attribute(SQS_MESSAGE_ID_ATTRIBUTE).context("id")?.parse()?;
            assert_eq!(id, ids[n]);
            assert_eq!(
                attribute(SQS_PARTITION_KEY_ATTRIBUTE),
                Some(format!("key-{}", n % 3))
            );
            assert_eq!(
                attribute(SQS_CONTENT_TYPE_ATTRIBUTE).as_deref(),
                Some(messages[n].content_type.as_str())
            );
            let system = m.attributes().context("system attributes")?;
            assert_eq!(
                system.get(&MessageSystemAttributeName::MessageDeduplicationId),
                Some(&id.to_string())
            );
            let body = m.body().context("body")?;
            if n.is_multiple_of(2) {
                assert_eq!(body.as_bytes(), messages[n].payload);
                assert_eq!(attribute(SQS_BODY_ENCODING_ATTRIBUTE), None);
            } else {
                assert_eq!(
                    attribute(SQS_BODY_ENCODING_ATTRIBUTE).as_deref(),
                    Some("base64")
                );
                assert_eq!(aws_smithy_types::base64::decode(body)?, messages[n].payload);
            }
            let group = system
                .get(&MessageSystemAttributeName::MessageGroupId)
                .context("group id")?;
            groups.insert(n, group.clone());
            seen.push(n);
            sink.client()
                .delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().context("receipt")?)
                .send()
                .await?;
        }
    }
    let rest = sink
        .client()
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(1)
        .send()
        .await?;
    assert!(
        rest.messages().is_empty(),
        "the republished message was not dropped"
    );
    for key in 0..3 {
        let order: Vec<usize> = seen.iter().copied().filter(|n| n % 3 == key).collect();
        assert!(order.is_sorted(), "key-{key}: {order:?}");
        assert!(order.iter().all(|n| groups[n] == format!("key-{key}")));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>(), "each message once");
    sink.client().delete_queue().queue_url(&url).send().await?;
    Ok(())
}

#[tokio::test]
async fn sqs_standard_queue_by_url_and_error_classification() -> anyhow::Result<()> {
    let sink = SqsSink::new(sqs());
    let name = format!("outbox-test-{}", Uuid::now_v7().simple());
    let url = sink
        .client()
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .context("moto_server (SQS) must be running for this test")?
        .queue_url
        .context("queue url")?;
    let message = message(&url, 2);
    sink.publish(&claimed(&message, 1)).await?;
    let received = sink
        .client()
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .send()
        .await?;
    let [m] = received.messages() else {
        anyhow::bail!("expected one message, got {:?}", received.messages());
    };
    assert_eq!(m.body(), Some(r#"{"n":2}"#));
    let group = m
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId));
    assert_eq!(group, None, "no group id on a standard queue");

    // A queue that does not exist (yet) backs its destination off (it may be created, and its
    // messages keep their attempts); a message SQS can never take is dead at once.
    let missing = message_to(&format!("missing-{}", Uuid::now_v7().simple()));
    let error = sink.publish(&claimed(&missing, 1)).await.unwrap_err();
    assert_eq!(
        error.class(),
        eventrail_outbox::FailureClass::DestinationMissing,
        "{error:?}"
    );
    let mut crowded = message_to(&name);
    crowded.headers = (0..11).map(|i| (format!("h{i}"), "v".to_owned())).collect();
    let error = sink.publish(&claimed(&crowded, 1)).await.unwrap_err();
    assert!(error.is_permanent(), "{error:?}");
    sink.client().delete_queue().queue_url(&url).send().await?;
    Ok(())
}

fn message_to(destination: &str) -> NewMessage {
    NewMessage::new(destination, "k", b"x".to_vec())
}

#[tokio::test]
async fn kinesis_sink_keeps_each_partition_key_in_order() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let sink = KinesisSink::new(kinesis());
    let name = format!("outbox-test-{}", Uuid::now_v7().simple());
    sink.client()
        .create_stream()
        .stream_name(&name)
        .shard_count(2)
        .send()
        .await
        .context("moto_server (Kinesis) must be running for this test")?;
    eventually(30, "the stream is active", || async {
        let description = sink
            .client()
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await?;
        Ok(description
            .stream_description_summary()
            .is_some_and(|d| d.stream_status().as_str() == "ACTIVE"))
    })
    .await?;
    let messages: Vec<NewMessage> = (0..20).map(|i| message(&name, i)).collect();
    enqueue(&db, messages.clone()).await?;
    relay_all(&db, sink.clone(), 20).await?;

    let by_payload: BTreeMap<&[u8], usize> = messages
        .iter()
        .enumerate()
        .map(|(n, m)| (m.payload.as_slice(), n))
        .collect();
    let shards = sink
        .client()
        .list_shards()
        .stream_name(&name)
        .send()
        .await?;
    let mut seen = Vec::new();
    for shard in shards.shards() {
        let iterator = sink
            .client()
            .get_shard_iterator()
            .stream_name(&name)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator
            .context("iterator")?;
        let records = sink
            .client()
            .get_records()
            .shard_iterator(iterator)
            .send()
            .await?;
        for record in records.records() {
            let n = by_payload[record.data().as_ref()];
            assert_eq!(
                record.partition_key(),
                Some(format!("key-{}", n % 3).as_str())
            );
            seen.push(n);
        }
    }
    // Records of one shard come back in order, and a key lives on one shard.
    for key in 0..3 {
        let order: Vec<usize> = seen.iter().copied().filter(|n| n % 3 == key).collect();
        assert!(order.is_sorted(), "key-{key}: {order:?}");
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>(), "each message once");

    // A stream that does not exist (yet) backs its destination off.
    let missing = message_to(&format!("missing-{}", Uuid::now_v7().simple()));
    let error = sink.publish(&claimed(&missing, 1)).await.unwrap_err();
    assert_eq!(
        error.class(),
        eventrail_outbox::FailureClass::DestinationMissing,
        "{error:?}"
    );
    sink.client()
        .delete_stream()
        .stream_name(&name)
        .send()
        .await?;
    Ok(())
}
