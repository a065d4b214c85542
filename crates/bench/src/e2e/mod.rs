//! `metal3-fakenode e2e`: the original Metal3 scale test on one machine, without kind.
//!
//! The real Cluster API, kubeadm control-plane and bootstrap providers, CAPM3 and the
//! baremetal-operator (test provisioner) run as local processes against a local management
//! API server, with their released CRDs and webhooks (served on loopback). Each workload
//! cluster gets an API server of its own (KCP lists control-plane Nodes cluster-wide), or,
//! with `--workload-apiservers K`, its own endpoint on one of K tenancy fronts over shared
//! API servers (see [`workloads`]); all share one etcd under distinct prefixes, with the
//! PKI that Cluster API expects to find in the cluster's Secrets. metal3-fakenode (and
//! each front) runs beside them as a process with the RBAC of deploy/. What is asserted:
//! the upstream controllers accept its Nodes.
//!
//! The harness reads the workload clusters only with kubeconfigs it generated itself
//! ([`workloads::Access`]), never with the `<cluster>-kubeconfig` Secrets KCP writes; a
//! kubeconfig from a Secret would go through `workload::parse_kubeconfig`.

pub mod checks;
pub mod cluster;
pub mod host_nudge;
pub mod phases;
pub mod providers;
pub mod report;
pub mod webhooks;
pub mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::future::try_join_all;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::cli::EtcdMode;
use crate::demo::process_stats;
use cluster::{ClusterPki, ClusterSpec, ExternalEtcdClient};
use metal3_fakenode_testkit::envtest::certs::{CertAndKey, ClusterCa};
use metal3_fakenode_testkit::envtest::process::Supervised;
use metal3_fakenode_testkit::envtest::{self, ApiServer, Assets, Etcd};
use metal3_fakenode_testkit::kubelet_probe::{EtcdOp, EtcdTls, KubeletProbe, Target};
use metal3_fakenode_testkit::probe;
use metal3_fakenode_testkit::simulate::world::dynamic;
use providers::{PROVIDERS, Running};
use report::{ClusterReport, Report, Step};
use workloads::{Access, Layout, Workloads};

/// The environment variable naming the directory `hack/e2e-assets.sh` prints.
pub const ASSETS_ENV: &str = "METAL3_FAKENODE_E2E_ASSETS";

/// The Kubernetes version of the simulated Machines (what kubeadm would install).
pub const KUBERNETES_VERSION: &str = "v1.35.0";

const FIELD_MANAGER: &str = "metal3-fakenode-e2e";
/// Where the controller runs, as in deploy/.
const CONTROLLER_NAMESPACE: &str = "metal3";
const CONTROLLER_ACCOUNT: &str = "metal3-fakenode";
/// The tenancy fronts' ServiceAccount, as in deploy/components/tenancy-front.
const FRONT_ACCOUNT: &str = "metal3-fakenode-front";

/// What one run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub clusters: usize,
    pub etcd: EtcdMode,
    /// Control-plane Machines of each cluster; from 3 up, also scaled to 1 and back.
    pub control_plane_replicas: u32,
    /// The Kubernetes version every cluster is upgraded to at the end, if any.
    pub upgrade_to: Option<String>,
    /// Workers of each MachineDeployment once scaled up; it then scales down to one.
    pub scale_up_to: u32,
    /// Longest wait for any one step across all clusters.
    pub step_timeout: Duration,
    /// Where the workload clusters' API servers run.
    pub layout: Layout,
    pub report: Option<PathBuf>,
}

fn say(message: impl AsRef<str>) {
    eprintln!("e2e: {}", message.as_ref());
}

/// The directory of upstream controller binaries and manifests.
pub struct E2eAssets {
    dir: PathBuf,
}

impl E2eAssets {
    pub fn from_env() -> anyhow::Result<Self> {
        let dir = std::env::var_os(ASSETS_ENV).ok_or_else(|| {
            anyhow!("{ASSETS_ENV} is not set: run `make e2e`, or set it to the directory hack/e2e-assets.sh prints")
        })?;
        let dir = PathBuf::from(dir);
        if !dir.join(".complete").exists() {
            bail!("{} is not a complete e2e assets directory", dir.display());
        }
        Ok(Self { dir })
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    fn provider_dir(&self, name: &str) -> PathBuf {
        self.dir.join("providers").join(name)
    }
}

/// `metal3-fakenode e2e`: runs the scenario and prints the report; Ctrl-C stops it, and
/// every process and directory goes with it.
pub async fn main(args: crate::cli::E2eArgs) -> anyhow::Result<()> {
    let options = Options {
        clusters: args.clusters as usize,
        etcd: args.etcd,
        control_plane_replicas: args.control_plane_replicas,
        upgrade_to: args.upgrade_to,
        scale_up_to: args.scale_up_to,
        step_timeout: args.step_timeout,
        layout: match args.workload_apiservers {
            Some(k) => Layout::Fronted(k as usize),
            None => Layout::Dedicated,
        },
        report: args.report,
    };
    let report = tokio::select! {
        report = run(options) => report?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted: every process and directory was removed"),
    };
    println!("{}", report::render(&report));
    Ok(())
}

/// Runs the whole scenario; any unmet expectation is an error that says what was seen.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    if options.clusters == 0 {
        bail!("--clusters must be at least 1");
    }
    checks::validate(
        options.control_plane_replicas,
        options.etcd == EtcdMode::Stacked,
        KUBERNETES_VERSION,
        options.upgrade_to.as_deref(),
    )
    .map_err(|e| anyhow!(e))?;
    let assets = Assets::from_env().context("the e2e run needs the local control plane")?;
    let e2e = E2eAssets::from_env()?;
    let dir = tempfile::Builder::new()
        .prefix("metal3-fakenode-e2e-")
        .tempdir()?;
    let result = scenario(&options, &assets, &e2e, dir.path()).await;
    if result.is_err() {
        let kept = dir.keep();
        say(format!(
            "failed: the processes' logs are kept in {}",
            kept.display()
        ));
    }
    result
}

