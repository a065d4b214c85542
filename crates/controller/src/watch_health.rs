//! Whether the watches of the management cluster are up, for `/readyz` and a metric.
//!
//! kube's watcher says nothing when a watch is re-established quietly (a re-watch from the
//! last resourceVersion emits no event), but it yields an error for every failed attempt,
//! and its backoff is bounded ([`BACKOFF_MAX`]): so a watch is down while its errors keep
//! coming, one streak of errors no further apart than [`STREAK_GAP`], and up as soon as it
//! delivers anything or the errors stop.

use std::sync::Mutex;

use crate::lock;
use std::time::{Duration, Instant};

/// The longest wait between two attempts of a failing watch: a management API server
/// that comes back is watched again within this long (kube's default is 30 s).
pub const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// Errors no further apart than this belong to one outage: the backoff, plus a connect
/// timeout to a server that does not answer, plus slack.
pub const STREAK_GAP: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Streak {
    first: Option<Instant>,
    last: Option<Instant>,
    errors: u32,
}

impl Streak {
    /// Whether errors are still coming at `now`.
    fn ongoing(&self, now: Instant) -> bool {
        self.last
            .is_some_and(|last| now.saturating_duration_since(last) <= STREAK_GAP)
    }

    /// How long the watch has been down at `now`, if it is: a lone error (one failed
    /// attempt, then a quiet success) is no outage.
    fn down_for(&self, now: Instant) -> Option<Duration> {
        let first = self.first?;
        (self.errors >= 2 && self.ongoing(now)).then(|| now.saturating_duration_since(first))
    }
}

/// One watch: the resource it watches and its current streak of errors.
#[derive(Debug)]
struct Watch {
    resource: &'static str,
    streak: Mutex<Streak>,
}

/// Every watch of the controller.
#[derive(Debug, Default)]
pub struct WatchHealth {
    watches: Mutex<Vec<std::sync::Arc<Watch>>>,
}

/// The handle one watch reports through.
#[derive(Clone, Debug)]
pub struct WatchReporter(std::sync::Arc<Watch>);

impl WatchReporter {
    /// The watch delivered something: it is up. Returns whether it had been down.
    pub fn up(&self) -> bool {
        let was = std::mem::take(&mut *lock(&self.0.streak));
        was.errors >= 2
    }

    /// An attempt failed at `now`. Returns whether this starts a new outage (its second
    /// error), to be said once.
    pub fn failed(&self, now: Instant) -> bool {
        let mut streak = lock(&self.0.streak);
        if !streak.ongoing(now) {
            *streak = Streak {
                first: Some(now),
                last: None,
                errors: 0,
            };
        }
        streak.last = Some(now);
        streak.errors = streak.errors.saturating_add(1);
        streak.errors == 2
    }
}

impl WatchHealth {
    /// A new watch of `resource` (e.g. `baremetalhosts`).
    pub fn register(&self, resource: &'static str) -> WatchReporter {
        let watch = std::sync::Arc::new(Watch {
            resource,
            streak: Mutex::default(),
        });
        lock(&self.watches).push(watch.clone());
        WatchReporter(watch)
    }

    /// The resources whose watch has been down longer than `grace` at `now`, sorted and
    /// without repeats (several scopes watch each resource).
    pub fn down_longer_than(&self, grace: Duration, now: Instant) -> Vec<&'static str> {
        let mut down: Vec<_> = lock(&self.watches)
            .iter()
            .filter(|w| lock(&w.streak).down_for(now).is_some_and(|d| d > grace))
            .map(|w| w.resource)
            .collect();
        down.sort_unstable();
        down.dedup();
        down
    }

    /// Every watched resource, with whether any of its watches is down at `now`.
    pub fn resources(&self, now: Instant) -> Vec<(&'static str, bool)> {
        let mut all: Vec<(&'static str, bool)> = Vec::new();
        for w in lock(&self.watches).iter() {
            let down = lock(&w.streak).down_for(now).is_some();
            match all.iter_mut().find(|(r, _)| *r == w.resource) {
                Some((_, d)) => *d |= down,
                None => all.push((w.resource, down)),
            }
        }
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_down_while_its_errors_keep_coming_and_up_when_they_stop() {
        let health = WatchHealth::default();
        let hosts = health.register("baremetalhosts");
        let _machines = health.register("machines");
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(health.down_longer_than(grace, t0).is_empty());
        // Errors every few seconds, as the bounded backoff retries.
        for s in (0..=15).step_by(5) {
            hosts.failed(at(s));
        }
        assert_eq!(health.down_longer_than(grace, at(9)), Vec::<&str>::new());
        assert_eq!(health.down_longer_than(grace, at(16)), ["baremetalhosts"]);
        assert_eq!(
            health.resources(at(16)),
            [("baremetalhosts", true), ("machines", false)]
        );
        // The errors stop (a quiet re-watch succeeded): up once the gap has passed.
        assert!(
            health
                .down_longer_than(grace, at(15) + STREAK_GAP + Duration::from_secs(1))
                .is_empty()
        );
        // Anything delivered: up at once.
        hosts.failed(at(40));
        hosts.failed(at(55));
        assert_eq!(health.down_longer_than(grace, at(56)), ["baremetalhosts"]);
        hosts.up();
        assert!(health.down_longer_than(grace, at(56)).is_empty());
        // A lone error long after the last streak is no outage, however long ago its
        // streak began; a second one makes it one.
        assert!(!hosts.failed(at(200)));
        assert!(health.down_longer_than(Duration::ZERO, at(219)).is_empty());
        assert!(hosts.failed(at(203)), "the second error starts an outage");
        assert_eq!(
            health.down_longer_than(Duration::ZERO, at(204)),
            ["baremetalhosts"]
        );
        assert!(hosts.up(), "it had been down");
        assert!(!hosts.up());
    }
}
