//! How long kube-runtime's scheduler holds a request that is due now, against a plain
//! channel: the floor of the controller's `fakenode_reconcile_queue_wait_seconds`. Every
//! watch event reaches a reconcile of kube's `Controller` through this scheduler, which
//! files even a request due now in tokio-util's `DelayQueue` (millisecond resolution), so
//! it comes out only when the runtime next fires its timers. A plain client of the
//! demo's ceiling has no such queue.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::runtime::scheduler::{ScheduleRequest, scheduler};

use crate::cli::QueueDelayArgs;
use crate::demo::report::Latency;

/// Sends `requests` messages `interval` apart through `queue` (built over the channel
/// they are sent on) and returns how long each took to come out, in seconds.
async fn delays<S>(
    requests: u32,
    interval: Duration,
    queue: impl FnOnce(futures::channel::mpsc::UnboundedReceiver<ScheduleRequest<u32>>) -> S,
) -> anyhow::Result<Vec<f64>>
where
    S: Stream<Item = u32> + Send + 'static,
{
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let sent: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; requests as usize]));
    let out = queue(rx);
    let received = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut out = std::pin::pin!(out.take(requests as usize));
            let mut delays = Vec::with_capacity(requests as usize);
            while let Some(i) = out.next().await {
                let at = sent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(i as usize)
                    .copied()
                    .flatten();
                if let Some(at) = at {
                    delays.push(at.elapsed().as_secs_f64());
                }
            }
            delays
        })
    };
    // Sent from a thread of its own, as events arrive from the network: at any moment,
    // not just after the runtime has fired its timers.
    let sender = std::thread::spawn(move || {
        for i in 0..requests {
            std::thread::sleep(interval);
            if let Some(slot) = sent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(i as usize)
            {
                *slot = Some(Instant::now());
            }
            tx.unbounded_send(ScheduleRequest {
                message: i,
                run_at: tokio::time::Instant::now(),
            })?;
        }
        // Kept open until every request is out: the scheduler ends with its input.
        Ok::<_, futures::channel::mpsc::TrySendError<_>>(tx)
    });
    let _open = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))??;
    let delays = tokio::time::timeout(Duration::from_secs(60), received).await??;
    anyhow::ensure!(
        delays.len() == requests as usize,
        "{} of {requests} requests came out",
        delays.len()
    );
    Ok(delays)
}

pub async fn run(args: QueueDelayArgs) -> anyhow::Result<()> {
    let scheduled = delays(args.requests, args.interval, scheduler).await?;
    let channel = delays(args.requests, args.interval, |rx| rx.map(|r| r.message)).await?;
    let mean = |d: &[f64]| d.iter().sum::<f64>() / d.len().max(1) as f64;
    let line = |what: &str, d: &[f64]| {
        let l = Latency::from_samples(d);
        println!(
            "  {what:<28} p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean {:.3} ms",
            l.p50 * 1e3,
            l.p90 * 1e3,
            l.p99 * 1e3,
            l.max * 1e3,
            mean(d) * 1e3
        );
    };
    println!(
        "a request due now, {} of them {} ms apart:",
        args.requests,
        args.interval.as_secs_f64() * 1e3
    );
    line("kube-runtime's scheduler", &scheduled);
    line("a plain channel", &channel);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_request_comes_out_of_both_queues() {
        let d = delays(20, Duration::from_millis(1), scheduler)
            .await
            .unwrap();
        assert_eq!(d.len(), 20);
        assert!(d.iter().all(|s| s.is_finite() && *s >= 0.0));
        let d = delays(20, Duration::from_millis(1), |rx| rx.map(|r| r.message))
            .await
            .unwrap();
        assert_eq!(d.len(), 20);
    }
}
