//! Tenancy fronts (`metal3-fakenode-front`) as the benches run them: one per shared
//! kube-apiserver, each on a loopback address of its own (in a 127.N/16 block chosen by
//! the bench's process id, so that two benches on one machine do not meet; 127.0.0.1 is
//! everyone else's), so every front may use the same port range, watching the management
//! cluster's Clusters for the ones naming it.

use std::ops::RangeInclusive;
use std::path::Path;
use std::time::{Duration, Instant};

use kube::config::Kubeconfig;
use metal3_fakenode_testkit::envtest::process::Supervised;
use metal3_fakenode_testkit::{envtest, probe};

/// The first port of every front's range; cluster `i` of a bench listens on
/// `FIRST_PORT + i`.
pub const FIRST_PORT: u16 = 7000;

/// The ports a front listens on for `clusters` clusters.
pub fn ports(clusters: usize) -> anyhow::Result<RangeInclusive<u16>> {
    let last = u16::try_from(clusters.max(1) - 1)
        .ok()
        .and_then(|n| FIRST_PORT.checked_add(n))
        .ok_or_else(|| anyhow::anyhow!("{clusters} clusters do not fit in one port range"))?;
    Ok(FIRST_PORT..=last)
}

/// The loopback address of front `index` of this process.
pub fn host(index: usize) -> String {
    host_in(std::process::id(), index)
}

/// Front `index` of the bench with process id `pid`: 127.(1 + pid mod 254).x.y, never
/// 127.0.0.0/16.
fn host_in(pid: u32, index: usize) -> String {
    format!(
        "127.{}.{}.{}",
        1 + pid % 254,
        (index / 250) % 256,
        2 + index % 250
    )
}

/// One running front.
pub struct Front {
    pub process: Supervised,
    /// Where its `/metrics` and `/readyz` answer.
    pub metrics: String,
}

/// Starts front `index` over the backing server `backing` (its admin kubeconfig), reading
/// Clusters with `management` (a kubeconfig file), serving `ports` on [`host`]`(index)`;
/// returns once it has listed the Clusters.
pub async fn start(
    index: usize,
    backing: &Kubeconfig,
    management: &Path,
    ports: RangeInclusive<u16>,
    dir: &Path,
) -> anyhow::Result<Front> {
    let host = host(index);
    let backing_path = dir.join(format!("backing-{index}.kubeconfig"));
    std::fs::write(&backing_path, envtest::kubeconfig_yaml(backing)?)?;
    let metrics = format!("127.0.0.1:{}", envtest::free_port()?);
    let args: Vec<String> = [
        "--backing-kubeconfig",
        &backing_path.display().to_string(),
        "--management-kubeconfig",
        &management.display().to_string(),
        "--host",
        &host,
        "--bind",
        &host,
        "--ports",
        &format!("{}-{}", ports.start(), ports.end()),
        "--metrics-address",
        &metrics,
        "--instance",
        &format!("front-{index}"),
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    let name = format!("metal3-fakenode-front-{index}");
    let mut process = Supervised::spawn_with_env(
        &name,
        &crate::front_binary()?,
        &args,
        &[("RUST_LOG", "info")],
        dir.join(format!("{name}.log")),
    )?;
    probe::wait_ready(
        &mut process,
        &name,
        &metrics,
        "/readyz",
        Duration::from_secs(60),
    )
    .await?;
    Ok(Front { process, metrics })
}

impl Front {
    /// Waits until the front serves `clusters` clusters (its own gauge says so).
    pub async fn wait_serving(&self, clusters: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut served = None;
        while Instant::now() < deadline {
            if let Ok((200, text)) = probe::get(&self.metrics, "/metrics").await {
                served = metal3_fakenode_testkit::exposition::metric_value(
                    &text,
                    "metal3_fakenode_front_served_clusters",
                );
                if served == Some(clusters as f64) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("the front serves {served:?} cluster(s) after {timeout:?}, not {clusters}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fronts_get_loopback_addresses_of_their_own() {
        assert_eq!(host_in(0, 0), "127.1.0.2");
        assert_eq!(host_in(0, 1), "127.1.0.3");
        assert_eq!(host_in(254, 250), "127.1.1.2");
        assert_eq!(host_in(253, 0), "127.254.0.2");
        assert_ne!(host_in(1, 0), host_in(2, 0));
        assert_eq!(host(3), host(3));
    }

    #[test]
    fn a_port_per_cluster_from_the_first() {
        assert_eq!(ports(1).unwrap(), 7000..=7000);
        assert_eq!(ports(1000).unwrap(), 7000..=7999);
        assert!(ports(70_000).is_err());
    }
}
