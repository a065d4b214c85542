//! Clients for the workload clusters, built from their CAPI kubeconfig Secrets: one per
//! cluster, cached, rebuilt as soon as the Secret's kubeconfig changes (rotation), each with
//! its own connect/request timeouts and rate limit so that one dead or slow workload
//! cluster never holds up the others.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::Error;
use crate::plan::{ClusterKey, KubeconfigSource};

/// Replaces the start of a workload API server URL, as the original scale tests did by
/// editing the kubeconfig when they reached the workload clusters through a port-forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRewrite {
    pub from: String,
    pub to: String,
}

impl std::str::FromStr for ServerRewrite {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (from, to) = s
            .split_once('=')
            .filter(|(f, t)| !f.is_empty() && !t.is_empty())
            .ok_or_else(|| {
                format!("{s:?} is not FROM=TO (e.g. https://10.0.0.5:6443=https://127.0.0.1:16443)")
            })?;
        Ok(Self {
            from: from.to_string(),
            to: to.to_string(),
        })
    }
}

/// How workload clients are built.
#[derive(Clone, Debug)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub qps: NonZeroU32,
    pub burst: NonZeroU32,
    pub rewrites: Vec<ServerRewrite>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            qps: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(40).unwrap_or(NonZeroU32::MIN),
            rewrites: Vec::new(),
        }
    }
}

/// A client for one workload cluster, with the rate limit every request must pass.
#[derive(Clone)]
pub struct WorkloadClient {
    pub cluster: ClusterKey,
    pub client: Client,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl WorkloadClient {
    /// Waits for the cluster's rate limit; call before every request.
    pub async fn throttle(&self) {
        self.limiter.until_ready().await;
    }
}

struct Entry {
    fingerprint: u64,
    client: WorkloadClient,
}

/// The cache of workload clients, keyed by cluster.
pub struct WorkloadClients {
    settings: Settings,
    entries: Mutex<HashMap<ClusterKey, Entry>>,
}

impl WorkloadClients {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `cluster`, built from `source` unless one built from the very same
    /// kubeconfig is cached: a rotated Secret (new server, new credentials) takes effect
    /// on the next request.
    pub async fn client(
        &self,
        cluster: &ClusterKey,
        source: &KubeconfigSource,
    ) -> Result<WorkloadClient, Error> {
        let fingerprint = fingerprint(&source.value.0);
        if let Some(entry) = self.lock().get(cluster)
            && entry.fingerprint == fingerprint
        {
            return Ok(entry.client.clone());
        }
        let client = WorkloadClient {
            cluster: cluster.clone(),
            client: build_client(source, &self.settings).await?,
            limiter: Arc::new(RateLimiter::direct(
                Quota::per_second(self.settings.qps).allow_burst(self.settings.burst),
            )),
        };
        self.lock().insert(
            cluster.clone(),
            Entry {
                fingerprint,
                client: client.clone(),
            },
        );
        Ok(client)
    }

    /// The cached client of a cluster, if one was built: for work that outlives a
    /// reconcile (heartbeats, cleanup), which must not build clients of its own.
    pub fn cached(&self, cluster: &ClusterKey) -> Option<WorkloadClient> {
        self.lock().get(cluster).map(|e| e.client.clone())
    }

    /// The clusters with a cached client.
    pub fn clusters(&self) -> Vec<ClusterKey> {
        self.lock().keys().cloned().collect()
    }

