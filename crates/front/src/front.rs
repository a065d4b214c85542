//! The front: the set of served clusters brought in line with what is wanted, in three
//! steps. Observe (the caller: a file now, a Cluster watcher later) hands the wanted
//! clusters; `plan` decides; `apply` starts and stops listeners.
//!
//! The prefix record lives in memory; the Cluster watcher keeps it on the Clusters
//! themselves (an annotation each), hands it back with [`Front::remember`] after a
//! restart, and retires the prefixes of Clusters gone once their objects are removed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tenancy::{ClusterKey, Prefix};
use tokio::sync::Mutex;

use crate::clusters::ServedCluster;
use crate::error::{Error, Result};
use crate::listener::Listener;
use crate::metrics::Metrics;
use crate::patch_schemas::PatchSchemas;
use crate::plan::{self, Plan, Refusal, Start};
use crate::proxy::ClusterProxy;
use crate::tls;

/// Where a served cluster is reached, and the prefix of its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub prefix: Prefix,
    pub local_addr: SocketAddr,
}

/// What a reconcile did not do.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Clusters the plan refused (two on one endpoint, no prefix free...).
    pub refused: Vec<Refusal>,
    /// Clusters whose listener could not start (a bad CA, a port taken...).
    pub failed: Vec<(ClusterKey, Error)>,
    /// Clusters served on an endpoint that others name too: still served, but told.
    pub contested: Vec<Refusal>,
}

struct Served {
    spec: ServedCluster,
    endpoint: Endpoint,
    _listener: Listener,
}

#[derive(Default)]
struct State {
    recorded: BTreeMap<Prefix, ClusterKey>,
    served: BTreeMap<ClusterKey, Served>,
}

/// Many workload clusters in front of one backing API server.
pub struct Front {
    backing: kube::Client,
    metrics: Arc<Metrics>,
    schemas: Arc<PatchSchemas>,
    state: Mutex<State>,
}

impl Front {
    /// A front reaching the backing server with `backing` (its own credentials), counting
    /// in `metrics`.
    pub fn with_metrics(backing: kube::Client, metrics: Arc<Metrics>) -> Front {
        Front {
            schemas: Arc::new(PatchSchemas::new(backing.clone())),
            backing,
            metrics,
            state: Mutex::new(State::default()),
        }
    }

    /// A front reaching the backing server with `backing`, with metrics of its own.
    pub fn new(backing: kube::Client) -> Result<Front> {
        Ok(Front::with_metrics(backing, Arc::new(Metrics::new()?)))
    }

    /// A front reaching the backing server as the kubeconfig says.
    pub async fn from_kubeconfig(kubeconfig: Kubeconfig) -> Result<Front> {
        Front::new(backing_client(kubeconfig).await?)
    }

