//! Rust twins of Message DB's pure stream-name functions. Each one answers exactly what the SQL
//! function of the same name answers (the integration tests compare them on generated names).

use md5::{Digest, Md5};

/// The id part of a stream name: everything after the first `-`; `None` when there is no `-`
/// (the name is a category). Twin of `message_store.id`.
///
/// ```
/// use eventrail_message_db::names;
/// assert_eq!(names::id("account-123+abc"), Some("123+abc"));
/// assert_eq!(names::id("account:command-1-2"), Some("1-2"));
/// assert_eq!(names::id("account"), None);
/// ```
#[must_use]
pub fn id(stream_name: &str) -> Option<&str> {
    stream_name.split_once('-').map(|(_, id)| id)
}

/// The cardinal id: the id up to the first `+` of a compound id; `None` for a category. Twin of
/// `message_store.cardinal_id`; consumer groups partition by it.
///
/// ```
/// use eventrail_message_db::names;
/// assert_eq!(names::cardinal_id("account-123+abc"), Some("123"));
/// assert_eq!(names::cardinal_id("account-123"), Some("123"));
/// ```
#[must_use]
pub fn cardinal_id(stream_name: &str) -> Option<&str> {
    id(stream_name).map(|id| id.split('+').next().unwrap_or(id))
}

/// The category: everything before the first `-` (the whole name when there is none). Twin of
/// `message_store.category`; a `:type` suffix stays part of the category.
///
/// ```
/// use eventrail_message_db::names;
/// assert_eq!(names::category("account:command-123"), "account:command");
/// assert_eq!(names::category("account"), "account");
/// ```
#[must_use]
pub fn category(stream_name: &str) -> &str {
    stream_name.split('-').next().unwrap_or(stream_name)
}

/// Whether the name is a category (has no `-`). Twin of `message_store.is_category`.
#[must_use]
pub fn is_category(stream_name: &str) -> bool {
    !stream_name.contains('-')
}

/// The first 64 bits of the MD5 of the value, as a signed big-endian integer. Twin of
/// `message_store.hash_64` (`left('x' || md5(value), 17)::bit(64)::bigint`), which Message DB
/// uses for advisory lock keys and consumer groups.
///
/// ```
/// use eventrail_message_db::names;
/// assert_eq!(names::hash_64("account"), names::hash_64("account"));
/// ```
#[must_use]
pub fn hash_64(value: &str) -> i64 {
    let digest = Md5::digest(value.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The consumer group member that receives the messages of `stream_name` in a group of `size`
/// members: `abs(hash_64(cardinal_id)) mod size`, as `get_category_messages` computes it. `None`
/// for a category or a zero size, and for the one hash (`i64::MIN`) whose absolute value
/// PostgreSQL cannot compute.
///
/// ```
/// use eventrail_message_db::names;
/// let member = names::consumer_group_member("account-1+x", 3).unwrap();
/// assert_eq!(Some(member), names::consumer_group_member("account-1+y", 3));
/// ```
#[must_use]
pub fn consumer_group_member(stream_name: &str, size: u64) -> Option<u64> {
    if size == 0 {
        return None;
    }
    let hash = hash_64(cardinal_id(stream_name)?);
    hash.checked_abs().map(|h| h.unsigned_abs() % size)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_hash() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(
            hash_64(""),
            i64::from_be_bytes([0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04])
        );
    }

    proptest! {
        #[test]
        fn parts_rebuild_the_name(name in "[a-z:+-]{0,12}") {
            match id(&name) {
                Some(id) => prop_assert_eq!(format!("{}-{id}", category(&name)), name.clone()),
                None => prop_assert_eq!(category(&name), name.as_str()),
            }
            prop_assert_eq!(is_category(&name), id(&name).is_none());
            if let (Some(id), Some(cardinal)) = (id(&name), cardinal_id(&name)) {
                prop_assert!(id.starts_with(cardinal));
                prop_assert!(!cardinal.contains('+'));
            }
        }

        #[test]
        fn members_are_in_range(name in "[a-z]{1,5}-[a-z0-9+]{0,8}", size in 1u64..40) {
            let member = consumer_group_member(&name, size).unwrap();
            prop_assert!(member < size);
        }
    }
}