    /// Drops the cached client of a cluster (its Secret is gone).
    pub fn forget(&self, cluster: &ClusterKey) {
        self.lock().remove(cluster);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterKey, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // operation is a single insert/remove/get), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Parses a kubeconfig from Secret data. Credentials that would make this process run a
/// program or read local files are refused: a Secret must never execute anything here.
pub fn parse_kubeconfig(source: &KubeconfigSource) -> Result<Kubeconfig, Error> {
    let invalid = |message: String| Error::KubeconfigInvalid {
        secret: source.secret.clone(),
        message,
    };
    let text =
        std::str::from_utf8(&source.value.0).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| invalid(e.to_string()))?;
    if kubeconfig.clusters.is_empty() && kubeconfig.auth_infos.is_empty() {
        return Err(invalid("no clusters and no users".into()));
    }
    for user in &kubeconfig.auth_infos {
        let Some(auth) = &user.auth_info else {
            continue;
        };
        let refused = if auth.exec.is_some() {
            Some("an exec credential plugin")
        } else if auth.auth_provider.is_some() {
            Some("an auth provider")
        } else if auth.client_certificate.is_some() || auth.client_key.is_some() {
            Some("a client certificate file path")
        } else if auth.token_file.is_some() {
            Some("a token file path")
        } else {
            None
        };
        if let Some(what) = refused {
            return Err(Error::KubeconfigUnusable {
                secret: source.secret.clone(),
                message: format!(
                    "user {:?} uses {what}; only inline credentials are accepted",
                    user.name
                ),
            });
        }
    }
    Ok(kubeconfig)
}

async fn build_client(source: &KubeconfigSource, settings: &Settings) -> Result<Client, Error> {
    let kubeconfig = parse_kubeconfig(source)?;
    let unusable = |message: String| Error::KubeconfigUnusable {
        secret: source.secret.clone(),
        message,
    };
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| unusable(e.to_string()))?;
    rewrite_server(&mut config, &settings.rewrites).map_err(unusable)?;
    config.connect_timeout = Some(settings.connect_timeout);
    config.read_timeout = Some(settings.request_timeout);
    config.write_timeout = Some(settings.request_timeout);
    // Without this, time a pooled connection sat idle counts against the read timeout.
    config.reset_reader_on_write = true;
    // Retries are the controller's: a requeue with backoff frees the worker, where an
    // in-client retry of a throttling or failing cluster would hold it.
    config.default_retry = false;
    Client::try_from(config).map_err(|e| unusable(e.to_string()))
}

/// Applies the first matching rewrite. The TLS server name stays the original host, since
/// the workload API server's certificate was issued for it, not for the rewritten address.
fn rewrite_server(config: &mut kube::Config, rewrites: &[ServerRewrite]) -> Result<(), String> {
    let original = config.cluster_url.to_string();
    let Some(rewrite) = rewrites.iter().find(|r| original.starts_with(&r.from)) else {
        return Ok(());
    };
    let rewritten = format!("{}{}", rewrite.to, &original[rewrite.from.len()..]);
    let host = config.cluster_url.host().map(str::to_string);
    config.cluster_url = rewritten
        .parse()
        .map_err(|e| format!("rewritten server {rewritten:?} is not a URL: {e}"))?;
    if config.tls_server_name.is_none() {
        config.tls_server_name = host.map(|h| h.trim_matches(['[', ']']).to_string());
    }
    Ok(())
}

/// Classifies a failed workload request by what an operator must do about it.
pub fn classify(cluster: &ClusterKey, err: kube::Error) -> Error {
    let cluster = cluster.to_string();
    match err {
        kube::Error::Api(status) => {
            // A 422 lists every invalid field with its value: bounded, like every message.
            let message = crate::tolerant::bounded(
                format!("{} {}: {}", status.code, status.reason, status.message),
                1024,
            );
            match status.code {
                401 | 403 => Error::WorkloadForbidden { cluster, message },
                429 => Error::WorkloadThrottled { cluster, message },
                // Validation: the same request fails the same way until an input changes.
                422 => Error::WorkloadInvalid { cluster, message },
                500..=599 => Error::WorkloadServerError { cluster, message },
                _ => Error::WorkloadRequest { cluster, message },
            }
        }
        other => {
            let message = error_chain(&other);
            // Certificate errors mean a CA or name mismatch: a configuration problem. A
            // timeout during the handshake is an unreachable server, not a TLS problem.
            if message.to_lowercase().contains("certificate") {
                Error::WorkloadTls { cluster, message }
            } else if matches!(other, kube::Error::HyperError(_) | kube::Error::Service(_)) {
                Error::WorkloadUnreachable { cluster, message }
            } else {
                Error::WorkloadRequest { cluster, message }
            }
        }
    }
}

/// An error and all its sources on one line: hyper's top-level messages alone ("client
/// error (Connect)") do not say what went wrong.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn source(yaml: &str) -> KubeconfigSource {
        KubeconfigSource {
            secret: "ns/c-kubeconfig".into(),
            value: ByteString(yaml.as_bytes().to_vec()),
        }
    }

    const GOOD: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: 'https://10.0.0.5:6443', certificate-authority-data: ''}
