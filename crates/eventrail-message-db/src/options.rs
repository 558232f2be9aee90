use crate::InvalidArgument;

/// Message DB's largest consumer group: `get_category_messages` casts the size to `smallint`.
pub const MAX_CONSUMER_GROUP_SIZE: u64 = i16::MAX as u64;

pub(crate) fn to_bigint(what: &'static str, value: u64) -> Result<i64, InvalidArgument> {
    i64::try_from(value).map_err(|_| InvalidArgument::OutOfRange { what, value })
}

/// Settings of a [`MessageDb`](crate::MessageDb) client, as a consuming builder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct MessageDbOptions {
    pub(crate) sql_condition: bool,
}

impl MessageDbOptions {
    /// Defaults: SQL conditions off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns on `message_store.sql_condition` for the reads that carry a condition, so that
    /// conditions work without server configuration. Message DB keeps conditions off by default
    /// because a condition is SQL text placed into its query: only pass conditions you wrote,
    /// never user input.
    pub fn sql_condition(mut self, on: bool) -> Self {
        self.sql_condition = on;
        self
    }
}

/// How many messages one read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BatchSize {
    /// At most this many (Message DB's default is 1,000).
    Limit(u64),
    /// Every message from the position on (Message DB's `-1`).
    Unlimited,
}

impl BatchSize {
    pub(crate) fn to_sql(self) -> Result<i64, InvalidArgument> {
        match self {
            Self::Unlimited => Ok(-1),
            Self::Limit(0) => Err(InvalidArgument::ZeroBatchSize),
            Self::Limit(n) => to_bigint("batch size", n),
        }
    }
}

/// Options of [`get_stream_messages`](crate::MessageDb::get_stream_messages): position (default
/// 0), batch size (default 1,000), condition (default none).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct StreamReadOptions {
    pub(crate) position: u64,
    pub(crate) batch_size: BatchSize,
    pub(crate) condition: Option<String>,
}

impl Default for StreamReadOptions {
    fn default() -> Self {
        Self {
            position: 0,
            batch_size: BatchSize::Limit(1000),
            condition: None,
        }
    }
}

impl StreamReadOptions {
    /// Message DB's defaults: from position 0, 1,000 messages, no condition.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream position to read from (inclusive).
    pub fn position(mut self, position: u64) -> Self {
        self.position = position;
        self
    }

    /// At most `n` messages; zero is refused when the read runs.
    pub fn batch_size(mut self, n: u64) -> Self {
        self.batch_size = BatchSize::Limit(n);
        self
    }

    /// Every message from the position on.
    pub fn unlimited(mut self) -> Self {
        self.batch_size = BatchSize::Unlimited;
        self
    }

    /// A SQL condition on the `messages` table's columns, for example `type = 'Deposited'`.
    /// Needs `message_store.sql_condition` on (see
    /// [`MessageDbOptions::sql_condition`](crate::MessageDbOptions::sql_condition)). It is SQL
    /// placed into Message DB's query: never build it from user input.
    pub fn condition(mut self, condition: impl Into<String>) -> Self {
        self.condition = Some(condition.into());
        self
    }

    pub(crate) fn to_sql(&self) -> Result<(i64, i64), InvalidArgument> {
        Ok((
            to_bigint("position", self.position)?,
            self.batch_size.to_sql()?,
        ))
    }
}

/// Options of [`get_category_messages`](crate::MessageDb::get_category_messages): global position
/// (default 1), batch size (default 1,000), correlation, consumer group, condition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct CategoryReadOptions {
    pub(crate) position: u64,
    pub(crate) batch_size: BatchSize,
    pub(crate) filter: CategoryFilter,
}

impl Default for CategoryReadOptions {
    fn default() -> Self {
        Self {
            position: 1,
            batch_size: BatchSize::Limit(1000),
            filter: CategoryFilter::default(),
        }
    }
}

/// The filters of a category read: correlation, consumer group, condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct CategoryFilter {
    pub(crate) correlation: Option<String>,
    pub(crate) consumer_group: Option<(u64, u64)>,
    pub(crate) condition: Option<String>,
}

/// A category filter checked and converted for the call.
pub(crate) struct SqlFilter<'a> {
    pub(crate) correlation: Option<&'a str>,
    pub(crate) member: Option<i64>,
    pub(crate) size: Option<i64>,
    pub(crate) condition: Option<&'a str>,
}

impl CategoryFilter {
    /// No filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only messages whose metadata's `correlationStreamName` is in this category (a category,
    /// not a stream name; checked when the read runs).
    pub fn correlation(mut self, category: impl Into<String>) -> Self {
        self.correlation = Some(category.into());
        self
    }

    /// Only the streams of consumer group member `member` (0-based) of `size` members: each
    /// stream goes to exactly one member, by the hash of its cardinal id. `0 <= member < size <=
    /// 32767`, checked when the read runs.
    pub fn consumer_group(mut self, member: u64, size: u64) -> Self {
        self.consumer_group = Some((member, size));
        self
    }

    /// A SQL condition; see [`StreamReadOptions::condition`] for the rules.
    pub fn condition(mut self, condition: impl Into<String>) -> Self {
        self.condition = Some(condition.into());
        self
    }

