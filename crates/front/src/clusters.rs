//! Which workload clusters the front serves, as data: what a Cluster watcher will derive
//! from Cluster objects (`spec.controlPlaneEndpoint` naming the front) and their
//! `<cluster>-ca` Secrets, and what a file can give directly until then.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;
use tenancy::ClusterKey;

use crate::error::{Error, Result};

/// One workload cluster the front serves.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServedCluster {
    /// The CAPI Cluster; its UID decides the prefix, so a recreated Cluster starts empty.
    pub cluster: ClusterKey,
    /// Where its listener accepts connections (its `controlPlaneEndpoint`).
    pub listen: SocketAddr,
    /// DNS names and IP addresses the serving certificate is valid for: the host of the
    /// `controlPlaneEndpoint`, which clients check.
    pub hosts: Vec<String>,
    /// The cluster CA's certificate (PEM): the only root client certificates may chain to.
    pub ca_cert: String,
    /// The cluster CA's private key (PEM), to sign the listener's serving certificate.
    pub ca_key: String,
}

impl fmt::Debug for ServedCluster {
    // The CA's private key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedCluster")
            .field("cluster", &self.cluster)
            .field("listen", &self.listen)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// The file form: `clusters:` then one entry per served cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterList {
    clusters: Vec<ServedCluster>,
}

/// Reads a YAML (or JSON) list of served clusters.
pub fn parse_cluster_list(path: &str, text: &str) -> Result<Vec<ServedCluster>> {
    serde_saphyr::from_str::<ClusterList>(text)
        .map(|list| list.clusters)
        .map_err(|e| Error::ClusterList {
            path: path.to_string(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_clusters_is_read_and_its_keys_stay_out_of_debug() {
        let text = r#"
clusters:
- cluster: {namespace: metal3, name: test1, uid: 2f0c}
  listen: 127.0.0.1:7001
  hosts: [127.0.0.1]
  caCert: CERT
  caKey: SECRET-KEY
"#;
        let clusters = parse_cluster_list("clusters.yaml", text).unwrap();
        assert_eq!(clusters.len(), 1);
        assert_eq!(clusters[0].cluster.name, "test1");
        assert_eq!(clusters[0].listen.port(), 7001);
        assert!(!format!("{:?}", clusters[0]).contains("SECRET"));
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let err = parse_cluster_list("c.yaml", "clusters: []\nextra: 1\n").unwrap_err();
        assert_eq!(err.reason(), "cluster_list");
    }
}
