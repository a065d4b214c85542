//! One port-forward session: the SPDY streams the API server opens come in pairs (an error
//! stream and a data stream with the same `requestID` and `port`, as the kubelet's
//! port-forward protocol has them); each complete pair is one forwarded connection, served
//! by the fake behind that port of the Pod ([`super::targets`]). What cannot be served is
//! said on the pair's error stream, which the port-forward's client reports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use super::targets::{self, Target};
use super::tls::{self, TlsError};
use super::{KubeletApi, Resolved};
use crate::plan::ClusterKey;

/// The port-forward subprotocol of the kubelet API (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// A pair not completed within this is dropped (the kubelet's stream creation timeout).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// A stream's role in its pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Error,
    Data,
}

/// What a stream's headers say (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHeaders {
    pub role: Role,
    pub request_id: String,
    pub port: Result<u16, String>,
}

impl StreamHeaders {
    /// Reads `streamtype`, `requestid` and `port` (SPDY lowercases header names).
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let role = match get("streamtype").as_deref() {
            Some("error") => Role::Error,
            Some("data") => Role::Data,
            Some(other) => return Err(format!("unknown streamType {other:?}")),
            None => return Err("a stream without streamType".into()),
        };
        let request_id = get("requestid").ok_or("a stream without requestID")?;
        let port = match get("port") {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port {:?}", crate::tolerant::bounded(p, 32))),
            None => Err("a stream without port".to_string()),
        };
        Ok(Self {
            role,
            request_id,
            port,
        })
    }
}

/// Streams waiting for their partner, by request ID (pure but for the clock passed in).
pub struct Pairs<T> {
    pending: HashMap<String, Half<T>>,
    limit: usize,
}

struct Half<T> {
    stream: T,
    role: Role,
    since: Instant,
}

/// What adding a stream gives.
pub enum Added<T> {
    /// Waiting for its partner.
    Pending,
    /// Both halves are there.
    Pair { error: T, data: T },
    /// Refused: a duplicate role for the request, or too many pending.
    Refused(T, &'static str),
}

impl<T> Pairs<T> {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: HashMap::new(),
            limit,
        }
    }

    pub fn add(&mut self, request_id: String, role: Role, stream: T, now: Instant) -> Added<T> {
        match self.pending.remove(&request_id) {
            Some(half) if half.role != role => {
                let (error, data) = match role {
                    Role::Error => (stream, half.stream),
                    Role::Data => (half.stream, stream),
                };
                Added::Pair { error, data }
            }
            Some(half) => {
                self.pending.insert(request_id, half);
                Added::Refused(stream, "a second stream of the same type for one request")
            }
            None if self.pending.len() >= self.limit => {
                Added::Refused(stream, "too many incomplete port-forward requests")
            }
            None => {
                self.pending.insert(
                    request_id,
                    Half {
                        stream,
                        role,
                        since: now,
                    },
                );
                Added::Pending
            }
        }
    }

    /// Removes the halves older than `timeout`.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<T> {
        let old: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        old.into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|h| h.stream))
            .collect()
    }

    pub fn oldest(&self) -> Option<Instant> {
        self.pending.values().map(|h| h.since).min()
    }
}

/// The fakes' TLS material: made by this process (no CA private key is read), cached.
pub struct Fakes {
    /// The etcd members' serving certificate (KCP does not verify it).
    etcd_serving: fake_etcd::tls::Serving,
    /// Per cluster: the etcd CA's Secret version and the TLS configuration checking
    /// client certificates against it.
    etcd_tls: Mutex<HashMap<ClusterKey, (String, Arc<rustls::ServerConfig>)>>,
    /// Per cluster and Node: the kube-apiserver's certificate.
    api_server_tls: Mutex<HashMap<(ClusterKey, String), Arc<rustls::ServerConfig>>>,
    /// Per cluster: its etcd members as last read, and when.
    pub(crate) etcd_views: Mutex<HashMap<ClusterKey, (Instant, fake_etcd::View)>>,
}

/// Bounds the kube-apiserver certificates kept (each is small; this is a backstop).
const API_SERVER_CERTIFICATES_KEPT: usize = 20_000;
/// kubeadm signs the API server's certificate for a year.
const CERTIFICATE_VALIDITY: jiff::SignedDuration = jiff::SignedDuration::from_hours(24 * 365);

impl Fakes {
    pub fn new() -> Result<Self, TlsError> {
        Ok(Self {
            etcd_serving: fake_etcd::self_signed_serving(&["localhost".to_string()])?,
            etcd_tls: Mutex::default(),
            api_server_tls: Mutex::default(),
            etcd_views: Mutex::default(),
        })
    }
}

