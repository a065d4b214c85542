//! The ceiling: the fastest a plain client sends the controller's requests for the same
//! Nodes. What to send comes from the controller's own `plan` over a snapshot of the
//! management cluster (so the Node, kubeadm-config, mirror Pods and Lease are the
//! controller's, byte for byte); how comes from its own `apply` functions, in the order
//! its reconcile sends them, through the same kind of per-cluster clients built cold,
//! with no rate limit, and each Node's Event to the management API server (the
//! controller's own, published the same way). It learns of provisioned hosts from a watch
//! of the hosts, as the controller does; no queue, store or mapping in between.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, Resource, ResourceExt};

use metal3_fakenode::apply;
use metal3_fakenode::cli::{Cli, Command, RunArgs};
use metal3_fakenode::controller::{EventPublisher, node_created_event};
use metal3_fakenode::fake::{self, lease};
use metal3_fakenode::fidelity::Fidelity;
use metal3_fakenode::kubelet::Kubelets;
use metal3_fakenode::metrics::Metrics;
use metal3_fakenode::plan::{self, Desired, Found, Lookup, Memory, Plan, Registration, Steps};
use metal3_fakenode::resources::{
    BareMetalHost, Cluster, KubeadmControlPlane, Machine, Metal3Machine, PROVISIONED,
};
use metal3_fakenode::tolerant::{Tolerant, View};
use metal3_fakenode::workload::{Settings, WorkloadClients};

/// The controller's `run` arguments from the flags the demo starts it with: the same
/// fidelity and client settings, read by the controller's own parser.
pub fn controller_run_args(flags: &[String]) -> anyhow::Result<RunArgs> {
    let argv = ["metal3-fakenode", "run"]
        .into_iter()
        .map(str::to_string)
        .chain(flags.iter().cloned());
    match Cli::try_parse_from(argv)?.command {
        Command::Run(args) => Ok(*args),
    }
}

/// The controller's client settings without a client-side rate limit: the API server
/// alone sets the pace.
pub fn unthrottled(mut settings: Settings) -> Settings {
    settings.qps = NonZeroU32::MAX;
    settings.burst = NonZeroU32::MAX;
    settings.kubelet_qps = NonZeroU32::MAX;
    settings.kubelet_burst = NonZeroU32::MAX;
    settings
}

type Objects<K> = HashMap<(String, String), Arc<Tolerant<K>>>;

/// The management cluster as listed once: what the controller's stores hold.
#[derive(Default)]
pub struct Snapshot {
    hosts: Objects<BareMetalHost>,
    machines: Objects<Machine>,
    clusters: Objects<Cluster>,
    secrets: Objects<Secret>,
    control_planes: Objects<KubeadmControlPlane>,
    metal3_machines: Vec<Arc<Tolerant<Metal3Machine>>>,
}

async fn list<K>(client: &Client) -> anyhow::Result<Objects<K>>
where
    K: View + Clone + std::fmt::Debug,
    Tolerant<K>: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    let api: Api<Tolerant<K>> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {}", Tolerant::<K>::plural(&())))?;
    Ok(list
        .items
        .into_iter()
        .map(|o| {
            (
                (o.namespace().unwrap_or_default(), o.name_any()),
                Arc::new(o),
            )
        })
        .collect())
}

impl Snapshot {
    /// Every kind at once, as the controller's watches list them.
    pub async fn read(mgmt: &Client) -> anyhow::Result<Self> {
        let (hosts, machines, clusters, secrets, control_planes, metal3_machines) = tokio::try_join!(
            list(mgmt),
            list(mgmt),
            list(mgmt),
            list(mgmt),
            list(mgmt),
            list::<Metal3Machine>(mgmt),
        )?;
        Ok(Self {
            hosts,
            machines,
            clusters,
            secrets,
            control_planes,
            metal3_machines: metal3_machines.into_values().collect(),
        })
    }
}

fn get<K>(objects: &Objects<K>, namespace: &str, name: &str) -> Found<K> {
    objects
        .get(&(namespace.to_string(), name.to_string()))
        .cloned()
}