    pub(crate) fn to_sql(&self) -> Result<SqlFilter<'_>, InvalidArgument> {
        if let Some(correlation) = &self.correlation
            && correlation.contains('-')
        {
            return Err(InvalidArgument::CorrelationNotACategory(
                correlation.clone(),
            ));
        }
        let (member, size) = match self.consumer_group {
            None => (None, None),
            Some((member, size)) => {
                let refuse = |reason| InvalidArgument::ConsumerGroup {
                    member,
                    size,
                    reason,
                };
                if size == 0 {
                    return Err(refuse("the size must be at least 1"));
                }
                if size > MAX_CONSUMER_GROUP_SIZE {
                    return Err(refuse("Message DB takes at most 32767 members"));
                }
                if member >= size {
                    return Err(refuse("the member must be less than the size"));
                }
                // Both fit: size <= 32767 and member < size.
                (
                    Some(i64::try_from(member).unwrap_or(i64::MAX)),
                    Some(i64::try_from(size).unwrap_or(i64::MAX)),
                )
            }
        };
        Ok(SqlFilter {
            correlation: self.correlation.as_deref(),
            member,
            size,
            condition: self.condition.as_deref(),
        })
    }
}

impl CategoryReadOptions {
    /// Message DB's defaults: from global position 1, 1,000 messages, no filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The global position to read from (inclusive).
    pub fn position(mut self, position: u64) -> Self {
        self.position = position;
        self
    }

    /// At most `n` messages; zero is refused when the read runs.
    pub fn batch_size(mut self, n: u64) -> Self {
        self.batch_size = BatchSize::Limit(n);
        self
    }

    /// Every message from the position on.
    pub fn unlimited(mut self) -> Self {
        self.batch_size = BatchSize::Unlimited;
        self
    }

    /// Only messages correlated to this category; see [`CategoryFilter::correlation`].
    pub fn correlation(mut self, category: impl Into<String>) -> Self {
        self.filter = self.filter.correlation(category);
        self
    }

    /// Only consumer group member `member` of `size`; see [`CategoryFilter::consumer_group`].
    pub fn consumer_group(mut self, member: u64, size: u64) -> Self {
        self.filter = self.filter.consumer_group(member, size);
        self
    }

    /// A SQL condition; see [`StreamReadOptions::condition`] for the rules.
    pub fn condition(mut self, condition: impl Into<String>) -> Self {
        self.filter = self.filter.condition(condition);
        self
    }

    /// The filters alone.
    pub fn filter(mut self, filter: CategoryFilter) -> Self {
        self.filter = filter;
        self
    }
}

/// One of the summary views Message DB installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SummaryView {
    /// `stream_summary`: messages per stream.
    Stream,
    /// `type_summary`: messages per type.
    Type,
    /// `stream_type_summary`: messages per stream and type.
    StreamType,
    /// `type_stream_summary`: messages per type and stream.
    TypeStream,
    /// `category_type_summary`: messages per category and type.
    CategoryType,
    /// `type_category_summary`: messages per type and category.
    TypeCategory,
}

impl SummaryView {
    /// Every view.
    pub const ALL: [Self; 6] = [
        Self::Stream,
        Self::Type,
        Self::StreamType,
        Self::TypeStream,
        Self::CategoryType,
        Self::TypeCategory,
    ];

    pub(crate) fn sql(self) -> &'static str {
        // Columns in one shape for every view; `percent` is numeric, read as float8.
        match self {
            Self::Stream => {
                "SELECT stream_name::text, NULL::text, NULL::text, message_count::int8, percent::float8 FROM message_store.stream_summary"
            }
            Self::Type => {
                "SELECT NULL::text, NULL::text, type::text, message_count::int8, percent::float8 FROM message_store.type_summary"
            }
            Self::StreamType => {
                "SELECT stream_name::text, NULL::text, type::text, message_count::int8, percent::float8 FROM message_store.stream_type_summary"
            }
            Self::TypeStream => {
                "SELECT stream_name::text, NULL::text, type::text, message_count::int8, percent::float8 FROM message_store.type_stream_summary"
            }
            Self::CategoryType => {
                "SELECT NULL::text, category::text, type::text, message_count::int8, percent::float8 FROM message_store.category_type_summary"
            }
            Self::TypeCategory => {
                "SELECT NULL::text, category::text, type::text, message_count::int8, percent::float8 FROM message_store.type_category_summary"
            }
        }
    }
}

/// A row of a summary view; the columns the view does not have are `None`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SummaryRow {
    /// The stream (stream views).
    pub stream_name: Option<String>,
    /// The category (category views).
    pub category: Option<String>,
    /// The message type (type views).
    pub message_type: Option<String>,
    /// How many messages.
    pub message_count: u64,
    /// Share of all messages, in percent (rounded to two decimals by Message DB).
    pub percent: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_groups_and_sizes() {
        let group = |m, s| {
            CategoryFilter::default()
                .consumer_group(m, s)
                .to_sql()
                .map(|f| (f.member, f.size))
        };
        assert_eq!(group(0, 1).unwrap(), (Some(0), Some(1)));
        assert_eq!(group(32766, 32767).unwrap(), (Some(32766), Some(32767)));
        for (m, s) in [(0, 0), (1, 1), (5, 3), (0, 32768), (u64::MAX, u64::MAX)] {
            assert!(
                matches!(group(m, s), Err(InvalidArgument::ConsumerGroup { .. })),
                "{m}/{s}"
            );
        }
        assert_eq!(
            BatchSize::Limit(0).to_sql(),
            Err(InvalidArgument::ZeroBatchSize)
        );
        assert_eq!(BatchSize::Unlimited.to_sql(), Ok(-1));
        assert!(matches!(
            StreamReadOptions::new().position(u64::MAX).to_sql(),
            Err(InvalidArgument::OutOfRange { .. })
        ));
        let filter = CategoryFilter {
            correlation: Some("saga-1".into()),
            ..CategoryFilter::default()
        };
        assert!(matches!(
            filter.to_sql(),
            Err(InvalidArgument::CorrelationNotACategory(_))
        ));
    }
}