/// The scenario, its processes' files under `dir`; every process stops when it returns.
async fn scenario(
    options: &Options,
    assets: &Assets,
    e2e: &E2eAssets,
    dir: &Path,
) -> anyhow::Result<Report> {
    let begun = Instant::now();
    say("starting etcd and the management API server");
    let etcd = Etcd::start(assets).await?;
    let management = ApiServer::start(assets, &etcd, "management").await?;
    let mgmt = &management.client().await?;
    let admin_kubeconfig = dir.join("management.kubeconfig");
    std::fs::write(
        &admin_kubeconfig,
        envtest::kubeconfig_yaml(&management.admin_kubeconfig())?,
    )?;

    let _controller_manager = start_controller_manager(e2e, &admin_kubeconfig, dir)?;

    // One CA for every webhook server; each provider listens on its own port.
    let webhook_ca = ClusterCa::new("metal3-fakenode-e2e-webhooks")?;
    let serving = webhook_ca.serving_cert()?;
    let ports = providers::Ports::free(PROVIDERS.len())?;
    say("installing the released CRDs and webhook configurations");
    install_provider_manifests(mgmt, e2e, &ports, &webhook_ca.cert_pem()).await?;

    say("starting CAPI, KCP, CABPK, CAPM3 and the baremetal-operator");
    let started = Instant::now();
    let bin_dir = e2e.bin_dir();
    let running: Vec<Running> = try_join_all(PROVIDERS.iter().zip(&ports).map(|(p, ports)| {
        providers::start(*p, *ports, &bin_dir, &admin_kubeconfig, dir, &serving)
    }))
    .await?;
    say(format!(
        "controllers ready in {:.1}s",
        started.elapsed().as_secs_f64()
    ));

    let stacked = options.etcd == EtcdMode::Stacked;
    let mut controller = start_fakenode(&management, mgmt, dir, stacked).await?;

    let mut specs = Vec::new();
    let mut cas = Vec::new();
    let mut etcd_clients = Vec::new();
    for i in 0..options.clusters {
        let (spec, pki, ca, etcd_client) = workload_cluster(format!("e2e-{i:03}"), options)?;
        specs.push((spec, pki));
        cas.push(ca);
        etcd_clients.push(etcd_client);
    }
    let names: Vec<String> = specs.iter().map(|(s, _)| s.name.clone()).collect();
    let front_kubeconfig = match options.layout {
        Layout::Fronted(_) => Some(front_identity(&management, mgmt, dir).await?),
        Layout::Dedicated => None,
    };
    let workloads = Workloads::start(
        options.layout,
        assets,
        &etcd,
        &names,
        cas,
        front_kubeconfig.as_deref(),
        dir,
    )
    .await?;
    for ((spec, _), access) in specs.iter_mut().zip(&workloads.access) {
        spec.api_host = access.host.clone();
        spec.api_port = access.port;
    }
    say(format!(
        "{} workload API server(s) up ({}); creating the clusters",
        workloads.servers.len(),
        options.layout.name()
    ));
    let mut reports: Vec<ClusterReport> = specs
        .iter()
        .zip(&workloads.access)
        .map(|((spec, _), access)| {
            ClusterReport::new(&spec.name, workloads.servers[access.server].pid())
        })
        .collect();
    let clusters = Clusters {
        mgmt,
        specs: &specs,
        workloads: &workloads.access,
        timeout: options.step_timeout,
    };
    let mut steps = Vec::new();
    let replicas = options.control_plane_replicas;
    let nudges = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let nudging = tokio::spawn(host_nudge::run(
        mgmt.clone(),
        specs.iter().map(|(s, _)| s.namespace.clone()).collect(),
        std::sync::Arc::clone(&nudges),
    ));
    // Stops with the scenario, whichever way it ends.
    let _nudging = AbortOnDrop(nudging);

    let begun_step = Instant::now();
    bring_up(
        mgmt,
        &specs,
        &workloads.access,
        &mut reports,
        options.step_timeout,
    )
    .await?;
    steps.push(step("clusters_up", begun_step));

    if stacked {
        // Up is not yet healthy: KCP checks the etcd members and components after the
        // Machines run.
        let begun_step = Instant::now();
        clusters.settle(replicas, 0, None).await?;
        steps.push(step("control_plane_healthy", begun_step));
    }
    if replicas >= 3 {
        for target in [1, replicas] {
            let begun_step = Instant::now();
            for (spec, _) in &specs {
                scale_control_plane(mgmt, spec, target).await?;
            }
            clusters.settle(target, 0, None).await?;
            steps.push(step(
                &format!("control_plane_scaled_to_{target}"),
                begun_step,
            ));
        }
    }
    for target in [options.scale_up_to, 1] {
        let begun_step = Instant::now();
        for (spec, _) in &specs {
            scale(mgmt, spec, target).await?;
        }
        clusters.settle(replicas, target, None).await?;
        steps.push(step(&format!("workers_scaled_to_{target}"), begun_step));
    }
    if let Some(version) = &options.upgrade_to {
        let begun_step = Instant::now();
        for (spec, _) in &specs {
            upgrade(mgmt, spec, version).await?;
        }
        clusters.settle(replicas, 1, Some(version)).await?;
        steps.push(step(&format!("upgraded_to_{version}"), begun_step));
    }
    let serving = workloads.cost();
    for (((report, access), (spec, pki)), etcd_client) in reports
        .iter_mut()
        .zip(&workloads.access)
        .zip(&specs)
        .zip(&etcd_clients)
    {
        if workloads.layout == Layout::Dedicated {
            let pid = workloads.servers[access.server].pid();
            report.apiserver_rss_bytes = process_stats::rss_bytes(pid);
            report.apiserver_peak_rss_bytes = process_stats::peak_rss_bytes(pid);
        }
        report.final_kcp_conditions = checks::conditions(&kubeadm_control_plane(mgmt, spec).await?);
        if stacked {
            let tls = EtcdClientFiles {
                ca_pem: &pki.etcd_ca_cert,
                client: etcd_client,
            };
            report.etcd_members = Some(etcd_members(mgmt, spec, access, &tls, dir).await?);
        }
    }
    let clients_before = fakenode_gauge(&controller.metrics, "fakenode_workload_clients").await;
    let kubelets_before = fakenode_gauge(&controller.metrics, "fakenode_kubelets").await;

    let begun_step = Instant::now();
    delete_all(mgmt, &specs, &controller.metrics, options.step_timeout).await?;
    steps.push(step("clusters_deleted", begun_step));
    let report = Report {
        etcd: options.etcd.name().to_string(),
        control_plane_replicas: replicas,
        upgraded_to: options.upgrade_to.clone(),
        steps,
        clusters: reports,
        workload_clients_before_delete: clients_before,
        kubelets_before_delete: kubelets_before,
        controllers: PROVIDERS.iter().map(|p| p.name.to_string()).collect(),
        host_nudges: nudges.load(std::sync::atomic::Ordering::Relaxed),
        serving,
        total_seconds: begun.elapsed().as_secs_f64(),
    };
    if let Some(path) = &options.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for mut process in running.into_iter().map(|r| r.process) {
        process.kill();
    }
    controller.process.kill();
    Ok(report)
}

