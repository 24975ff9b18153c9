//! Retries: which failed tries of a request are sent again, how long to wait first, and the
//! budget that keeps retries from multiplying an outage; and the tape that lets a request body
//! be sent again.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderMap, Method, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use rand::Rng;

use crate::body::{Body, BodyError, InFlight};

/// An upstream's `retries`, with its count of retries in flight.
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) attempts: u32,
    statuses: Vec<u16>,
    all_methods: bool,
    max_body: u64,
    pub(crate) per_try_timeout: Option<Duration>,
    backoff: Duration,
    max_backoff: Duration,
    budget_percent: usize,
    min_concurrency: usize,
    retrying: Arc<AtomicUsize>,
    overflows: Counter,
}

impl RetryPolicy {
    pub(crate) fn new(config: &wasmgate_config::Retries, overflows: Counter) -> Self {
        Self {
            attempts: config.attempts,
            statuses: config.statuses.clone(),
            all_methods: config.all_methods,
            max_body: config.max_body,
            per_try_timeout: config.per_try_timeout,
            backoff: config.backoff,
            max_backoff: config.max_backoff,
            budget_percent: config.budget_percent as usize,
            min_concurrency: config.min_retry_concurrency as usize,
            retrying: Arc::default(),
            overflows,
        }
    }

    /// Whether a request with `method` may be sent again once it was sent (a request that was
    /// never sent may always be).
    pub(crate) fn replays(&self, method: &Method) -> bool {
        self.attempts > 0 && (self.all_methods || method.is_idempotent())
    }

    /// Whether a body whose size is known to be at least `lower` may be kept to be sent again.
    pub(crate) fn keeps(&self, hint: &SizeHint) -> bool {
        hint.lower() <= self.max_body
    }

    pub(crate) fn max_body(&self) -> usize {
        usize::try_from(self.max_body).unwrap_or(usize::MAX)
    }

    /// Whether a response with `status` is retried.
    pub(crate) fn retries_status(&self, status: StatusCode) -> bool {
        !self.statuses.is_empty() && self.statuses.contains(&status.as_u16())
    }

    /// Whether a request may be retried: refused (and counted) when retries in flight are
    /// already `budget_percent` of `active` requests and at least `min_retry_concurrency`.
    /// `place` is the request's place among the retries in flight: taken here for its first
    /// retry (and held until that retry, or the last of them, ends); a request retried again
    /// keeps it, judged afresh but counted once.
    pub(crate) fn admit(&self, active: usize, place: &mut Option<InFlight>) -> bool {
        let allowed = (active * self.budget_percent / 100).max(self.min_concurrency);
        let taken = match place {
            Some(_) => None,
            None => Some(InFlight::begin(&self.retrying)),
        };
        if self.retrying.load(Ordering::Relaxed) > allowed {
            self.overflows.inc();
            return false;
        }
        if taken.is_some() {
            *place = taken;
        }
        true
    }

    /// How long to wait before retry number `retry` (1 for the first): a random time up to
    /// `backoff` doubled for each retry before, at most `max_backoff` ("full jitter").
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        if ceiling.is_zero() {
            return ceiling;
        }
        rand::rng().random_range(Duration::ZERO..=ceiling)
    }

    /// What a retried response's `Retry-After` asks for: `Ok(None)` without one, `Err` when it
    /// asks for longer than `max_backoff` (the response then goes to the client).
    pub(crate) fn retry_after(&self, headers: &HeaderMap) -> Result<Option<Duration>, Duration> {
        let Some(value) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()) else {
            return Ok(None);
        };
        let wait = match value.trim().parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => match httpdate::parse_http_date(value) {
                Ok(when) => when
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
                Err(_) => return Ok(None),
            },
        };
        if wait > self.max_backoff {
            Err(wait)
        } else {
            Ok(Some(wait))
        }
    }
}

/// A request body recorded as it is sent, up to a limit, so that a retry can send it again:
/// the retry's body plays back what was recorded, then goes on reading from the client.
#[derive(Debug, Clone)]
pub(crate) struct Tape(Arc<Mutex<Recording>>);

#[derive(Debug)]
struct Recording {
    source: Body,
    hint: SizeHint,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    recorded: usize,
    limit: usize,
    /// More than `limit` passed: the recording is gone, and no retry can send the body.
    overflowed: bool,
    ended: bool,
}

