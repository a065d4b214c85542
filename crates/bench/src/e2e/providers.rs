//! The upstream controllers as local processes: their command lines (pure) and their
//! start-up. Each listens on loopback ports of its own, runs without leader election and
//! serves its webhooks with a certificate from the harness's CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use metal3_fakenode_testkit::envtest::process::Supervised;
use metal3_fakenode_testkit::envtest::{self, certs::CertAndKey};
use metal3_fakenode_testkit::probe;

/// How a controller takes its options: the Cluster API family shares one set of flags; the
/// baremetal-operator has its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    ClusterApi,
    BaremetalOperator,
}

/// One upstream controller: its binary (and provider directory) name in the e2e assets.
#[derive(Clone, Copy, Debug)]
pub struct Provider {
    pub name: &'static str,
    pub flavour: Flavour,
}

/// Every controller the run needs. The IP address manager's CRDs are installed (CAPM3
/// watches its kinds) but it need not run: no template here asks for addresses.
pub const PROVIDERS: [Provider; 5] = [
    Provider {
        name: "cluster-api",
        flavour: Flavour::ClusterApi,
    },
    Provider {
        name: "kubeadm-control-plane",
        flavour: Flavour::ClusterApi,
    },
    Provider {
        name: "kubeadm-bootstrap",
        flavour: Flavour::ClusterApi,
    },
    Provider {
        name: "cluster-api-provider-metal3",
        flavour: Flavour::ClusterApi,
    },
    Provider {
        name: "baremetal-operator",
        flavour: Flavour::BaremetalOperator,
    },
];

/// The loopback ports of one controller.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub webhook: u16,
    pub health: u16,
    pub metrics: u16,
}

impl Ports {
    /// Distinct free ports for `n` controllers.
    pub fn free(n: usize) -> Result<Vec<Self>, envtest::EnvtestError> {
        let ports = envtest::free_ports(3 * n)?;
        Ok(ports
            .chunks_exact(3)
            .map(|p| Self {
                webhook: p[0],
                health: p[1],
                metrics: p[2],
            })
            .collect())
    }
}

/// The command line and extra environment of `provider`, whose webhook certificate is in
/// `cert_dir` (as `tls.crt`/`tls.key`).
pub fn command_line(
    provider: &Provider,
    ports: &Ports,
    cert_dir: &Path,
) -> (Vec<String>, Vec<(String, String)>) {
    let loopback = |port: u16| format!("127.0.0.1:{port}");
    match provider.flavour {
        Flavour::ClusterApi => (
            vec![
                "--leader-elect=false".into(),
                format!("--webhook-port={}", ports.webhook),
                format!("--webhook-cert-dir={}", cert_dir.display()),
                format!("--health-addr={}", loopback(ports.health)),
                // Plain HTTP on loopback: nothing here authenticates a scraper.
                format!("--diagnostics-address={}", loopback(ports.metrics)),
                "--insecure-diagnostics".into(),
            ],
            Vec::new(),
        ),
        Flavour::BaremetalOperator => (
            vec![
                // The fixture provisioner: no Ironic, hosts move through their states alone.
                "--test-mode".into(),
                format!("--webhook-port={}", ports.webhook),
                format!("--health-addr={}", loopback(ports.health)),
                format!("--metrics-addr={}", loopback(ports.metrics)),
            ],
            // It has no flag for the certificate directory; controller-runtime's default is
            // <temp dir>/k8s-webhook-server/serving-certs, so its temp dir is given instead.
            vec![(
                "TMPDIR".to_string(),
                bmo_temp_dir(cert_dir).display().to_string(),
            )],
        ),
    }
}

/// The temp dir that puts controller-runtime's default certificate directory at `cert_dir`.
fn bmo_temp_dir(cert_dir: &Path) -> PathBuf {
    cert_dir
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cert_dir.to_path_buf())
}

/// Where a provider's webhook certificate goes under `dir`: for the baremetal-operator,
/// controller-runtime's default layout under its temp dir.
pub fn cert_dir(provider: &Provider, dir: &Path) -> PathBuf {
    let base = dir.join(provider.name);
    match provider.flavour {
        Flavour::ClusterApi => base.join("certs"),
        Flavour::BaremetalOperator => base.join("k8s-webhook-server").join("serving-certs"),
    }
}

/// A running controller.
pub struct Running {
    pub provider: Provider,
    pub ports: Ports,
    pub process: Supervised,
}

/// Starts `provider` with the admin `kubeconfig`, its files under `dir`, and waits for its
/// `/readyz` (which includes its webhook server).
pub async fn start(
    provider: Provider,
    ports: Ports,
    bin_dir: &Path,
    kubeconfig: &Path,
    dir: &Path,
    serving: &CertAndKey,
) -> anyhow::Result<Running> {
    let certs = cert_dir(&provider, dir);
    std::fs::create_dir_all(&certs).with_context(|| format!("creating {}", certs.display()))?;
    std::fs::write(certs.join("tls.crt"), &serving.cert_pem)?;
    std::fs::write(certs.join("tls.key"), &serving.key_pem)?;
    let (args, env) = command_line(&provider, &ports, &certs);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let kubeconfig = kubeconfig.display().to_string();
    env.push(("KUBECONFIG", &kubeconfig));
    let mut process = Supervised::spawn_with_env(
        provider.name,
        &bin_dir.join(provider.name),
        &args,
        &env,
        dir.join(format!("{}.log", provider.name)),
    )
    .with_context(|| format!("starting {}", provider.name))?;
    let address = format!("127.0.0.1:{}", ports.health);
    probe::wait_ready(
        &mut process,
        provider.name,
        &address,
        "/readyz",
        Duration::from_secs(120),
    )
    .await?;
    Ok(Running {
        provider,
        ports,
        process,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: Ports = Ports {
        webhook: 1,
        health: 2,
        metrics: 3,
    };

    #[test]
    fn cluster_api_providers_listen_on_their_own_loopback_ports_without_leader_election() {
        let dir = Path::new("/run/e2e");
        let provider = PROVIDERS[0];
        let (args, env) = command_line(&provider, &PORTS, &cert_dir(&provider, dir));
        assert!(args.contains(&"--leader-elect=false".to_string()));
        assert!(args.contains(&"--webhook-port=1".to_string()));
        assert!(args.contains(&"--health-addr=127.0.0.1:2".to_string()));
        assert!(args.contains(&"--diagnostics-address=127.0.0.1:3".to_string()));
        assert!(args.contains(&"--webhook-cert-dir=/run/e2e/cluster-api/certs".to_string()));
        assert!(env.is_empty());
    }

    #[test]
    fn the_baremetal_operator_finds_its_certificate_through_its_temp_dir() {
        let dir = Path::new("/run/e2e");
        let bmo = PROVIDERS[4];
        let certs = cert_dir(&bmo, dir);
        let (args, env) = command_line(&bmo, &PORTS, &certs);
        assert!(args.contains(&"--test-mode".to_string()));
        let tmp = PathBuf::from(&env[0].1);
        assert_eq!(env[0].0, "TMPDIR");
        assert_eq!(tmp.join("k8s-webhook-server").join("serving-certs"), certs);
    }
}
