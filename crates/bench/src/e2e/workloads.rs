//! Where the workload clusters' API servers run, and how the harness reaches each cluster.
//!
//! Dedicated (the default): a kube-apiserver per cluster, its PKI hanging off the cluster's
//! CA, as the original experiments ran them. Fronted (`--workload-apiservers K`): K shared
//! kube-apiservers, each behind a `metal3-fakenode-front` (see [`crate::fronts`]);
//! cluster `i` is served by front `i % K` on a port of its own, with a serving certificate
//! the front signs from the cluster's `<cluster>-ca` Secret. Either way the harness reads a
//! cluster with a kubeconfig of its own making (an admin certificate of the cluster's CA)
//! at the cluster's control-plane endpoint.

use std::path::Path;

use futures::{StreamExt, TryStreamExt};

use crate::fronts;
use kube::Client;
use kube::config::Kubeconfig;
use metal3_fakenode_testkit::envtest::certs::ClusterCa;
use metal3_fakenode_testkit::envtest::process::Supervised;
use metal3_fakenode_testkit::envtest::{self, ApiServer, Assets, Etcd};
use serde::Serialize;

use crate::demo::process_stats;

/// How the workload API servers are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One kube-apiserver per cluster.
    Dedicated,
    /// This many kube-apiservers, each behind a tenancy front.
    Fronted(usize),
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Dedicated => "dedicated",
            Layout::Fronted(_) => "tenancy-front",
        }
    }
}

/// How the harness reaches one workload cluster.
pub struct Access {
    /// The control-plane endpoint the Cluster names.
    pub host: String,
    pub port: u16,
    /// A kubeconfig of the harness's own making for that endpoint.
    pub kubeconfig: Kubeconfig,
    /// The API server that stores the cluster's objects (index into [`Workloads::servers`]).
    pub server: usize,
}

impl Access {
    /// A new client; kube clients are bound to the runtime they were made in.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(envtest::client_for(&self.kubeconfig).await?)
    }
}

/// The workload API servers of a run, their fronts, and one [`Access`] per cluster.
pub struct Workloads {
    pub layout: Layout,
    pub servers: Vec<ApiServer>,
    pub fronts: Vec<Supervised>,
    pub access: Vec<Access>,
}

