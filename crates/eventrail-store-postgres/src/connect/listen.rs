//! The one reconnecting LISTEN connection.

use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, Notification};

use super::PgConnectOptions;
use crate::{ConfigError, ConnectError, validate_identifier};

const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// What [`PgListener::recv`] brings.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenEvent {
    /// A notification on one of the channels.
    Notification(Notification),
    /// LISTEN is in effect on a new connection. When `reconnected`, the previous connection was
    /// lost and notifications sent meanwhile are lost too: re-read whatever you wait for.
    Listening {
        /// Whether this is a reconnection (false on the first connection).
        reconnected: bool,
    },
}

/// A LISTEN connection that reconnects: every component that waits for notifications (the
/// worker's dispatcher, `wait_for`, the outbox relay) uses it.
///
/// [`recv`](Self::recv) connects when needed, with capped exponential backoff between failed
/// attempts, and reports each (re)connection as [`ListenEvent::Listening`] so the caller can
/// catch up on what it may have missed. Connection failures come back as errors, one per
/// attempt: log them, or give up. `recv` is cancel-safe (use it in `select!`): a connection
/// attempt runs in its own task and is picked up by the next call.
pub struct PgListener {
    options: PgConnectOptions,
    component: String,
    listen: String,
    max_backoff: Duration,
    backoff: Duration,
    connected_before: bool,
    state: State,
}

enum State {
    Idle { retry_at: Option<Instant> },
    Connecting(JoinHandle<Result<Live, ConnectError>>),
    Listening(Live),
}

struct Live {
    client: Client,
    messages: tokio::sync::mpsc::UnboundedReceiver<Result<Notification, tokio_postgres::Error>>,
    _driver: Driver,
}

/// Aborts the task driving the connection when dropped (which closes it).
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for PgListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgListener")
            .field("component", &self.component)
            .field("listen", &self.listen)
            .field("listening", &self.is_listening())
            .finish_non_exhaustive()
    }
}

impl Drop for PgListener {
    fn drop(&mut self) {
        if let State::Connecting(task) = &self.state {
            task.abort();
        }
    }
}

impl PgListener {
    /// A listener on `channels` for `component` (its sessions' `application_name` unless the
    /// options set one). Nothing connects until [`recv`](Self::recv).
    ///
    /// # Errors
    /// [`ConfigError::InvalidIdentifier`] for a channel that is not a plain identifier.
    pub fn new(
        options: PgConnectOptions,
        component: &str,
        channels: &[&str],
    ) -> Result<Self, ConfigError> {
        let listen = channels
            .iter()
            .map(|c| validate_identifier("notify channel", c).map(|c| format!("LISTEN {c};")))
            .collect::<Result<Vec<_>, _>>()?
            .join(" ");
        Ok(Self {
            options,
            component: component.to_owned(),
            listen,
            max_backoff: Duration::from_secs(5),
            backoff: MIN_BACKOFF,
            connected_before: false,
            state: State::Idle { retry_at: None },
        })
    }

    /// Caps the wait between reconnection attempts (default 5 s; they start at 100 ms and
    /// double).
    #[must_use]
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max.max(MIN_BACKOFF);
        self
    }

    /// Whether LISTEN is in effect now.
    #[must_use]
    pub fn is_listening(&self) -> bool {
        matches!(self.state, State::Listening(_))
    }

    /// The listening connection's client, to query on the same session (for example to read
    /// what a notification announces right after LISTEN took effect).
    #[must_use]
    pub fn client(&self) -> Option<&Client> {
        match &self.state {
            State::Listening(live) => Some(&live.client),
            _ => None,
        }
    }

    /// Wakes `wake` on every notification and after every (re)connection (hints sent while it
    /// was away are lost, so a waiter must look again), reconnecting with backoff after a lost
    /// connection, which it logs. It never ends: select it against your stop signal. For a
    /// loop that polls and only needs to hear "something may have changed" (the outbox relay,
    /// the saga runner).
    pub async fn wake_on_events(mut self, wake: &tokio::sync::Notify) -> std::convert::Infallible {
        loop {
            match self.recv().await {
                Ok(ListenEvent::Notification(_) | ListenEvent::Listening { .. }) => {
                    wake.notify_one()
                }
                Err(e) => tracing::warn!(
                    component = %self.component,
                    error = %eventrail_core::error_chain(&e),
                    "the LISTEN connection failed; reconnecting"
                ),
            }
        }
    }

    /// The next notification or (re)connection.
    ///
    /// # Errors
    /// A failed connection attempt (see [`PgConnectOptions::connect`]; the next call tries
    /// again after the backoff), or [`ConnectError::Lost`] when the listening connection ended
    /// (the next call reconnects).
    pub async fn recv(&mut self) -> Result<ListenEvent, ConnectError> {
        loop {
            match &mut self.state {
                State::Listening(live) => {
                    let error = match live.messages.recv().await {
                        Some(Ok(n)) => return Ok(ListenEvent::Notification(n)),
                        Some(Err(e)) => Some(e),
                        None => None,
                    };
                    self.retry_later();
                    metrics::counter!("eventrail_listen_reconnects_total", "component" => self.component.clone())
                        .increment(1);
                    return Err(ConnectError::Lost(error));
                }
                State::Connecting(task) => {
                    let outcome = task.await;
                    match outcome {
                        Ok(Ok(live)) => {
                            self.state = State::Listening(live);
                            self.backoff = MIN_BACKOFF;
                            let reconnected = self.connected_before;
                            self.connected_before = true;
                            return Ok(ListenEvent::Listening { reconnected });
                        }
                        Ok(Err(e)) => {
                            self.retry_later();
                            return Err(e);
                        }
                        Err(join) => {
                            self.retry_later();
                            return Err(ConnectError::Pool(join.into()));
                        }
                    }
                }
                State::Idle { retry_at } => {
                    if let Some(at) = *retry_at {
                        tokio::time::sleep_until(at).await;
                    }
                    let options = self.options.clone();
                    let component = self.component.clone();
                    let listen = self.listen.clone();
                    self.state = State::Connecting(tokio::spawn(async move {
                        start(&options, &component, &listen).await
                    }));
                }
            }
        }
    }

    fn retry_later(&mut self) {
        self.state = State::Idle {
            retry_at: Some(Instant::now() + self.backoff),
        };
        self.backoff = (self.backoff * 2).min(self.max_backoff);
    }
}

/// Connects, starts forwarding notifications, and LISTENs, all within the connect timeout.
async fn start(
    options: &PgConnectOptions,
    component: &str,
    listen: &str,
) -> Result<Live, ConnectError> {
    let (client, mut connection) = options.connect(component).await?;
    let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = Driver(tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(Ok(n)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    }));
    let timeout = options.get_connect_timeout();
    match tokio::time::timeout(timeout, client.batch_execute(listen)).await {
        Ok(Ok(())) => Ok(Live {
            client,
            messages,
            _driver: driver,
        }),
        Ok(Err(e)) => Err(ConnectError::from_connect(e)),
        Err(_) => Err(ConnectError::Timeout { after: timeout }),
    }
}
