//! Subscriptions: poll a stream or a category, hand each message to a handler (or yield it from a
//! `futures::Stream`), record the reader's position, report liveness and drops.

mod polling;
mod position;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio_util::sync::CancellationToken;

pub use polling::{
    ConstantPolling, DynamicPolling, ExponentialBackoff, PollingFn, PollingStrategy, polling_fn,
};
pub use position::{POSITION_RECORDED, PositionStore};

use crate::{
    BoxError, CategoryFilter, CategoryReadOptions, InvalidArgument, Message, MessageDb,
    MessageDbError, StreamReadOptions,
};

/// Whether a subscription has read everything there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Liveness {
    /// The last read returned fewer messages than the batch size: the reader is at the end.
    CaughtUp,
    /// The last read returned a full batch: more messages are probably waiting.
    FallenBehind,
}

/// Why a subscription stopped, or what it reported to its dropped callback.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// Reading messages failed (connection lost, database down): with
    /// [`recover_after`](Subscription::recover_after) the subscription retries by itself.
    #[error("subscription read failed")]
    Read(#[source] MessageDbError),
    /// Reading or writing the position stream failed: as for `Read`.
    #[error("subscription position store failed")]
    Position(#[source] MessageDbError),
    /// The handler returned an error: the subscription stopped before that message was recorded
    /// as processed; fix the handler or the message and start again.
    #[error("subscription handler failed")]
    Handler(#[source] BoxError),
    /// A setting was refused before anything was read: fix the setting.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
}

type LivenessCallback = Arc<dyn Fn(Liveness) + Send + Sync>;
type DroppedCallback = Arc<dyn Fn(&SubscriptionError) + Send + Sync>;

#[derive(Debug, Clone)]
enum Source {
    Stream(String),
    Category(String, CategoryFilter),
}

/// A subscription to a stream or a category, as a consuming builder; start it with
/// [`run`](Self::run) or [`into_stream`](Self::into_stream).
///
/// It reads batches from a start position, waits between reads as its [`PollingStrategy`] says
/// (default: exponential backoff from 100 ms to 1 s), calls the liveness callback when it catches
/// up or falls behind, and the dropped callback with the error whenever a read fails. Without
/// [`recover_after`](Self::recover_after) a failure ends it; with it, it retries. With a
/// [`PositionStore`] it records its position every N messages and a restart resumes after the
/// recorded position.
#[must_use]
pub struct Subscription {
    db: MessageDb,
    source: Source,
    start: Option<u64>,
    batch_size: u64,
    // Boxed: the strategy is the user's choice of type, kept in a builder.
    polling: Box<dyn PollingStrategy>,
    on_liveness: Option<LivenessCallback>,
    on_dropped: Option<DroppedCallback>,
    recover_after: Option<Duration>,
    cancel: CancellationToken,
    position_store: Option<PositionStore>,
    // A category option given to a stream subscription, refused at start.
    misplaced_filter: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("source", &self.source)
            .field("start", &self.start)
            .field("batch_size", &self.batch_size)
            .field("polling", &self.polling)
            .field("recover_after", &self.recover_after)
            .field("position_store", &self.position_store)
            .finish_non_exhaustive()
    }
}

impl MessageDb {
    /// A subscription to `stream`, from position 0.
    pub fn subscribe_stream(&self, stream: impl Into<String>) -> Subscription {
        Subscription::new(self.clone(), Source::Stream(stream.into()))
    }

    /// A subscription to `category`, from global position 1.
    pub fn subscribe_category(&self, category: impl Into<String>) -> Subscription {
        Subscription::new(
            self.clone(),
            Source::Category(category.into(), CategoryFilter::default()),
        )
    }
}

impl Subscription {
    fn new(db: MessageDb, source: Source) -> Self {
        Self {
            db,
            source,
            start: None,
            batch_size: 1000,
            polling: Box::new(
                ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(1), 2.0)
                    .unwrap_or_else(|_| unreachable!("valid constants")),
            ),
            on_liveness: None,
            on_dropped: None,
            recover_after: None,
            cancel: CancellationToken::new(),
            position_store: None,
            misplaced_filter: false,
        }
    }

    fn with_filter(mut self, change: impl FnOnce(CategoryFilter) -> CategoryFilter) -> Self {
        match &mut self.source {
            Source::Category(_, f) => *f = change(std::mem::take(f)),
            Source::Stream(_) => self.misplaced_filter = true,
        }
        self
    }

    /// The position to start from (stream position, or global position for a category) when no
    /// position is recorded.
    pub fn start_position(mut self, position: u64) -> Self {
        self.start = Some(position);
        self
    }

    /// Messages per read (default 1,000; zero is refused at start).
    pub fn batch_size(mut self, n: u64) -> Self {
        self.batch_size = n;
        self
    }

    /// How long to wait between reads.
    pub fn polling(mut self, strategy: impl PollingStrategy) -> Self {
        self.polling = Box::new(strategy);
        self
    }

    /// Called with [`Liveness::CaughtUp`] or [`Liveness::FallenBehind`] whenever the state
    /// changes (the first read always reports).
    pub fn on_liveness(mut self, callback: impl Fn(Liveness) + Send + Sync + 'static) -> Self {
        self.on_liveness = Some(Arc::new(callback));
        self
    }

    /// Called with the error whenever the subscription drops: a failed read or position write
    /// (before it retries or stops), or a failed handler (before it stops).
    pub fn on_dropped(
        mut self,
        callback: impl Fn(&SubscriptionError) + Send + Sync + 'static,
    ) -> Self {
        self.on_dropped = Some(Arc::new(callback));
        self
    }

    /// After a failed read or position write, wait `delay` and carry on (the pool replaces a lost
    /// connection). Without it, the subscription stops with the error.
    pub fn recover_after(mut self, delay: Duration) -> Self {
        self.recover_after = Some(delay);
        self
    }

    /// Stops the subscription when `token` is cancelled (it records its position first).
    pub fn cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Records the position in `store` and resumes after the recorded position.
    pub fn position_store(mut self, store: PositionStore) -> Self {
        self.position_store = Some(store);
        self
    }

    /// Category filters: correlation, consumer group, condition. A stream subscription refuses
    /// them when it starts.
    pub fn filter(self, filter: CategoryFilter) -> Self {
        self.with_filter(|_| filter)
    }

    /// Only this consumer group member's streams; see [`CategoryFilter::consumer_group`].
    pub fn consumer_group(self, member: u64, size: u64) -> Self {
        self.with_filter(|f| f.consumer_group(member, size))
    }

    /// Only messages correlated to this category; see [`CategoryFilter::correlation`].
    pub fn correlation(self, category: impl Into<String>) -> Self {
        self.with_filter(|f| f.correlation(category))
    }

    /// A SQL condition; see [`StreamReadOptions::condition`] for the rules.
    pub fn condition(self, condition: impl Into<String>) -> Self {
        self.with_filter(|f| f.condition(condition))
    }

    /// Runs until cancelled, handing each message to `handler` in order. A message counts as
    /// processed when the handler returns `Ok`.
    ///
    /// # Errors
    /// [`SubscriptionError::Handler`] when the handler fails; `Read` or `Position` when the
    /// database fails and no recovery is configured; `InvalidArgument` for a refused setting.
    pub async fn run<H, Fut, E>(self, mut handler: H) -> Result<(), SubscriptionError>
    where
        H: FnMut(Message) -> Fut + Send,
        Fut: Future<Output = Result<(), E>> + Send,
        E: Into<BoxError>,
    {
        let mut poller = Poller::new(self)?;
        while let Some(batch) = poller.next_batch().await? {
            for message in batch {
                if poller.cancel.is_cancelled() {
                    break;
                }
                let position = poller.position_of(&message);
                if let Err(e) = handler(message).await {
                    let error = SubscriptionError::Handler(e.into());
                    poller.report_dropped(&error);
                    poller.flush().await;
                    return Err(error);
                }
                poller.processed(position).await?;
            }
        }
        poller.flush().await;
        Ok(())
    }

    /// The subscription as a stream of messages. A message counts as processed when the next
    /// one is asked for; the stream ends when cancelled, and yields an error (then ends) when a
    /// read fails without recovery. Dropping the stream stops the subscription.
    pub fn into_stream(self) -> impl Stream<Item = Result<Message, SubscriptionError>> + Send {
        struct State {
            poller: Option<Poller>,
            buffer: VecDeque<Message>,
            pending: Option<u64>,
        }
        let poller = Poller::new(self);
        let (poller, first_error) = match poller {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        };
        let state = State {
            poller,
            buffer: VecDeque::new(),
            pending: None,
        };
        let error = futures::stream::iter(first_error.map(Err));
        let messages = futures::stream::unfold(state, |mut st| async move {
            let poller = st.poller.as_mut()?;
            if let Some(position) = st.pending.take()
                && let Err(e) = poller.processed(position).await
            {
                st.poller = None;
                return Some((Err(e), st));
            }
            loop {
                if poller.cancel.is_cancelled() {
                    poller.flush().await;
                    return None;
                }
                if let Some(message) = st.buffer.pop_front() {
                    st.pending = Some(poller.position_of(&message));
                    return Some((Ok(message), st));
                }
                match poller.next_batch().await {
                    Ok(Some(batch)) => st.buffer.extend(batch),
                    Ok(None) => {
                        poller.flush().await;
                        return None;
                    }
                    Err(e) => {
                        st.poller = None;
                        return Some((Err(e), st));
                    }
                }
            }
        });
        // Fused: polling after the end keeps answering `None`.
        futures::StreamExt::fuse(futures::StreamExt::chain(error, messages))
    }
}

