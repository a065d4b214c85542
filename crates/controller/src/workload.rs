//! Clients for the workload clusters, built from their CAPI kubeconfig Secrets: one per
//! cluster, cached, rebuilt as soon as the Secret's kubeconfig changes (rotation), each with
//! its own connect/request timeouts so that one dead or slow workload cluster never holds
//! up the others.
//!
//! Request budgets are a kubelet's: every fake kubelet (Node) has a rate limit of its own,
//! as each real kubelet has its own client (`kubeAPIQPS`/`kubeAPIBurst`), so that the hosts
//! of one cluster register in parallel as booting hosts do. A cluster-wide cap above them
//! bounds what one cluster's kubelets send together, and the API server sets the pace: an
//! answer with `Retry-After` (API Priority and Fairness' 429, a 503) holds every request to
//! that cluster until then.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use kube::Client;
use kube::client::RustlsTlsError;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError, LoadDataError};
use prometheus::{IntCounter, IntGauge};
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::Error;
use crate::metrics::Metrics;
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
    /// The cluster-wide cap: all requests to one workload cluster together.
    pub qps: NonZeroU32,
    pub burst: NonZeroU32,
    /// Each fake kubelet's own budget.
    pub kubelet_qps: NonZeroU32,
    pub kubelet_burst: NonZeroU32,
    /// The longest a server's `Retry-After` is obeyed: a server asking for an hour must
    /// not stop a cluster's kubelets for an hour.
    pub max_retry_after: Duration,
    pub rewrites: Vec<ServerRewrite>,
    /// How long an idle connection is kept (`None`: for as long as it lasts).
    pub idle_timeout: Option<Duration>,
}

/// A kubelet's defaults (`kubeAPIQPS` 50, `kubeAPIBurst` 100).
pub const KUBELET_QPS: u32 = 50;
pub const KUBELET_BURST: u32 = 100;
/// The cluster-wide cap's defaults: high enough that a scale-up of one cluster (hundreds of
/// hosts registering at once) is paced by the API server, not by this cap.
pub const CLUSTER_QPS: u32 = 1000;
pub const CLUSTER_BURST: u32 = 2000;

/// How long an idle connection to a workload API server is kept: long enough for the
/// requests of one registration or status report, which follow each other within
/// milliseconds, and far shorter than the 40 s between a Node's heartbeats. A connection
/// per cluster kept between heartbeats held about 25 KiB (hyper's dispatch channel and
/// buffers, rustls' buffers) for every cluster, all the time; a heartbeat on a new
/// connection resumes the TLS session instead, which needs no certificate signature on
/// either side. Half a second rather than 2 s: the same connections are opened (3.6 per
/// cluster in a full-fidelity drain of 1000 clusters), but fewer sit idle at once, which
/// took 10-12 MiB off that drain's peak.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(500);

/// A count from a constant known to be above zero.
pub fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            qps: non_zero(CLUSTER_QPS),
            burst: non_zero(CLUSTER_BURST),
            kubelet_qps: non_zero(KUBELET_QPS),
            kubelet_burst: non_zero(KUBELET_BURST),
            max_retry_after: Duration::from_secs(30),
            rewrites: Vec::new(),
            idle_timeout: Some(IDLE_TIMEOUT),
        }
    }
}

/// Until when a workload API server asked every client to wait, shared by the cluster's
/// requests.
#[derive(Debug, Default)]
struct ServerPause {
    until: Mutex<Option<tokio::time::Instant>>,
}

impl ServerPause {
    fn hold(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut current = crate::lock(&self.until);
        if current.is_none_or(|c| c < until) {
            *current = Some(until);
        }
    }

    /// Sleeps until the pause is over; how long it slept.
    async fn wait(&self) -> Duration {
        let mut slept = Duration::ZERO;
        loop {
            let until = *crate::lock(&self.until);
            let now = tokio::time::Instant::now();
            match until {
                // Another answer may have extended the pause meanwhile: look again.
                Some(until) if until > now => {
                    tokio::time::sleep_until(until).await;
                    slept += until - now;
                }
                _ => return slept,
            }
        }
    }
}

