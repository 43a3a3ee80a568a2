//! Group commit for everything many sagas do at once.
//!
//! Hundreds of conversions and earnings in flight each want the same few things: a row written,
//! a link checked, points moved at a gateway, a transaction posted. One database commit or one
//! call per saga would bound the exchange by round trips and commits; a [`Batcher`] instead
//! gathers what arrives while earlier batches are in flight and hands it over as one batch,
//! written in a few statements or sent as one call.
//!
//! A lone request is never held back waiting for company: while requests arrive slower than one
//! a millisecond, each goes as soon as a slot is free, so batching costs nothing when idle. Under
//! load the batcher pauses for a moment ([`GATHER`]) to let the requests already on their way
//! join: a batch costs much the same whether it carries four requests or twelve, so on a busy
//! machine fewer, fuller batches leave more of it for everything else, and every stage of a
//! saga goes faster.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc, oneshot};

/// How long a batch under load waits for more requests before it goes. Sagas reach a stage in
/// bursts (a batch answers a dozen of them at once, and they all move on), and a short pause lets
/// a burst travel as one batch instead of one request and then the rest. Measured on the
/// exchange's conversion benchmark (32 clients, PostgreSQL, the project's 2-core machine):
/// against no pause, batches grew from about 4 requests to about 11 and conversions a second rose
/// by about a sixth; sleeping precisely (below) rather than on Tokio's timer added about as much
/// again.
pub(crate) const GATHER: Duration = Duration::from_micros(250);

/// A batcher expecting at least one more request within this long is busy, and pauses.
const BUSY_WINDOW: Duration = Duration::from_millis(1);

/// Pauses for [`GATHER`], to the tenth of a millisecond. Tokio's timers tick in whole
/// milliseconds, and under load they fire later still; a whole tick at every stage of a
/// conversion cost more latency than the batching saved. A thread of the blocking pool sleeps
/// precisely instead.
async fn pause() {
    let _ = tokio::task::spawn_blocking(|| std::thread::sleep(GATHER)).await;
}

/// How many requests a batcher has been taking per second, smoothed over its recent batches: a
/// pause pays only when at least one more request can be expected during it. Whole requests a
/// second are precise enough for that, so the arithmetic stays in integers.
#[derive(Debug, Default)]
struct ArrivalRate {
    per_second: u64,
    last: Option<std::time::Instant>,
}

impl ArrivalRate {
    /// Each new batch counts for a fifth of the estimate.
    const WEIGHT_DIVISOR: u64 = 5;

    fn taken(&mut self, requests: usize) {
        let now = std::time::Instant::now();
        if let Some(last) = self.last {
            let micros = now.duration_since(last).as_micros().max(1);
            let rate = u64::try_from(requests as u128 * 1_000_000 / micros).unwrap_or(u64::MAX);
            self.per_second = self.per_second - self.per_second / Self::WEIGHT_DIVISOR
                + rate / Self::WEIGHT_DIVISOR;
        }
        self.last = Some(now);
    }

    /// Whether at least one more request is expected within `window`.
    fn expects_one_within(&self, window: Duration) -> bool {
        u128::from(self.per_second) * window.as_micros() >= 1_000_000
    }
}

/// Hands requests to `run` in batches, with at most `in_flight` batches running at once.
pub(crate) struct Batcher<I, O> {
    queue: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the batcher's task, which stops once every clone of the batcher is dropped.
    /// `run` answers a batch with one output per input, in order.
    pub(crate) fn start<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (queue, mut receiver) = mpsc::channel::<(I, oneshot::Sender<O>)>(max_batch * 4);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let run = Arc::new(run);
        tokio::spawn(async move {
            let mut arrivals = ArrivalRate::default();
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut waiting = Vec::with_capacity(max_batch);
                if receiver.recv_many(&mut waiting, max_batch).await == 0 {
                    return;
                }
                let busy = arrivals.expects_one_within(BUSY_WINDOW);
                if waiting.len() < max_batch && busy {
                    pause().await;
                    while waiting.len() < max_batch {
                        match receiver.try_recv() {
                            Ok(request) => waiting.push(request),
                            Err(_) => break,
                        }
                    }
                }
                arrivals.taken(waiting.len());
                let run = run.clone();
                tokio::spawn(async move {
                    let (inputs, replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
                        waiting.into_iter().unzip();
                    let outputs = run(inputs).await;
                    // A caller that stopped waiting finds its work done anyway; every step the
                    // exchange batches is idempotent, so that is harmless.
                    for (reply, output) in replies.into_iter().zip(outputs) {
                        let _ = reply.send(output);
                    }
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// The output for `input`, once its batch has run; `None` if the batcher stopped (or its
    /// batch failed to answer it), in which case the outcome is unknown.
    pub(crate) async fn submit(&self, input: I) -> Option<O> {
        let (reply, output) = oneshot::channel();
        self.queue.send((input, reply)).await.ok()?;
        output.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_batcher_is_busy_from_one_request_a_millisecond() {
        let at = |per_second| ArrivalRate {
            per_second,
            last: None,
        };
        assert!(at(1_000).expects_one_within(BUSY_WINDOW));
        assert!(!at(999).expects_one_within(BUSY_WINDOW));
        assert!(!ArrivalRate::default().expects_one_within(BUSY_WINDOW));
    }

    #[tokio::test]
    async fn each_input_gets_its_own_output() {
        let batcher = Batcher::start(8, 2, |inputs: Vec<u32>| async move {
            inputs.into_iter().map(|input| input * 10).collect()
        });
        let outputs = futures::future::join_all((0..50).map(|input| batcher.submit(input))).await;
        let expected: Vec<Option<u32>> = (0..50).map(|input| Some(input * 10)).collect();
        assert_eq!(outputs, expected);
    }

    #[tokio::test]
    async fn requests_that_wait_share_a_batch() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        // One slot, and a first batch that waits until every request has queued behind it.
        let (release, released) = tokio::sync::watch::channel(false);
        let batcher = Batcher::start(64, 1, move |inputs: Vec<u32>| {
            let counted = counted.clone();
            let mut released = released.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|released| *released).await;
                inputs
            }
        });
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(0).await }
        });
        // The first request is taken alone: nothing else was waiting.
        while batches.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Twenty more queue up behind it (straight onto the queue, so they are all there before
        // the first batch ends).
        let mut answers = Vec::new();
        for input in 1..=20 {
            let (reply, answer) = oneshot::channel();
            batcher.queue.send((input, reply)).await.unwrap();
            answers.push(answer);
        }
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Some(0));
        for (index, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.await.unwrap(), index as u32 + 1);
        }
        assert_eq!(
            batches.load(Ordering::SeqCst),
            2,
            "the twenty that waited went together"
        );
    }
}