/// The running state shared by both forms.
struct Poller {
    sub: Subscription,
    cancel: CancellationToken,
    next: u64,
    loaded: bool,
    delay: Duration,
    liveness: Option<Liveness>,
    unsaved: u64,
    last_processed: Option<u64>,
}

impl Poller {
    fn new(sub: Subscription) -> Result<Self, SubscriptionError> {
        if sub.batch_size == 0 {
            return Err(InvalidArgument::ZeroBatchSize.into());
        }
        if sub.misplaced_filter {
            return Err(InvalidArgument::Setting {
                what: "stream subscription",
                reason: "correlation, consumer group and condition apply to categories only",
            }
            .into());
        }
        crate::options::to_bigint("batch size", sub.batch_size)?;
        match &sub.source {
            Source::Stream(s) if crate::names::is_category(s) => {
                return Err(InvalidArgument::NotAStreamName(s.clone()).into());
            }
            Source::Category(c, filter) => {
                if !crate::names::is_category(c) {
                    return Err(InvalidArgument::NotACategory(c.clone()).into());
                }
                filter.to_sql()?;
            }
            Source::Stream(_) => {}
        }
        if let Some(store) = &sub.position_store {
            store.validate()?;
        }
        let next = sub.start.unwrap_or(match sub.source {
            Source::Stream(_) => 0,
            Source::Category(..) => 1,
        });
        Ok(Self {
            cancel: sub.cancel.clone(),
            sub,
            next,
            loaded: false,
            delay: Duration::ZERO,
            liveness: None,
            unsaved: 0,
            last_processed: None,
        })
    }