impl Lookup for Snapshot {
    fn host(&self, namespace: &str, name: &str) -> Found<BareMetalHost> {
        get(&self.hosts, namespace, name)
    }
    fn machine(&self, namespace: &str, name: &str) -> Found<Machine> {
        get(&self.machines, namespace, name)
    }
    fn cluster(&self, namespace: &str, name: &str) -> Found<Cluster> {
        get(&self.clusters, namespace, name)
    }
    fn secret(&self, namespace: &str, name: &str) -> Found<Secret> {
        get(&self.secrets, namespace, name)
    }
    fn control_plane(&self, namespace: &str, name: &str) -> Found<KubeadmControlPlane> {
        get(&self.control_planes, namespace, name)
    }
}

/// One machine's registration, planned as the controller plans it.
pub struct Planned {
    /// The Machine's name: its Node's.
    pub machine: String,
    /// The Metal3Machine, which its Event is about.
    pub regarding: k8s_openapi::api::core::v1::ObjectReference,
    pub desired: Desired,
    pub steps: Registration,
}

/// Plans every Metal3Machine of the snapshot as the controller would for a machine that
/// needs its Node (a providerID already set by the CAPM3 stand-in is ignored: the
/// ceiling repeats the work, it does not close a loop).
pub fn plan_all(snapshot: &Snapshot, fidelity: &Fidelity) -> anyhow::Result<Vec<Planned>> {
    let now = jiff::Timestamp::now();
    let memory = Memory {
        first_seen: now,
        process_started: now,
        certificates_annotated: false,
        registered: None,
    };
    let mut planned = Vec::new();
    for m3m in &snapshot.metal3_machines {
        let Ok(m3m) = m3m.read() else {
            bail!("a Metal3Machine the controller could not read");
        };
        let mut m3m = m3m.clone();
        m3m.spec.provider_id = None;
        let name = m3m.name_any();
        let desired = match plan::plan(&m3m, snapshot, fidelity.kubelet_endpoint, &Time(now))
            .with_context(|| format!("planning {name}"))?
        {
            Plan::Ensure(desired) => *desired,
            Plan::WaitForHost { host, state } => {
                bail!("{name} needs no Node yet: its host {host} is {state}")
            }
            Plan::Closed => bail!("{name} needs no Node: it has its providerID"),
        };
        let steps = match plan::steps(&desired, &m3m, fidelity, &memory, now) {
            Steps::Register(steps) => *steps,
            Steps::Withheld => bail!("{name} never gets a Node (a fault)"),
            Steps::Booting { due } => bail!("{name} is booting until {due}"),
            Steps::Registered => bail!("{name} was registered already"),
        };
        planned.push(Planned {
            machine: desired.node.name_any(),
            regarding: m3m.object_ref(&()),
            desired,
            steps,
        });
    }
    Ok(planned)
}

/// The requests of the controller's registration of one machine, in its order: take over
/// the cluster's Nodes (once per cluster, when it keeps kubelets), the mirror Pods, the
/// kubeadm-config and the Ready Node, the Lease; then the Node's Event.
async fn register(
    clients: &WorkloadClients,
    kubelets: &Kubelets,
    events: &EventPublisher,
    planned: &Planned,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let (desired, steps) = (&planned.desired, &planned.steps);
    let workload = clients
        .client(&desired.cluster, &desired.kubeconfig)
        .await?;
    if steps.track {
        kubelets.adopt(&workload, metrics).await?;
    }
    if !steps.static_pods.is_empty() {
        apply::ensure_static_pods(&workload, &steps.static_pods, metrics).await?;
    }
    let outcome = apply::ensure(&workload, desired, metrics).await?;
    if steps.lease
        && let Some(node_uid) = &outcome.node_uid
    {
        let lease = lease::node_lease(
            &planned.machine,
            node_uid,
            &MicroTime(jiff::Timestamp::now()),
        );
        apply::ensure_lease(&workload, &lease, metrics).await?;
    }
    events
        .publish(&node_created_event(desired), &planned.regarding)
        .await
        .context("publishing the Node's Event")?;
    Ok(())
}