/// The wait a workload API server asks for: `Retry-After` in seconds on a 429 or a 503
/// (the API server's own form; an HTTP date is not used by it and is ignored), at most
/// `max`.
pub fn retry_after(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    max: Duration,
) -> Option<Duration> {
    if status != http::StatusCode::TOO_MANY_REQUESTS
        && status != http::StatusCode::SERVICE_UNAVAILABLE
    {
        return None;
    }
    let seconds: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(max))
}

/// The requests of a workload client on their way to its connection pool.
type Service = tower::util::BoxCloneSyncService<
    http::Request<kube::client::Body>,
    http::Response<hyper::body::Incoming>,
    tower::BoxError,
>;

/// A client for one workload cluster, with the budgets every request must pass.
#[derive(Clone)]
pub struct WorkloadClient {
    pub cluster: ClusterKey,
    /// Not a [`Client`]: each holds a request queue of its own (about 10 KiB, kube's
    /// buffer of 1024 requests, allocated up front), 10 MiB for 1000 idle clusters. One is
    /// made for each use instead, over the same connection pool.
    service: Service,
    default_namespace: String,
    cluster_limiter: Arc<DefaultDirectRateLimiter>,
    kubelet_limiters: Arc<KubeletLimiters>,
    /// The fake kubelet this client speaks for, if any: its requests also pass its budget.
    kubelet: Option<String>,
    pause: Arc<ServerPause>,
    request_timeout: Duration,
}

/// Kubelet budgets kept before the idle ones are dropped (an idle budget is a fresh one).
const KUBELET_LIMITERS_KEPT: usize = 1024;

/// The budgets of one cluster's kubelets, pruned of idle ones once they outgrow the last
/// pruning twice over: a cluster of many Nodes is not swept on every request.
struct KubeletLimiters {
    limiters: DefaultKeyedRateLimiter<String>,
    prune_above: std::sync::atomic::AtomicUsize,
}

impl KubeletLimiters {
    fn new(quota: Quota) -> Self {
        Self {
            limiters: RateLimiter::keyed(quota),
            prune_above: std::sync::atomic::AtomicUsize::new(KUBELET_LIMITERS_KEPT),
        }
    }

    fn prune_if_grown(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.limiters.len() > self.prune_above.load(Relaxed) {
            self.limiters.retain_recent();
            self.limiters.shrink_to_fit();
            self.prune_above.store(
                (self.limiters.len() * 2).max(KUBELET_LIMITERS_KEPT),
                Relaxed,
            );
        }
    }
}

impl WorkloadClient {
    /// A client for requests to the cluster: over the cluster's connection pool, with a
    /// queue of its own that goes when the client does.
    pub fn client(&self) -> Client {
        Client::new(self.service.clone(), self.default_namespace.as_str())
    }

    /// The same client, speaking for the kubelet of `node`.
    pub fn for_kubelet(&self, node: &str) -> WorkloadClient {
        self.kubelet_limiters.prune_if_grown();
        WorkloadClient {
            kubelet: Some(node.to_string()),
            ..self.clone()
        }
    }

    /// Waits until the server's pause is over, then for the kubelet's budget and the
    /// cluster's cap; call before every request. Returns the time spent in the server's
    /// pause.
    pub async fn throttle(&self) -> Duration {
        let paused = self.pause.wait().await;
        if let Some(kubelet) = &self.kubelet {
            self.kubelet_limiters
                .limiters
                .until_key_ready(kubelet)
                .await;
        }
        self.cluster_limiter.until_ready().await;
        paused
    }

    /// A request's whole exchange (response and body) within the request timeout; a
    /// request that runs out is an unreachable server's error. Not a read timeout on the
    /// connection (kube's): that one also runs while a pooled connection sits idle, so
    /// every connection idle for longer was dropped and each heartbeat, 40 s apart, paid
    /// for a new TLS handshake.
    pub async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        within(self.request_timeout, call).await
    }
}

async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(Box::new(TimedOut(timeout)))),
    }
}

/// A workload request that took longer than the request timeout.
#[derive(Debug, thiserror::Error)]
#[error("no answer within the request timeout ({0:?})")]
struct TimedOut(Duration);