/// Aborts a background task when the scenario returns, early or not.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A finished step, said as it ends.
fn step(name: &str, begun: Instant) -> Step {
    let seconds = begun.elapsed().as_secs_f64();
    say(format!("step {name}: {seconds:.1}s"));
    Step {
        name: name.to_string(),
        seconds,
    }
}

/// Every cluster of the run, with what a step waits for.
struct Clusters<'a> {
    mgmt: &'a Client,
    specs: &'a [(ClusterSpec, ClusterPki)],
    workloads: &'a [Access],
    timeout: Duration,
}

impl Clusters<'_> {
    /// Waits until every cluster has `control_plane` + `workers` Machines, settled as
    /// [`settled`] says (and upgraded to `version`, if given).
    async fn settle(
        &self,
        control_plane: u32,
        workers: u32,
        version: Option<&str>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout;
        try_join_all(
            self.specs
                .iter()
                .zip(self.workloads)
                .map(|((spec, _), server)| {
                    wait_until(deadline, &spec.name, move || {
                        settled(self.mgmt, spec, server, control_plane + workers, version)
                    })
                }),
        )
        .await?;
        Ok(())
    }
}

/// Creates every cluster's objects and waits until each is up (its control plane
/// initialized, its Machine Running), recording how long each took and where it went.
async fn bring_up(
    mgmt: &Client,
    specs: &[(ClusterSpec, ClusterPki)],
    workloads: &[Access],
    reports: &mut [ClusterReport],
    timeout: Duration,
) -> anyhow::Result<()> {
    let created = Instant::now();
    let mut created_at = Vec::new();
    for (spec, pki) in specs {
        for object in spec.objects(pki) {
            create(mgmt, &object).await?;
        }
        // The Cluster is created last: from here its controllers can act.
        created_at.push(Instant::now());
    }

    // Every cluster up: the control plane initialized, its Machine Running.
    let deadline = Instant::now() + timeout;
    try_join_all(
        specs
            .iter()
            .zip(reports.iter_mut())
            .zip(&created_at)
            .zip(workloads)
            .map(|((((spec, _), report), created_at), server)| async move {
                let machines = spec.control_plane_replicas as usize;
                let up =
                    wait_until(deadline, &spec.name, || cluster_up(mgmt, spec, machines)).await?;
                report.seconds_to_running = Some(seconds_since(*created_at, up));
                let running = jiff::Timestamp::now();
                report.milestones = control_plane_milestones(mgmt, spec, server, running)
                    .await
                    .map_err(|e| say(format!("{}: no milestones: {e:#}", spec.name)))
                    .ok();
                anyhow::Ok(())
            }),
    )
    .await?;
    say(format!(
        "all {} cluster(s) up in {:.1}s",
        specs.len(),
        created.elapsed().as_secs_f64()
    ));

    Ok(())
}

