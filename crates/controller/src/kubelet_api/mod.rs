//! The kubelet API of the fake Nodes: what a workload kube-apiserver dials for
//! `pods/<pod>/portforward` (the Node's first InternalIP and its advertised kubelet port).
//! Behind the etcd Pod of a control-plane Node a fake etcd member answers, behind the
//! kube-apiserver Pod a TLS endpoint with a realistic certificate: what the
//! KubeadmControlPlane reads through port-forwards.
//!
//! Per request: the TLS client certificate names the workload cluster(s) whose CA issued
//! it ([`callers`]); the Pod and its Node, read from those clusters, settle which one
//! (its Node carries the cluster's labels); anything ambiguous is refused. Clusters
//! sharing one API server behind the tenancy front share its certificate too: for them
//! the prefix of the Pod's backing namespace names the cluster ([`fronted`]). Then the
//! SPDY session's stream pairs are served ([`portforward`]).

pub mod callers;
pub mod etcd_members;
pub mod fronted;
pub mod portforward;
pub mod targets;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::plan::{self, ClusterKey};
use crate::stores::Stores;
use crate::workload::{WorkloadClient, WorkloadClients};

use callers::CaIndex;

/// Where the kubelet API listens and what the Nodes advertise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub bind: SocketAddr,
    /// The address and port the workload API servers reach `bind` at.
    pub advertise: SocketAddr,
}

/// Bounds that keep one caller from exhausting the process.
#[derive(Clone, Debug)]
pub struct Limits {
    /// TLS connections open at once; more wait in the listen backlog.
    pub connections: usize,
    /// A TLS handshake and the HTTP request after it must finish within this.
    pub handshake_timeout: Duration,
    /// A SPDY session with no streams for this long is closed.
    pub idle_timeout: Duration,
    /// Forwarded connections (stream pairs) per SPDY session.
    pub streams_per_session: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            streams_per_session: 64,
        }
    }
}

/// Why a port-forward request was refused: the HTTP status and message the workload API
/// server relays to its client, and a bounded reason for the metrics.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("not a SPDY/3.1 port-forward upgrade: {0}")]
    NotAnUpgrade(String),
    #[error(
        "no client certificate: the kubelet API tells workload clusters apart by the \
         kube-apiserver's --kubelet-client-certificate"
    )]
    NoClientCertificate,
    #[error("the client certificate was issued by no workload cluster's CA known here")]
    UnknownCaller,
    #[error("pod {namespace}/{pod} is on no Node of the calling cluster ({clusters})")]
    UnknownPod {
        namespace: String,
        pod: String,
        clusters: String,
    },
    #[error(
        "pod {namespace}/{pod} matches Nodes of several clusters whose CA issued the client \
         certificate ({clusters}); refusing to guess"
    )]
    Ambiguous {
        namespace: String,
        pod: String,
        clusters: String,
    },
    #[error(
        "namespace {namespace}: clusters {clusters} all carry the tenancy front's prefix \
         {prefix}; refusing to guess"
    )]
    AmbiguousPrefix {
        namespace: String,
        prefix: String,
        clusters: String,
    },
    #[error("reading pod {namespace}/{pod} from the workload cluster: {message}")]
    Workload {
        namespace: String,
        pod: String,
        message: String,
    },
}

