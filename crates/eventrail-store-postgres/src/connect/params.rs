//! The libpq connection parameters tokio-postgres does not understand, taken out of a URL or a
//! `key=value` connection string before tokio-postgres parses the rest.
//!
//! tokio-postgres knows `sslmode` only as `disable`, `prefer` and `require`, and refuses any
//! parameter it does not know; libpq users write `sslmode=verify-full&sslrootcert=ca.pem`.

/// Parameters handled here rather than by tokio-postgres.
pub(crate) const OURS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A connection string split into what tokio-postgres parses and the parameters we handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Split {
    /// The string without our parameters, in its original form.
    pub(crate) rest: String,
    /// Our parameters, decoded, in the order given (a later one wins, as in libpq).
    pub(crate) ours: Vec<(String, String)>,
}

impl Split {
    /// The last value given for `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.ours
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a connection string could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SplitError {
    #[error("invalid percent-encoding in the query string")]
    Percent,
    #[error("unterminated quoted value in the connection string")]
    Unterminated,
    #[error("expected `key=value` in the connection string")]
    MissingEquals,
}

/// Splits a `postgres://` URL or a `key=value` connection string.
pub(crate) fn split(s: &str) -> Result<Split, SplitError> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        split_url(s)
    } else {
        split_key_value(s)
    }
}

fn split_url(url: &str) -> Result<Split, SplitError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(Split {
            rest: url.to_owned(),
            ours: Vec::new(),
        });
    };
    let mut kept = Vec::new();
    let mut ours = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        if OURS.contains(&key.as_str()) {
            ours.push((key, percent_decode(value)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(Split { rest, ours })
}

fn percent_decode(s: &str) -> Result<String, SplitError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(SplitError::Percent)?;
            let hex = std::str::from_utf8(hex).map_err(|_| SplitError::Percent)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| SplitError::Percent)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SplitError::Percent)
}

/// libpq's `key = value` form: values may be single-quoted, with `\'` and `\\` escapes.
fn split_key_value(s: &str) -> Result<Split, SplitError> {
    let mut chars = s.chars().peekable();
    let mut kept = Vec::new();
    let mut ours = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(SplitError::MissingEquals);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(SplitError::Unterminated),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or(SplitError::Unterminated)?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or(SplitError::Unterminated)?);
                } else {
                    value.push(c);
                }
            }
        }
        if OURS.contains(&key.as_str()) {
            ours.push((key, value));
        } else {
            kept.push(format!("{key}='{}'", quote(&value)));
        }
    }
    Ok(Split {
        rest: kept.join(" "),
        ours,
    })
}

fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn takes_our_parameters_out_of_a_url() {
        let s = split(
            "postgres://u:p%3Fw@db.example:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca%20.pem",
        )
        .unwrap();
        assert_eq!(
            s.rest,
            "postgres://u:p%3Fw@db.example:5432/app?application_name=x"
        );
        assert_eq!(s.get("sslmode"), Some("verify-full"));
        assert_eq!(s.get("sslrootcert"), Some("/tmp/ca .pem"));
        let s = split("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(s.rest, "postgresql://h/db");
        let s = split("postgresql://h/db").unwrap();
        assert_eq!(s.rest, "postgresql://h/db");
        assert!(s.ours.is_empty());
        assert_eq!(
            split("postgres://h/db?sslmode=%zz"),
            Err(SplitError::Percent)
        );
    }

    #[test]
    fn later_values_win() {
        let s = split("postgres://h/db?sslmode=disable&sslmode=verify-ca").unwrap();
        assert_eq!(s.get("sslmode"), Some("verify-ca"));
    }

    #[test]
    fn takes_our_parameters_out_of_a_key_value_string() {
        let s = split(
            "host=db.example  sslmode = verify-full password='a b\\'c' sslrootcert='/x y/ca.pem'",
        )
        .unwrap();
        assert_eq!(s.get("sslmode"), Some("verify-full"));
        assert_eq!(s.get("sslrootcert"), Some("/x y/ca.pem"));
        assert_eq!(s.rest, "host='db.example' password='a b\\'c'");
        let parsed: tokio_postgres::Config = s.rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(split("host"), Err(SplitError::MissingEquals));
        assert_eq!(split("host='x"), Err(SplitError::Unterminated));
    }

    proptest! {
        #[test]
        fn key_value_values_round_trip(value in "\\PC*", mode in "[a-z-]{0,12}") {
            let s = format!("user='{}' sslmode={mode}", quote(&value));
            let split = split(&s).unwrap();
            prop_assert_eq!(split.get("sslmode").unwrap_or(""), mode.as_str());
            let parsed: tokio_postgres::Config = split.rest.parse().unwrap();
            prop_assert_eq!(parsed.get_user(), Some(value.as_str()));
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = split(&s);
            let _ = split(&format!("postgres://h/db?{s}"));
        }
    }
}
