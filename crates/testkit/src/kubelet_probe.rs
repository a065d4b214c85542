//! Runs `hack/kubelet-probe`, which speaks to a Node's kubelet endpoint with the real
//! clients of Cluster API's KubeadmControlPlane: a port-forward through the real
//! kube-apiserver as KCP dials it, then etcd v3 gRPC over TLS (clientv3), KCP's TLS
//! handshake for the API server certificate's expiry, or an echo over many streams of
//! one port-forward. `hack/envtest-assets.sh` builds it into the assets directory.
//!
//! Each call runs the binary once and parses the one JSON object it prints; a failure
//! carries the command line and the probe's stderr.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

use crate::envtest::ASSETS_ENV;

/// The file name of the probe in the assets directory.
pub const BINARY: &str = "kubelet-probe";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "{ASSETS_ENV} is not set: build the assets with `make envtest` \
         (hack/envtest-assets.sh) and export {ASSETS_ENV}=<the directory it prints>"
    )]
    AssetsUnset,
    #[error("{0} is missing: rebuild it with `make envtest` (hack/envtest-assets.sh)")]
    Missing(PathBuf),
    #[error("starting `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` was still running after {seconds}s; killed")]
    TimedOut { command: String, seconds: u64 },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("`{command}` printed unexpected JSON ({source}): {stdout}")]
    Output {
        command: String,
        stdout: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Where the probe connects.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Pod's port, port-forwarded through the API server of `kubeconfig`.
    Pod {
        kubeconfig: PathBuf,
        namespace: String,
        pod: String,
        /// `None`: the subcommand's default (2379 for etcd, 6443 for cert-expiry).
        port: Option<u16>,
        transport: Transport,
    },
    /// `host:port` over plain TCP, to compare with a real server.
    Endpoint(String),
}

impl Target {
    pub fn pod(kubeconfig: impl Into<PathBuf>, namespace: &str, pod: &str) -> Self {
        Self::Pod {
            kubeconfig: kubeconfig.into(),
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            port: None,
            transport: Transport::Kcp,
        }
    }

    pub fn endpoint(address: impl Into<String>) -> Self {
        Self::Endpoint(address.into())
    }

    /// The Pod's port (no effect on an endpoint).
    pub fn with_port(mut self, p: u16) -> Self {
        if let Self::Pod { port, .. } = &mut self {
            *port = Some(p);
        }
        self
    }

    /// The port-forward transport (no effect on an endpoint).
    pub fn with_transport(mut self, t: Transport) -> Self {
        if let Self::Pod { transport, .. } = &mut self {
            *transport = t;
        }
        self
    }

    fn args(&self) -> Vec<OsString> {
        match self {
            Self::Pod {
                kubeconfig,
                namespace,
                pod,
                port,
                transport,
            } => {
                let mut args: Vec<OsString> = vec![
                    "--kubeconfig".into(),
                    kubeconfig.into(),
                    "--namespace".into(),
                    namespace.into(),
                    "--pod".into(),
                    pod.into(),
                    "--transport".into(),
                    transport.flag().into(),
                ];
                if let Some(port) = port {
                    args.extend(["--port".into(), port.to_string().into()]);
                }
                args
            }
            Self::Endpoint(address) => vec!["--endpoint".into(), address.into()],
        }
    }
}

/// How the port-forward connection is upgraded. The kubelet end sees SPDY either way:
/// the API server unwraps the WebSocket tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// KCP's dialer: SPDY tunneled in a WebSocket, falling back to plain SPDY.
    #[default]
    Kcp,
    /// Plain SPDY only.
    Spdy,
}

impl Transport {
    fn flag(self) -> &'static str {
        match self {
            Self::Kcp => "websocket",
            Self::Spdy => "spdy",
        }
    }
}

/// The client certificate files KCP would use: the `<cluster>-etcd` CA and a client
/// certificate signed by it.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The etcd calls KCP makes. Member IDs as etcd has them (the probe speaks hexadecimal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcdOp {
    MemberList,
    Status,
    AlarmList,
    MemberRemove(u64),
    MoveLeader(u64),
}

impl EtcdOp {
    fn args(self) -> Vec<OsString> {
        match self {
            Self::MemberList => vec!["member-list".into()],
            Self::Status => vec!["status".into()],
            Self::AlarmList => vec!["alarm-list".into()],
            Self::MemberRemove(id) => vec!["member-remove".into(), format!("{id:x}").into()],
            Self::MoveLeader(id) => vec!["move-leader".into(), format!("{id:x}").into()],
        }
    }
}