users:
- name: admin
  user: {token: abc}
contexts:
- name: admin@c
  context: {cluster: c, user: admin}
current-context: admin@c
";

    #[test]
    fn a_good_kubeconfig_parses() {
        let kc = parse_kubeconfig(&source(GOOD)).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("admin@c"));
    }

    #[test]
    fn garbage_is_invalid() {
        for bad in ["", "hello", "[1, 2]", "\u{0}\u{1}", "{}"] {
            let e = parse_kubeconfig(&source(bad)).unwrap_err();
            assert_eq!(e.reason(), "kubeconfig_invalid", "{bad:?}: {e}");
        }
        let e = parse_kubeconfig(&KubeconfigSource {
            secret: "s".into(),
            value: ByteString(vec![0xff, 0xfe]),
        })
        .unwrap_err();
        assert_eq!(e.reason(), "kubeconfig_invalid");
    }

    #[test]
    fn exec_plugins_and_file_paths_are_refused() {
        let exec = GOOD.replace(
            "user: {token: abc}",
            "user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}",
        );
        let e = parse_kubeconfig(&source(&exec)).unwrap_err();
        assert_eq!(e.reason(), "kubeconfig_unusable");
        assert!(e.to_string().contains("exec"), "{e}");
        let file = GOOD.replace("user: {token: abc}", "user: {tokenFile: /etc/shadow}");
        assert_eq!(
            parse_kubeconfig(&source(&file)).unwrap_err().reason(),
            "kubeconfig_unusable"
        );
    }

    #[tokio::test]
    async fn a_kubeconfig_without_a_usable_context_is_unusable() {
        let no_context = GOOD.replace("current-context: admin@c", "current-context: nope");
        let e = build_client(&source(&no_context), &Settings::default())
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason(), "kubeconfig_unusable", "{e}");
    }

    #[tokio::test]
    async fn the_cache_rebuilds_on_rotation_only() {
        let clients = WorkloadClients::new(Settings::default());
        let key = ClusterKey {
            namespace: "ns".into(),
            name: "c".into(),
        };
        let a = clients.client(&key, &source(GOOD)).await.unwrap();
        let b = clients.client(&key, &source(GOOD)).await.unwrap();
        assert!(
            Arc::ptr_eq(&a.limiter, &b.limiter),
            "same kubeconfig, same client"
        );
        let rotated = GOOD.replace("token: abc", "token: def");
        let c = clients.client(&key, &source(&rotated)).await.unwrap();
        assert!(
            !Arc::ptr_eq(&a.limiter, &c.limiter),
            "rotated kubeconfig, new client"
        );
        assert_eq!(clients.len(), 1);
        assert!(Arc::ptr_eq(
            &clients.cached(&key).unwrap().limiter,
            &c.limiter
        ));
        assert_eq!(clients.clusters(), std::slice::from_ref(&key));
        clients.forget(&key);
        assert!(clients.cached(&key).is_none());
        assert!(clients.is_empty());
    }

    #[test]
    fn rewrites_keep_the_original_tls_name() {
        let mut config = kube::Config::new("https://10.0.0.5:6443/".parse().unwrap());
        let rewrites = vec![
            "https://10.0.0.5:6443=https://127.0.0.1:16443"
                .parse()
                .unwrap(),
        ];
        rewrite_server(&mut config, &rewrites).unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:16443/");
        assert_eq!(config.tls_server_name.as_deref(), Some("10.0.0.5"));
        let mut other = kube::Config::new("https://10.9.9.9:6443/".parse().unwrap());
        rewrite_server(&mut other, &rewrites).unwrap();
        assert_eq!(other.cluster_url.to_string(), "https://10.9.9.9:6443/");
        assert!("no-equals".parse::<ServerRewrite>().is_err());
    }
}