struct Entry {
    fingerprint: u64,
    client: WorkloadClient,
}

/// The cache of workload clients, keyed by cluster.
pub struct WorkloadClients {
    settings: Settings,
    connections: Connections,
    entries: Mutex<HashMap<ClusterKey, Entry>>,
}

/// What the connections to workload API servers are counted in.
#[derive(Clone)]
struct Connections {
    /// `fakenode_workload_connections_total`
    opened: IntCounter,
    /// `fakenode_workload_connections_open`
    open: IntGauge,
}

impl WorkloadClients {
    pub fn new(settings: Settings, metrics: &Metrics) -> Self {
        Self {
            settings,
            connections: Connections {
                opened: metrics.workload_connections.clone(),
                open: metrics.workload_connections_open.clone(),
            },
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
        let pause = Arc::new(ServerPause::default());
        let (service, default_namespace) =
            build_service(source, &self.settings, &pause, &self.connections).await?;
        let client = WorkloadClient {
            cluster: cluster.clone(),
            service,
            default_namespace,
            cluster_limiter: Arc::new(RateLimiter::direct(
                Quota::per_second(self.settings.qps).allow_burst(self.settings.burst),
            )),
            kubelet_limiters: Arc::new(KubeletLimiters::new(
                Quota::per_second(self.settings.kubelet_qps)
                    .allow_burst(self.settings.kubelet_burst),
            )),
            kubelet: None,
            pause,
            request_timeout: self.settings.request_timeout,
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
        // Every operation is a single insert, remove or get.
        crate::lock(&self.entries)
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Parses a kubeconfig from Secret data. Credentials that would make this process run a
/// program or read local files are refused: a Secret must never execute anything here.
/// No message quotes the Secret (YAML errors give a line and column): it holds credentials,
/// and messages end up in logs and Events.
pub fn parse_kubeconfig(source: &KubeconfigSource) -> Result<Kubeconfig, Error> {
    let invalid = |message: String| Error::KubeconfigInvalid {
        secret: source.secret.clone(),
        message,
    };
    let text = std::str::from_utf8(&source.value.0)
        .map_err(|e| invalid(format!("not UTF-8 after byte {}", e.valid_up_to())))?;
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| invalid(describe(&e)))?;
    if kubeconfig.clusters.is_empty() && kubeconfig.auth_infos.is_empty() {
        return Err(invalid("no clusters and no users".into()));
    }
    let unusable = |message: String| Error::KubeconfigUnusable {
        secret: source.secret.clone(),
        message,
    };
    let clusters = kubeconfig.clusters.len();
    for (i, cluster) in kubeconfig.clusters.iter().enumerate() {
        if cluster
            .cluster
            .as_ref()
            .is_some_and(|c| c.certificate_authority.is_some())
        {
            return Err(unusable(format!(
                "cluster {} of {clusters} uses a certificate authority file path; only \
                 inline certificate-authority-data is accepted",
                i + 1
            )));
        }
    }
    let users = kubeconfig.auth_infos.len();
    for (i, user) in kubeconfig.auth_infos.iter().enumerate() {
        let Some(auth) = &user.auth_info else {
            continue;
        };
        const INLINE: &str = "only inline credentials are accepted";
        let refused = if auth.exec.is_some() {
            Some(format!("uses an exec credential plugin; {INLINE}"))
        } else if auth.auth_provider.is_some() {
            Some(format!("uses an auth provider; {INLINE}"))
        } else if auth.client_certificate.is_some() || auth.client_key.is_some() {
            Some(format!("uses a client certificate file path; {INLINE}"))
        } else if auth.token_file.is_some() {
            Some(format!("uses a token file path; {INLINE}"))
        } else if auth
            .token
            .as_ref()
            .is_some_and(|t| !is_header_value(t.expose_secret()))
        {
            // kube's client panics on such a token: refused here, it is an error instead.
            Some("has a token that is not a valid HTTP header value".to_string())
        } else {
            None
        };
        if let Some(what) = refused {
            return Err(unusable(format!("user {} of {users} {what}", i + 1)));
        }
    }
    Ok(kubeconfig)
}

fn is_header_value(token: &str) -> bool {
    http::HeaderValue::try_from(format!("Bearer {token}")).is_ok()
}

/// What is wrong with a kubeconfig, without kube's own message: that one quotes names,
/// data and (for YAML errors) the offending lines.
fn describe(e: &KubeconfigError) -> String {
    let data = |field: &str, e: &LoadDataError| match e {
        LoadDataError::DecodeBase64(_) => format!("{field}-data is not base64"),
        LoadDataError::ReadFile(..) => format!("{field} names a file that cannot be read"),
        LoadDataError::NoBase64DataOrFile => format!("{field}-data is empty"),
    };
    match e {
        KubeconfigError::Parse(yaml) => match yaml.location() {
            Some(at) => format!(
                "its YAML does not parse as a kubeconfig (line {}, column {})",
                at.line(),
                at.column()
            ),
            None => "its YAML does not parse as a kubeconfig".into(),
        },
        KubeconfigError::CurrentContextNotSet => "no current-context".into(),
        KubeconfigError::LoadContext(_) => "the current-context is not among its contexts".into(),
        KubeconfigError::LoadClusterOfContext(_) => {
            "the current context's cluster is not among its clusters".into()
        }
        KubeconfigError::MissingClusterUrl => "the cluster has no server".into(),
        KubeconfigError::ParseClusterUrl(_) => "the cluster's server is not a URL".into(),
        KubeconfigError::ParseProxyUrl(_) => "the cluster's proxy-url is not a URL".into(),
        KubeconfigError::LoadCertificateAuthority(e) => data("certificate-authority", e),
        KubeconfigError::LoadClientCertificate(e) => data("client-certificate", e),
        KubeconfigError::LoadClientKey(e) => data("client-key", e),
        KubeconfigError::ParseCertificates(_) => {
            "certificate-authority-data is not PEM certificates".into()
        }
        _ => "it cannot be turned into a client configuration".into(),
    }
}

/// What is wrong when kube cannot build a client from a kubeconfig it has read, again
/// without kube's message (PEM errors quote the offending line).
fn describe_client_error(e: &kube::Error) -> String {
    match e {
        kube::Error::InferKubeconfig(e) => describe(e),
        kube::Error::RustlsTls(e) => match e {
            RustlsTlsError::InvalidIdentityPem(_) => {
                "client-certificate-data or client-key-data is not PEM".into()
            }
            RustlsTlsError::MissingPrivateKey => {
                "client-key-data holds no PKCS8 or RSA private key".into()
            }
            RustlsTlsError::MissingCertificate => {
                "client-certificate-data holds no certificate".into()
            }
            RustlsTlsError::InvalidPrivateKey(_) | RustlsTlsError::UnknownPrivateKeyFormat => {
                "client-key-data is not a usable private key".into()
            }
            RustlsTlsError::AddRootCertificate(_) => {
                "certificate-authority-data holds a certificate that cannot be a CA".into()
            }
            RustlsTlsError::InvalidServerName(_) => {
                "the server's host (or tls-server-name) is not a valid TLS server name".into()
            }
            _ => "its TLS settings cannot be used".into(),
        },
        kube::Error::Auth(_) => "its user's credentials cannot be used".into(),
        _ => "no client can be built from it".into(),
    }
}

/// Idle connections kept per cluster (for [`Settings::idle_timeout`]): another, opened
/// for requests sent side by side (a Node and its kubeadm-config), is closed once done
/// rather than kept for every one of thousands of clusters.
const IDLE_CONNECTIONS_PER_CLUSTER: usize = 1;
/// TLS sessions remembered per client: any size up to 8 is one server's tickets, and a
/// client speaks to one server (rustls' default remembers 32).
const TLS_SESSIONS_KEPT: usize = 1;
/// A connection's read buffer grows in steps of this size, not hyper's 8 KiB: an idle
/// connection holds one step, and with every connection kept (`--workload-idle-timeout
/// 0`) thousands sit idle between heartbeats.
const READ_BUFFER_STEP: usize = 2048;

/// kube's own layers (base URI, credentials, extra headers) over a connection pool
/// tuned for thousands of clients, one per cluster; kube's default stack keeps every
/// connection it opened and 8 KiB read buffers, and adds nothing these requests need.
async fn build_service(
    source: &KubeconfigSource,
    settings: &Settings,
    pause: &Arc<ServerPause>,
    connections: &Connections,
) -> Result<(Service, String), Error> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use kube::client::ConfigExt;

    let kubeconfig = parse_kubeconfig(source)?;
    let unusable = |message: String| Error::KubeconfigUnusable {
        secret: source.secret.clone(),
        message,
    };
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| unusable(describe(&e)))?;
    rewrite_server(&mut config, &settings.rewrites).map_err(unusable)?;
    if config.proxy_url.is_some() {
        // kube's builder refused them too (no proxy support compiled in).
        return Err(unusable(
            "its cluster names a proxy-url; proxies are not supported".into(),
        ));
    }
    let mut tls = config
        .rustls_client_config()
        .map_err(|e| unusable(describe_client_error(&e)))?;
    // Resumed sessions: with idle connections closed, a Node's next heartbeat opens a new
    // one, and a full handshake would cost a signature with the client's key every time.
    tls.resumption = rustls::client::Resumption::in_memory_sessions(TLS_SESSIONS_KEPT);
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_nodelay(true);
    let connections = connections.clone();
    let http = tower::ServiceExt::map_response(http, move |io: TokioIo<tokio::net::TcpStream>| {
        TokioIo::new(Counted::new(io.into_inner(), &connections))
    });
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = match &config.tls_server_name {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| {
                unusable(
                    "the server's host (or tls-server-name) is not a valid TLS server name".into(),
                )
            })?;
            https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => https,
    }
    .enable_http1()
    .wrap_connector(http);
    let pool = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_CLUSTER)
        // With a timer the pool closes idle connections when they expire, not only when
        // it next looks for one.
        .pool_idle_timeout(settings.idle_timeout)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .http1_read_buf_exact_size(READ_BUFFER_STEP)
        .build(https);
    // Every answer passes here, whichever request it ends: a server's Retry-After holds
    // the cluster's next requests.
    let pause = Arc::clone(pause);
    let max = settings.max_retry_after;
    let observe = tower::util::MapResponseLayer::new(move |response: http::Response<_>| {
        if let Some(wait) = retry_after(response.status(), response.headers(), max) {
            pause.hold(wait);
        }
        response
    });
    let auth = config
        .auth_layer()
        .map_err(|e| unusable(describe_client_error(&e)))?;
    let headers = config
        .extra_headers_layer()
        .map_err(|e| unusable(describe_client_error(&e)))?;
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(auth)
        .layer(headers)
        .layer(observe)
        .map_err(tower::BoxError::from)
        .service(pool);
    Ok((Service::new(service), config.default_namespace))
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
    // Not quoted: the rest of the URL is the Secret's.
    config.cluster_url = rewritten.parse().map_err(|_| {
        format!(
            "the server rewritten by --workload-server-rewrite {}={} is not a URL",
            rewrite.from, rewrite.to
        )
    })?;
    if config.tls_server_name.is_none() {
        config.tls_server_name = host.map(|h| h.trim_matches(['[', ']']).to_string());
    }
    Ok(())
}

