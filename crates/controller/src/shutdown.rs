//! Stopping with a deadline. The first SIGTERM or SIGINT tells the work to stop (no new
//! reconciles) and gives what runs a grace period to finish; when the grace runs out, or
//! at a second signal, the process ends whatever the work is doing: waiting for a store
//! that never syncs, for permissions, for an API server that never answers. A Pod is
//! killed 30 s after its SIGTERM by default; ending before that is ending on our terms.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tracing::{info, warn};

/// The exit code of a process that stopped with work unfinished (the grace ran out or a
/// second signal came): distinct from 1 (an error) and 2 (a usage error).
pub const UNFINISHED_EXIT_CODE: u8 = 3;

/// How [`run_until_deadline`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending<T> {
    /// The work ended by itself, before or within the grace after a signal.
    Finished(T),
    /// The grace after the first signal ran out with the work still running.
    GraceRanOut,
    /// A second signal came while the work was still stopping.
    SecondSignal,
}

/// The work's view of the first signal: stop taking new work.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once a stop was asked for (at once if it already was).
    pub fn requested(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the sender is gone: nobody is left to wait for, so stop too.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// `work`'s output, or `None` when a stop is asked for first: for steps that may
    /// wait without bound (reaching an API server) and are not worth finishing then.
    pub async fn unless_requested<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = work => Some(out),
            () = self.requested() => None,
        }
    }
}

/// Runs `work` until it ends. At the first item of `signals` the work's [`Stop`] is
/// requested and it has `grace` to end; a second item, or the end of the grace, returns
/// at once without it (the caller then exits the process: what the work held is dropped
/// unfinished). A `signals` stream that ends just means no signal can come.
pub async fn run_until_deadline<T, W, F, S>(work: W, signals: S, grace: Duration) -> Ending<T>
where
    W: FnOnce(Stop) -> F,
    F: Future<Output = T>,
    S: Stream<Item = ()>,
{
    let (stop, requested) = watch::channel(false);
    let mut work = pin!(work(Stop(requested)));
    let mut signals = pin!(signals.fuse());
    tokio::select! {
        biased;
        out = &mut work => return Ending::Finished(out),
        Some(()) = signals.next() => {}
    }
    info!(
        "shutting down: no new work; running work has {grace:?} to finish (a second signal exits at once)"
    );
    let _ = stop.send(true);
    tokio::select! {
        biased;
        out = &mut work => Ending::Finished(out),
        Some(()) = signals.next() => {
            warn!("a second signal; exiting at once with work unfinished");
            Ending::SecondSignal
        }
        () = tokio::time::sleep(grace) => {
            warn!("shutdown grace of {grace:?} ran out; exiting with work unfinished");
            Ending::GraceRanOut
        }
    }
}

/// SIGTERM (the kubelet, the demo) and SIGINT (Ctrl-C), each time they come.
pub fn signals() -> impl Stream<Item = ()> + Send + Unpin {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(mut s) => futures::stream::poll_fn(move |cx| s.poll_recv(cx)).boxed(),
        Err(e) => {
            // The default action (ending the process) then stays in place for it.
            warn!(error = %e, "cannot handle {name}");
            futures::stream::pending::<()>().boxed()
        }
    };
    futures::stream::select(
        listen(SignalKind::terminate(), "SIGTERM"),
        listen(SignalKind::interrupt(), "SIGINT"),
    )
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;
    use tokio::time::Instant;

    use super::*;

    const GRACE: Duration = Duration::from_secs(20);

    /// Sends a signal at each of `at` (seconds from now); the stream then stays open.
    fn signals_at(at: &[u64]) -> mpsc::UnboundedReceiver<()> {
        let (tx, rx) = mpsc::unbounded();
        let at = at.to_vec();
        tokio::spawn(async move {
            let start = Instant::now();
            for s in at {
                tokio::time::sleep_until(start + Duration::from_secs(s)).await;
                let _ = tx.unbounded_send(());
            }
            std::future::pending::<()>().await;
        });
        rx
    }

    /// Work that stops when asked, after `drain` of finishing what it runs.
    async fn draining(stop: Stop, drain: Duration) -> &'static str {
        stop.requested().await;
        tokio::time::sleep(drain).await;
        "drained"
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_by_itself_is_not_cut_short() {
        let start = Instant::now();
        let ending = run_until_deadline(
            |_| async {
                tokio::time::sleep(Duration::from_secs(100)).await;
                7
            },
            signals_at(&[]),
            GRACE,
        )
        .await;
        assert_eq!(ending, Ending::Finished(7));
        assert_eq!(start.elapsed(), Duration::from_secs(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_asks_the_work_to_stop_and_waits_for_it() {
        let start = Instant::now();
        let ending = run_until_deadline(
            |stop| draining(stop, Duration::from_secs(5)),
            signals_at(&[1]),
            GRACE,
        )
        .await;
        assert_eq!(ending, Ending::Finished("drained"));
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_does_not_stop_is_left_when_the_grace_runs_out() {
        let start = Instant::now();
        // E.g. a controller waiting for a store that never syncs: it never sees the stop.
        let ending =
            run_until_deadline(|_| std::future::pending::<()>(), signals_at(&[2]), GRACE).await;
        assert_eq!(ending, Ending::GraceRanOut);
        assert_eq!(start.elapsed(), Duration::from_secs(2) + GRACE);
        // Draining for longer than the grace is cut short as well.
        let start = Instant::now();
        let ending =
            run_until_deadline(|stop| draining(stop, GRACE * 2), signals_at(&[0]), GRACE).await;
        assert_eq!(ending, Ending::GraceRanOut);
        assert_eq!(start.elapsed(), GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_exits_at_once() {
        let start = Instant::now();
        let ending =
            run_until_deadline(|stop| draining(stop, GRACE * 2), signals_at(&[1, 4]), GRACE).await;
        assert_eq!(ending, Ending::SecondSignal);
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn without_signals_the_work_runs_on() {
        let ending = run_until_deadline(
            |stop| async move {
                let stopped = stop.unless_requested(tokio::time::sleep(GRACE * 10)).await;
                stopped.is_some()
            },
            futures::stream::empty(),
            GRACE,
        )
        .await;
        assert_eq!(ending, Ending::Finished(true), "never asked to stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_that_hangs_gives_way_to_the_stop() {
        let start = Instant::now();
        // E.g. reaching an API server that never answers, before any controller runs.
        let ending = run_until_deadline(
            |stop| async move {
                stop.unless_requested(std::future::pending::<()>())
                    .await
                    .is_none()
            },
            signals_at(&[3]),
            GRACE,
        )
        .await;
        assert_eq!(ending, Ending::Finished(true));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