impl Workloads {
    /// Starts the servers (a few at once: each takes seconds of CPU) and, fronted, one
    /// front per server, ready once it has listed the Clusters. `cas` are the clusters'
    /// CAs, in order.
    pub async fn start(
        layout: Layout,
        assets: &Assets,
        etcd: &Etcd,
        names: &[String],
        cas: Vec<ClusterCa>,
        // The management cluster as the fronts see it (a kubeconfig of the ServiceAccount
        // of deploy/components/tenancy-front); fronted layouts need it.
        front_identity: Option<&Path>,
        dir: &Path,
    ) -> anyhow::Result<Workloads> {
        match layout {
            Layout::Dedicated => {
                let servers: Vec<ApiServer> = futures::stream::iter(
                    names
                        .iter()
                        .zip(cas)
                        .map(|(name, ca)| ApiServer::start_with_ca(assets, etcd, name, ca)),
                )
                .buffered(4)
                .try_collect()
                .await?;
                let access = servers
                    .iter()
                    .enumerate()
                    .map(|(i, server)| {
                        let port = server
                            .url()
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.parse().ok())
                            .ok_or_else(|| anyhow::anyhow!("no port in {}", server.url()))?;
                        Ok(Access {
                            host: "127.0.0.1".into(),
                            port,
                            kubeconfig: server.admin_kubeconfig(),
                            server: i,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
                Ok(Workloads {
                    layout,
                    servers,
                    fronts: Vec::new(),
                    access,
                })
            }
            Layout::Fronted(count) => {
                let ports = fronts::ports(names.len())?;
                let management =
                    front_identity.ok_or_else(|| anyhow::anyhow!("fronts need an identity"))?;
                let backing: Vec<String> = (0..count).map(|j| format!("backing-{j}")).collect();
                let servers: Vec<ApiServer> = futures::stream::iter(
                    backing
                        .iter()
                        .map(|name| ApiServer::start(assets, etcd, name)),
                )
                .buffered(4)
                .try_collect()
                .await?;
                let mut running = Vec::new();
                for (j, server) in servers.iter().enumerate() {
                    let kubeconfig = server.admin_kubeconfig();
                    let started =
                        fronts::start(j, &kubeconfig, management, ports.clone(), dir).await?;
                    running.push(started.process);
                }
                let mut access = Vec::new();
                for (i, (name, ca)) in names.iter().zip(cas).enumerate() {
                    let server = i % count;
                    let host = fronts::host(server);
                    let port = fronts::FIRST_PORT + u16::try_from(i)?;
                    let admin = ca.client_cert("admin", Some("system:masters"))?;
                    let kubeconfig = envtest::kubeconfig(
                        name,
                        &format!("https://{host}:{port}"),
                        &ca.cert_pem(),
                        "admin",
                        &admin,
                    );
                    access.push(Access {
                        host,
                        port,
                        kubeconfig,
                        server,
                    });
                }
                Ok(Workloads {
                    layout,
                    servers,
                    fronts: running,
                    access,
                })
            }
        }
    }

    /// What the API servers and fronts cost at this moment, per cluster and in total.
    pub fn cost(&self) -> ServingCost {
        let clusters = self.access.len();
        let servers: Vec<ProcessCost> = self
            .servers
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let served = self.access.iter().filter(|a| a.server == j).count();
                ProcessCost::of(s.name(), s.pid(), served)
            })
            .collect();
        let fronts: Vec<ProcessCost> = self
            .fronts
            .iter()
            .enumerate()
            .map(|(j, f)| {
                let served = self.access.iter().filter(|a| a.server == j).count();
                ProcessCost::of(&format!("front-{j}"), f.pid(), served)
            })
            .collect();
        ServingCost::new(self.layout.name(), clusters, servers, fronts)
    }
}

/// One process's cost: resident memory now and at its peak, CPU seconds since its start.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessCost {
    pub name: String,
    pub pid: u32,
    /// Workload clusters it serves.
    pub clusters: usize,
    pub rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

impl ProcessCost {
    fn of(name: &str, pid: u32, clusters: usize) -> ProcessCost {
        ProcessCost {
            name: name.to_string(),
            pid,
            clusters,
            rss_bytes: process_stats::rss_bytes(pid),
            peak_rss_bytes: process_stats::peak_rss_bytes(pid),
            cpu_seconds: process_stats::cpu_seconds(pid),
        }
    }
}

/// What serving the workload clusters' APIs cost: the API servers (and fronts) together,
/// and divided by the clusters, so dedicated and fronted runs compare per cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServingCost {
    /// `dedicated` or `tenancy-front`.
    pub layout: String,
    pub clusters: usize,
    pub api_servers: Vec<ProcessCost>,
    pub fronts: Vec<ProcessCost>,
    /// Resident memory of every API server and front.
    pub total_rss_bytes: u64,
    pub rss_bytes_per_cluster: u64,
    /// CPU seconds of every API server and front since they started.
    pub total_cpu_seconds: f64,
    pub cpu_seconds_per_cluster: f64,
}

impl ServingCost {
    /// Totals over the processes; a process whose figures could not be read counts 0.
    pub fn new(
        layout: &str,
        clusters: usize,
        api_servers: Vec<ProcessCost>,
        fronts: Vec<ProcessCost>,
    ) -> ServingCost {
        let all = || api_servers.iter().chain(&fronts);
        let total_rss_bytes: u64 = all().filter_map(|p| p.rss_bytes).sum();
        let total_cpu_seconds: f64 = all().filter_map(|p| p.cpu_seconds).sum();
        let per = clusters.max(1);
        ServingCost {
            layout: layout.to_string(),
            clusters,
            total_rss_bytes,
            rss_bytes_per_cluster: total_rss_bytes / per as u64,
            total_cpu_seconds,
            cpu_seconds_per_cluster: total_cpu_seconds / per as f64,
            api_servers,
            fronts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_is_summed_over_servers_and_fronts_and_divided_by_the_clusters() {
        let process = |name: &str, rss: Option<u64>, cpu: Option<f64>| ProcessCost {
            name: name.into(),
            pid: 1,
            clusters: 2,
            rss_bytes: rss,
            peak_rss_bytes: rss,
            cpu_seconds: cpu,
        };
        let cost = ServingCost::new(
            "tenancy-front",
            4,
            vec![
                process("backing-0", Some(400), Some(2.0)),
                process("backing-1", None, None),
            ],
            vec![process("front-0", Some(100), Some(1.0))],
        );
        assert_eq!(cost.total_rss_bytes, 500);
        assert_eq!(cost.rss_bytes_per_cluster, 125);
        assert_eq!(cost.total_cpu_seconds, 3.0);
        assert_eq!(cost.cpu_seconds_per_cluster, 0.75);
    }
}
