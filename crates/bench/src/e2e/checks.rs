//! What the run waits for, as pure checks over the objects' JSON: a settled (and, with
//! stacked etcd, healthy) control plane, a finished rolling upgrade, and the options that
//! make sense. Each check says what it saw when it fails; the harness polls them.

use std::collections::BTreeSet;

use serde_json::Value;

use super::report::ConditionSummary;

/// The label Cluster API puts on control-plane Machines.
pub const CONTROL_PLANE_LABEL: &str = "cluster.x-k8s.io/control-plane";

/// The KubeadmControlPlane conditions (v1beta2, `status.conditions`) that make a healthy
/// control plane with stacked etcd; with external etcd KCP checks no etcd at all.
pub const HEALTHY_KCP_CONDITIONS: [&str; 3] = [
    "Available",
    "EtcdClusterHealthy",
    "ControlPlaneComponentsHealthy",
];

/// The condition KCP sets on each control-plane Machine for its etcd member.
pub const ETCD_MEMBER_HEALTHY: &str = "EtcdMemberHealthy";

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Whether `object` has condition `kind` with status True.
pub fn condition_true(object: &Value, kind: &str) -> bool {
    condition(object, kind).is_some_and(|c| c["status"] == "True")
}

/// `kind` as seen on `object`, for a failure message: `Type=Status (Reason: message)`.
fn describe(object: &Value, kind: &str) -> String {
    match condition(object, kind) {
        None => format!("{kind} missing"),
        Some(c) => format!(
            "{kind}={} ({}: {})",
            c["status"].as_str().unwrap_or("?"),
            c["reason"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("").trim()
        ),
    }
}

/// Every condition of `object`, in its order, for the report.
pub fn conditions(object: &Value) -> Vec<ConditionSummary> {
    object["status"]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| ConditionSummary {
                    kind: c["type"].as_str().unwrap_or_default().to_string(),
                    status: c["status"].as_str().unwrap_or_default().to_string(),
                    reason: c["reason"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn deleting(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null()
}

pub fn is_control_plane(machine: &Value) -> bool {
    machine["metadata"]["labels"]
        .get(CONTROL_PLANE_LABEL)
        .is_some()
}

fn node_ref(machine: &Value) -> Option<&str> {
    machine["status"]["nodeRef"]["name"].as_str()
}

fn running(machine: &Value) -> bool {
    machine["status"]["phase"] == "Running" && node_ref(machine).is_some()
}

fn count(object: &Value, field: &str) -> i64 {
    object["status"][field].as_i64().unwrap_or(0)
}

/// The control plane is where its spec says and stays there: KCP observed its latest
/// spec, has exactly `spec.replicas` control-plane Machines, none being deleted, all
/// Running with a Node and up to date. With stacked etcd it is also healthy: every
/// Machine Ready, the KCP `Available` with healthy etcd and components, and every
/// Machine's etcd member healthy. `machines` may hold the workers too.
pub fn control_plane_settled(
    kcp: &Value,
    machines: &[Value],
    stacked_etcd: bool,
) -> Result<(), String> {
    let want = kcp["spec"]["replicas"].as_i64().unwrap_or(1);
    let generation = kcp["metadata"]["generation"].as_i64();
    if kcp["status"]["observedGeneration"].as_i64() != generation {
        return Err(format!(
            "KubeadmControlPlane at generation {generation:?}, its status at {}",
            kcp["status"]["observedGeneration"]
        ));
    }
    let control_plane: Vec<&Value> = machines.iter().filter(|m| is_control_plane(m)).collect();
    let gone: Vec<&str> = control_plane
        .iter()
        .filter(|m| deleting(m))
        .map(|m| name(m))
        .collect();
    if !gone.is_empty() {
        return Err(format!("control-plane Machine(s) being deleted: {gone:?}"));
    }
    let up = control_plane.iter().filter(|m| running(m)).count() as i64;
    if control_plane.len() as i64 != want || up != want {
        return Err(format!(
            "{up} of {} control-plane Machine(s) Running with a Node, want {want}",
            control_plane.len()
        ));
    }
    let mut fields = vec!["replicas", "upToDateReplicas"];
    if stacked_etcd {
        fields.push("readyReplicas");
    }
    for field in fields {
        if count(kcp, field) != want {
            return Err(format!(
                "KubeadmControlPlane status.{field} {}, want {want}",
                count(kcp, field)
            ));
        }
    }
    if !stacked_etcd {
        return Ok(());
    }
    let mut unhealthy: Vec<String> = HEALTHY_KCP_CONDITIONS
        .iter()
        .filter(|c| !condition_true(kcp, c))
        .map(|c| format!("KubeadmControlPlane {}", describe(kcp, c)))
        .collect();
    unhealthy.extend(
        control_plane
            .iter()
            .filter(|m| !condition_true(m, ETCD_MEMBER_HEALTHY))
            .map(|m| format!("Machine {} {}", name(m), describe(m, ETCD_MEMBER_HEALTHY))),
    );
    if unhealthy.is_empty() {
        Ok(())
    } else {
        Err(unhealthy.join("; "))
    }
}

/// A rolling upgrade to `version` is over: the KubeadmControlPlane reports it, every
/// Machine (none being deleted) runs it with a Node, the workload cluster's Nodes are
/// exactly those Machines' (none left of a deleted Machine) and each kubelet reports it.
pub fn upgrade_done(
    version: &str,
    kcp: &Value,
    machines: &[Value],
    nodes: &[Value],
) -> Result<(), String> {
    if kcp["status"]["version"] != version {
        return Err(format!(
            "KubeadmControlPlane status.version {}, want {version}",
            kcp["status"]["version"]
        ));
    }
    let behind: Vec<String> = machines
        .iter()
        .filter(|m| deleting(m) || m["spec"]["version"] != version || !running(m))
        .map(|m| {
            format!(
                "{} ({}, {}{})",
                name(m),
                m["spec"]["version"].as_str().unwrap_or("no version"),
                m["status"]["phase"].as_str().unwrap_or("no phase"),
                if deleting(m) { ", deleting" } else { "" }
            )
        })
        .collect();
    if !behind.is_empty() {
        return Err(format!("Machine(s) not yet upgraded: {behind:?}"));
    }
    let want: BTreeSet<&str> = machines.iter().filter_map(node_ref).collect();
    let have: BTreeSet<&str> = nodes.iter().map(name).collect();
    if want != have {
        return Err(format!("Nodes {have:?}, Machines' Nodes {want:?}"));
    }
    let old: Vec<String> = nodes
        .iter()
        .filter(|n| n["status"]["nodeInfo"]["kubeletVersion"] != version)
        .map(|n| {
            format!(
                "{} ({})",
                name(n),
                n["status"]["nodeInfo"]["kubeletVersion"]
            )
        })
        .collect();
    if !old.is_empty() {
        return Err(format!("Node(s) with another kubelet version: {old:?}"));
    }
    Ok(())
}

/// The etcd members (as clientv3 lists them) are exactly the control-plane Nodes: kubeadm
/// names each member after its Node, and KCP removes a member before its Machine goes.
pub fn etcd_members_match(members: &[String], machines: &[Value]) -> Result<(), String> {
    let want: BTreeSet<&str> = machines
        .iter()
        .filter(|m| is_control_plane(m))
        .filter_map(node_ref)
        .collect();
    let have: BTreeSet<&str> = members.iter().map(String::as_str).collect();
    if want != have || have.len() != members.len() {
        return Err(format!(
            "etcd members {members:?}, control-plane Nodes {want:?}"
        ));
    }
    Ok(())
}

/// `vMAJOR.MINOR.PATCH` as numbers (no pre-release: the harness only names releases).
pub fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.strip_prefix('v')?.split('.');
    let mut next = || parts.next()?.parse::<u64>().ok();
    let parsed = (next()?, next()?, next()?);
    parts.next().is_none().then_some(parsed)
}

/// Why the run's options cannot work, if they cannot: stacked etcd needs an odd number of
/// members (KCP rejects even replicas), and KCP upgrades one minor version at a time.
pub fn validate(
    control_plane_replicas: u32,
    stacked_etcd: bool,
    from: &str,
    upgrade_to: Option<&str>,
) -> Result<(), String> {
    if control_plane_replicas == 0 {
        return Err("--control-plane-replicas must be at least 1".into());
    }
    if stacked_etcd && control_plane_replicas.is_multiple_of(2) {
        return Err(format!(
            "--control-plane-replicas {control_plane_replicas}: stacked etcd needs an odd \
             number of members for a quorum (1, 3, 5...)"
        ));
    }
    if let Some(to) = upgrade_to {
        let (Some(old), Some(new)) = (parse_version(from), parse_version(to)) else {
            return Err(format!("--upgrade-to {to}: not a version like v1.36.0"));
        };
        if new <= old || (new.0, new.1) > (old.0, old.1 + 1) {
            return Err(format!(
                "--upgrade-to {to}: must be newer than {from} and at most one minor version \
                 ahead (KCP upgrades one minor at a time)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(kind: &str, status: &str) -> Value {
        json!({"type": kind, "status": status, "reason": format!("{kind}{status}"), "message": ""})
    }

    fn kcp(replicas: i64, conditions: Vec<Value>) -> Value {
        json!({
            "metadata": {"name": "c", "generation": 4},
            "spec": {"replicas": replicas},
            "status": {
                "observedGeneration": 4,
                "replicas": replicas,
                "upToDateReplicas": replicas,
                "readyReplicas": replicas,
                "version": "v1.36.0",
                "conditions": conditions,
            },
        })
    }

    fn healthy_kcp(replicas: i64) -> Value {
        kcp(
            replicas,
            HEALTHY_KCP_CONDITIONS
                .iter()
                .map(|c| cond(c, "True"))
                .collect(),
        )
    }

    fn machine(name: &str, control_plane: bool, version: &str, etcd: &str) -> Value {
        let labels = if control_plane {
            json!({CONTROL_PLANE_LABEL: ""})
        } else {
            json!({})
        };
        json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"version": version},
            "status": {
                "phase": "Running",
                "nodeRef": {"name": format!("node-{name}")},
                "conditions": [cond(ETCD_MEMBER_HEALTHY, etcd)],
            },
        })
    }

    fn node(name: &str, version: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"nodeInfo": {"kubeletVersion": version}}})
    }

    fn three_healthy() -> Vec<Value> {
        vec![
            machine("cp-a", true, "v1.36.0", "True"),
            machine("cp-b", true, "v1.36.0", "True"),
            machine("cp-c", true, "v1.36.0", "True"),
            machine("worker", false, "v1.36.0", "Unknown"),
        ]
    }

    #[test]
    fn a_healthy_stacked_control_plane_is_settled() {
        assert_eq!(
            control_plane_settled(&healthy_kcp(3), &three_healthy(), true),
            Ok(())
        );
    }

    #[test]
    fn an_unhealthy_etcd_member_or_kcp_condition_is_named() {
        let mut machines = three_healthy();
        machines[1] = machine("cp-b", true, "v1.36.0", "False");
        let error = control_plane_settled(&healthy_kcp(3), &machines, true).unwrap_err();
        assert!(
            error.contains("Machine cp-b EtcdMemberHealthy=False"),
            "{error}"
        );

        let sick = kcp(
            3,
            vec![
                cond("Available", "True"),
                cond("EtcdClusterHealthy", "False"),
            ],
        );
        let error = control_plane_settled(&sick, &three_healthy(), true).unwrap_err();
        assert!(error.contains("EtcdClusterHealthy=False"), "{error}");
        assert!(
            error.contains("ControlPlaneComponentsHealthy missing"),
            "{error}"
        );
    }

    #[test]
    fn external_etcd_skips_the_etcd_and_readiness_checks() {
        let machines = vec![machine("cp-a", true, "v1.35.0", "Unknown")];
        let mut kcp = kcp(1, vec![]);
        kcp["status"]["readyReplicas"] = json!(0);
        assert_eq!(control_plane_settled(&kcp, &machines, false), Ok(()));
        assert!(control_plane_settled(&kcp, &machines, true).is_err());
    }

    #[test]
    fn a_scale_in_progress_is_not_settled() {
        let machines = three_healthy();
        // Scaled to 1: two Machines too many.
        let mut scaled = healthy_kcp(1);
        scaled["metadata"]["generation"] = json!(5);
        let error = control_plane_settled(&scaled, &machines, true).unwrap_err();
        assert!(error.contains("generation"), "{error}");
        scaled["status"]["observedGeneration"] = json!(5);
        let error = control_plane_settled(&scaled, &machines, true).unwrap_err();
        assert!(error.contains("3 of 3"), "{error}");
        // One Machine still being deleted.
        let mut machines = three_healthy();
        machines[0]["metadata"]["deletionTimestamp"] = json!("2026-12-02T00:00:00Z");
        let error = control_plane_settled(&healthy_kcp(3), &machines, true).unwrap_err();
        assert!(error.contains("cp-a"), "{error}");
        // KCP has not counted the new Machine as up to date yet.
        let mut behind = healthy_kcp(3);
        behind["status"]["upToDateReplicas"] = json!(2);
        let error = control_plane_settled(&behind, &three_healthy(), true).unwrap_err();
        assert!(error.contains("upToDateReplicas 2"), "{error}");
    }

    #[test]
    fn an_upgrade_is_done_when_every_machine_and_kubelet_runs_the_version() {
        let machines = three_healthy();
        let nodes: Vec<Value> = ["cp-a", "cp-b", "cp-c", "worker"]
            .iter()
            .map(|m| node(&format!("node-{m}"), "v1.36.0"))
            .collect();
        let kcp = healthy_kcp(3);
        assert_eq!(upgrade_done("v1.36.0", &kcp, &machines, &nodes), Ok(()));

        // A Node of a deleted Machine is left.
        let mut extra = nodes.clone();
        extra.push(node("node-old", "v1.35.0"));
        let error = upgrade_done("v1.36.0", &kcp, &machines, &extra).unwrap_err();
        assert!(error.contains("node-old"), "{error}");

        // A kubelet still reports the old version.
        let mut stale = nodes.clone();
        stale[3] = node("node-worker", "v1.35.0");
        let error = upgrade_done("v1.36.0", &kcp, &machines, &stale).unwrap_err();
        assert!(error.contains("node-worker"), "{error}");

        // A Machine of the old version is still there.
        let mut old = machines.clone();
        old[3] = machine("worker", false, "v1.35.0", "Unknown");
        let error = upgrade_done("v1.36.0", &kcp, &old, &nodes).unwrap_err();
        assert!(error.contains("worker (v1.35.0"), "{error}");

        // KCP has not reported the version yet.
        let mut behind = kcp.clone();
        behind["status"]["version"] = json!("v1.35.0");
        assert!(upgrade_done("v1.36.0", &behind, &machines, &nodes).is_err());
    }

    #[test]
    fn conditions_are_reported_by_type_status_and_reason() {
        let summary = conditions(&healthy_kcp(1));
        assert_eq!(summary.len(), 3);
        assert_eq!(summary[1].kind, "EtcdClusterHealthy");
        assert_eq!(summary[1].status, "True");
        assert_eq!(summary[1].reason, "EtcdClusterHealthyTrue");
        assert!(conditions(&json!({})).is_empty());
    }

    #[test]
    fn etcd_members_are_the_control_plane_nodes() {
        let machines = three_healthy();
        let members =
            |names: &[&str]| -> Vec<String> { names.iter().map(|n| format!("node-{n}")).collect() };
        assert_eq!(
            etcd_members_match(&members(&["cp-c", "cp-a", "cp-b"]), &machines),
            Ok(())
        );
        // A member left behind by a deleted Machine, one missing, one twice.
        for wrong in [
            members(&["cp-a", "cp-b", "cp-c", "gone"]),
            members(&["cp-a", "cp-b"]),
            members(&["cp-a", "cp-b", "cp-c", "cp-c"]),
        ] {
            assert!(etcd_members_match(&wrong, &machines).is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn versions_parse_only_as_releases() {
        assert_eq!(parse_version("v1.36.0"), Some((1, 36, 0)));
        assert_eq!(parse_version("1.36.0"), None);
        assert_eq!(parse_version("v1.36"), None);
        assert_eq!(parse_version("v1.36.0.1"), None);
        assert_eq!(parse_version("v1.36.0-rc.1"), None);
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        assert_eq!(validate(1, true, "v1.35.0", None), Ok(()));
        assert_eq!(validate(3, true, "v1.35.0", Some("v1.36.0")), Ok(()));
        assert_eq!(validate(2, false, "v1.35.0", Some("v1.35.1")), Ok(()));
        assert!(
            validate(2, true, "v1.35.0", None)
                .unwrap_err()
                .contains("odd")
        );
        assert!(validate(0, false, "v1.35.0", None).is_err());
        for bad in ["v1.35.0", "v1.34.2", "v1.37.0", "1.36"] {
            assert!(validate(1, true, "v1.35.0", Some(bad)).is_err(), "{bad}");
        }
    }
}