impl Refused {
    /// A bounded label for `fakenode_port_forward_sessions_total{result}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::NotAnUpgrade(_) => "not_an_upgrade",
            Refused::NoClientCertificate => "no_client_certificate",
            Refused::UnknownCaller => "unknown_caller",
            Refused::UnknownPod { .. } => "unknown_pod",
            Refused::Ambiguous { .. } => "ambiguous",
            Refused::AmbiguousPrefix { .. } => "ambiguous_prefix",
            Refused::Workload { .. } => "workload_request_failed",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refused::NotAnUpgrade(_) => StatusCode::BAD_REQUEST,
            Refused::NoClientCertificate => StatusCode::UNAUTHORIZED,
            Refused::UnknownCaller => StatusCode::FORBIDDEN,
            Refused::UnknownPod { .. } => StatusCode::NOT_FOUND,
            Refused::Ambiguous { .. } | Refused::AmbiguousPrefix { .. } => StatusCode::CONFLICT,
            Refused::Workload { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A Pod resolved for a port-forward: which cluster, and the objects its fakes need.
pub struct Resolved {
    pub cluster: ClusterKey,
    pub workload: WorkloadClient,
    pub pod: Pod,
    pub node: Node,
}

/// The kubelet API's state, shared by its connections.
pub struct KubeletApi {
    pub(crate) stores: Vec<Stores>,
    pub(crate) workloads: Arc<WorkloadClients>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    cas: CaIndex,
    tls: Arc<rustls::ServerConfig>,
    pub(crate) fakes: portforward::Fakes,
}

impl KubeletApi {
    pub fn new(
        endpoint: Endpoint,
        stores: Vec<Stores>,
        workloads: Arc<WorkloadClients>,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Result<Self, tls::TlsError> {
        let now = jiff::Timestamp::now();
        let year = jiff::SignedDuration::from_hours(24 * 365);
        let identity = tls::self_signed(
            "metal3-fakenode-kubelet",
            &[endpoint.advertise.ip().to_string()],
            now - jiff::SignedDuration::from_hours(1),
            now + year,
        )?;
        Ok(Self {
            stores,
            workloads,
            metrics,
            limits,
            cas: CaIndex::default(),
            tls: Arc::new(tls::kubelet_server_config(identity)?),
            fakes: portforward::Fakes::new()?,
        })
    }

    /// Works out which workload cluster's Pod a request names (see the module's doc).
    async fn resolve(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
        namespace: &str,
        pod: &str,
    ) -> Result<Resolved, Refused> {
        let chain = chain
            .filter(|c| !c.is_empty())
            .ok_or(Refused::NoClientCertificate)?;
        // Only a namespace of the front's shape is worth a look through the Clusters.
        let fronted = if tenancy::split_backing_namespace(namespace).is_some() {
            fronted::cluster_of(namespace, &fronted::prefixed_clusters(&self.stores))
        } else {
            fronted::Fronted::No
        };
        match fronted {
            fronted::Fronted::Cluster {
                cluster,
                namespace: tenant_namespace,
            } => return self.resolve_fronted(cluster, &tenant_namespace, pod).await,
            fronted::Fronted::Ambiguous { prefix, clusters } => {
                return Err(Refused::AmbiguousPrefix {
                    namespace: namespace.to_string(),
                    prefix,
                    clusters: cluster_names(&clusters),
                });
            }
            fronted::Fronted::No => {}
        }
        let callers = self.cas.callers(&self.stores, chain);
        if callers.is_empty() {
            return Err(Refused::UnknownCaller);
        }
        let names = cluster_names;
        let candidates: Vec<ClusterKey> = callers.iter().map(|c| c.cluster.clone()).collect();
        // One read per API server: clusters sharing a server see the same Pod.
        let mut servers = std::collections::BTreeMap::new();
        for caller in &callers {
            servers
                .entry(caller.server.clone())
                .or_insert_with(|| caller.cluster.clone());
        }
        let mut found = Vec::new();
        for via in servers.values() {
            let Some(workload) = self.workload(via).await else {
                continue;
            };
            let refused = |e: kube::Error| Refused::Workload {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                message: crate::tolerant::bounded(e.to_string(), 512),
            };
            let client = workload.client();
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let got = crate::apply::request(
                &workload,
                &self.metrics,
                crate::metrics::Purpose::PortForward,
                "get",
                pods.get_opt(pod),
            );
            let Some(found_pod) = got.await.map_err(refused)? else {
                continue;
            };
            let Some(node_name) = found_pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let nodes: Api<Node> = Api::all(client);
            let got = crate::apply::request(
                &workload,
                &self.metrics,
                crate::metrics::Purpose::PortForward,
                "get",
                nodes.get_opt(&node_name),
            );
            let Some(node) = got.await.map_err(refused)? else {
                continue;
            };
            let Some(cluster) = targets::cluster_of(&node).filter(|c| candidates.contains(c))
            else {
                continue;
            };
            let workload = if &cluster == via {
                workload
            } else {
                match self.workload(&cluster).await {
                    Some(w) => w,
                    None => continue,
                }
            };
            found.push(Resolved {
                cluster,
                workload,
                pod: found_pod,
                node,
            });
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Refused::UnknownPod {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                clusters: names(&candidates),
            }),
            _ => Err(Refused::Ambiguous {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                clusters: names(&found.iter().map(|r| r.cluster.clone()).collect::<Vec<_>>()),
            }),
        }
    }

    /// A Pod of a cluster behind the tenancy front: read through that cluster's own
    /// client (the front's view of it), by the namespace the cluster knows; its Node must
    /// be one this process made for that cluster.
    async fn resolve_fronted(
        &self,
        cluster: ClusterKey,
        namespace: &str,
        pod: &str,
    ) -> Result<Resolved, Refused> {
        let unknown = || Refused::UnknownPod {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            clusters: cluster.to_string(),
        };
        let refused = |e: kube::Error| Refused::Workload {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            message: crate::tolerant::bounded(e.to_string(), 512),
        };
        let workload = self.workload(&cluster).await.ok_or_else(unknown)?;
        let client = workload.client();
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let got = crate::apply::request(
            &workload,
            &self.metrics,
            crate::metrics::Purpose::PortForward,
            "get",
            pods.get_opt(pod),
        );
        let found_pod = got.await.map_err(refused)?.ok_or_else(unknown)?;
        let node_name = found_pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or_else(unknown)?;
        let nodes: Api<Node> = Api::all(client);
        let got = crate::apply::request(
            &workload,
            &self.metrics,
            crate::metrics::Purpose::PortForward,
            "get",
            nodes.get_opt(&node_name),
        );
        let node = got.await.map_err(refused)?.ok_or_else(unknown)?;
        if targets::cluster_of(&node).as_ref() != Some(&cluster) {
            return Err(unknown());
        }
        debug!(%cluster, namespace, pod, "kubelet API: a Pod behind the tenancy front");
        Ok(Resolved {
            cluster,
            workload,
            pod: found_pod,
            node,
        })
    }

    /// The workload client of a cluster, from its kubeconfig Secret.
    pub(crate) async fn workload(&self, cluster: &ClusterKey) -> Option<WorkloadClient> {
        let stores = self.stores.iter().find(|s| s.covers(&cluster.namespace))?;
        let source = plan::kubeconfig_source(stores, &cluster.namespace, &cluster.name).ok()?;
        match self.workloads.client(cluster, &source).await {
            Ok(client) => Some(client),
            Err(e) => {
                debug!(%cluster, error = %e, "no workload client for the kubelet API");
                None
            }
        }
    }
}

/// A few cluster names for a refusal's message.
fn cluster_names(keys: &[ClusterKey]) -> String {
    let mut names: Vec<String> = keys.iter().map(ToString::to_string).collect();
    names.truncate(8);
    names.join(", ")
}

/// Serves the kubelet API on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    api: Arc<KubeletApi>,
    stop: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(api.tls.clone());
    let slots = Arc::new(Semaphore::new(api.limits.connections));
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => return,
            permit = slots.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else {
            return;
        };
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: pause rather than spin.
                warn!(error = %e, "kubelet API: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let api = api.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            connection(api, acceptor, socket, peer).await;
        });
    }
}

