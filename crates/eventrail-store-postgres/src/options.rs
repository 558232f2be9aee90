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

/// Settings of a [`PgEventStore`](crate::PgEventStore), as a consuming builder.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct PgStoreOptions {
    pub(crate) schema: String,
    notify: Notify,
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
