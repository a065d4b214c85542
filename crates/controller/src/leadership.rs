//! Leader election on a Kubernetes Lease (kube-lease-manager acquires and renews it).
//!
//! The crate keeps saying "leader" while the API server cannot be reached (it retries the
//! renewal), so a partitioned leader would go on acting after its Lease expired and a
//! standby took over. Leadership here is therefore "the crate says leader *and* a renewal
//! of our Lease was seen recently": a watch on the Lease stamps each renewal, and the
//! leadership ends half a grace period before the Lease can expire for the others. This
//! is client-go's renew deadline on top of the crate, not a protocol of our own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{info, warn};

/// Where the Lease lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    pub lease_name: String,
    /// This replica, as written in the Lease's holderIdentity.
    pub identity: String,
    pub lease_duration: Duration,
    /// The Lease is renewed this long before it expires.
    pub grace: Duration,
}

impl Settings {
    /// How long after a seen renewal this replica may still act: until half a grace
    /// period before the Lease expires for the others.
    pub fn acting_window(&self) -> Duration {
        self.lease_duration.saturating_sub(self.grace / 2)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.lease_duration.as_secs() < 2
            || self.grace.is_zero()
            || self.grace >= self.lease_duration
        {
            return Err(format!(
                "the lease duration ({:?}) must be at least 2s and longer than the grace ({:?})",
                self.lease_duration, self.grace
            ));
        }
        Ok(())
    }
}

/// Whether this replica may act now, given the crate's view and the last renewal seen.
pub fn may_act(
    crate_says_leader: bool,
    last_renewal: Option<Instant>,
    now: Instant,
    window: Duration,
) -> bool {
    crate_says_leader && last_renewal.is_some_and(|r| now.saturating_duration_since(r) < window)
}

/// Starts the election; the receiver says whether this replica may act. Dropping every
/// receiver releases the Lease (the crate's watch task then ends).
pub async fn elect(
    client: Client,
    settings: Settings,
) -> Result<watch::Receiver<bool>, kube_lease_manager::LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.lease_duration.as_secs())
        .with_grace(settings.grace.as_secs().max(1))
        .with_create_mode(LeaseCreateMode::AutoCreate)
        .with_field_manager(crate::CONTROLLER_NAME)
        .build()
        .await?;
    let (crate_view, crate_task) = manager.watch().await;

    let last_renewal = Arc::new(Mutex::new(None::<Instant>));
    let leases: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let renewals = {
        let (last_renewal, identity) = (last_renewal.clone(), settings.identity.clone());
        watcher(
            leases,
            watcher::Config::default().fields(&format!("metadata.name={}", settings.lease_name)),
        )
        .default_backoff()
        .applied_objects()
        .for_each(move |lease| {
            if let Ok(lease) = lease {
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
                if holder == Some(identity.as_str()) {
                    *crate::lock(&last_renewal) = Some(Instant::now());
                } else if holder.is_some() {
                    tracing::debug!(lease = %lease.name_any(), ?holder, "the Lease is held by another replica");
                }
            }
            futures::future::ready(())
        })
    };
    let renewals = tokio::spawn(renewals);

    let (tx, rx) = watch::channel(false);
    let window = settings.acting_window();
    tokio::spawn(async move {
        let mut crate_view = crate_view;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                _ = tick.tick() => {}
                changed = crate_view.changed() => if changed.is_err() { break },
            }
            let last = *crate::lock(&last_renewal);
            let acting = may_act(*crate_view.borrow(), last, Instant::now(), window);
            if *tx.borrow() != acting {
                if acting {
                    info!("became the leader");
                } else {
                    warn!("leadership lost (or no renewal seen in time): stopping at once");
                }
                let _ = tx.send(acting);
            }
        }
        renewals.abort();
        // Dropping the crate's receiver makes it release the Lease for a quick takeover.
        drop(crate_view);
        let _ = crate_task.await;
    });
    Ok(rx)
}

/// Runs the controller while this replica leads, standing by otherwise, until `stop`.
/// On a lost leadership the controller is told to stop and given half the grace period to
/// drain; whatever is left is dropped, so nothing is written once the Lease can expire.
/// After `stop`, the running controller drains within the shutdown grace (the caller's
/// deadline).
pub async fn lead(
    client: Client,
    config: crate::controller::Config,
    metrics: Arc<crate::metrics::Metrics>,
    health: Arc<crate::http::Health>,
    settings: Settings,
    stop: crate::shutdown::Stop,
) -> anyhow::Result<()> {
    info!(lease = %settings.lease_name, namespace = %settings.namespace, identity = %settings.identity, "standing for election");
    let drain = settings.grace / 2;
    let Some(leading) = stop.unless_requested(elect(client.clone(), settings)).await else {
        return Ok(());
    };
    let mut leading = leading?;
    let mut shutdown = std::pin::pin!(stop.requested());
    loop {
        // A standby is healthy and ready: a rollout must not wait for a leader change.
        metrics.leader.set(0);
        health.set_ready(true);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            won = leading.wait_for(|l| *l) => {
                won.map_err(|_| anyhow::anyhow!("leader election stopped"))?;
            }
        }
        metrics.leader.set(1);
        health.set_ready(false);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop_leading = async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut run = std::pin::pin!(crate::controller::run(
            client.clone(),
            config.clone(),
            metrics.clone(),
            health.clone(),
            stop_leading,
        ));
        tokio::select! {
            _ = &mut run => {}
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                run.await;
                return Ok(());
            }
            _ = leading.wait_for(|l| !*l) => {
                let _ = stop_tx.send(true);
                metrics.leader.set(0);
                let _ = tokio::time::timeout(drain, &mut run).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acting_needs_the_crate_and_a_recent_renewal() {
        let now = Instant::now();
        let window = Duration::from_secs(10);
        assert!(may_act(
            true,
            Some(now - Duration::from_secs(3)),
            now,
            window
        ));
        assert!(!may_act(true, None, now, window), "no renewal seen yet");
        assert!(
            !may_act(true, Some(now - Duration::from_secs(11)), now, window),
            "partitioned"
        );
        assert!(!may_act(false, Some(now), now, window), "the crate lost it");
    }

    #[test]
    fn the_window_ends_before_the_lease_expires() {
        let s = Settings {
            namespace: "metal3".into(),
            lease_name: "l".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            grace: Duration::from_secs(4),
        };
        assert_eq!(s.acting_window(), Duration::from_secs(13));
        assert!(s.check().is_ok());
        let bad = Settings {
            grace: Duration::from_secs(15),
            ..s
        };
        assert!(bad.check().is_err());
    }
}
