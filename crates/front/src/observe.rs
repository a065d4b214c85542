//! What the management cluster asks of the front, read from Clusters and their
//! `<cluster>-ca` Secrets: a Cluster whose `spec.controlPlaneEndpoint` names the front's
//! host and a port of its range is served there, with its CA. Pure, so a Cluster watcher
//! only has to hand its stores over; the result goes to `Front::reconcile`.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::Secret;
use metal3_fakenode_api::resources::Cluster;
use tenancy::ClusterKey;

use crate::clusters::ServedCluster;
use crate::plan::Refusal;

/// Where the front is reached, as Clusters name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontAddress {
    /// The host a Cluster's `controlPlaneEndpoint` names (a DNS name or an IP address);
    /// also what the serving certificates are made for.
    pub host: String,
    /// The ports the front may listen on.
    pub ports: RangeInclusive<u16>,
    /// The local address listeners bind.
    pub bind: IpAddr,
}

/// The clusters to serve, and the Clusters naming the front that cannot be served.
/// `ca_secret` finds a Secret by namespace and name.
pub fn observe<'a>(
    front: &FrontAddress,
    clusters: impl IntoIterator<Item = &'a Cluster>,
    ca_secret: impl Fn(&str, &str) -> Option<Secret>,
) -> (Vec<ServedCluster>, Vec<Refusal>) {
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for cluster in clusters {
        match served_cluster(front, cluster, &ca_secret) {
            Ok(Some(one)) => served.push(one),
            Ok(None) => {}
            Err(refusal) => refused.push(refusal),
        }
    }
    (served, refused)
}

fn served_cluster(
    front: &FrontAddress,
    cluster: &Cluster,
    ca_secret: &impl Fn(&str, &str) -> Option<Secret>,
) -> Result<Option<ServedCluster>, Refusal> {
    // A Cluster being deleted is still served: its Machines are drained through it.
    let endpoint = &cluster.spec.control_plane_endpoint;
    if endpoint.host != front.host {
        return Ok(None);
    }
    let key = ClusterKey {
        namespace: cluster.metadata.namespace.clone().unwrap_or_default(),
        name: cluster.metadata.name.clone().unwrap_or_default(),
        uid: cluster.metadata.uid.clone().unwrap_or_default(),
    };
    let refuse = |reason: &'static str, why: String| Refusal {
        cluster: key.clone(),
        reason,
        why,
    };
    let port = u16::try_from(endpoint.port)
        .ok()
        .filter(|port| front.ports.contains(port))
        .ok_or_else(|| {
            refuse(
                "port_out_of_range",
                format!(
                    "port {} is not in the front's range {}-{}",
                    endpoint.port,
                    front.ports.start(),
                    front.ports.end()
                ),
            )
        })?;
    if key.namespace.is_empty() || key.name.is_empty() || key.uid.is_empty() {
        return Err(refuse(
            "incomplete_cluster",
            "the Cluster has no namespace, name or UID".into(),
        ));
    }
    let secret_name = format!("{}-ca", key.name);
    let secret = ca_secret(&key.namespace, &secret_name).ok_or_else(|| {
        refuse(
            "ca_secret_missing",
            format!("Secret {secret_name} not found"),
        )
    })?;
    let field = |name: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(name))
            .and_then(|value| String::from_utf8(value.0.clone()).ok())
            .ok_or_else(|| {
                refuse(
                    "ca_secret_incomplete",
                    format!("Secret {secret_name} has no PEM {name}"),
                )
            })
    };
    Ok(Some(ServedCluster {
        listen: SocketAddr::new(front.bind, port),
        hosts: vec![front.host.clone()],
        ca_cert: field("tls.crt")?,
        ca_key: field("tls.key")?,
        cluster: key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn front() -> FrontAddress {
        FrontAddress {
            host: "front.example".into(),
            ports: 7000..=7999,
            bind: IpAddr::from([0, 0, 0, 0]),
        }
    }

    fn cluster(name: &str, host: &str, port: i32) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
            "metadata": {"namespace": "metal3", "name": name, "uid": format!("uid-{name}")},
            "spec": {"controlPlaneEndpoint": {"host": host, "port": port}},
        }))
        .unwrap()
    }

    fn ca(namespace: &str, name: &str) -> Option<Secret> {
        (namespace == "metal3" && name != "nosecret-ca").then(|| Secret {
            data: Some(
                [
                    ("tls.crt".to_string(), ByteString(b"CERT".to_vec())),
                    ("tls.key".to_string(), ByteString(b"KEY".to_vec())),
                ]
                .into(),
            ),
            ..Secret::default()
        })
    }

    #[test]
    fn a_cluster_naming_the_front_is_served_on_its_port_with_its_ca() {
        let clusters = [cluster("test1", "front.example", 7001)];
        let (served, refused) = observe(&front(), &clusters, ca);
        assert!(refused.is_empty());
        assert_eq!(served.len(), 1);
        let one = &served[0];
        assert_eq!(one.cluster.uid, "uid-test1");
        assert_eq!(one.listen, SocketAddr::from(([0, 0, 0, 0], 7001)));
        assert_eq!(one.hosts, ["front.example"]);
        assert_eq!((one.ca_cert.as_str(), one.ca_key.as_str()), ("CERT", "KEY"));
    }

    #[test]
    fn a_cluster_with_its_own_api_server_is_not_the_fronts() {
        let clusters = [cluster("own", "10.0.0.5", 6443), cluster("unset", "", 0)];
        let (served, refused) = observe(&front(), &clusters, ca);
        assert!(served.is_empty() && refused.is_empty());
    }

    #[test]
    fn a_port_out_of_range_or_a_missing_ca_is_refused() {
        let clusters = [
            cluster("far", "front.example", 6443),
            cluster("nosecret", "front.example", 7002),
        ];
        let (served, refused) = observe(&front(), &clusters, ca);
        assert!(served.is_empty());
        assert!(refused[0].why.contains("7000-7999"), "{:?}", refused[0]);
        assert!(refused[1].why.contains("nosecret-ca"), "{:?}", refused[1]);
    }
}
