//! The objects of one Metal3 workload cluster, as the original scale experiments created
//! them: a namespace per cluster, BareMetalHosts driven by the baremetal-operator's test
//! provisioner, a KubeadmControlPlane (stacked etcd, as kubeadm's default, or external etcd
//! as the original experiments), and a MachineDeployment.
//! Pure: everything here is data, created by the harness in this order.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// The Cluster API label that ties Secrets and Machines to their Cluster.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";

/// What varies between the workload clusters of one run.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub namespace: String,
    pub name: String,
    /// The cluster's control-plane endpoint: its own API server, or its port on a
    /// tenancy front.
    pub api_host: String,
    pub api_port: u16,
    pub kubernetes_version: String,
    pub control_plane_replicas: u32,
    pub workers: u32,
    /// One BareMetalHost per Machine that may exist at once; see [`hosts`].
    pub hosts: u32,
    pub etcd: Etcd,
}

/// Where the control plane's etcd runs.
#[derive(Clone, Debug)]
pub enum Etcd {
    /// A member on every control-plane Machine (kubeadm's default): KCP talks to the
    /// members through the kubelets' port-forward.
    Stacked,
    /// Elsewhere, never dialled: the API server's client certificate is pre-generated,
    /// since Cluster API cannot create it.
    External(ExternalEtcdClient),
}

/// The pre-generated PKI of a cluster, as PEM: its CA, which the workload API server
/// trusts and Cluster API signs the kubeconfig with, and the etcd CA. With stacked etcd
/// KCP would generate the etcd CA if it were missing; the harness makes it so that it
/// can read the members itself with a client certificate from it, as KCP does.
#[derive(Clone, Debug)]
pub struct ClusterPki {
    pub ca_cert: String,
    pub ca_key: String,
    pub etcd_ca_cert: String,
    pub etcd_ca_key: String,
}

/// The API server's client certificate for an external etcd, as PEM.
#[derive(Clone, Debug)]
pub struct ExternalEtcdClient {
    pub cert: String,
    pub key: String,
}

/// BareMetalHosts a cluster needs: every Machine that may exist at once, that is each
/// role at its largest plus one for a rolling update's surge (KCP and MachineDeployments
/// create the new Machine before deleting an old one).
pub fn hosts(control_plane_replicas: u32, max_workers: u32) -> u32 {
    control_plane_replicas + 1 + max_workers + 1
}

const CAPI: &str = "cluster.x-k8s.io/v1beta2";
const KCP: &str = "controlplane.cluster.x-k8s.io/v1beta2";
const CABPK: &str = "bootstrap.cluster.x-k8s.io/v1beta2";
const CAPM3: &str = "infrastructure.cluster.x-k8s.io/v1beta2";
const BMO: &str = "metal3.io/v1alpha1";

impl ClusterSpec {
    fn meta(&self, name: &str) -> Value {
        json!({"name": name, "namespace": self.namespace})
    }

