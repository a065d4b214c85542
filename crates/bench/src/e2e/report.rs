//! What an e2e run reports: how long each step took for all clusters at once; per
//! cluster, how long from creating its objects to every Machine Running, what its workload
//! API server costs and where its control plane ended.

use serde::Serialize;

use super::phases::Milestones;
use super::workloads::ServingCost;

#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub name: String,
    /// From creating the cluster's objects to: control plane initialized, its Machine
    /// Running with a nodeRef and its providerID set by CAPM3.
    pub seconds_to_running: Option<f64>,
    /// Where that time went, for the control-plane Machine (seconds after the Cluster's
    /// creation).
    pub milestones: Option<Milestones>,
    pub apiserver_pid: u32,
    /// Resident memory of the cluster's own kube-apiserver once its cluster was up and
    /// scaled (before deletion), and its peak.
    pub apiserver_rss_bytes: Option<u64>,
    pub apiserver_peak_rss_bytes: Option<u64>,
    /// The KubeadmControlPlane's conditions after the last step, before deletion.
    pub final_kcp_conditions: Vec<ConditionSummary>,
    /// With stacked etcd, the members then, as the real etcd client lists them through a
    /// port-forward to a control-plane Node's etcd Pod (each named after its Node).
    pub etcd_members: Option<Vec<String>>,
}

/// One condition as the report shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConditionSummary {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
}

/// One step of the scenario, for every cluster at once: from its first request to the
/// last cluster settled.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub name: String,
    pub seconds: f64,
}

impl ClusterReport {
    pub fn new(name: &str, apiserver_pid: u32) -> Self {
        Self {
            name: name.to_string(),
            seconds_to_running: None,
            milestones: None,
            apiserver_pid,
            apiserver_rss_bytes: None,
            apiserver_peak_rss_bytes: None,
            final_kcp_conditions: Vec::new(),
            etcd_members: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// `stacked` or `external`.
    pub etcd: String,
    pub control_plane_replicas: u32,
    pub upgraded_to: Option<String>,
    pub steps: Vec<Step>,
    pub clusters: Vec<ClusterReport>,
    /// metal3-fakenode's cached workload clients just before the Clusters were deleted
    /// (it must drop them all afterwards).
    pub workload_clients_before_delete: Option<f64>,
    /// Its fake kubelets (one per Node it keeps alive) then; none may be left afterwards.
    pub kubelets_before_delete: Option<f64>,
    pub controllers: Vec<String>,
    /// BareMetalHosts the harness woke from a transient state the baremetal-operator's
    /// test mode left them in (see `host_nudge`).
    pub host_nudges: u64,
    /// What the workload API servers (and tenancy fronts) cost before deletion.
    pub serving: ServingCost,
    pub total_seconds: f64,
}

/// The report for a terminal: one line per cluster, then the spread.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let mut seconds: Vec<f64> = report
        .clusters
        .iter()
        .filter_map(|c| c.seconds_to_running)
        .collect();
    seconds.sort_by(f64::total_cmp);
    let mut rss: Vec<u64> = report
        .clusters
        .iter()
        .filter_map(|c| c.apiserver_rss_bytes)
        .collect();
    rss.sort_unstable();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    out.push_str(&format!(
        "{} cluster(s) with {} in {:.1}s\n",
        report.clusters.len(),
        report.controllers.join(", "),
        report.total_seconds
    ));
    for c in &report.clusters {
        out.push_str(&format!(
            "  {}: Machines Running {} s after creation; its kube-apiserver {} MiB (peak {} MiB)\n",
            c.name,
            c.seconds_to_running
                .map_or("-".to_string(), |s| format!("{s:.1}")),
            c.apiserver_rss_bytes
                .map_or("-".to_string(), |b| format!("{:.0}", mib(b))),
            c.apiserver_peak_rss_bytes
                .map_or("-".to_string(), |b| format!("{:.0}", mib(b)))
        ));
    }
    out.push_str(&format!(
        "  etcd {}, {} control-plane replica(s){}\n",
        report.etcd,
        report.control_plane_replicas,
        report
            .upgraded_to
            .as_ref()
            .map_or(String::new(), |v| format!(", upgraded to {v}"))
    ));
    for step in &report.steps {
        out.push_str(&format!("  step {}: {:.1}s\n", step.name, step.seconds));
    }
    out.push_str(&format!(
        "  hosts woken from a stalled transient state: {}\n",
        report.host_nudges
    ));
    for c in &report.clusters {
        if let Some(m) = &c.milestones {
            let at = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.0}s"));
            out.push_str(&format!(
                "    {} control plane: host inspected {}, provisioning {}, provisioned {}, Node {}, Running {}\n",
                c.name,
                at(m.host_inspected),
                at(m.provisioning_started),
                at(m.host_provisioned),
                at(m.node_created),
                at(m.machine_running)
            ));
        }
    }
    for c in &report.clusters {
        let conditions: Vec<String> = c
            .final_kcp_conditions
            .iter()
            .map(|k| format!("{}={} ({})", k.kind, k.status, k.reason))
            .collect();
        out.push_str(&format!(
            "    {} KubeadmControlPlane at the end: {}\n",
            c.name,
            conditions.join(", ")
        ));
        if let Some(members) = &c.etcd_members {
            out.push_str(&format!(
                "    {} etcd members: {}\n",
                c.name,
                members.join(", ")
            ));
        }
    }
    if let (Some(first), Some(last)) = (seconds.first(), seconds.last()) {
        out.push_str(&format!(
            "creation to Running: min {first:.1}s, median {:.1}s, max {last:.1}s\n",
            seconds[seconds.len() / 2]
        ));
    }
    if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
        out.push_str(&format!(
            "workload kube-apiserver RSS: min {:.0} MiB, max {:.0} MiB\n",
            mib(*first),
            mib(*last)
        ));
    }
    let serving = &report.serving;
    out.push_str(&format!(
        "serving {} cluster(s) ({}): {} kube-apiserver(s){}, {:.0} MiB resident in all, {:.1} MiB \
         per cluster; {:.0} CPU s in all, {:.2} CPU s per cluster\n",
        serving.clusters,
        serving.layout,
        serving.api_servers.len(),
        match serving.fronts.len() {
            0 => String::new(),
            n => format!(" and {n} front(s)"),
        },
        mib(serving.total_rss_bytes),
        mib(serving.rss_bytes_per_cluster),
        serving.total_cpu_seconds,
        serving.cpu_seconds_per_cluster,
    ));
    for p in serving.api_servers.iter().chain(&serving.fronts) {
        out.push_str(&format!(
            "  {} ({} cluster(s)): {} MiB (peak {} MiB), {} CPU s\n",
            p.name,
            p.clusters,
            p.rss_bytes
                .map_or("-".to_string(), |b| format!("{:.0}", mib(b))),
            p.peak_rss_bytes
                .map_or("-".to_string(), |b| format!("{:.0}", mib(b))),
            p.cpu_seconds.map_or("-".to_string(), |s| format!("{s:.1}")),
        ));
    }
    out
}