async fn connection(
    api: Arc<KubeletApi>,
    acceptor: tokio_rustls::TlsAcceptor,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let timeout = api.limits.handshake_timeout;
    let tls = match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "kubelet API: TLS handshake failed");
            api.metrics
                .port_forward_sessions
                .with_label_values(&["tls_failed"])
                .inc();
            return;
        }
        Err(_) => {
            debug!(%peer, "kubelet API: TLS handshake timed out");
            api.metrics
                .port_forward_sessions
                .with_label_values(&["tls_failed"])
                .inc();
            return;
        }
    };
    let chain: Option<Arc<[CertificateDer<'static>]>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
    let service = hyper::service::service_fn(move |request| {
        let api = api.clone();
        let chain = chain.clone();
        async move { Ok::<_, std::convert::Infallible>(route(api, chain, request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    if let Err(e) = served.await {
        debug!(%peer, error = %e, "kubelet API: connection ended with an error");
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response
}

async fn route(
    api: Arc<KubeletApi>,
    chain: Option<Arc<[CertificateDer<'static>]>>,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (request.method(), parts.as_slice()) {
        (&http::Method::GET, ["healthz"]) => text(StatusCode::OK, "ok".into()),
        (&http::Method::POST | &http::Method::GET, ["portForward", namespace, pod]) => {
            let (namespace, pod) = (namespace.to_string(), pod.to_string());
            match port_forward(&api, chain.as_deref(), request, &namespace, &pod).await {
                Ok(response) => response,
                Err(refused) => {
                    info!(
                        namespace,
                        pod,
                        reason = refused.reason(),
                        "kubelet API: port-forward refused: {refused}"
                    );
                    api.metrics
                        .port_forward_sessions
                        .with_label_values(&[refused.reason()])
                        .inc();
                    text(refused.status(), refused.to_string())
                }
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("the fake kubelet serves no {path}"),
        ),
    }
}

/// Answers the SPDY upgrade and serves the session once the connection is handed over.
async fn port_forward(
    api: &Arc<KubeletApi>,
    chain: Option<&[CertificateDer<'static>]>,
    mut request: Request<Incoming>,
    namespace: &str,
    pod: &str,
) -> Result<Response<Body>, Refused> {
    let accepted = spdy::negotiate(request.headers(), &[portforward::PROTOCOL])
        .map_err(|e| Refused::NotAnUpgrade(e.to_string()))?;
    let resolved = api.resolve(chain, namespace, pod).await?;
    let upgrade = hyper::upgrade::on(&mut request);
    let api = api.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => portforward::serve(api, resolved, TokioIo::new(upgraded)).await,
            Err(e) => debug!(error = %e, "kubelet API: the upgrade did not complete"),
        }
    });
    Ok(accepted.response().map(|()| Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An API server does not check a kubelet's certificate either.
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// One HTTP/1.1 request over TLS, with a client certificate if given; the response's
    /// status line.
    async fn ask(address: SocketAddr, identity: Option<tls::Identity>, request: &str) -> String {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
        let config = match identity {
            Some(i) => builder.with_client_auth_cert(i.chain, i.key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = ServerName::try_from("kubelet").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response).to_string();
        text.lines().next().unwrap_or_default().to_string()
    }

    fn someone() -> tls::Identity {
        let now = jiff::Timestamp::now();
        let day = jiff::SignedDuration::from_hours(24);
        tls::self_signed("stranger", &[], now - day, now + day).unwrap()
    }

    const UPGRADE: &str = "POST /portForward/kube-system/etcd-x HTTP/1.1\r\nHost: k\r\n\
        Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
        X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n";

    #[tokio::test]
    async fn odd_callers_get_clear_refusals_and_never_stop_the_listener() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let endpoint = Endpoint {
            bind: "127.0.0.1:0".parse().unwrap(),
            advertise: "127.0.0.1:10250".parse().unwrap(),
        };
        let workloads = Arc::new(WorkloadClients::new(
            crate::workload::Settings::default(),
            &metrics,
        ));
        let limits = Limits {
            handshake_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        let api = KubeletApi::new(endpoint, Vec::new(), workloads, metrics.clone(), limits);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(api.unwrap()), async {
            let _ = stopped.await;
        }));

        // Not TLS at all, and a client that connects and says nothing: both dropped.
        let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut rest));
        assert!(closed.await.is_ok(), "a non-TLS client is let go");
        let _silent = tokio::net::TcpStream::connect(address).await.unwrap();

        let get =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n");
        assert!(ask(address, None, &get("/healthz")).await.contains(" 200"));
        assert!(
            ask(address, None, &get("/containerLogs/a/b/c"))
                .await
                .contains(" 404")
        );
        // A port-forward without the SPDY upgrade, without a certificate, with a
        // certificate no workload cluster's CA issued.
        let no_upgrade = "POST /portForward/kube-system/etcd-x HTTP/1.1\r\nHost: k\r\n\
            Content-Length: 0\r\nConnection: close\r\n\r\n";
        assert!(ask(address, None, no_upgrade).await.contains(" 400"));
        assert!(ask(address, None, UPGRADE).await.contains(" 401"));
        assert!(
            ask(address, Some(someone()), UPGRADE)
                .await
                .contains(" 403")
        );
        let counted = |r: &str| metrics.port_forward_sessions.with_label_values(&[r]).get();
        assert_eq!(
            (
                counted("not_an_upgrade"),
                counted("no_client_certificate"),
                counted("unknown_caller")
            ),
            (1, 1, 1)
        );
        assert!(counted("tls_failed") >= 1);
        // Still serving after all of that.
        assert!(ask(address, None, &get("/healthz")).await.contains(" 200"));
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