/// Serves a port-forward session until the API server closes it.
pub async fn serve<IO>(api: Arc<KubeletApi>, resolved: Resolved, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    api.metrics
        .port_forward_sessions
        .with_label_values(&["served"])
        .inc();
    api.metrics.port_forward_open.inc();
    let _open = GaugeGuard(api.metrics.port_forward_open.clone());
    let limits = spdy::Limits {
        idle_timeout: Some(api.limits.idle_timeout),
        max_concurrent_streams: api.limits.streams_per_session * 2,
        ..spdy::Limits::default()
    };
    let mut session = spdy::Session::new(io, limits);
    let resolved = Arc::new(resolved);
    let mut pairs = Pairs::new(api.limits.streams_per_session);
    loop {
        let deadline = pairs
            .oldest()
            .map(|t| t + PAIR_TIMEOUT)
            .unwrap_or_else(|| Instant::now() + PAIR_TIMEOUT);
        let stream = tokio::select! {
            stream = session.accept() => stream,
            () = tokio::time::sleep_until(deadline.into()) => {
                for stream in pairs.expire(Instant::now(), PAIR_TIMEOUT) {
                    api.metrics.port_forward_streams.with_label_values(&["incomplete"]).inc();
                    drop(stream);
                }
                continue;
            }
        };
        let Some(stream) = stream else {
            break;
        };
        let headers = StreamHeaders::parse(|name| stream.headers().get(name).map(str::to_string));
        let headers = match headers {
            Ok(h) => h,
            Err(problem) => {
                debug!(problem, "kubelet API: refusing a stream");
                stream.reset(spdy::RstStatus::PROTOCOL_ERROR);
                continue;
            }
        };
        match pairs.add(
            headers.request_id.clone(),
            headers.role,
            stream,
            Instant::now(),
        ) {
            Added::Pending => {}
            Added::Refused(stream, why) => {
                debug!(why, "kubelet API: refusing a stream");
                stream.reset(spdy::RstStatus::REFUSED_STREAM);
            }
            Added::Pair { error, data } => {
                let api = api.clone();
                let resolved = resolved.clone();
                tokio::spawn(forward(api, resolved, headers.port, error, data));
            }
        }
    }
}

/// Decrements a gauge when dropped.
struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one forwarded connection.
async fn forward(
    api: Arc<KubeletApi>,
    resolved: Arc<Resolved>,
    port: Result<u16, String>,
    mut error: spdy::Stream,
    data: spdy::Stream,
) {
    let target = port.and_then(|port| {
        targets::target(&resolved.cluster, &resolved.pod, &resolved.node, port)
            .map_err(|e| e.to_string())
    });
    let result = match target {
        Err(message) => {
            info!(cluster = %resolved.cluster, message, "kubelet API: port-forward to no fake");
            let _ = error.write_all(message.as_bytes()).await;
            "no_target"
        }
        Ok(Target::EtcdMember { node }) => match etcd(&api, &resolved, node, data).await {
            Ok(()) => "etcd",
            Err(message) => {
                let _ = error.write_all(message.as_bytes()).await;
                "failed"
            }
        },
        Ok(Target::ApiServerCertificate { node, issued }) => {
            match api_server(&api, &resolved, node, issued, data).await {
                Ok(()) => "api_server",
                Err(message) => {
                    let _ = error.write_all(message.as_bytes()).await;
                    "failed"
                }
            }
        }
    };
    let _ = error.shutdown().await;
    api.metrics
        .port_forward_streams
        .with_label_values(&[result])
        .inc();
}

/// The etcd member behind the data stream, until the client closes it.
async fn etcd(
    api: &Arc<KubeletApi>,
    resolved: &Arc<Resolved>,
    node: String,
    data: spdy::Stream,
) -> Result<(), String> {
    let tls = etcd_tls(api, &resolved.cluster)?;
    let target = super::etcd_members::Member {
        resolved: resolved.clone(),
        node,
    };
    let backend = Arc::new(super::etcd_members::Members { api: api.clone() });
    fake_etcd::serve_connection(data, tls, backend, target)
        .await
        .map_err(|e| {
            debug!(cluster = %resolved.cluster, error = %e, "fake etcd connection ended");
            e.to_string()
        })
}

/// The TLS configuration of a cluster's etcd members: client certificates must chain to
/// the cluster's etcd CA (`<cluster>-etcd`, certificate only).
fn etcd_tls(api: &KubeletApi, cluster: &ClusterKey) -> Result<Arc<rustls::ServerConfig>, String> {
    let secret_name = format!(
        "{}{}",
        cluster.name,
        crate::resources::ETCD_CA_SECRET_SUFFIX
    );
    let secret = api
        .stores
        .iter()
        .find(|s| s.covers(&cluster.namespace))
        .and_then(|s| {
            s.secrets.get(
                &kube::runtime::reflector::ObjectRef::new(&secret_name).within(&cluster.namespace),
            )
        });
    let Some(crate::tolerant::Tolerant::Read(secret)) = secret.as_deref() else {
        return Err(format!(
            "the etcd CA Secret {}/{secret_name} is missing or unreadable: no client \
             certificate can be checked",
            cluster.namespace
        ));
    };
    let version = secret.metadata.resource_version.clone().unwrap_or_default();
    if let Some((v, config)) = crate::lock(&api.fakes.etcd_tls).get(cluster)
        && *v == version
    {
        return Ok(config.clone());
    }
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get(crate::resources::CA_CERTIFICATE_KEY))
        .ok_or_else(|| {
            format!(
                "the etcd CA Secret {}/{secret_name} has no tls.crt",
                cluster.namespace
            )
        })?;
    let (chain, key) = &api.fakes.etcd_serving;
    let config = fake_etcd::server_tls(&pem.0, (chain.clone(), key.clone_key()))
        .map_err(|e| format!("the etcd CA of {cluster}: {e}"))?;
    let config = Arc::new(config);
    crate::lock(&api.fakes.etcd_tls).insert(cluster.clone(), (version, config.clone()));
    Ok(config)
}