/// Tries of one registration, or one step of [`clear`], before the run fails.
const ATTEMPTS: u32 = 3;
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Sends the registrations of the machines `due` names (indices into `planned`, as their
/// hosts are provisioned, or all at once), `concurrency` at a time, through clients
/// built from scratch, and their Events through `mgmt`. Returns how many workload
/// requests it sent.
pub async fn send(
    mgmt: &Client,
    planned: &[Planned],
    due: impl Stream<Item = usize>,
    settings: Settings,
    fidelity: Fidelity,
    concurrency: u16,
) -> anyhow::Result<f64> {
    let metrics = Metrics::new()?;
    let clients = WorkloadClients::new(settings, &metrics);
    let kubelets = Kubelets::new(fidelity);
    let events = EventPublisher::new(mgmt.clone(), None);
    due.map(|i| {
        let (clients, kubelets, events, metrics) = (&clients, &kubelets, &events, &metrics);
        async move {
            let Some(p) = planned.get(i) else {
                bail!("no machine {i} to register");
            };
            // As the controller requeues a failed reconcile, the ceiling tries again
            // (a connection the server closed, a timeout): the extra requests count.
            let mut attempt = 1;
            loop {
                match register(clients, kubelets, events, p, metrics).await {
                    Ok(()) => return Ok(()),
                    Err(e) if attempt < ATTEMPTS => {
                        tracing::debug!(machine = %p.machine, error = %e, "ceiling: trying again");
                        attempt += 1;
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                    Err(e) => return Err(e.context(format!("registering {}", p.machine))),
                }
            }
        }
    })
    .buffer_unordered(usize::from(concurrency.max(1)))
    .try_collect::<Vec<()>>()
    .await?;
    // Counted by the controller's own request function, all verbs and codes.
    Ok(super::report::total(
        &metrics.render()?,
        super::report::WORKLOAD_REQUESTS,
    ))
}

/// Removes what the controller left in a workload API server (our Nodes, mirror Pods,
/// Leases and the kubeadm-config), so that the ceiling starts as cold as the controller
/// did; returns once no Node of ours is left.
pub async fn clear(client: &Client) -> anyhow::Result<()> {
    let ours = ListParams::default().labels(&fake::managed_by_selector());
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::background()
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), fake::static_pods::NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease::NAMESPACE);
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), fake::kubeadm_config::NAMESPACE);
    let mut attempt = 1;
    loop {
        let cleared = async {
            pods.delete_collection(&now, &ours).await?;
            leases.delete_collection(&now, &ours).await?;
            configs.delete_collection(&now, &ours).await?;
            nodes.delete_collection(&now, &ours).await?;
            Ok::<(), kube::Error>(())
        }
        .await;
        match cleared {
            Ok(()) => break,
            Err(e) if attempt < ATTEMPTS => {
                tracing::debug!(error = %e, "clearing a workload API server: trying again");
                attempt += 1;
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("removing the controller's objects"));
            }
        }
    }
    for _ in 0..600 {
        // A failed look is looked at again.
        if nodes
            .list(&ours.clone().limit(1))
            .await
            .is_ok_and(|l| l.items.is_empty())
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("the controller's Nodes were still there a minute after their deletion")
}

/// The ceiling's trigger: a watch of the hosts, as the controller's own, delivers each
/// machine whose host is reported provisioned (once, with when it was seen), after the
/// watch has listed what is there. A plain client learns of a host no sooner than the
/// controller can: the harness's own word that it wrote the host would be news no
/// controller has.
pub async fn provisioned_hosts(
    mgmt: &Client,
    machine_of_host: HashMap<(String, String), String>,
) -> anyhow::Result<impl Stream<Item = (String, std::time::Instant)> + use<>> {
    use kube::runtime::watcher;
    let hosts: Api<Tolerant<BareMetalHost>> = Api::all(mgmt.clone());
    let mut events = watcher(hosts, watcher::Config::default()).boxed();
    // Listed first: a host already provisioned is not news of this trigger.
    loop {
        match events.next().await {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("listing the hosts"),
            None => bail!("the watch of the hosts ended before it listed them"),
        }
    }
    let mut sent = std::collections::HashSet::new();
    Ok(events.filter_map(move |event| {
        let seen = std::time::Instant::now();
        let due = match event {
            Ok(watcher::Event::Apply(host) | watcher::Event::InitApply(host)) => host
                .read()
                .ok()
                .filter(|h| {
                    h.status
                        .as_ref()
                        .is_some_and(|s| s.provisioning.state == PROVISIONED)
                })
                .and_then(|_| {
                    machine_of_host.get(&(host.namespace().unwrap_or_default(), host.name_any()))
                })
                .filter(|machine| sent.insert((*machine).clone()))
                .map(|machine| (machine.clone(), seen)),
            // The watcher lists again after an error: nothing is lost.
            Ok(_) | Err(_) => None,
        };
        futures::future::ready(due)
    }))
}