impl Tape {
    pub(crate) fn new(source: Body, limit: usize) -> Self {
        Self(Arc::new(Mutex::new(Recording {
            hint: source.size_hint(),
            source,
            chunks: Vec::new(),
            trailers: None,
            recorded: 0,
            limit,
            overflowed: false,
            ended: false,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Recording> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A body playing the tape from its start, or `None` when it overflowed.
    pub(crate) fn play(&self) -> Option<Body> {
        if self.lock().overflowed {
            return None;
        }
        Some(Body::played(Playback {
            tape: self.clone(),
            next: 0,
            trailers_sent: false,
        }))
    }
}

/// One reading of a [`Tape`].
#[derive(Debug)]
pub(crate) struct Playback {
    tape: Tape,
    /// The next recorded chunk to play.
    next: usize,
    trailers_sent: bool,
}

impl Playback {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut r = self.tape.lock();
        if let Some(chunk) = r.chunks.get(self.next) {
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if r.ended {
            return Poll::Ready(match &r.trailers {
                Some(t) if !self.trailers_sent => {
                    self.trailers_sent = true;
                    Some(Ok(Frame::trailers(t.clone())))
                }
                _ => None,
            });
        }
        let frame = ready!(Pin::new(&mut r.source).poll_frame(cx));
        let r = &mut *r;
        match &frame {
            None => r.ended = true,
            Some(Ok(frame)) if !r.overflowed => {
                if let Some(data) = frame.data_ref() {
                    r.recorded += data.len();
                    if r.recorded > r.limit {
                        r.overflowed = true;
                        r.chunks = Vec::new();
                    } else {
                        r.chunks.push(data.clone());
                        self.next = r.chunks.len();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    r.trailers = Some(trailers.clone());
                    self.trailers_sent = true;
                }
            }
            Some(_) => {}
        }
        Poll::Ready(frame)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        let r = self.tape.lock();
        r.ended && self.next >= r.chunks.len() && (r.trailers.is_none() || self.trailers_sent)
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        self.tape.lock().hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn policy(config: wasmgate_config::Retries) -> RetryPolicy {
        RetryPolicy::new(&config, Counter::default())
    }

    #[tokio::test]
    async fn a_played_body_repeats_what_was_read_then_reads_on() {
        let tape = Tape::new(Body::full("hello world"), 1024);
        let first = tape.play().expect("fits");
        assert_eq!(
            first.collect().await.expect("body").to_bytes(),
            "hello world"
        );
        let second = tape.play().expect("recorded");
        assert_eq!(
            second.collect().await.expect("body").to_bytes(),
            "hello world"
        );
    }

    #[tokio::test]
    async fn a_body_beyond_the_limit_cannot_be_played_again() {
        let tape = Tape::new(Body::full("0123456789"), 4);
        let first = tape.play().expect("nothing read yet");
        assert_eq!(
            first.collect().await.expect("body").to_bytes(),
            "0123456789"
        );
        assert!(tape.play().is_none());
    }

    #[test]
    fn budget_allows_min_concurrency_then_a_share_of_active_requests() {
        let p = policy(wasmgate_config::Retries {
            budget_percent: 20,
            min_retry_concurrency: 2,
            ..Default::default()
        });
        let (mut a, mut b, mut c, mut d) = (None, None, None, None);
        assert!(p.admit(0, &mut a), "first of the minimum");
        assert!(p.admit(0, &mut b), "second of the minimum");
        assert!(!p.admit(0, &mut c), "beyond the minimum with no load");
        assert!(c.is_none(), "a refused retry holds no place");
        assert!(p.admit(15, &mut c), "20 % of 15 is 3");
        assert!(!p.admit(15, &mut d));
        drop((a, b, c));
        assert!(p.admit(0, &mut d), "retries ended give their budget back");
    }

    #[test]
    fn a_request_retried_again_counts_once_in_the_budget() {
        let p = policy(wasmgate_config::Retries {
            min_retry_concurrency: 1,
            ..Default::default()
        });
        let mut place = None;
        assert!(p.admit(0, &mut place), "the first retry");
        assert!(
            p.admit(0, &mut place),
            "the second retry takes no second place"
        );
        assert_eq!(p.retrying.load(Ordering::Relaxed), 1);
        let mut other = None;
        assert!(!p.admit(0, &mut other), "the one place is taken");
        drop(place);
        assert_eq!(p.retrying.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        let p = policy(wasmgate_config::Retries {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(35),
            ..Default::default()
        });
        for retry in 1..8 {
            let ceiling = Duration::from_millis(10 << (retry - 1)).min(Duration::from_millis(35));
            for _ in 0..50 {
                assert!(p.backoff(retry) <= ceiling);
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_max_backoff() {
        let p = policy(wasmgate_config::Retries {
            max_backoff: Duration::from_secs(2),
            ..Default::default()
        });
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, v.parse().expect("value"));
            h
        };
        assert_eq!(p.retry_after(&HeaderMap::new()), Ok(None));
        assert_eq!(
            p.retry_after(&headers("1")),
            Ok(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            p.retry_after(&headers("120")),
            Err(Duration::from_secs(120))
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(5));
        assert_eq!(p.retry_after(&headers(&past)), Ok(Some(Duration::ZERO)));
        assert_eq!(p.retry_after(&headers("soon")), Ok(None));
    }
}