/// Deletes every Cluster and waits until nothing of them is left and metal3-fakenode
/// forgot them (no client, no fake kubelet).
async fn delete_all(
    mgmt: &Client,
    specs: &[(ClusterSpec, ClusterPki)],
    metrics: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    // Delete every Cluster: everything goes, and metal3-fakenode forgets the clusters.
    let step = Instant::now();
    for (spec, _) in specs {
        let api = dynamic(
            mgmt,
            &spec.namespace,
            "cluster.x-k8s.io",
            "v1beta2",
            "Cluster",
        );
        api.delete(&spec.name, &DeleteParams::background()).await?;
    }
    let deadline = step + timeout;
    try_join_all(
        specs
            .iter()
            .map(|(spec, _)| wait_until(deadline, &spec.name, || cluster_gone(mgmt, spec))),
    )
    .await?;
    // It forgets each cluster: no client, no fake kubelet (heartbeats) left.
    wait_until(deadline, "metal3-fakenode", || async {
        let clients = fakenode_gauge(metrics, "fakenode_workload_clients").await;
        let kubelets = fakenode_gauge(metrics, "fakenode_kubelets").await;
        match (clients, kubelets) {
            (Some(c), Some(k)) if c == 0.0 && k == 0.0 => Ok(true),
            other => bail!("(workload clients, kubelets) = {other:?}"),
        }
    })
    .await?;
    say(format!(
        "every Cluster deleted, nothing of it left, in {:.1}s",
        step.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn seconds_since(start: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(start).as_secs_f64()
}

/// Polls `check` every second until it returns true (then returns when), until
/// `deadline`; the last error or "not yet" goes into the failure.
async fn wait_until<F, Fut>(deadline: Instant, what: &str, mut check: F) -> anyhow::Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    loop {
        let last = match check().await {
            Ok(true) => return Ok(Instant::now()),
            Ok(false) => "not yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what}: gave up waiting: {last}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Creates `object` (any kind, from its apiVersion and kind); an existing one is kept.
async fn create(client: &Client, object: &Value) -> anyhow::Result<()> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    // Plurals by lowercase + "s" hold for every kind created here.
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let obj: DynamicObject = serde_json::from_value(object.clone())?;
    let name = obj.name_any();
    let api: Api<DynamicObject> = match obj.namespace() {
        Some(ns) => Api::namespaced_with(client.clone(), &ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(anyhow!(e).context(format!("creating {kind} {name}"))),
    }
}

/// The released CRDs (multi-version ones converting through their provider) and webhook
/// configurations of every provider; waits until the CRDs are Established.
async fn install_provider_manifests(
    mgmt: &Client,
    e2e: &E2eAssets,
    ports: &[providers::Ports],
    ca_pem: &str,
) -> anyhow::Result<()> {
    let crd_api: Api<CustomResourceDefinition> = Api::all(mgmt.clone());
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    let mut with_ipam: Vec<(&str, Option<&providers::Ports>)> = PROVIDERS
        .iter()
        .zip(ports)
        .map(|(p, ports)| (p.name, Some(ports)))
        .collect();
    with_ipam.push(("ip-address-manager", None));
    for (name, ports) in with_ipam {
        let dir = e2e.provider_dir(name);
        let endpoint = webhooks::Endpoint {
            provider: name,
            port: ports.map_or(0, |p| p.webhook),
            ca_pem,
        };
        for crd in read_documents(&dir.join("crds.yaml"))? {
            let crd = webhooks::rewrite_conversion(crd, &endpoint);
            let crd_name = crd["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let typed: CustomResourceDefinition = serde_json::from_value(crd)
                .with_context(|| format!("reading CRD {crd_name} of {name}"))?;
            crd_api
                .patch(&crd_name, &apply, &Patch::Apply(&typed))
                .await
                .with_context(|| format!("installing CRD {crd_name}"))?;
            names.push(crd_name);
        }
        let webhooks_file = dir.join("webhooks.yaml");
        if webhooks_file.exists() {
            for document in read_documents(&webhooks_file)? {
                create(mgmt, &webhooks::rewrite_configuration(document, &endpoint)).await?;
            }
        }
    }
    for name in names {
        let established = kube::runtime::wait::await_condition(
            crd_api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .map_err(|_| anyhow!("CRD {name} not Established after 60s"))??;
    }
    Ok(())
}

/// The objects of a multi-document YAML file (empty documents skipped).
fn read_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(documents.into_iter().filter(Value::is_object).collect())
}

/// The management cluster's garbage collector and namespace controller: Cluster API
/// leaves owned objects (generated Secrets, bootstrap data) to the garbage collector, and a
/// namespace goes only once the namespace controller emptied it.
fn start_controller_manager(
    e2e: &E2eAssets,
    kubeconfig: &Path,
    dir: &Path,
) -> anyhow::Result<Supervised> {
    let kubeconfig = kubeconfig.display().to_string();
    let args = vec![
        format!("--kubeconfig={kubeconfig}"),
        "--controllers=garbagecollector,namespace".to_string(),
        "--leader-elect=false".to_string(),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={}", envtest::free_port()?),
        format!(
            "--cert-dir={}",
            dir.join("kube-controller-manager").display()
        ),
    ];
    Ok(Supervised::spawn(
        "kube-controller-manager",
        &e2e.bin_dir().join("kube-controller-manager"),
        &args,
        dir.join("kube-controller-manager.log"),
    )?)
}

/// One workload cluster's PKI and its objects' parameters; its endpoint is known once its
/// API server (or front) runs. The CA is returned for that server.
fn workload_cluster(
    name: String,
    options: &Options,
) -> anyhow::Result<(ClusterSpec, ClusterPki, ClusterCa, CertAndKey)> {
    let ca = ClusterCa::new(&format!("{name}-ca"))?;
    let etcd_ca = ClusterCa::new("etcd-ca")?;
    let pki = ClusterPki {
        ca_cert: ca.cert_pem(),
        ca_key: ca.key_pem().to_string(),
        etcd_ca_cert: etcd_ca.cert_pem(),
        etcd_ca_key: etcd_ca.key_pem().to_string(),
    };
    let spec = ClusterSpec {
        namespace: name.clone(),
        name,
        api_host: String::new(),
        api_port: 0,
        kubernetes_version: KUBERNETES_VERSION.into(),
        control_plane_replicas: options.control_plane_replicas,
        workers: 0,
        hosts: cluster::hosts(options.control_plane_replicas, options.scale_up_to),
        etcd: match options.etcd {
            EtcdMode::Stacked => cluster::Etcd::Stacked,
            EtcdMode::External => {
                let client = etcd_ca.client_cert("kube-apiserver-etcd-client", None)?;
                cluster::Etcd::External(ExternalEtcdClient {
                    cert: client.cert_pem,
                    key: client.key_pem,
                })
            }
        },
    };
    // The harness's own etcd client certificate, as KCP makes its own from the etcd CA.
    let etcd_client = etcd_ca.client_cert("metal3-fakenode-e2e", None)?;
    Ok((spec, pki, ca, etcd_client))
}

/// What the harness dials etcd members with.
struct EtcdClientFiles<'a> {
    ca_pem: &'a str,
    client: &'a CertAndKey,
}

/// The etcd members of a stacked cluster as the real clientv3 lists them (through the
/// kubelet probe), dialled as KCP dials them: a port-forward through the workload API
/// server to the etcd Pod of a control-plane Node. They must be exactly the
/// control-plane Nodes.
async fn etcd_members(
    mgmt: &Client,
    spec: &ClusterSpec,
    access: &Access,
    tls: &EtcdClientFiles<'_>,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let files = dir.join(format!("{}-etcd-client", spec.name));
    std::fs::create_dir_all(&files)?;
    let kubeconfig = files.join("kubeconfig");
    std::fs::write(&kubeconfig, envtest::kubeconfig_yaml(&access.kubeconfig)?)?;
    let paths = EtcdTls {
        ca: files.join("ca.crt"),
        cert: files.join("client.crt"),
        key: files.join("client.key"),
    };
    std::fs::write(&paths.ca, tls.ca_pem)?;
    std::fs::write(&paths.cert, &tls.client.cert_pem)?;
    std::fs::write(&paths.key, &tls.client.key_pem)?;
    let machines = list(
        mgmt,
        &spec.namespace,
        "cluster.x-k8s.io",
        "v1beta2",
        "Machine",
    )
    .await?;
    let node = machines
        .iter()
        .filter(|m| checks::is_control_plane(m))
        .find_map(|m| m["status"]["nodeRef"]["name"].as_str())
        .ok_or_else(|| anyhow!("{}: no control-plane Node", spec.name))?;
    let target = Target::pod(&kubeconfig, "kube-system", &format!("etcd-{node}"));
    let listed = KubeletProbe::from_assets()?
        .etcd(&target, &paths, EtcdOp::MemberList)
        .await
        .with_context(|| format!("{}: listing the etcd members through {node}", spec.name))?;
    let members: Vec<String> = listed.members.into_iter().map(|m| m.name).collect();
    checks::etcd_members_match(&members, &machines).map_err(|e| anyhow!("{}: {e}", spec.name))?;
    Ok(members)
}

struct Fakenode {
    process: Supervised,
    metrics: String,
}

/// metal3-fakenode as deploy/ runs it: its ServiceAccount, bound to the ClusterRoles of
/// deploy/base (and deploy/components/certificate-expiry with external etcd), with a token
/// from a TokenRequest, and the flags of [`fakenode_args`].
async fn start_fakenode(
    management: &ApiServer,
    mgmt: &Client,
    dir: &Path,
    stacked_etcd: bool,
) -> anyhow::Result<Fakenode> {
    create(
        mgmt,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NAMESPACE}}),
    )
    .await?;
    let base = (
        include_str!("../../../../deploy/base/clusterrole.yaml"),
        include_str!("../../../../deploy/base/clusterrolebinding.yaml"),
    );
    let certificate_expiry = (
        include_str!("../../../../deploy/components/certificate-expiry/clusterrole.yaml"),
        include_str!("../../../../deploy/components/certificate-expiry/clusterrolebinding.yaml"),
    );
    let roles = if stacked_etcd {
        vec![base]
    } else {
        vec![base, certificate_expiry]
    };
    let path = dir.join("metal3-fakenode.kubeconfig");
    service_account_kubeconfig(management, mgmt, CONTROLLER_ACCOUNT, &roles, &path).await?;
    let metrics = format!("127.0.0.1:{}", envtest::free_port()?);
    let kubelet = match stacked_etcd {
        true => Some(format!("127.0.0.1:{}", envtest::free_port()?)),
        false => None,
    };
    let args = fakenode_args(&metrics, kubelet.as_deref());
    let kubeconfig = path.display().to_string();
    let mut process = Supervised::spawn_with_env(
        "metal3-fakenode",
        &crate::controller_binary()?,
        &args,
        &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "info")],
        dir.join("metal3-fakenode.log"),
    )?;
    probe::wait_ready(
        &mut process,
        "metal3-fakenode",
        &metrics,
        "/readyz",
        Duration::from_secs(60),
    )
    .await?;
    Ok(Fakenode { process, metrics })
}