/// A connection to a workload API server, counted while it is open: whether idle
/// connections really close (the pool's timer) shows in `fakenode_workload_connections_open`.
/// Written here because hyper and tower count requests, not connections; it only passes
/// every call through.
struct Counted<T> {
    io: T,
    open: IntGauge,
}

impl<T> Counted<T> {
    fn new(io: T, connections: &Connections) -> Self {
        connections.opened.inc();
        connections.open.inc();
        Self {
            io,
            open: connections.open.clone(),
        }
    }
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
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

    fn connections() -> Connections {
        let metrics = Metrics::new().unwrap();
        Connections {
            opened: metrics.workload_connections,
            open: metrics.workload_connections_open,
        }
    }

    /// A service from this kubeconfig with the default settings.
    async fn build(source: &KubeconfigSource) -> Result<(Service, String), Error> {
        build_service(
            source,
            &Settings::default(),
            &Arc::default(),
            &connections(),
        )
        .await
    }

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

    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_in_time_is_an_unreachable_server() {
        let never = std::future::pending::<Result<(), kube::Error>>();
        let err = within(Duration::from_secs(15), never).await.unwrap_err();
        let cluster = ClusterKey {
            namespace: "ns".into(),
            name: "c".into(),
        };
        let classified = classify(&cluster, err);
        assert_eq!(classified.reason(), "workload_unreachable");
        assert!(classified.to_string().contains("15s"), "{classified}");
        let answered = within(Duration::from_secs(15), async { Ok(7) }).await;
        assert_eq!(answered.ok(), Some(7));
    }