    /// The client of the backing server, with the front's credentials.
    pub fn backing(&self) -> &kube::Client {
        &self.backing
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Adds prefixes recorded elsewhere (on the Clusters) to the record, so a restarted
    /// front gives each Cluster the prefix its objects already carry. What the Clusters
    /// say wins over what this front allocated: they outlive it.
    pub async fn remember(&self, recorded: &BTreeMap<Prefix, ClusterKey>) {
        let mut state = self.state.lock().await;
        for (prefix, key) in recorded {
            match state.recorded.insert(prefix.clone(), key.clone()) {
                Some(previous) if &previous != key => tracing::warn!(
                    %prefix, was = %previous, now = %key,
                    "a Cluster records a prefix this front had given another"
                ),
                _ => {}
            }
        }
    }

    /// The prefixes handed out, and to which Cluster incarnation.
    pub async fn recorded(&self) -> BTreeMap<Prefix, ClusterKey> {
        self.state.lock().await.recorded.clone()
    }

    /// Forgets a prefix whose objects have been removed, unless a listener still uses it.
    /// False when it is still served.
    pub async fn retire(&self, prefix: &Prefix) -> bool {
        let mut state = self.state.lock().await;
        if state.served.values().any(|s| &s.endpoint.prefix == prefix) {
            return false;
        }
        state.recorded.remove(prefix);
        true
    }

    /// Serves exactly `wanted`: listeners of clusters no longer wanted stop, new ones
    /// start, changed ones restart.
    pub async fn reconcile(&self, wanted: &[ServedCluster]) -> Outcome {
        let mut state = self.state.lock().await;
        let running: BTreeMap<ClusterKey, ServedCluster> = state
            .served
            .iter()
            .map(|(key, served)| (key.clone(), served.spec.clone()))
            .collect();
        let plan = plan::plan(wanted, &running, &state.recorded);
        let outcome = self.apply(&mut state, plan).await;
        self.metrics
            .served_clusters
            .set(i64::try_from(state.served.len()).unwrap_or(i64::MAX));
        outcome
    }

    /// The clusters served now.
    pub async fn endpoints(&self) -> BTreeMap<ClusterKey, Endpoint> {
        let state = self.state.lock().await;
        state
            .served
            .iter()
            .map(|(key, served)| (key.clone(), served.endpoint.clone()))
            .collect()
    }

    async fn apply(&self, state: &mut State, plan: Plan) -> Outcome {
        let mut outcome = Outcome::default();
        for key in plan.stop {
            if state.served.remove(&key).is_some() {
                tracing::info!(cluster = %key, "stopped serving");
            }
        }
        for refusal in &plan.refused {
            tracing::warn!(cluster = %refusal.cluster, why = %refusal.why, "not served");
        }
        outcome.refused = plan.refused;
        outcome.contested = plan.contested;
        for start in plan.start {
            let key = start.served.cluster.clone();
            match self.start(start, state).await {
                Ok(served) => {
                    tracing::info!(
                        cluster = %key,
                        prefix = %served.endpoint.prefix,
                        addr = %served.endpoint.local_addr,
                        "serving"
                    );
                    state.served.insert(key, served);
                }
                Err(e) => {
                    tracing::warn!(cluster = %key, reason = e.reason(), error = %e, "cannot serve");
                    outcome.failed.push((key, e));
                }
            }
        }
        outcome
    }

    async fn start(&self, start: Start, state: &mut State) -> Result<Served> {
        let Start { served, allocation } = start;
        let key = served.cluster.clone();
        if !allocation.superseded.is_empty() {
            // The Cluster watcher removes them and retires the prefixes.
            tracing::info!(
                cluster = %key,
                superseded = ?allocation.superseded,
                "an earlier Cluster of this name has objects to remove"
            );
        }
        let prefix = allocation.prefix;
        let tls = tls::server_config(
            &format!("{}/{}", key.namespace, key.name),
            &served.ca_cert,
            &served.ca_key,
            &served.hosts,
        )?;
        self.ensure_namespaces(&prefix).await?;
        let proxy = ClusterProxy::new(
            format!("{}/{}", key.namespace, key.name),
            prefix.clone(),
            self.backing.clone(),
            self.metrics.clone(),
            self.schemas.clone(),
        );
        let listener = Listener::start(served.listen, tls, proxy).await?;
        state.recorded.insert(prefix.clone(), key);
        Ok(Served {
            endpoint: Endpoint {
                prefix,
                local_addr: listener.local_addr(),
            },
            spec: served,
            _listener: listener,
        })
    }

    /// Every cluster has its own `default`, `kube-system`, `kube-public` and
    /// `kube-node-lease`, made before its first client arrives.
    async fn ensure_namespaces(&self, prefix: &Prefix) -> Result<()> {
        for namespace in tenancy::well_known_namespaces(prefix).map_err(Error::Request)? {
            let body = serde_json::to_vec(&namespace).map_err(|e| Error::BadBody(e.to_string()))?;
            let request = Request::builder()
                .method(Method::POST)
                .uri("/api/v1/namespaces")
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::ACCEPT, "application/json")
                .body(kube::client::Body::from(body))
                .map_err(|e| Error::Backing(kube::Error::HttpError(e)))?;
            let answer = self.backing.send(request).await?;
            let status = answer.status();
            if !status.is_success() && status != StatusCode::CONFLICT {
                let body = answer.into_body().collect_bytes().await?;
                return Err(Error::BackingRefused {
                    what: "a well-known namespace",
                    status: status.as_u16(),
                    message: String::from_utf8_lossy(&body).into_owned(),
                });
            }
        }
        Ok(())
    }
}

/// A client of the backing server as the kubeconfig says.
pub async fn backing_client(kubeconfig: Kubeconfig) -> Result<kube::Client> {
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