    fn position_of(&self, message: &Message) -> u64 {
        match self.sub.source {
            Source::Stream(_) => message.position,
            Source::Category(..) => message.global_position,
        }
    }

    fn report_dropped(&self, error: &SubscriptionError) {
        tracing::warn!(error = %eventrail_core::error_chain(error), "message db subscription dropped");
        metrics::counter!("message_db_subscription_drops").increment(1);
        if let Some(callback) = &self.sub.on_dropped {
            callback(error);
        }
    }

    /// Reports `error` and either waits to retry (`Ok(true)`; `Ok(false)` when cancelled
    /// meanwhile) or gives it back.
    async fn recover(&self, error: SubscriptionError) -> Result<bool, SubscriptionError> {
        self.report_dropped(&error);
        let Some(delay) = self.sub.recover_after else {
            return Err(error);
        };
        Ok(self.sleep(delay).await)
    }

    /// Sleeps unless cancelled; false when cancelled.
    async fn sleep(&self, delay: Duration) -> bool {
        if delay.is_zero() {
            return !self.cancel.is_cancelled();
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.cancel.cancelled() => false,
        }
    }

    /// The next non-empty batch, or `None` once cancelled.
    async fn next_batch(&mut self) -> Result<Option<Vec<Message>>, SubscriptionError> {
        loop {
            if !self.sleep(self.delay).await {
                return Ok(None);
            }
            if !self.loaded {
                match self.load_position().await {
                    Ok(()) => self.loaded = true,
                    Err(e) => {
                        self.delay = Duration::ZERO;
                        if self.recover(e).await? {
                            continue;
                        }
                        return Ok(None);
                    }
                }
            }
            let read = tokio::select! {
                read = self.read() => read,
                () = self.cancel.cancelled() => return Ok(None),
            };
            let batch = match read {
                Ok(batch) => batch,
                Err(e) => {
                    self.delay = Duration::ZERO;
                    if self.recover(SubscriptionError::Read(e)).await? {
                        continue;
                    }
                    return Ok(None);
                }
            };
            let batch_size = usize::try_from(self.sub.batch_size).unwrap_or(usize::MAX);
            self.delay = self.sub.polling.next_delay(batch.len(), batch_size);
            let liveness = if batch.len() >= batch_size {
                Liveness::FallenBehind
            } else {
                Liveness::CaughtUp
            };
            if self.liveness != Some(liveness) {
                self.liveness = Some(liveness);
                tracing::debug!(?liveness, "message db subscription liveness");
                if let Some(callback) = &self.sub.on_liveness {
                    callback(liveness);
                }
            }
            #[expect(clippy::cast_precision_loss, reason = "batch sizes are far below 2^52")]
            let fetched = batch.len() as f64;
            metrics::histogram!("message_db_subscription_batch_size").record(fetched);
            if let Some(last) = batch.last() {
                self.next = self.position_of(last) + 1;
                return Ok(Some(batch));
            }
        }
    }

