#![doc = include_str!("../../../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use eventrail_core::*;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    #![doc = include_str!("../../eventrail-store-postgres/README.md")]

    /// The connection pool the store runs on.
    pub use deadpool_postgres;
    pub use eventrail_store_postgres::*;
    /// The PostgreSQL driver the store runs on.
    pub use tokio_postgres;
}

#[cfg(feature = "worker")]
#[cfg_attr(docsrs, doc(cfg(feature = "worker")))]
pub mod worker {
    #![doc = include_str!("../../eventrail-worker/README.md")]

    pub use eventrail_worker::*;
    /// Cancellation tokens that stop a worker gracefully.
    pub use tokio_util::sync::CancellationToken;
}

#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
pub mod outbox {
    #![doc = include_str!("../../eventrail-outbox/README.md")]

    pub use eventrail_outbox::*;
    /// Cancellation tokens that stop a relay gracefully.
    pub use tokio_util::sync::CancellationToken;
}

#[cfg(feature = "saga")]
#[cfg_attr(docsrs, doc(cfg(feature = "saga")))]
#[doc(inline)]
pub use eventrail_saga as saga;

#[cfg(feature = "message-db")]
#[cfg_attr(docsrs, doc(cfg(feature = "message-db")))]
pub mod message_db {
    #![doc = include_str!("../../eventrail-message-db/README.md")]

    pub use eventrail_message_db::*;
}