/// What `kubelet-probe etcd` prints. The fields an op does not fill are empty.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdResult {
    pub op: String,
    /// What clientv3 was given: the Pod's name (as KCP gives it), or `host:port`.
    pub endpoint: String,
    pub header: EtcdHeader,
    /// member-list; member-remove: the members left.
    #[serde(default)]
    pub members: Vec<EtcdMember>,
    /// status: the leader; move-leader: the member asked to lead.
    #[serde(default, deserialize_with = "hex::option")]
    pub leader: Option<u64>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub db_size: Option<i64>,
    #[serde(default)]
    pub raft_index: Option<u64>,
    #[serde(default)]
    pub errors: Option<Vec<String>>,
    #[serde(default)]
    pub is_learner: Option<bool>,
    #[serde(default)]
    pub alarms: Option<Vec<EtcdAlarm>>,
    #[serde(default, deserialize_with = "hex::option")]
    pub removed: Option<u64>,
    /// Connections gRPC dialed: clientv3 dials one for Status besides its main one, so
    /// KCP opens (at least) two port-forwards per etcd client.
    pub dials: u32,
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdHeader {
    #[serde(deserialize_with = "hex::id")]
    pub cluster_id: u64,
    #[serde(deserialize_with = "hex::id")]
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct EtcdMember {
    #[serde(deserialize_with = "hex::id")]
    pub id: u64,
    pub name: String,
    #[serde(rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs")]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner")]
    pub is_learner: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdAlarm {
    #[serde(deserialize_with = "hex::id")]
    pub member_id: u64,
    /// `NONE`, `NOSPACE` or `CORRUPT`.
    pub alarm: String,
}

/// One port-forward connection the probe opened, and what its kubelet end reported.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortForward {
    pub pod: String,
    /// The negotiated subprotocol, `portforward.k8s.io`.
    pub protocol: String,
    /// Stream pairs opened on it.
    pub streams: u32,
    /// What the kubelet end wrote on error streams.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// What `kubelet-probe cert-expiry` prints.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertExpiry {
    /// The certificate KCP reads: the last peer certificate with CN `kube-apiserver`.
    pub common_name: String,
    #[serde(deserialize_with = "rfc3339")]
    pub not_after: jiff::Timestamp,
    /// Every certificate the server presented, leaf first.
    pub peer_certificates: Vec<PeerCertificate>,
    pub tls_version: String,
    /// KCP offers no ALPN, so empty against a conforming server.
    pub negotiated_protocol: String,
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerCertificate {
    pub common_name: String,
    #[serde(deserialize_with = "rfc3339")]
    pub not_after: jiff::Timestamp,
}

/// What `kubelet-probe forward-echo` prints.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EchoResult {
    pub connections: u32,
    pub bytes_per_connection: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub seconds: f64,
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
}

/// The probe binary and the deadline it is given.
#[derive(Clone, Debug)]
pub struct KubeletProbe {
    binary: PathBuf,
    timeout: Duration,
}

impl KubeletProbe {
    /// The probe in the assets directory named by `METAL3_FAKENODE_ENVTEST_ASSETS`.
    pub fn from_assets() -> Result<Self, ProbeError> {
        let dir = std::env::var_os(ASSETS_ENV).ok_or(ProbeError::AssetsUnset)?;
        Self::new(Path::new(&dir).join(BINARY))
    }

    pub fn new(binary: PathBuf) -> Result<Self, ProbeError> {
        if !binary.is_file() {
            return Err(ProbeError::Missing(binary));
        }
        Ok(Self {
            binary,
            timeout: Duration::from_secs(30),
        })
    }

    /// The probe's own deadline (`--timeout`, 30s by default); the process is killed if
    /// it outlives it by a few seconds.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// One etcd call as KCP makes it (after the Status call KCP always makes first).
    pub async fn etcd(
        &self,
        target: &Target,
        tls: &EtcdTls,
        op: EtcdOp,
    ) -> Result<EtcdResult, ProbeError> {
        let mut args: Vec<OsString> = vec!["etcd".into()];
        args.extend(target.args());
        args.extend([
            "--ca".into(),
            tls.ca.clone().into(),
            "--cert".into(),
            tls.cert.clone().into(),
            "--key".into(),
            tls.key.clone().into(),
        ]);
        args.extend(op.args());
        self.run_typed(args).await
    }

    /// The expiry of the API server certificate, read as KCP reads it.
    pub async fn cert_expiry(&self, target: &Target) -> Result<CertExpiry, ProbeError> {
        let mut args: Vec<OsString> = vec!["cert-expiry".into()];
        args.extend(target.args());
        self.run_typed(args).await
    }

    /// `connections` streams on one port-forward (a Pod target needs its port set), each
    /// sending `bytes` to an echo server and checking them back.
    pub async fn forward_echo(
        &self,
        target: &Target,
        bytes: usize,
        connections: usize,
    ) -> Result<EchoResult, ProbeError> {
        let mut args: Vec<OsString> = vec!["forward-echo".into()];
        args.extend(target.args());
        args.extend([
            "--bytes".into(),
            bytes.to_string().into(),
            "--connections".into(),
            connections.to_string().into(),
        ]);
        self.run_typed(args).await
    }

    /// What Cluster API writes into a workload cluster, written with protobuf bodies as
    /// controller-runtime sends them, through the API server of `kubeconfig`; the objects
    /// as that server answered them (JSON: `secret`, `configMap`, `clusterRole`,
    /// `clusterRoleBinding`, `role`, `roleBinding`, `nodeDeleted`).
    pub async fn protobuf_writes(
        &self,
        kubeconfig: &Path,
    ) -> Result<serde_json::Value, ProbeError> {
        self.run_typed(vec![
            "protobuf-writes".into(),
            "--kubeconfig".into(),
            kubeconfig.into(),
        ])
        .await
    }

    async fn run_typed<T: serde::de::DeserializeOwned>(
        &self,
        args: Vec<OsString>,
    ) -> Result<T, ProbeError> {
        let (command, stdout) = self.run(args).await?;
        serde_json::from_str(&stdout).map_err(|source| ProbeError::Output {
            command,
            stdout,
            source,
        })
    }

    /// Runs the probe with `args` (a subcommand first) and returns its command line and
    /// its stdout, the JSON object.
    pub async fn run(&self, mut args: Vec<OsString>) -> Result<(String, String), ProbeError> {
        let seconds = self.timeout.as_secs_f64();
        args.insert(1.min(args.len()), format!("--timeout={seconds}s").into());
        let command = std::iter::once(self.binary.as_os_str())
            .chain(args.iter().map(|a| a.as_os_str()))
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let child = tokio::process::Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProbeError::Spawn {
                command: command.clone(),
                source,
            })?;
        // The probe enforces its own deadline; this one is for a probe that hangs anyway.
        let limit = self.timeout + Duration::from_secs(5);
        let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(output) => output.map_err(|source| ProbeError::Spawn {
                command: command.clone(),
                source,
            })?,
            Err(_) => {
                return Err(ProbeError::TimedOut {
                    command,
                    seconds: limit.as_secs(),
                });
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() {
            return Err(ProbeError::Failed {
                command,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok((command, stdout))
    }
}

fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<jiff::Timestamp, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// The probe prints etcd IDs in hexadecimal, as etcdctl does.
mod hex {
    use serde::Deserialize;

    fn parse<E: serde::de::Error>(s: &str) -> Result<u64, E> {
        u64::from_str_radix(s, 16).map_err(|e| E::custom(format!("{s:?} is not a hex id: {e}")))
    }

    pub fn id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse(&String::deserialize(d)?)
    }

    pub fn option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| parse(&s))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_output_parses() {
        let out = r#"{"op":"member-list","endpoint":"etcd-node-0","header":{"clusterId":"f017819664191323","memberId":"bdae9bbc11dd390d","revision":0,"raftTerm":2},"members":[{"id":"2943212f5e2cf73","name":"m2","peerURLs":["http://127.0.0.1:23802"],"clientURLs":["https://127.0.0.1:23792"],"isLearner":false}],"dials":2,"portForwards":[{"pod":"etcd-node-0","protocol":"portforward.k8s.io","streams":1}]}"#;
        let r: EtcdResult = serde_json::from_str(out).unwrap();
        assert_eq!(r.header.cluster_id, 0xf017819664191323);
        assert_eq!(r.members[0].id, 0x2943212f5e2cf73);
        assert_eq!(r.members[0].client_urls, ["https://127.0.0.1:23792"]);
        assert_eq!(r.leader, None);
        assert_eq!(r.port_forwards[0].streams, 1);
        let out = r#"{"op":"status","endpoint":"127.0.0.1:1","header":{"clusterId":"1","memberId":"2","revision":1,"raftTerm":2},"leader":"2","version":"3.6.10","dbSize":28672,"raftIndex":8,"errors":[],"isLearner":false,"dials":2}"#;
        let r: EtcdResult = serde_json::from_str(out).unwrap();
        assert_eq!((r.leader, r.is_learner), (Some(2), Some(false)));
    }

    #[test]
    fn cert_expiry_output_parses() {
        let out = r#"{"commonName":"kube-apiserver","notAfter":"2027-12-02T06:17:54Z","peerCertificates":[{"commonName":"kube-apiserver","notAfter":"2027-12-02T06:17:54Z"}],"tlsVersion":"TLS 1.3","negotiatedProtocol":""}"#;
        let r: CertExpiry = serde_json::from_str(out).unwrap();
        assert_eq!(r.not_after, "2027-12-02T06:17:54Z".parse().unwrap());
    }

    #[test]
    fn ops_speak_hex() {
        assert_eq!(
            EtcdOp::MoveLeader(0xbdae9bbc11dd390d).args(),
            ["move-leader", "bdae9bbc11dd390d"].map(OsString::from)
        );
    }
}