    #[test]
    fn retry_after_is_read_from_throttling_answers_only_and_bounded() {
        use http::{HeaderMap, HeaderValue, StatusCode};
        let max = Duration::from_secs(30);
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static(v));
            h
        };
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &with("3"), max),
            secs(3)
        );
        assert_eq!(
            retry_after(StatusCode::SERVICE_UNAVAILABLE, &with(" 1 "), max),
            secs(1)
        );
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &with("3600"), max),
            secs(30)
        );
        assert_eq!(retry_after(StatusCode::OK, &with("3"), max), None);
        assert_eq!(retry_after(StatusCode::CONFLICT, &with("3"), max), None);
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), max),
            None
        );
        for odd in ["-1", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "1.5", ""] {
            assert_eq!(
                retry_after(StatusCode::TOO_MANY_REQUESTS, &with(odd), max),
                None,
                "{odd:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_pause_holds_until_its_latest_end() {
        let pause = ServerPause::default();
        assert_eq!(pause.wait().await, Duration::ZERO);
        pause.hold(Duration::from_secs(2));
        // A shorter pause asked later does not shorten it.
        pause.hold(Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        assert_eq!(pause.wait().await, Duration::from_secs(2));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(pause.wait().await, Duration::ZERO, "over once passed");
    }

    #[tokio::test]
    async fn each_kubelet_spends_its_own_budget() {
        let settings = Settings {
            kubelet_qps: non_zero(1),
            kubelet_burst: non_zero(2),
            ..Settings::default()
        };
        let clients = WorkloadClients::new(settings, &Metrics::new().unwrap());
        let cluster = ClusterKey {
            namespace: "ns".into(),
            name: "c".into(),
        };
        let client = clients.client(&cluster, &source(GOOD)).await.unwrap();
        let (a, b) = (client.for_kubelet("node-a"), client.for_kubelet("node-b"));
        let soon = Duration::from_millis(200);
        for _ in 0..2 {
            a.throttle().await;
        }
        assert!(
            tokio::time::timeout(soon, a.throttle()).await.is_err(),
            "node-a spent its burst: its next request waits"
        );
        for _ in 0..2 {
            tokio::time::timeout(soon, b.throttle())
                .await
                .expect("node-b has a budget of its own");
        }
        // The controller's own requests (no kubelet) pass the cluster's cap only.
        for _ in 0..10 {
            tokio::time::timeout(soon, client.throttle()).await.unwrap();
        }
    }

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
    async fn a_certificate_authority_file_is_refused_even_when_it_exists() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_string()])
            .unwrap()
            .cert
            .pem();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &ca).unwrap();
        let inline = GOOD.replace(
            "certificate-authority-data: ''",
            &format!("certificate-authority-data: '{}'", b64(&ca)),
        );
        assert!(build(&source(&inline)).await.is_ok());
        let path = GOOD.replace(
            "certificate-authority-data: ''",
            &format!("certificate-authority: '{}'", file.path().display()),
        );
        let e = build(&source(&path))
            .await
            .expect_err("a Secret named a local file and it was read");
        assert_eq!(e.reason(), "kubeconfig_unusable", "{e}");
        assert!(e.to_string().contains("file path"), "{e}");
    }

    #[tokio::test]
    async fn a_kubeconfig_without_a_usable_context_is_unusable() {
        let no_context = GOOD.replace("current-context: admin@c", "current-context: nope");
        let e = build(&source(&no_context)).await.err().unwrap();
        assert_eq!(e.reason(), "kubeconfig_unusable", "{e}");
    }

    #[tokio::test]
    async fn the_cache_rebuilds_on_rotation_only() {
        let clients = WorkloadClients::new(Settings::default(), &Metrics::new().unwrap());
        let key = ClusterKey {
            namespace: "ns".into(),
            name: "c".into(),
        };
        let a = clients.client(&key, &source(GOOD)).await.unwrap();
        let b = clients.client(&key, &source(GOOD)).await.unwrap();
        assert!(
            Arc::ptr_eq(&a.cluster_limiter, &b.cluster_limiter),
            "same kubeconfig, same client"
        );
        let rotated = GOOD.replace("token: abc", "token: def");
        let c = clients.client(&key, &source(&rotated)).await.unwrap();
        assert!(
            !Arc::ptr_eq(&a.cluster_limiter, &c.cluster_limiter),
            "rotated kubeconfig, new client"
        );
        assert_eq!(clients.len(), 1);
        assert!(Arc::ptr_eq(
            &clients.cached(&key).unwrap().cluster_limiter,
            &c.cluster_limiter
        ));
        assert_eq!(clients.clusters(), std::slice::from_ref(&key));
        clients.forget(&key);
        assert!(clients.cached(&key).is_none());
        assert!(clients.is_empty());
    }

    /// In every value of [`MARKED`]; no error message may contain it.
    const MARK: &str = "zq7secret";

    /// A usable kubeconfig with [`MARK`] in every value, names included.
    const MARKED: &str = "apiVersion: v1