/// The management cluster as the tenancy fronts see it: the ServiceAccount of
/// deploy/components/tenancy-front with its ClusterRole, as a kubeconfig file.
async fn front_identity(
    management: &ApiServer,
    mgmt: &Client,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let role = (
        include_str!("../../../../deploy/components/tenancy-front/clusterrole.yaml"),
        include_str!("../../../../deploy/components/tenancy-front/clusterrolebinding.yaml"),
    );
    let path = dir.join("metal3-fakenode-front.kubeconfig");
    service_account_kubeconfig(management, mgmt, FRONT_ACCOUNT, &[role], &path).await?;
    Ok(path)
}

/// Writes to `path` a kubeconfig for the ServiceAccount `account` in the controller's
/// namespace, bound to the (ClusterRole, ClusterRoleBinding) manifests of deploy/ given,
/// with a token from a TokenRequest.
async fn service_account_kubeconfig(
    management: &ApiServer,
    mgmt: &Client,
    account: &str,
    roles: &[(&str, &str)],
    path: &Path,
) -> anyhow::Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(mgmt.clone(), CONTROLLER_NAMESPACE);
    let object: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": account, "namespace": CONTROLLER_NAMESPACE},
    }))?;
    match accounts.create(&PostParams::default(), &object).await {
        Err(kube::Error::Api(s)) if s.code != 409 => return Err(kube::Error::Api(s).into()),
        Err(e @ (kube::Error::Service(_) | kube::Error::HyperError(_))) => return Err(e.into()),
        _ => {}
    }
    for (role, binding) in roles {
        let role: Value = serde_saphyr::from_str(role).map_err(|e| anyhow!("{e}"))?;
        create(mgmt, &role).await?;
        let mut binding: ClusterRoleBinding =
            serde_saphyr::from_str(binding).map_err(|e| anyhow!("{e}"))?;
        // What kustomize does for the deployed namespace.
        for subject in binding.subjects.iter_mut().flatten() {
            subject.namespace = Some(CONTROLLER_NAMESPACE.into());
        }
        create(mgmt, &serde_json::to_value(&binding)?).await?;
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(24 * 3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow!("the TokenRequest returned no token"))?;
    let mut kubeconfig = management.admin_kubeconfig();
    for user in &mut kubeconfig.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            *auth = kube::config::AuthInfo {
                token: Some(token.clone().into()),
                ..Default::default()
            };
        }
    }
    std::fs::write(path, envtest::kubeconfig_yaml(&kubeconfig)?)?;
    Ok(())
}

