//! A real local Kubernetes control plane, as controller-runtime's envtest runs it: etcd
//! and kube-apiserver as child processes on loopback, with a PKI generated here, for the
//! integration tests and the demo. The binaries and CRDs come from
//! `hack/envtest-assets.sh`, which builds them from the Go module proxy.

pub mod certs;
pub mod crds;
pub mod process;

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube::Client;
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use tempfile::TempDir;

use certs::{CertAndKey, ClusterCa};
use process::Supervised;

/// The environment variable naming the directory `hack/envtest-assets.sh` prints.
pub const ASSETS_ENV: &str = "METAL3_FAKENODE_ENVTEST_ASSETS";

#[derive(Debug, thiserror::Error)]
pub enum EnvtestError {
    #[error(
        "{ASSETS_ENV} is not set. Build the control plane with `make envtest` (or run \
         hack/envtest-assets.sh; it needs Go and the Go module proxy) and export \
         {ASSETS_ENV}=<the directory it prints>; `make test` does both"
    )]
    AssetsUnset,
    #[error(
        "{0} is missing: rebuild the control plane with `make envtest` (hack/envtest-assets.sh)"
    )]
    MissingAsset(PathBuf),
    #[error("generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} not ready after {seconds}s: {detail}\n--- last lines of its log ---\n{log}")]
    NotReady {
        name: String,
        seconds: u64,
        detail: String,
        log: String,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kubeconfig YAML: {0}")]
    KubeconfigYaml(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("CRD {file}: {message}")]
    Crd { file: String, message: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EnvtestError {
    let context = context.into();
    move |source| EnvtestError::Io { context, source }
}

/// The built binaries and CRDs.
#[derive(Clone, Debug)]
pub struct Assets {
    dir: PathBuf,
}

impl Assets {
    pub fn from_env() -> Result<Self, EnvtestError> {
        let dir = std::env::var_os(ASSETS_ENV).ok_or(EnvtestError::AssetsUnset)?;
        Self::new(PathBuf::from(dir))
    }

    pub fn new(dir: PathBuf) -> Result<Self, EnvtestError> {
        let assets = Self { dir };
        for path in [assets.etcd(), assets.kube_apiserver(), assets.crd_dir()] {
            if !path.exists() {
                return Err(EnvtestError::MissingAsset(path));
            }
        }
        Ok(assets)
    }

    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }

    pub fn crd_dir(&self) -> PathBuf {
        self.dir.join("crds")
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16, EnvtestError> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct loopback ports that were free a moment ago. Each is held until all are
/// chosen: ports taken one after another may repeat, since a released port can be handed
/// out again at once.
pub fn free_ports(n: usize) -> Result<Vec<u16>, EnvtestError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("binding a free port")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(io_err("reading a bound port"))
        })
        .collect()
}

/// A scratch directory under one root, named after this process, so directories left by
/// killed processes (whose `Drop` never ran) are swept by the next run.
fn scratch_dir(kind: &str) -> Result<TempDir, EnvtestError> {
    static SWEPT: OnceLock<()> = OnceLock::new();
    let root = std::env::temp_dir().join("metal3-fakenode-envtest");
    std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
    SWEPT.get_or_init(|| sweep_stale(&root));
    tempfile::Builder::new()
        .prefix(&format!("{}-{kind}-", std::process::id()))
        .tempdir_in(&root)
        .map_err(io_err(format!(
            "creating a directory in {}",
            root.display()
        )))
}

fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_string_lossy()
            .split('-')
            .next()
            .unwrap_or("")
            .to_string();
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(&pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), EnvtestError> {
    std::fs::write(path, contents).map_err(io_err(format!("writing {}", path.display())))
}

/// One etcd member; several API servers may share it with distinct `--etcd-prefix`es.
pub struct Etcd {
    process: Supervised,
    url: String,
    _dir: TempDir,
}