    async fn read(&self) -> Result<Vec<Message>, MessageDbError> {
        match &self.sub.source {
            Source::Stream(stream) => {
                self.sub
                    .db
                    .get_stream_messages(
                        stream,
                        &StreamReadOptions::new()
                            .position(self.next)
                            .batch_size(self.sub.batch_size),
                    )
                    .await
            }
            Source::Category(category, filter) => {
                self.sub
                    .db
                    .get_category_messages(
                        category,
                        &CategoryReadOptions::new()
                            .position(self.next)
                            .batch_size(self.sub.batch_size)
                            .filter(filter.clone()),
                    )
                    .await
            }
        }
    }

    async fn load_position(&mut self) -> Result<(), SubscriptionError> {
        let Some(store) = &self.sub.position_store else {
            return Ok(());
        };
        if let Some(position) = store
            .load(&self.sub.db)
            .await
            .map_err(SubscriptionError::Position)?
        {
            tracing::debug!(position, "message db subscription resumes");
            self.next = position + 1;
            self.last_processed = Some(position);
        }
        Ok(())
    }

    async fn processed(&mut self, position: u64) -> Result<(), SubscriptionError> {
        self.last_processed = Some(position);
        let Some(store) = &self.sub.position_store else {
            return Ok(());
        };
        self.unsaved += 1;
        if self.unsaved < store.every {
            return Ok(());
        }
        match store.record(&self.sub.db, position).await {
            Ok(()) => {
                self.unsaved = 0;
                Ok(())
            }
            Err(e) => {
                let error = SubscriptionError::Position(e);
                self.report_dropped(&error);
                if self.sub.recover_after.is_some() {
                    // Kept unsaved: the next processed message tries again.
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Records the last processed position if it is not yet recorded (on a graceful stop).
    async fn flush(&mut self) {
        let (Some(store), Some(position)) = (&self.sub.position_store, self.last_processed) else {
            return;
        };
        if self.unsaved == 0 {
            return;
        }
        match store.record(&self.sub.db, position).await {
            Ok(()) => self.unsaved = 0,
            Err(e) => self.report_dropped(&SubscriptionError::Position(e)),
        }
    }
}