/// A TLS endpoint with the kube-apiserver's certificate; the client reads it and leaves.
async fn api_server(
    api: &Arc<KubeletApi>,
    resolved: &Arc<Resolved>,
    node: String,
    issued: Option<jiff::Timestamp>,
    data: spdy::Stream,
) -> Result<(), String> {
    let key = (resolved.cluster.clone(), node.clone());
    let cached = crate::lock(&api.fakes.api_server_tls).get(&key).cloned();
    let config = match cached {
        Some(config) => config,
        None => {
            let issued = issued.unwrap_or_else(jiff::Timestamp::now);
            let identity = tls::self_signed(
                "kube-apiserver",
                &[
                    node.clone(),
                    "kubernetes".to_string(),
                    "kubernetes.default".to_string(),
                ],
                issued,
                issued + CERTIFICATE_VALIDITY,
            )
            .map_err(|e| e.to_string())?;
            let config = Arc::new(tls::plain_server_config(identity).map_err(|e| e.to_string())?);
            let mut cache = crate::lock(&api.fakes.api_server_tls);
            if cache.len() >= API_SERVER_CERTIFICATES_KEPT {
                cache.clear();
            }
            cache.insert(key, config.clone());
            config
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut tls = tokio::time::timeout(api.limits.handshake_timeout, acceptor.accept(data))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    // Nothing is served after the handshake: wait for the client to leave (bounded).
    let mut sink = [0u8; 1024];
    let idle = api.limits.handshake_timeout;
    while let Ok(Ok(n)) = tokio::time::timeout(idle, tls.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
    let _ = tls.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Result<StreamHeaders, String> {
        StreamHeaders::parse(|n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn stream_headers_are_read_as_the_kubelet_protocol_has_them() {
        let h = headers(&[("streamtype", "data"), ("port", "2379"), ("requestid", "0")]).unwrap();
        assert_eq!(
            (h.role, h.port, h.request_id.as_str()),
            (Role::Data, Ok(2379), "0")
        );
        assert!(headers(&[("port", "2379"), ("requestid", "0")]).is_err());
        assert!(headers(&[("streamtype", "x"), ("requestid", "0")]).is_err());
        assert!(headers(&[("streamtype", "error"), ("port", "1")]).is_err());
        let bad = headers(&[
            ("streamtype", "data"),
            ("port", "99999"),
            ("requestid", "1"),
        ]);
        assert!(bad.unwrap().port.is_err());
        let zero = headers(&[("streamtype", "data"), ("port", "0"), ("requestid", "1")]);
        assert!(zero.unwrap().port.is_err());
    }

    #[test]
    fn streams_pair_by_request_id_whatever_their_order() {
        let now = Instant::now();
        let mut pairs = Pairs::new(4);
        assert!(matches!(
            pairs.add("1".into(), Role::Data, "d1", now),
            Added::Pending
        ));
        assert!(matches!(
            pairs.add("2".into(), Role::Error, "e2", now),
            Added::Pending
        ));
        assert!(matches!(
            pairs.add("1".into(), Role::Data, "d1'", now),
            Added::Refused("d1'", _)
        ));
        match pairs.add("1".into(), Role::Error, "e1", now) {
            Added::Pair { error, data } => assert_eq!((error, data), ("e1", "d1")),
            _ => panic!("a pair"),
        }
        match pairs.add("2".into(), Role::Data, "d2", now) {
            Added::Pair { error, data } => assert_eq!((error, data), ("e2", "d2")),
            _ => panic!("a pair"),
        }
        assert!(pairs.oldest().is_none());
    }

    #[test]
    fn incomplete_pairs_expire_and_are_bounded() {
        let now = Instant::now();
        let mut pairs = Pairs::new(2);
        assert!(matches!(
            pairs.add("1".into(), Role::Data, 1, now),
            Added::Pending
        ));
        assert!(matches!(
            pairs.add("2".into(), Role::Data, 2, now),
            Added::Pending
        ));
        assert!(matches!(
            pairs.add("3".into(), Role::Data, 3, now),
            Added::Refused(3, _)
        ));
        assert!(pairs.expire(now, PAIR_TIMEOUT).is_empty());
        let mut expired = pairs.expire(now + PAIR_TIMEOUT, PAIR_TIMEOUT);
        expired.sort();
        assert_eq!(expired, [1, 2]);
        assert!(pairs.oldest().is_none());
    }
}
