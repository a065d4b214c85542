//! Where a cluster's time to Running goes: milestones of its control-plane Machine, from
//! the timestamps the controllers themselves record (one-second resolution), as seconds
//! after the Cluster's creation.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Milestones {
    /// The baremetal-operator finished inspecting the host (it is available).
    pub host_inspected: Option<f64>,
    /// It started provisioning (CAPM3 chose the host and CABPK's data was there).
    pub provisioning_started: Option<f64>,
    /// It finished provisioning: from here a kubelet would register.
    pub host_provisioned: Option<f64>,
    /// metal3-fakenode created the Node.
    pub node_created: Option<f64>,
    /// The harness saw the Machine Running with a nodeRef (CAPM3 set the providerID,
    /// CAPI found the Node), polled every second.
    pub machine_running: Option<f64>,
}

fn timestamp(value: &Value) -> Option<Timestamp> {
    value.as_str()?.parse().ok()
}

/// The milestones, given the Cluster's creation, the host's `status.operationHistory`,
/// the Node's creation and when the Machine was seen Running.
pub fn milestones(
    cluster_created: Timestamp,
    host_history: &Value,
    node_created: Option<Timestamp>,
    running: Option<Timestamp>,
) -> Milestones {
    let since = |t: Option<Timestamp>| t.map(|t| t.duration_since(cluster_created).as_secs_f64());
    Milestones {
        host_inspected: since(timestamp(&host_history["inspect"]["end"])),
        provisioning_started: since(timestamp(&host_history["provision"]["start"])),
        host_provisioned: since(timestamp(&host_history["provision"]["end"])),
        node_created: since(node_created),
        machine_running: since(running),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn milestones_count_from_the_clusters_creation() {
        let created: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        let history = json!({
            "register": {"start": "2026-11-26T10:00:01Z", "end": "2026-11-26T10:00:02Z"},
            "inspect": {"start": "2026-11-26T10:00:02Z", "end": "2026-11-26T10:00:12Z"},
            "provision": {"start": "2026-11-26T10:00:15Z", "end": "2026-11-26T10:00:25Z"},
        });
        let m = milestones(
            created,
            &history,
            Some("2026-11-26T10:00:26Z".parse().unwrap()),
            Some("2026-11-26T10:00:40Z".parse().unwrap()),
        );
        assert_eq!(
            m,
            Milestones {
                host_inspected: Some(12.0),
                provisioning_started: Some(15.0),
                host_provisioned: Some(25.0),
                node_created: Some(26.0),
                machine_running: Some(40.0),
            }
        );
    }

    #[test]
    fn what_has_not_happened_is_none() {
        let created: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        let history = json!({"provision": {"start": "", "end": null}});
        assert_eq!(
            milestones(created, &history, None, None),
            Milestones::default()
        );
    }
}
