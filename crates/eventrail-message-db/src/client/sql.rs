//! The SQL of every call: Message DB's functions behind a prefix that puts `message_store` first
//! on the search path for that statement only (see `call_prefix!`), built at compile time.

/// Makes Message DB's schema the first on the search path for the rest of the transaction (the
/// statement's own implicit transaction outside a transaction block), keeping the caller's path
/// behind it. Message DB's functions name their table and helpers unqualified, so they need it;
/// setting it per statement (rather than per connection) leaves pooled connections untouched.
/// When the path already starts with `message_store` (connections of [`MessageDb::connect`]),
/// nothing is set.
///
/// Arguments go through `_call` too: the stream-name functions are `IMMUTABLE`, and PostgreSQL
/// evaluates an immutable call on constants while planning, before the search path is set.
macro_rules! call_prefix {
    () => {
        "WITH _call AS MATERIALIZED (SELECT CASE \
         WHEN current_setting('search_path') ~ '^\\s*message_store\\s*(,|$)' THEN NULL \
         WHEN btrim(current_setting('search_path')) = '' THEN set_config('search_path', 'message_store', true) \
         ELSE set_config('search_path', 'message_store, ' || current_setting('search_path'), true) END AS _path"
    };
}

/// The same, also turning `message_store.sql_condition` on.
macro_rules! call_prefix_condition {
    () => {
        concat!(
            call_prefix!(),
            ", set_config('message_store.sql_condition', 'on', true) AS _condition"
        )
    };
}

// The reads pass their arguments through `_call`, so the function scan depends on it laterally
// and runs after the settings took effect.
macro_rules! stream_read {
    ($prefix:expr) => {
        concat!(
            $prefix,
            ", $1::varchar AS s, $2::bigint AS p, $3::bigint AS b, $4::varchar AS c) \
             SELECT m.id, m.stream_name, m.type, m.position, m.global_position, m.data, m.metadata, m.time \
             FROM _call, LATERAL message_store.get_stream_messages(_call.s, _call.p, _call.b, _call.c) AS m"
        )
    };
}

macro_rules! category_read {
    ($prefix:expr) => {
        concat!(
            $prefix,
            ", $1::varchar AS s, $2::bigint AS p, $3::bigint AS b, $4::varchar AS r, $5::bigint AS gm, \
             $6::bigint AS gs, $7::varchar AS c) \
             SELECT m.id, m.stream_name, m.type, m.position, m.global_position, m.data, m.metadata, m.time \
             FROM _call, LATERAL message_store.get_category_messages(_call.s, _call.p, _call.b, _call.r, _call.gm, _call.gs, _call.c) AS m"
        )
    };
}

pub(super) const WRITE: &str = concat!(
    call_prefix!(),
    ") SELECT message_store.write_message($1::varchar, $2::varchar, $3::varchar, $4::jsonb, $5::jsonb, $6::bigint) FROM _call"
);
pub(super) const STREAM_READ: &str = stream_read!(call_prefix!());
pub(super) const STREAM_READ_CONDITION: &str = stream_read!(call_prefix_condition!());
pub(super) const CATEGORY_READ: &str = category_read!(call_prefix!());
pub(super) const CATEGORY_READ_CONDITION: &str = category_read!(call_prefix_condition!());
pub(super) const LAST_MESSAGE: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s, $2::varchar AS t) \
     SELECT m.id, m.stream_name, m.type, m.position, m.global_position, m.data, m.metadata, m.time \
     FROM _call, LATERAL message_store.get_last_stream_message(_call.s, _call.t) AS m"
);
pub(super) const STREAM_VERSION: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.stream_version(_call.s) FROM _call"
);
pub(super) const ID: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.id(_call.s)::text FROM _call"
);
pub(super) const CARDINAL_ID: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.cardinal_id(_call.s)::text FROM _call"
);
pub(super) const CATEGORY: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.category(_call.s)::text FROM _call"
);
pub(super) const IS_CATEGORY: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.is_category(_call.s) FROM _call"
);
pub(super) const HASH_64: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.hash_64(_call.s) FROM _call"
);
pub(super) const ACQUIRE_LOCK: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.acquire_lock(_call.s) FROM _call"
);
pub(super) const VERSION: &str = concat!(
    call_prefix!(),
    ") SELECT message_store.message_store_version()::text FROM _call"
);