impl Etcd {
    pub async fn start(assets: &Assets) -> Result<Self, EnvtestError> {
        let dir = scratch_dir("etcd")?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args = vec![
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        let mut process =
            Supervised::spawn("etcd", &assets.etcd(), &args, dir.path().join("etcd.log"))
                .map_err(io_err("starting etcd"))?;
        let timeout = Duration::from_secs(30);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", client_port)).is_err() {
            if let Some(detail) = process.exited() {
                return Err(not_ready("etcd", started, detail, &process));
            }
            if started.elapsed() > timeout {
                return Err(not_ready("etcd", started, "port closed".into(), &process));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            process,
            url,
            _dir: dir,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

fn not_ready(name: &str, started: Instant, detail: String, process: &Supervised) -> EnvtestError {
    EnvtestError::NotReady {
        name: name.to_string(),
        seconds: started.elapsed().as_secs(),
        detail,
        log: process.log_tail(30),
    }
}

/// One kube-apiserver with its own PKI, authorizing with RBAC.
pub struct ApiServer {
    name: String,
    process: Supervised,
    /// The binary and its flags, kept so that [`ApiServer::restart`] starts the same server.
    program: PathBuf,
    args: Vec<String>,
    /// Processes started so far; each has a log of its own.
    starts: u32,
    url: String,
    ca: ClusterCa,
    admin: CertAndKey,
    dir: TempDir,
}

impl ApiServer {
    /// Starts an API server named `name` (also its etcd prefix) and waits for `/readyz`.
    pub async fn start(assets: &Assets, etcd: &Etcd, name: &str) -> Result<Self, EnvtestError> {
        let ca = ClusterCa::new(&format!("{name}-ca"))?;
        Self::start_with_ca(assets, etcd, name, ca).await
    }

    /// Starts an API server whose PKI hangs off `ca`, as a workload cluster's API server
    /// does off the `<cluster>-ca` Secret from which Cluster API signs its kubeconfig.
    pub async fn start_with_ca(
        assets: &Assets,
        etcd: &Etcd,
        name: &str,
        ca: ClusterCa,
    ) -> Result<Self, EnvtestError> {
        let dir = scratch_dir(name)?;
        let d = dir.path();
        let serving = ca.serving_cert()?;
        let admin = ca.client_cert("admin", Some("system:masters"))?;
        // As kubeadm configures it: the API server's client certificate towards kubelets,
        // signed by the cluster's CA (which tells metal3-fakenode's kubelet API the
        // cluster), and the kubelet address types it prefers.
        let kubelet_client = ca.client_cert(
            "kube-apiserver-kubelet-client",
            Some("kubeadm:cluster-admins"),
        )?;
        write_file(&d.join("kubelet-client.crt"), &kubelet_client.cert_pem)?;
        write_file(&d.join("kubelet-client.key"), &kubelet_client.key_pem)?;
        write_file(&d.join("ca.crt"), &ca.cert_pem())?;
        write_file(&d.join("serving.crt"), &serving.cert_pem)?;
        write_file(&d.join("serving.key"), &serving.key_pem)?;
        let (sa_key, sa_pub) = certs::service_account_key()?;
        write_file(&d.join("sa.key"), &sa_key)?;
        write_file(&d.join("sa.pub"), &sa_pub)?;
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let p = |f: &str| d.join(f).display().to_string();
        let args = vec![
            format!("--etcd-servers={}", etcd.url()),
            format!("--etcd-prefix=/{name}"),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("serving.crt")),
            format!("--tls-private-key-file={}", p("serving.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
            format!("--kubelet-client-key={}", p("kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The endpoint reconciler refuses a loopback address, and nothing here needs
            // the in-cluster `kubernetes` Service endpoints.
            "--endpoint-reconciler-type=none".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--authorization-mode=RBAC".into(),
            // No controller-manager runs to create default ServiceAccounts.
            "--disable-admission-plugins=ServiceAccount".into(),
            format!("--service-account-issuer={url}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
        ];
        let program = assets.kube_apiserver();
        let process = Supervised::spawn(
            &format!("kube-apiserver {name}"),
            &program,
            &args,
            d.join("kube-apiserver.log"),
        )
        .map_err(io_err(format!("starting kube-apiserver {name}")))?;
        let mut server = Self {
            name: name.to_string(),
            process,
            program,
            args,
            starts: 1,
            url,
            ca,
            admin,
            dir,
        };
        server.wait_ready(Duration::from_secs(120)).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), EnvtestError> {
        let client = self.client().await?;
        let started = Instant::now();
        loop {
            let request = http::Request::get("/readyz").body(Vec::new());
            let request = request.map_err(|e| EnvtestError::Io {
                context: "building the /readyz request".into(),
                source: io::Error::other(e),
            })?;
            let last = match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            let name = format!("kube-apiserver {}", self.name);
            if let Some(detail) = self.process.exited() {
                return Err(not_ready(&name, started, detail, &self.process));
            }
            if started.elapsed() > timeout {
                return Err(not_ready(&name, started, last, &self.process));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills the process (SIGKILL) and waits for it: for tests of a dead API server.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again after [`ApiServer::kill`] (killing it first if it still
    /// runs), with the same flags, port, PKI and etcd prefix, and waits for `/readyz`: for
    /// tests of an API server that comes back. Clients made before keep working.
    pub async fn restart(&mut self) -> Result<(), EnvtestError> {
        self.process.kill();
        self.starts += 1;
        let name = format!("kube-apiserver {}", self.name);
        // A log per start: the one of the killed process says how it ended.
        let log = self
            .dir
            .path()
            .join(format!("kube-apiserver-{}.log", self.starts));
        self.process = Supervised::spawn(&name, &self.program, &self.args, log)
            .map_err(io_err(format!("restarting {name}")))?;
        self.wait_ready(Duration::from_secs(120)).await
    }

    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// A kubeconfig for the cluster administrator (`system:masters`).
    pub fn admin_kubeconfig(&self) -> Kubeconfig {
        kubeconfig(
            &self.name,
            &self.url,
            &self.ca.cert_pem(),
            "admin",
            &self.admin,
        )
    }

    /// A kubeconfig for `user` (in `group`, if given) with a client certificate of its
    /// own; it can do only what RBAC grants that user or group.
    pub fn kubeconfig_for_user(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> Result<Kubeconfig, EnvtestError> {
        let cert = self.ca.client_cert(user, group)?;
        Ok(kubeconfig(
            &self.name,
            &self.url,
            &self.ca.cert_pem(),
            user,
            &cert,
        ))
    }

    /// A new admin client. Clients are cheap; make one per runtime, since a kube client
    /// is bound to the Tokio runtime it was made in.
    pub async fn client(&self) -> Result<Client, EnvtestError> {
        client_for(&self.admin_kubeconfig()).await
    }
}

/// A kubeconfig with one cluster, one user with a client certificate, and one context.
pub fn kubeconfig(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    cert: &CertAndKey,
) -> Kubeconfig {
    let context = format!("{user}@{cluster}");
    Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: cluster.into(),
            cluster: Some(Cluster {
                server: Some(server.into()),
                certificate_authority_data: Some(BASE64.encode(ca_pem)),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: user.into(),
            auth_info: Some(AuthInfo {
                client_certificate_data: Some(BASE64.encode(&cert.cert_pem)),
                client_key_data: Some(BASE64.encode(&cert.key_pem).into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: context.clone(),
            context: Some(Context {
                cluster: cluster.into(),
                user: Some(user.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(context),
        ..Default::default()
    }
}

/// A client for a kubeconfig this harness generated, with kube's own rules (which would
/// run an exec plugin); a kubeconfig read from a Secret someone else wrote goes through
/// [`metal3_fakenode::workload::parse_kubeconfig`] instead, as in the CAPM3 stand-in.
pub async fn client_for(kubeconfig: &Kubeconfig) -> Result<Client, EnvtestError> {
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

/// The kubeconfig as YAML, the form CAPI stores in `<cluster>-kubeconfig` Secrets.
pub fn kubeconfig_yaml(kubeconfig: &Kubeconfig) -> Result<String, EnvtestError> {
    serde_saphyr::to_string(kubeconfig).map_err(|e| EnvtestError::KubeconfigYaml(e.to_string()))
}

/// One etcd, a management API server with the upstream CRDs installed, and `workloads`
/// workload API servers, all sharing the etcd under distinct prefixes.
pub struct Environment {
    pub management: ApiServer,
    pub workloads: Vec<ApiServer>,
    pub assets: Assets,
    // Declared last so it is dropped after the API servers that use it.
    etcd: Etcd,
}

impl Environment {
    /// The etcd every API server of the environment shares.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd.pid()
    }

    pub async fn start(assets: Assets, workloads: usize) -> Result<Self, EnvtestError> {
        let etcd = Etcd::start(&assets).await?;
        let names: Vec<String> = (0..workloads).map(|i| format!("workload-{i}")).collect();
        let (management, workloads) = tokio::try_join!(
            ApiServer::start(&assets, &etcd, "management"),
            futures::future::try_join_all(
                names
                    .iter()
                    .map(|name| ApiServer::start(&assets, &etcd, name))
            ),
        )?;
        crds::install(&management.client().await?, &assets).await?;
        Ok(Self {
            management,
            workloads,
            assets,
            etcd,
        })
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_chosen_together_are_distinct() {
        let ports = super::free_ports(64).unwrap();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 64);
        assert!(ports.iter().all(|p| *p > 0));
    }
}
