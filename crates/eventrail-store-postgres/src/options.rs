use crate::ConfigError;

/// Checks that `value` is a plain lowercase SQL identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes,
/// not starting with `pg_`) and returns it double-quoted, ready to be placed in SQL.
///
/// Names that users can override (schemas, tables, channels, roles) go through this, so they can
/// never carry SQL.
///
/// # Errors
/// [`ConfigError::InvalidIdentifier`] with the reason.
pub fn validate_identifier(what: &'static str, value: &str) -> Result<String, ConfigError> {
    let refuse = |reason| ConfigError::InvalidIdentifier {
        what,
        value: value.to_owned(),
        reason,
    };
    let mut chars = value.chars();
    match chars.next() {
        None => return Err(refuse("it is empty")),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
            return Err(refuse("it must start with a lowercase letter or '_'"));
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(refuse("only lowercase letters, digits and '_' are allowed"));
    }
    if value.len() > 63 {
        return Err(refuse("it is longer than 63 bytes"));
    }
    if value.starts_with("pg_") {
        return Err(refuse("the pg_ prefix is reserved by PostgreSQL"));
    }
    Ok(format!("\"{value}\""))
}

/// A table name, validated and quoted (see [`qualify_table`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QualifiedTable {
    /// `"schema"."table"`.
    pub qualified: String,
    /// `"schema"`.
    pub schema: String,
    /// `table`, bare, as PostgreSQL reports it in errors.
    pub table: String,
}

/// `name` or `schema.name`, each part validated and quoted; an unqualified name goes to
/// `default_schema`. For the worker's and the outbox's configurable table names.
///
/// # Errors
/// [`ConfigError::InvalidIdentifier`] naming `what` for a refused part.
pub fn qualify_table(
    what: &'static str,
    name: &str,
    default_schema: &str,
) -> Result<QualifiedTable, ConfigError> {
    let (schema, table) = name.split_once('.').unwrap_or((default_schema, name));
    let quoted_schema = validate_identifier("schema", schema)?;
    let quoted = validate_identifier(what, table)?;
    Ok(QualifiedTable {
        qualified: format!("{quoted_schema}.{quoted}"),
        schema: quoted_schema,
        table: table.to_owned(),
    })
}

/// A count, position or version read from a `bigint` column: never negative (the schema checks
/// them), 0 if it ever were.
#[must_use]
pub fn from_sql_int(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// A count or limit for a `bigint` parameter, saturating at `i64::MAX`.
#[must_use]
pub fn to_sql_int(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// Settings of a [`PgEventStore`](crate::PgEventStore), as a consuming builder.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct PgStoreOptions {
    pub(crate) schema: String,
    notify: Notify,
    statements: crate::Statements,
}

/// Which channel appends notify.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Notify {
    /// `<schema>_events` (see [`crate::keys::default_channel`]).
    Derived,
    Named(String),
    Off,
}

impl Default for PgStoreOptions {
    fn default() -> Self {
        Self {
            schema: "eventrail".into(),
            notify: Notify::Derived,
            statements: crate::Statements::Cached,
        }
    }
}

impl PgStoreOptions {
    /// Defaults: schema `eventrail`, notify channel `<schema>_events` (`eventrail_events`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema holding the event log (default `eventrail`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The channel of the `pg_notify` hint sent by every append (default `<schema>_events`,
    /// so that two schemas never wake each other's subscribers). A worker on this store listens
    /// on it.
    pub fn notify_channel(mut self, channel: impl Into<String>) -> Self {
        self.notify = Notify::Named(channel.into());
        self
    }

    /// Sends no notification: subscribers then rely on polling alone.
    pub fn without_notify(mut self) -> Self {
        self.notify = Notify::Off;
        self
    }

    /// How the store, and a worker on it, send statements on their pooled connections
    /// (default [`Statements::Cached`](crate::Statements::Cached)); behind PgBouncer in
    /// transaction pooling mode, [`Statements::Unnamed`](crate::Statements::Unnamed).
    pub fn statements(mut self, statements: crate::Statements) -> Self {
        self.statements = statements;
        self
    }

    /// How statements are sent.
    #[must_use]
    pub fn get_statements(&self) -> crate::Statements {
        self.statements
    }

    /// The schema name.
    #[must_use]
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The notify channel, if any.
    #[must_use]
    pub fn channel(&self) -> Option<String> {
        match &self.notify {
            Notify::Derived => Some(crate::keys::default_channel(&self.schema, "events")),
            Notify::Named(channel) => Some(channel.clone()),
            Notify::Off => None,
        }
    }

    pub(crate) fn validate(&self) -> Result<String, ConfigError> {
        let schema = validate_identifier("schema", &self.schema)?;
        if let Some(channel) = self.channel() {
            validate_identifier("notify channel", &channel)?;
        }
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(
            validate_identifier("schema", "eventrail_2").unwrap(),
            "\"eventrail_2\""
        );
        for bad in [
            "",
            "Events",
            "1abc",
            "a-b",
            "a\"b",
            "x; DROP TABLE y",
            "pg_catalog",
            &"a".repeat(64),
        ] {
            assert!(
                validate_identifier("schema", bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    proptest! {
        #[test]
        fn accepted_identifiers_never_need_escaping(s in "\\PC{0,70}") {
            if let Ok(quoted) = validate_identifier("schema", &s) {
                prop_assert_eq!(quoted, format!("\"{s}\""));
                prop_assert!(s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            }
        }
    }
}