    fn cluster_secret(&self, suffix: &str, data: &[(&str, &str)]) -> Value {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(BASE64.encode(v))))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": format!("{}-{suffix}", self.name),
                "namespace": self.namespace,
                "labels": {CLUSTER_NAME_LABEL: self.name},
            },
            "type": "cluster.x-k8s.io/secret",
            "data": data,
        })
    }

    pub fn host_name(&self, index: u32) -> String {
        format!("{}-host-{index}", self.name)
    }

    /// The Secrets the harness creates (BMC credentials and the pre-generated PKI); every
    /// other Secret in the namespace is Cluster API's.
    pub fn harness_secrets(&self) -> Vec<String> {
        let external: &[&str] = match self.etcd {
            Etcd::Stacked => &[],
            Etcd::External(_) => &["apiserver-etcd-client"],
        };
        ["bmc", "ca", "etcd"]
            .iter()
            .chain(external)
            .map(|suffix| format!("{}-{suffix}", self.name))
            .collect()
    }

    pub fn stacked_etcd(&self) -> bool {
        matches!(self.etcd, Etcd::Stacked)
    }

    pub fn machine_deployment_name(&self) -> String {
        format!("{}-workers", self.name)
    }

    /// Every object of the cluster, in creation order: the Namespace first, then what
    /// others refer to.
    pub fn objects(&self, pki: &ClusterPki) -> Vec<Value> {
        let mut objects = vec![json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.namespace},
        })];
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self.meta(&self.harness_secrets()[0]),
            "type": "Opaque",
            "data": {"username": BASE64.encode("admin"), "password": BASE64.encode("password")},
        }));
        objects.extend((0..self.hosts).map(|i| self.host(i)));
        // The workload API server already runs with this CA: Cluster API must sign the
        // kubeconfig with it rather than generate its own.
        objects.push(
            self.cluster_secret("ca", &[("tls.crt", &pki.ca_cert), ("tls.key", &pki.ca_key)]),
        );
        objects.push(self.cluster_secret(
            "etcd",
            &[
                ("tls.crt", &pki.etcd_ca_cert),
                ("tls.key", &pki.etcd_ca_key),
            ],
        ));
        if let Etcd::External(client) = &self.etcd {
            objects.push(self.cluster_secret(
                "apiserver-etcd-client",
                &[("tls.crt", &client.cert), ("tls.key", &client.key)],
            ));
        }
        objects.push(self.metal3_cluster());
        objects.push(self.machine_template("controlplane"));
        objects.push(self.machine_template("workers"));
        objects.push(self.kubeadm_control_plane());
        objects.push(self.kubeadm_config_template());
        objects.push(self.machine_deployment());
        // The Cluster last: its controllers start as soon as it exists, and find the rest.
        objects.push(self.cluster());
        objects
    }

    fn host(&self, index: u32) -> Value {
        json!({
            "apiVersion": BMO,
            "kind": "BareMetalHost",
            "metadata": self.meta(&self.host_name(index)),
            "spec": {
                "online": true,
                "bootMACAddress": mac_address(&self.name, index),
                // The test provisioner never contacts the BMC; the address must only parse.
                "bmc": {
                    "address": format!("ipmi://192.0.2.1:{}", 6230 + index),
                    "credentialsName": format!("{}-bmc", self.name),
                },
            },
        })
    }

    fn metal3_cluster(&self) -> Value {
        json!({
            "apiVersion": CAPM3,
            "kind": "Metal3Cluster",
            "metadata": self.meta(&self.name),
            "spec": {
                "controlPlaneEndpoint": {"host": self.api_host, "port": self.api_port},
                // No cloud provider: CAPM3 sets the Node's providerID itself.
                "cloudProviderEnabled": false,
            },
        })
    }

    fn machine_template(&self, role: &str) -> Value {
        json!({
            "apiVersion": CAPM3,
            "kind": "Metal3MachineTemplate",
            "metadata": self.meta(&format!("{}-{role}", self.name)),
            "spec": {"template": {"spec": {
                // CAPM3 copies diskFormat to the host's image.format, which the
                // baremetal-operator requires; the test provisioner downloads nothing.
                "image": {
                    "url": "http://192.0.2.2/images/node.qcow2",
                    "checksum": "97830b21ed272a3d854615beb54cf004",
                    "checksumType": "md5",
                    "diskFormat": "qcow2",
                },
            }}},
        })
    }

    fn kubeadm_control_plane(&self) -> Value {
        let mut config = json!({
            "initConfiguration": {"nodeRegistration": node_registration()},
            "joinConfiguration": {"nodeRegistration": node_registration()},
        });
        // Stacked etcd is kubeadm's default: no clusterConfiguration at all (the CRD
        // rejects an empty `etcd` or `etcd.local`).
        if let Etcd::External(_) = self.etcd {
            config["clusterConfiguration"] = json!({"etcd": {"external": {
                "endpoints": ["https://192.0.2.3:2379"],
                "caFile": "/etc/kubernetes/pki/etcd/ca.crt",
                "certFile": "/etc/kubernetes/pki/apiserver-etcd-client.crt",
                "keyFile": "/etc/kubernetes/pki/apiserver-etcd-client.key",
            }}});
        }
        json!({
            "apiVersion": KCP,
            "kind": "KubeadmControlPlane",
            "metadata": self.meta(&self.name),
            "spec": {
                "replicas": self.control_plane_replicas,
                "version": self.kubernetes_version,
                "machineTemplate": {"spec": {"infrastructureRef": {
                    "apiGroup": "infrastructure.cluster.x-k8s.io",
                    "kind": "Metal3MachineTemplate",
                    "name": format!("{}-controlplane", self.name),
                }}},
                "kubeadmConfigSpec": config,
            },
        })
    }

    fn kubeadm_config_template(&self) -> Value {
        json!({
            "apiVersion": CABPK,
            "kind": "KubeadmConfigTemplate",
            "metadata": self.meta(&format!("{}-workers", self.name)),
            "spec": {"template": {"spec": {
                "joinConfiguration": {"nodeRegistration": node_registration()},
            }}},
        })
    }

    fn machine_deployment(&self) -> Value {
        json!({
            "apiVersion": CAPI,
            "kind": "MachineDeployment",
            "metadata": self.meta(&self.machine_deployment_name()),
            "spec": {
                "clusterName": self.name,
                "replicas": self.workers,
                "selector": {"matchLabels": {CLUSTER_NAME_LABEL: self.name}},
                "template": {
                    "metadata": {"labels": {CLUSTER_NAME_LABEL: self.name}},
                    "spec": {
                        "clusterName": self.name,
                        "version": self.kubernetes_version,
                        "bootstrap": {"configRef": {
                            "apiGroup": "bootstrap.cluster.x-k8s.io",
                            "kind": "KubeadmConfigTemplate",
                            "name": format!("{}-workers", self.name),
                        }},
                        "infrastructureRef": {
                            "apiGroup": "infrastructure.cluster.x-k8s.io",
                            "kind": "Metal3MachineTemplate",
                            "name": format!("{}-workers", self.name),
                        },
                    },
                },
            },
        })
    }

    fn cluster(&self) -> Value {
        json!({
            "apiVersion": CAPI,
            "kind": "Cluster",
            "metadata": self.meta(&self.name),
            "spec": {
                "clusterNetwork": {
                    "pods": {"cidrBlocks": ["192.168.0.0/18"]},
                    "services": {"cidrBlocks": ["10.96.0.0/12"]},
                },
                "controlPlaneRef": {
                    "apiGroup": "controlplane.cluster.x-k8s.io",
                    "kind": "KubeadmControlPlane",
                    "name": self.name,
                },
                "infrastructureRef": {
                    "apiGroup": "infrastructure.cluster.x-k8s.io",
                    "kind": "Metal3Cluster",
                    "name": self.name,
                },
            },
        })
    }
}