/// metal3-fakenode's command line. With a kubelet API (stacked etcd) its Nodes advertise
/// it on loopback, where every workload API server forwards KCP's port-forwards (to the
/// fake etcd members, and to the kube-apiserver Pod for its certificate's expiry); that
/// the etcd is stacked it reads from the KubeadmControlPlane (no `--stacked-etcd-pods`).
/// Without one (external etcd), it annotates the expiry on the KubeadmConfigs instead, or
/// KCP would dial the kube-apiserver Pod.
fn fakenode_args(metrics: &str, kubelet: Option<&str>) -> Vec<String> {
    let mut args = vec!["run", "--metrics-bind-address", metrics];
    match kubelet {
        Some(address) => args.extend([
            "--kubelet-address",
            address,
            "--kubelet-bind-address",
            address,
        ]),
        None => args.push("--annotate-certificate-expiry"),
    }
    args.extend(["--log-format", "json"]);
    args.into_iter().map(str::to_string).collect()
}

/// A gauge of the metal3-fakenode process, read from its /metrics.
async fn fakenode_gauge(metrics: &str, name: &str) -> Option<f64> {
    let (_, text) = probe::get(metrics, "/metrics").await.ok()?;
    metal3_fakenode_testkit::exposition::metric_value(&text, name)
}

