//! The front: the set of served clusters brought in line with what is wanted, in three
//! steps. Observe (the caller: a file now, a Cluster watcher later) hands the wanted
//! clusters; `plan` decides; `apply` starts and stops listeners.
//!
//! The prefix record lives in memory in this version. A restarted front computes the same
//! first candidate for each Cluster UID, so prefixes survive restarts unless two UIDs
//! collided; keeping the record in the backing server comes with the Cluster watcher.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http::{Method, Request, StatusCode};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tenancy::{ClusterKey, Prefix};
use tokio::sync::Mutex;

use crate::clusters::ServedCluster;
use crate::error::{Error, Result};
use crate::listener::Listener;
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
    state: Mutex<State>,
}

impl Front {
    /// A front reaching the backing server with `backing` (its own credentials).
    pub fn new(backing: kube::Client) -> Front {
        Front {
            backing,
            state: Mutex::new(State::default()),
        }
    }

    /// A front reaching the backing server as the kubeconfig says.
    pub async fn from_kubeconfig(kubeconfig: Kubeconfig) -> Result<Front> {
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Front::new(kube::Client::try_from(config)?))
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
        self.apply(&mut state, plan).await
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
            // Removing an earlier incarnation's objects comes with the Cluster watcher.
            tracing::warn!(
                cluster = %key,
                superseded = ?allocation.superseded,
                "objects of an earlier Cluster of this name remain in the backing server"
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