/// What Metal3's templates give kubeadm: the kubelet labels its Node with the host's UID
/// from the metadata CAPM3 renders, which is how CAPM3 finds the Node (metal3-fakenode
/// plays that kubelet).
fn node_registration() -> Value {
    json!({
        "name": "{{ ds.meta_data.name }}",
        "kubeletExtraArgs": [
            {"name": "node-labels", "value": "metal3.io/uuid={{ ds.meta_data.uuid }}"},
        ],
    })
}

/// A locally administered unicast MAC, distinct per (cluster, host).
fn mac_address(cluster: &str, index: u32) -> String {
    let hash = metal3_fakenode::fake::fnv1a(cluster);
    let bytes = [
        0x02,
        (hash >> 8) as u8,
        hash as u8,
        (index >> 16) as u8,
        (index >> 8) as u8,
        index as u8,
    ];
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ClusterSpec {
        ClusterSpec {
            namespace: "e2e-1".into(),
            name: "cluster-1".into(),
            api_host: "127.0.0.1".into(),
            api_port: 40001,
            kubernetes_version: "v1.35.0".into(),
            control_plane_replicas: 1,
            workers: 2,
            hosts: 4,
            etcd: Etcd::Stacked,
        }
    }

    fn external() -> ClusterSpec {
        ClusterSpec {
            etcd: Etcd::External(ExternalEtcdClient {
                cert: "CLIENT".into(),
                key: "CLIENTKEY".into(),
            }),
            ..spec()
        }
    }

    fn pki() -> ClusterPki {
        ClusterPki {
            ca_cert: "CA".into(),
            ca_key: "CAKEY".into(),
            etcd_ca_cert: "ETCDCA".into(),
            etcd_ca_key: "ETCDCAKEY".into(),
        }
    }

    fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn secret_names(objects: &[Value]) -> Vec<&str> {
        objects
            .iter()
            .filter(|o| o["kind"] == "Secret")
            .map(|s| s["metadata"]["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn everything_lives_in_the_cluster_namespace_and_the_namespace_comes_first() {
        for spec in [spec(), external()] {
            let objects = spec.objects(&pki());
            assert_eq!(objects[0]["kind"], "Namespace");
            for o in &objects[1..] {
                assert_eq!(o["metadata"]["namespace"], "e2e-1", "{o}");
            }
            assert_eq!(objects.last().unwrap()["kind"], "Cluster");
        }
    }

    #[test]
    fn one_host_per_possible_machine_with_distinct_macs() {
        let objects = spec().objects(&pki());
        let macs: std::collections::BTreeSet<&str> = objects
            .iter()
            .filter(|o| o["kind"] == "BareMetalHost")
            .map(|o| o["spec"]["bootMACAddress"].as_str().unwrap())
            .collect();
        assert_eq!(macs.len(), 4);
        let other = ClusterSpec {
            name: "cluster-2".into(),
            ..spec()
        };
        assert_ne!(mac_address(&other.name, 0), mac_address("cluster-1", 0));
    }

    #[test]
    fn hosts_cover_each_role_at_its_largest_plus_a_surge() {
        // 3 control-plane replicas rolling (4 at once), 3 workers (or 1 rolling: 2).
        assert_eq!(hosts(3, 3), 8);
        assert_eq!(hosts(1, 1), 4);
    }

    #[test]
    fn stacked_etcd_is_kubeadms_default_with_the_harness_etcd_ca() {
        let objects = spec().objects(&pki());
        let kcp = find(&objects, "KubeadmControlPlane", "cluster-1");
        let config = &kcp["spec"]["kubeadmConfigSpec"];
        // No clusterConfiguration: an empty etcd (or etcd.local) is rejected by the CRD.
        assert!(config.get("clusterConfiguration").is_none(), "{config}");
        assert!(config["initConfiguration"].is_object());
        assert!(config["joinConfiguration"].is_object());
        assert_eq!(
            secret_names(&objects),
            ["cluster-1-bmc", "cluster-1-ca", "cluster-1-etcd"]
        );
        assert_eq!(secret_names(&objects), spec().harness_secrets());
        assert!(spec().stacked_etcd());
        let ca = find(&objects, "Secret", "cluster-1-ca");
        assert_eq!(ca["data"]["tls.key"], BASE64.encode("CAKEY"));
        let etcd = find(&objects, "Secret", "cluster-1-etcd");
        assert_eq!(etcd["data"]["tls.key"], BASE64.encode("ETCDCAKEY"));
    }

    #[test]
    fn external_etcd_comes_with_pregenerated_secrets() {
        let spec = external();
        assert!(!spec.stacked_etcd());
        let objects = spec.objects(&pki());
        let kcp = find(&objects, "KubeadmControlPlane", "cluster-1");
        let external =
            &kcp["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]["etcd"]["external"];
        assert!(external["endpoints"].is_array());
        assert_eq!(secret_names(&objects), spec.harness_secrets());
        for suffix in ["ca", "etcd", "apiserver-etcd-client"] {
            let secret = find(&objects, "Secret", &format!("cluster-1-{suffix}"));
            assert_eq!(
                secret["metadata"]["labels"][CLUSTER_NAME_LABEL],
                "cluster-1"
            );
            assert!(secret["data"]["tls.crt"].is_string());
            assert!(secret["data"]["tls.key"].is_string());
        }
        let etcd = find(&objects, "Secret", "cluster-1-etcd");
        assert_eq!(etcd["data"]["tls.key"], BASE64.encode("ETCDCAKEY"));
        let client = find(&objects, "Secret", "cluster-1-apiserver-etcd-client");
        assert_eq!(client["data"]["tls.crt"], BASE64.encode("CLIENT"));
    }

    #[test]
    fn the_endpoint_is_the_workload_api_server() {
        let objects = spec().objects(&pki());
        let m3c = find(&objects, "Metal3Cluster", "cluster-1");
        assert_eq!(m3c["spec"]["controlPlaneEndpoint"]["port"], 40001);
        let md = find(&objects, "MachineDeployment", "cluster-1-workers");
        assert_eq!(md["spec"]["replicas"], 2);
        assert_eq!(md["spec"]["template"]["spec"]["version"], "v1.35.0");
        let kcp = find(&objects, "KubeadmControlPlane", "cluster-1");
        assert_eq!(kcp["spec"]["replicas"], 1);
        assert_eq!(kcp["spec"]["version"], "v1.35.0");
    }
}