/// Every object of a kind in `ns`, as JSON.
async fn list(
    mgmt: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> anyhow::Result<Vec<Value>> {
    let items = dynamic(mgmt, ns, group, version, kind)
        .list(&ListParams::default())
        .await?
        .items;
    to_values(items)
}

/// One object as JSON.
async fn get(
    mgmt: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<Value> {
    let object = dynamic(mgmt, ns, group, version, kind).get(name).await?;
    Ok(serde_json::to_value(object)?)
}

use checks::condition_true;

fn to_values(list: Vec<DynamicObject>) -> anyhow::Result<Vec<Value>> {
    list.into_iter()
        .map(|o| serde_json::to_value(o).map_err(Into::into))
        .collect()
}

/// True once the cluster has `machines` Machines, all Running with a nodeRef, every
/// Metal3Machine has CAPM3's providerID, the control plane is Initialized with healthy
/// components and the Cluster says ControlPlaneInitialized. An error says what is missing.
async fn cluster_up(mgmt: &Client, spec: &ClusterSpec, machines: usize) -> anyhow::Result<bool> {
    let ns = &spec.namespace;
    let all = list(mgmt, ns, "cluster.x-k8s.io", "v1beta2", "Machine").await?;
    let running = all
        .iter()
        .filter(|m| m["status"]["phase"] == "Running" && m["status"]["nodeRef"]["name"].is_string())
        .count();
    if all.len() != machines || running != machines {
        bail!(
            "{running} of {} Machine(s) Running with a nodeRef, want {machines}",
            all.len()
        );
    }
    let m3ms = list(
        mgmt,
        ns,
        "infrastructure.cluster.x-k8s.io",
        "v1beta2",
        "Metal3Machine",
    )
    .await?;
    for m3m in &m3ms {
        let id = m3m["spec"]["providerID"].as_str().unwrap_or_default();
        // The form only CAPM3 writes: metal3://<namespace>/<host>/<metal3machine>.
        let name = m3m["metadata"]["name"].as_str().unwrap_or_default();
        if !(id.starts_with(&format!("metal3://{ns}/")) && id.ends_with(&format!("/{name}"))) {
            bail!("Metal3Machine {name} has providerID {id:?}");
        }
    }
    let kcp = kubeadm_control_plane(mgmt, spec).await?;
    if kcp["status"]["initialization"]["controlPlaneInitialized"] != true {
        bail!("KubeadmControlPlane not initialized");
    }
    for condition in ["Initialized", "ControlPlaneComponentsHealthy"] {
        if !condition_true(&kcp, condition) {
            bail!(
                "KubeadmControlPlane condition {condition} not True: {}",
                kcp["status"]["conditions"]
            );
        }
    }
    let cluster = get(
        mgmt,
        ns,
        "cluster.x-k8s.io",
        "v1beta2",
        "Cluster",
        &spec.name,
    )
    .await?;
    if !condition_true(&cluster, "ControlPlaneInitialized") {
        bail!("Cluster condition ControlPlaneInitialized not True");
    }
    Ok(true)
}

/// The milestones of the cluster's control-plane Machine, from the timestamps on its
/// Cluster, host and Node.
async fn control_plane_milestones(
    mgmt: &Client,
    spec: &ClusterSpec,
    access: &Access,
    running: jiff::Timestamp,
) -> anyhow::Result<phases::Milestones> {
    let ns = &spec.namespace;
    let created = |o: &Value| {
        o["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    let cluster = get(
        mgmt,
        ns,
        "cluster.x-k8s.io",
        "v1beta2",
        "Cluster",
        &spec.name,
    )
    .await?;
    let cluster_created = created(&cluster).ok_or_else(|| anyhow!("no Cluster creation time"))?;
    let machines = to_values(
        dynamic(mgmt, ns, "cluster.x-k8s.io", "v1beta2", "Machine")
            .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
            .await?
            .items,
    )?;
    // The first one, which initialized the control plane (RFC 3339 times sort as text).
    let machine = machines
        .iter()
        .min_by_key(|m| {
            m["metadata"]["creationTimestamp"]
                .as_str()
                .map(str::to_string)
        })
        .ok_or_else(|| anyhow!("no control-plane Machine"))?;
    let m3m_name = machine["spec"]["infrastructureRef"]["name"]
        .as_str()
        .unwrap_or_default();
    let m3m = get(
        mgmt,
        ns,
        "infrastructure.cluster.x-k8s.io",
        "v1beta2",
        "Metal3Machine",
        m3m_name,
    )
    .await?;
    let host_name = m3m["metadata"]["annotations"]["metal3.io/BareMetalHost"]
        .as_str()
        .and_then(|a| a.split_once('/'))
        .map(|(_, name)| name.to_string())
        .ok_or_else(|| anyhow!("Metal3Machine {m3m_name} has no host annotation"))?;
    let host = get(
        mgmt,
        ns,
        "metal3.io",
        "v1alpha1",
        "BareMetalHost",
        &host_name,
    )
    .await?;
    let node_name = machine["status"]["nodeRef"]["name"]
        .as_str()
        .unwrap_or_default();
    let node = serde_json::to_value(
        Api::<Node>::all(access.client().await?)
            .get(node_name)
            .await?,
    )?;
    Ok(phases::milestones(
        cluster_created,
        &host["status"]["operationHistory"],
        created(&node),
        Some(running),
    ))
}

/// The workload cluster's Nodes are exactly the Machines' nodeRefs: no Node of a removed
/// Machine is left, none is missing.
async fn nodes_match_machines(
    mgmt: &Client,
    spec: &ClusterSpec,
    access: &Access,
) -> anyhow::Result<()> {
    let machines = list(
        mgmt,
        &spec.namespace,
        "cluster.x-k8s.io",
        "v1beta2",
        "Machine",
    )
    .await?;
    let want: BTreeSet<String> = machines
        .iter()
        .filter(|m| m["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|m| m["status"]["nodeRef"]["name"].as_str().map(str::to_string))
        .collect();
    let nodes: Api<Node> = Api::all(access.client().await?);
    let have: BTreeSet<String> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    if want != have {
        bail!("Nodes {have:?}, Machines' nodeRefs {want:?}");
    }
    Ok(())
}

/// True once the cluster has `machines` Machines, up as [`cluster_up`] says, the workload
/// cluster's Nodes are theirs, the control plane settled (healthy with stacked etcd, see
/// [`checks::control_plane_settled`]) and, with `version`, upgraded to it.
async fn settled(
    mgmt: &Client,
    spec: &ClusterSpec,
    access: &Access,
    machines: u32,
    version: Option<&str>,
) -> anyhow::Result<bool> {
    cluster_up(mgmt, spec, machines as usize).await?;
    nodes_match_machines(mgmt, spec, access).await?;
    let kcp = kubeadm_control_plane(mgmt, spec).await?;
    let all = list(
        mgmt,
        &spec.namespace,
        "cluster.x-k8s.io",
        "v1beta2",
        "Machine",
    )
    .await?;
    checks::control_plane_settled(&kcp, &all, spec.stacked_etcd()).map_err(|e| anyhow!(e))?;
    if let Some(version) = version {
        let nodes = Api::<Node>::all(access.client().await?)
            .list(&ListParams::default())
            .await?
            .items;
        let nodes: Vec<Value> = nodes
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        checks::upgrade_done(version, &kcp, &all, &nodes).map_err(|e| anyhow!(e))?;
    }
    Ok(true)
}

async fn kubeadm_control_plane(mgmt: &Client, spec: &ClusterSpec) -> anyhow::Result<Value> {
    get(
        mgmt,
        &spec.namespace,
        "controlplane.cluster.x-k8s.io",
        "v1beta2",
        "KubeadmControlPlane",
        &spec.name,
    )
    .await
}

async fn scale_control_plane(
    mgmt: &Client,
    spec: &ClusterSpec,
    replicas: u32,
) -> anyhow::Result<()> {
    dynamic(
        mgmt,
        &spec.namespace,
        "controlplane.cluster.x-k8s.io",
        "v1beta2",
        "KubeadmControlPlane",
    )
    .patch(
        &spec.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .with_context(|| {
        format!(
            "scaling the KubeadmControlPlane of {} to {replicas}",
            spec.name
        )
    })?;
    Ok(())
}

/// Starts the rolling upgrade of the control plane and the workers to `version`. Both at
/// once, as a user would: Cluster API's MachineSet preflight checks hold the workers back
/// until the control plane runs the new version.
async fn upgrade(mgmt: &Client, spec: &ClusterSpec, version: &str) -> anyhow::Result<()> {
    dynamic(
        mgmt,
        &spec.namespace,
        "controlplane.cluster.x-k8s.io",
        "v1beta2",
        "KubeadmControlPlane",
    )
    .patch(
        &spec.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"version": version}})),
    )
    .await
    .with_context(|| format!("upgrading the KubeadmControlPlane of {}", spec.name))?;
    dynamic(
        mgmt,
        &spec.namespace,
        "cluster.x-k8s.io",
        "v1beta2",
        "MachineDeployment",
    )
    .patch(
        &spec.machine_deployment_name(),
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"version": version}}}})),
    )
    .await
    .with_context(|| format!("upgrading the MachineDeployment of {}", spec.name))?;
    Ok(())
}

