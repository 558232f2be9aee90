#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
mod assign;
mod consumer;
mod consumer_loop;
mod dispatcher;
mod elector;
mod error;
mod fence;
mod options;
mod runtime;
mod tables;
mod wait;

pub use admin::{ConsumerStatus, GapRecord, Status, WorkerAdmin, WorkerStatus};
pub use consumer::{Consumer, ConsumerScope, ReactorConsumer, StatefulConsumer};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use elector::EtcdElection;
#[cfg(feature = "zookeeper")]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub use elector::ZooKeeperElection;
pub use error::WorkerError;
pub use options::{DispatcherStrategy, LeaderMode, RetryPolicy, TableNames, WorkerOptions};
pub use runtime::{Worker, WorkerBuilder};
pub use tables::{
    WORKER_FAULTS_MIGRATION, WORKER_FENCING_MIGRATION, WORKER_MIGRATION, checkpoint_channel,
    worker_migrator,
};
pub use wait::{wait_for, wait_for_config};
