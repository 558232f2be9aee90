use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::StreamNameError;

/// Longest stream name accepted, in bytes (an index key on it must stay small).
const MAX_LEN: usize = 255;

/// A validated stream name in Message DB's grammar: `category-id`.
///
/// The category is everything before the first `-`; it may carry type suffixes after a `:`
/// (`account:command-42`, `account:command+snapshot-42`). The id is everything after the first
/// `-` and may itself contain `-` (UUIDs) or be compound with `+` (`transfer-12+34`, cardinal id
/// `12`).
///
/// ```
/// use eventrail_core::StreamName;
/// let name: StreamName = "account:command-12+34".parse()?;
/// assert_eq!(name.category(), "account:command");
/// assert_eq!(name.category_base(), "account");
/// assert_eq!(name.types().collect::<Vec<_>>(), ["command"]);
/// assert_eq!(name.id(), "12+34");
/// assert_eq!(name.cardinal_id(), "12");
/// assert!("no spaces-1".parse::<StreamName>().is_err());
/// # Ok::<(), eventrail_core::StreamNameError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamName {
    name: String,
    dash: usize,
}

impl StreamName {
    /// Builds `category-id` from its parts, validating both.
    ///
    /// # Errors
    /// [`StreamNameError`] when the category or the id is malformed.
    pub fn new(category: &str, id: &str) -> Result<Self, StreamNameError> {
        format!("{category}-{id}").parse()
    }

    /// The whole name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The category with its type suffixes (`account:command`).
    #[must_use]
    pub fn category(&self) -> &str {
        &self.name[..self.dash]
    }

    /// The category without its type suffixes (`account`).
    #[must_use]
    pub fn category_base(&self) -> &str {
        let category = self.category();
        category.split_once(':').map_or(category, |(base, _)| base)
    }

    /// The category's type suffixes, in order (`account:command+position` → `command`, `position`).
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.category()
            .split_once(':')
            .map(|(_, types)| types.split('+'))
            .into_iter()
            .flatten()
    }

    /// The id: everything after the first `-`.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.name[self.dash + 1..]
    }

    /// The first part of a compound id (`12` in `transfer-12+34`).
    #[must_use]
    pub fn cardinal_id(&self) -> &str {
        let id = self.id();
        id.split_once('+').map_or(id, |(first, _)| first)
    }
}

fn invalid(name: &str, reason: &'static str) -> StreamNameError {
    StreamNameError {
        name: name.to_owned(),
        reason,
    }
}

/// Checks a category (with optional `:type+type` suffixes); shared by [`StreamName`] and [`Category`].
fn validate_category(whole: &str, category: &str) -> Result<(), StreamNameError> {
    let (base, types) = match category.split_once(':') {
        Some((base, types)) => (base, Some(types)),
        None => (category, None),
    };
    if base.is_empty() {
        return Err(invalid(whole, "category is empty"));
    }
    if base.contains('+') {
        return Err(invalid(whole, "category contains '+'"));
    }
    if let Some(types) = types {
        if types.split('+').any(str::is_empty) {
            return Err(invalid(whole, "category has an empty type after ':'"));
        }
        if types.contains(':') {
            return Err(invalid(whole, "category has more than one ':'"));
        }
    }
    Ok(())
}

fn validate_text(whole: &str) -> Result<(), StreamNameError> {
    if whole.is_empty() {
        return Err(invalid(whole, "name is empty"));
    }
    if whole.len() > MAX_LEN {
        return Err(invalid(whole, "name is longer than 255 bytes"));
    }
    if whole.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            whole,
            "name contains whitespace or a control character",
        ));
    }
    Ok(())
}

impl FromStr for StreamName {
    type Err = StreamNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_text(s)?;
        let Some(dash) = s.find('-') else {
            return Err(invalid(s, "missing '-' between category and id"));
        };
        validate_category(s, &s[..dash])?;
        let id = &s[dash + 1..];
        if id.is_empty() {
            return Err(invalid(s, "id is empty"));
        }
        if id.split('+').any(str::is_empty) {
            return Err(invalid(s, "compound id has an empty part"));
        }
        Ok(Self {
            name: s.to_owned(),
            dash,
        })
    }
}

impl TryFrom<String> for StreamName {
    type Error = StreamNameError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamName({:?})", self.name)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl Serialize for StreamName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A validated category name (`account`, `account:command`), for category reads.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Category(String);

impl Category {
    /// The category as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Category {
    type Err = StreamNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_text(s)?;
        if s.contains('-') {
            return Err(invalid(s, "a category cannot contain '-'"));
        }
        validate_category(s, s)?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&StreamName> for Category {
    fn from(stream: &StreamName) -> Self {
        Self(stream.category().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_parts() {
        let n: StreamName = "account-1a2b-3c".parse().unwrap();
        assert_eq!(n.category(), "account");
        assert_eq!(n.id(), "1a2b-3c");
        assert_eq!(n.cardinal_id(), "1a2b-3c");
        assert_eq!(n.types().count(), 0);
        let n: StreamName = "account:command+position-7+8".parse().unwrap();
        assert_eq!(n.category_base(), "account");
        assert_eq!(n.types().collect::<Vec<_>>(), ["command", "position"]);
        assert_eq!(n.cardinal_id(), "7");
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        for bad in [
            "",
            "account",
            "-1",
            "account-",
            "acc ount-1",
            "account-1\n",
            ":x-1",
            "a:-1",
            "a:x+-1",
            "a:x:y-1",
            "a+b-1",
            "a-1++2",
            "a-+2",
        ] {
            let err = bad.parse::<StreamName>().unwrap_err();
            assert_eq!(err.name, bad);
            assert!(!err.reason.is_empty());
        }
        assert!(
            "x".repeat(256)
                .replacen('x', "a-", 1)
                .parse::<StreamName>()
                .is_err()
        );
    }

    #[test]
    fn categories() {
        assert_eq!(
            "account:command".parse::<Category>().unwrap().as_str(),
            "account:command"
        );
        assert!("account-1".parse::<Category>().is_err());
        assert!("".parse::<Category>().is_err());
    }

    proptest! {
        #[test]
        fn any_string_parses_or_errors_without_panic(s in "\\PC{0,40}") {
            let _ = s.parse::<StreamName>();
            let _ = s.parse::<Category>();
        }

        #[test]
        fn valid_names_round_trip(
            base in "[a-zA-Z][a-zA-Z0-9_]{0,10}",
            types in proptest::collection::vec("[a-z]{1,6}", 0..3),
            ids in proptest::collection::vec("[a-zA-Z0-9][a-zA-Z0-9-]{0,8}", 1..3),
        ) {
            let category = if types.is_empty() { base.clone() } else { format!("{base}:{}", types.join("+")) };
            let id = ids.join("+");
            let name = StreamName::new(&category, &id).unwrap();
            prop_assert_eq!(name.category(), category.as_str());
            prop_assert_eq!(name.category_base(), base.as_str());
            prop_assert_eq!(name.id(), id.as_str());
            prop_assert_eq!(name.cardinal_id(), ids[0].as_str());
            let got: Vec<&str> = name.types().collect();
            let want: Vec<&str> = types.iter().map(String::as_str).collect();
            prop_assert_eq!(got, want);
            let reparsed: StreamName = name.to_string().parse().unwrap();
            prop_assert_eq!(reparsed, name);
        }
    }
}