async fn scale(mgmt: &Client, spec: &ClusterSpec, replicas: u32) -> anyhow::Result<()> {
    let api = dynamic(
        mgmt,
        &spec.namespace,
        "cluster.x-k8s.io",
        "v1beta2",
        "MachineDeployment",
    );
    api.patch(
        &spec.machine_deployment_name(),
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    Ok(())
}

/// True once nothing of the cluster is left in its namespace: Cluster, its descendants,
/// Metal3 and kubeadm objects, and the Secrets Cluster API generated; every host released
/// by its consumer. (The namespace itself is not deleted: the baremetal-operator's test
/// provisioner can hold a host in `deleting` for many minutes, see the README.)
async fn cluster_gone(mgmt: &Client, spec: &ClusterSpec) -> anyhow::Result<bool> {
    let ns = &spec.namespace;
    let mut left = BTreeMap::new();
    for (group, kind) in [
        ("cluster.x-k8s.io", "Cluster"),
        ("cluster.x-k8s.io", "Machine"),
        ("cluster.x-k8s.io", "MachineDeployment"),
        ("cluster.x-k8s.io", "MachineSet"),
        ("infrastructure.cluster.x-k8s.io", "Metal3Machine"),
        ("infrastructure.cluster.x-k8s.io", "Metal3Cluster"),
        ("controlplane.cluster.x-k8s.io", "KubeadmControlPlane"),
        ("bootstrap.cluster.x-k8s.io", "KubeadmConfig"),
    ] {
        let n = list(mgmt, ns, group, "v1beta2", kind).await?.len();
        if n > 0 {
            left.insert(kind, n);
        }
    }
    let hosts = list(mgmt, ns, "metal3.io", "v1alpha1", "BareMetalHost").await?;
    let consumed = hosts
        .iter()
        .filter(|h| !h["spec"]["consumerRef"].is_null())
        .count();
    if consumed > 0 {
        left.insert("BareMetalHost with a consumer", consumed);
    }
    // What Cluster API generated (kubeconfig, service-account keys, bootstrap data, user
    // data) goes with its owners, through the garbage collector; only what the harness
    // created itself may stay.
    let ours = spec.harness_secrets();
    let generated = Api::<Secret>::namespaced(mgmt.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|s| !ours.contains(&s.name_any()))
        .count();
    if generated > 0 {
        left.insert("generated Secret", generated);
    }
    if !left.is_empty() {
        bail!("left: {left:?}");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_a_kubelet_api_the_controller_serves_it_and_annotates_nothing() {
        let args = fakenode_args("127.0.0.1:1", Some("127.0.0.1:2"));
        let line = args.join(" ");
        assert!(
            line.contains("--kubelet-address 127.0.0.1:2 --kubelet-bind-address 127.0.0.1:2"),
            "{line}"
        );
        assert!(!line.contains("--stacked-etcd-pods"), "{line}");
        assert!(!line.contains("--annotate-certificate-expiry"), "{line}");
        assert_eq!(args[0], "run");
    }

    #[test]
    fn without_one_it_annotates_the_certificate_expiry() {
        let line = fakenode_args("127.0.0.1:1", None).join(" ");
        assert!(line.contains("--annotate-certificate-expiry"), "{line}");
        assert!(!line.contains("kubelet"), "{line}");
        assert!(!line.contains("--stacked-etcd-pods"), "{line}");
        assert!(
            line.contains("--metrics-bind-address 127.0.0.1:1"),
            "{line}"
        );
    }
}