kind: Config
clusters:
- name: cluster-zq7secret
  cluster: {server: 'https://host-zq7secret.example:6443', certificate-authority-data: '', tls-server-name: tls-zq7secret}
users:
- name: user-zq7secret
  user: {token: token-zq7secret}
contexts:
- name: context-zq7secret
  context: {cluster: cluster-zq7secret, user: user-zq7secret, namespace: ns-zq7secret}
current-context: context-zq7secret
";

    fn b64(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    /// Broken variants of [`MARKED`], each with the marker in what breaks it.
    fn marked_variants() -> Vec<(&'static str, Vec<u8>, Settings)> {
        let pem_ca = b64("-----BEGIN zq7secret-----\nzq7secret\n-----END other-zq7secret-----\n");
        let pem_id = b64("-----BEGIN CERTIFICATE zq7secret-----\nzq7secret\n");
        let swap = |from: &str, to: &str| {
            assert!(MARKED.contains(from), "{from}");
            MARKED.replace(from, to).into_bytes()
        };
        let user = "user: {token: token-zq7secret}";
        let cluster = "  cluster: {server: 'https://host-zq7secret.example:6443', certificate-authority-data: '', tls-server-name: tls-zq7secret}\n";
        let mut not_utf8 = MARKED.as_bytes().to_vec();
        not_utf8.splice(40..40, b"zq7secret\xff".iter().copied());
        let rewrite = Settings {
            rewrites: vec!["https://host-=not a url ::".parse().unwrap()],
            ..Settings::default()
        };
        let plain = Settings::default;
        vec![
            (
                "unterminated quote",
                swap("6443',", "6443 zq7secret,"),
                plain(),
            ),
            (
                "a tab for indentation",
                swap("users:\n- name", "users:\n\t- name"),
                plain(),
            ),
            (
                "bad indentation",
                swap("  context: {", " context: zq7secret {"),
                plain(),
            ),
            (
                "a scalar for a list",
                swap(
                    &format!("clusters:\n- name: cluster-zq7secret\n{cluster}"),
                    "clusters: zq7secret\n",
                ),
                plain(),
            ),
            (
                "a map for a string",
                swap("token: token-zq7secret", "token: {zq7secret: zq7secret}"),
                plain(),
            ),
            (
                "a list for a string",
                swap(
                    "current-context: context-zq7secret",
                    "current-context: [zq7secret]",
                ),
                plain(),
            ),
            ("not UTF-8", not_utf8, plain()),
            (
                "exec plugin",
                swap(
                    user,
                    "user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/zq7secret, args: [zq7secret], env: [{name: zq7secret, value: zq7secret}]}}",
                ),
                plain(),
            ),
            (
                "auth provider",
                swap(
                    user,
                    "user: {auth-provider: {name: zq7secret, config: {zq7secret: zq7secret}}}",
                ),
                plain(),
            ),
            (
                "token file",
                swap(user, "user: {tokenFile: /tmp/zq7secret}"),
                plain(),
            ),
            (
                "client certificate file",
                swap(
                    user,
                    "user: {client-certificate: /tmp/zq7secret.crt, client-key: /tmp/zq7secret.key}",
                ),
                plain(),
            ),
            (
                "bad base64 CA",
                swap(
                    "certificate-authority-data: ''",
                    "certificate-authority-data: 'zq7secret!!'",
                ),
                plain(),
            ),
            (
                "CA not PEM",
                swap(
                    "certificate-authority-data: ''",
                    &format!("certificate-authority-data: '{pem_ca}'"),
                ),
                plain(),
            ),
            (
                "CA file",
                swap(
                    "certificate-authority-data: ''",
                    "certificate-authority: /tmp/zq7secret.crt",
                ),
                plain(),
            ),
            (
                "client certificate not PEM",
                swap(
                    user,
                    &format!(
                        "user: {{client-certificate-data: '{pem_id}', client-key-data: '{pem_id}'}}"
                    ),
                ),
                plain(),
            ),
            (
                "bad base64 client key",
                swap(
                    user,
                    &format!(
                        "user: {{client-certificate-data: '{pem_id}', client-key-data: 'zq7secret!!'}}"
                    ),
                ),
                plain(),
            ),
            (
                "missing context",
                swap(
                    "current-context: context-zq7secret",
                    "current-context: other-zq7secret",
                ),
                plain(),
            ),
            (
                "context without its cluster",
                swap("{cluster: cluster-zq7secret,", "{cluster: other-zq7secret,"),
                plain(),
            ),
            (
                "no server",
                swap("server: 'https://host-zq7secret.example:6443', ", ""),
                plain(),
            ),
            (
                "bad server URL",
                swap(
                    "'https://host-zq7secret.example:6443'",
                    "'https://host zq7secret:port/'",
                ),
                plain(),
            ),
            (
                "bad proxy URL",
                swap(
                    "tls-server-name: tls-zq7secret",
                    "proxy-url: 'http://zq7secret bad ::'",
                ),
                plain(),
            ),
            (
                "bad TLS server name",
                swap(
                    "tls-server-name: tls-zq7secret",
                    "tls-server-name: 'zq7secret bad name'",
                ),
                plain(),
            ),
            (
                "bad token",
                swap("token: token-zq7secret", "token: \"zq7secret\\n\""),
                plain(),
            ),
            (
                "rewritten to a bad URL",
                MARKED.as_bytes().to_vec(),
                rewrite,
            ),
        ]
    }

    #[tokio::test]
    async fn no_message_quotes_the_secret() {
        let marked = KubeconfigSource {
            secret: "ns/c-kubeconfig".into(),
            value: ByteString(MARKED.as_bytes().to_vec()),
        };
        assert!(build(&marked).await.is_ok());
        let mut leaks = Vec::new();
        for (what, value, settings) in marked_variants() {
            let source = KubeconfigSource {
                secret: "ns/c-kubeconfig".into(),
                value: ByteString(value),
            };
            let Err(e) = build_service(&source, &settings, &Arc::default(), &connections()).await
            else {
                panic!("{what}: accepted");
            };
            let message = e.to_string();
            assert!(
                ["kubeconfig_invalid", "kubeconfig_unusable"].contains(&e.reason()),
                "{what}: {message}"
            );
            if message.to_lowercase().contains(MARK) || message.contains("-----") {
                leaks.push(format!("{what}: {message}"));
            }
        }
        assert!(
            leaks.is_empty(),
            "messages quote the Secret:\n{}",
            leaks.join("\n")
        );
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
