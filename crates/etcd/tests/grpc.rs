//! The fake members over a real TLS + HTTP/2 connection, called as KCP calls them.

mod support;

use std::sync::{Arc, Mutex};

use fake_etcd::members::{cluster_id, member_id};
use fake_etcd::proto::{self, paths};
use fake_etcd::{Backend, Candidate, Change, LocalView, View, self_signed_serving, server_tls};
use support::{Client, TestCa, client_tls, connect};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

const KEY: &str = "0b6c4d3e-cluster-uid";

/// The stored facts of one cluster, as the controller keeps them (on Pods, there).
struct Facts(Mutex<Vec<Candidate>>);

impl Backend for Facts {
    /// The node whose member a connection reaches.
    type Target = String;

    async fn view(&self, target: &String) -> Result<LocalView, Status> {
        let candidates = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
        Ok(LocalView {
            view: View::derive(KEY, &candidates),
            local: target.clone(),
        })
    }

    async fn apply(&self, _: &String, change: Change) -> Result<(), Status> {
        let mut candidates = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
        Candidate::apply(&mut candidates, &change);
        Ok(())
    }
}

struct Bench {
    ca: TestCa,
    tls: Arc<rustls::ServerConfig>,
    facts: Arc<Facts>,
}

impl Bench {
    fn new(nodes: &[&str]) -> Bench {
        let ca = TestCa::new("etcd-ca");
        let serving = self_signed_serving(&["etcd-cp-a".to_owned()]).expect("serving certificate");
        let tls = Arc::new(server_tls(ca.pem.as_bytes(), serving).expect("server TLS"));
        let facts = Arc::new(Facts(Mutex::new(
            nodes.iter().map(|n| Candidate::new(*n)).collect(),
        )));
        Bench { ca, tls, facts }
    }

    /// One connection to `node`'s member, over an in-memory pipe.
    fn serve(
        &self,
        node: &str,
    ) -> (
        tokio::io::DuplexStream,
        JoinHandle<Result<(), fake_etcd::Error>>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(fake_etcd::serve_connection(
            server,
            self.tls.clone(),
            self.facts.clone(),
            node.to_owned(),
        ));
        (client, served)
    }

    async fn client(&self, node: &str) -> Client {
        let (io, _served) = self.serve(node);
        connect(io, client_tls(Some(self.ca.client_cert())))
            .await
            .expect("connect")
    }
}

fn id(node: &str) -> u64 {
    member_id(KEY, node)
}

async fn status(c: &mut Client) -> Result<proto::StatusResponse, Status> {
    c.call(paths::STATUS, proto::StatusRequest {}).await
}

async fn members(c: &mut Client) -> Vec<String> {
    let list: proto::MemberListResponse = c
        .call(
            paths::MEMBER_LIST,
            proto::MemberListRequest { linearizable: true },
        )
        .await
        .expect("member list");
    list.members.into_iter().map(|m| m.name).collect()
}

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, message: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.message(), message);
        }
        Ok(ok) => panic!("expected {code:?}, got {ok:?}"),
    }
}

#[tokio::test]
async fn every_call_kcp_makes_is_answered_as_etcd_would() {
    let bench = Bench::new(&["cp-b", "cp-a", "cp-c"]);
    let mut b = bench.client("cp-b").await;
    assert_eq!(b.alpn.as_deref(), Some(&b"h2"[..]));

    // newEtcdClient: Status, for the leader and errors.
    let s = status(&mut b).await.expect("status");
    let header = s.header.clone().expect("header");
    assert_eq!(header.cluster_id, cluster_id(KEY));
    assert_eq!(header.member_id, id("cp-b"));
    assert_eq!(s.leader, id("cp-a"));
    assert!(s.errors.is_empty());
    assert!(!s.is_learner);
    assert!(s.version.starts_with("3.6."));

    // Client.Members: names are node names, the cluster ID in the header, no learners.
    let list: proto::MemberListResponse = b
        .call(
            paths::MEMBER_LIST,
            proto::MemberListRequest { linearizable: true },
        )
        .await
        .expect("member list");
    assert_eq!(list.header.map(|h| h.cluster_id), Some(cluster_id(KEY)));
    let names: Vec<_> = list.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["cp-a", "cp-b", "cp-c"]);
    assert!(
        list.members
            .iter()
            .all(|m| !m.is_learner && m.id == id(&m.name))
    );

    // Client.Alarms: clientv3's AlarmList is Alarm with GET for all members.
    let alarms: proto::AlarmResponse = b
        .call(paths::ALARM, proto::AlarmRequest::default())
        .await
        .expect("alarms");
    assert!(alarms.alarms.is_empty());
    assert_eq!(alarms.header.map(|h| h.member_id), Some(id("cp-b")));
    let activate = proto::AlarmRequest {
        action: proto::AlarmAction::Activate as i32,
        ..Default::default()
    };
    let refused: Result<proto::AlarmResponse, _> = b.call(paths::ALARM, activate).await;
    assert_eq!(
        refused.map_err(|s| s.code()).err(),
        Some(Code::Unimplemented)
    );

    // MoveLeader only on the leader's member, as forLeader arranges.
    let move_to_c = proto::MoveLeaderRequest {
        target_id: id("cp-c"),
    };
    let not_leader: Result<proto::MoveLeaderResponse, _> =
        b.call(paths::MOVE_LEADER, move_to_c.clone()).await;
    assert_status(
        not_leader,
        Code::FailedPrecondition,
        "etcdserver: not leader",
    );
    let mut a = bench.client("cp-a").await;
    let bad: Result<proto::MoveLeaderResponse, _> = a
        .call(
            paths::MOVE_LEADER,
            proto::MoveLeaderRequest { target_id: 7 },
        )
        .await;
    assert_status(
        bad,
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    );
    let moved: proto::MoveLeaderResponse = a
        .call(paths::MOVE_LEADER, move_to_c)
        .await
        .expect("move leader");
    assert_eq!(moved.header.map(|h| h.member_id), Some(id("cp-a")));
    // Every member now reports the new leader.
    assert_eq!(
        status(&mut b).await.map(|s| s.leader).ok(),
        Some(id("cp-c"))
    );
    assert_eq!(
        status(&mut a).await.map(|s| s.leader).ok(),
        Some(id("cp-c"))
    );

    // RemoveEtcdMember: through another member; the answer lists those left.
    let removed: proto::MemberRemoveResponse = b
        .call(
            paths::MEMBER_REMOVE,
            proto::MemberRemoveRequest { id: id("cp-a") },
        )
        .await
        .expect("member remove");
    let left: Vec<_> = removed.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(left, ["cp-b", "cp-c"]);
    assert_eq!(members(&mut b).await, ["cp-b", "cp-c"]);
    let again: Result<proto::MemberRemoveResponse, _> = b
        .call(
            paths::MEMBER_REMOVE,
            proto::MemberRemoveRequest { id: id("cp-a") },
        )
        .await;
    assert_status(again, Code::NotFound, "etcdserver: member not found");

    // The removed member answers as a stopped etcd.
    assert_status(
        status(&mut a).await,
        Code::Unavailable,
        "etcdserver: server stopped",
    );

    // Removing the leader hands leadership on; the last member cannot be removed.
    let _: proto::MemberRemoveResponse = b
        .call(
            paths::MEMBER_REMOVE,
            proto::MemberRemoveRequest { id: id("cp-c") },
        )
        .await
        .expect("remove the leader");
    assert_eq!(
        status(&mut b).await.map(|s| s.leader).ok(),
        Some(id("cp-b"))
    );
    let last: Result<proto::MemberRemoveResponse, _> = b
        .call(
            paths::MEMBER_REMOVE,
            proto::MemberRemoveRequest { id: id("cp-b") },
        )
        .await;
    assert_status(
        last,
        Code::Unknown,
        "etcdserver: re-configuration failed due to not enough started members",
    );
}

#[tokio::test]
async fn other_methods_are_unimplemented() {
    let bench = Bench::new(&["cp-a"]);
    let mut a = bench.client("cp-a").await;
    for path in [
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.Maintenance/Defragment",
        "/etcdserverpb.Cluster/MemberAdd",
        "/etcdserverpb.Auth/Authenticate",
    ] {
        let answer: Result<proto::StatusResponse, _> = a.call(path, proto::StatusRequest {}).await;
        assert_eq!(
            answer.map_err(|s| s.code()).err(),
            Some(Code::Unimplemented),
            "{path}"
        );
    }
    // The connection still serves after those.
    assert!(status(&mut a).await.is_ok());
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    /// A MemberList request with a large unknown field: decoding would skip it, the size
    /// limit must not.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Padded {
        #[prost(bytes = "vec", tag = "15")]
        padding: Vec<u8>,
    }
    let bench = Bench::new(&["cp-a"]);
    let mut a = bench.client("cp-a").await;
    let big = Padded {
        padding: vec![0; fake_etcd::service::MAX_REQUEST_BYTES + 1],
    };
    let answer: Result<proto::MemberListResponse, _> = a.call(paths::MEMBER_LIST, big).await;
    assert_eq!(answer.map_err(|s| s.code()).err(), Some(Code::OutOfRange));
}

#[tokio::test]
async fn the_connection_ends_when_the_client_goes() {
    let bench = Bench::new(&["cp-a"]);
    let (io, served) = bench.serve("cp-a");
    let mut a = connect(io, client_tls(Some(bench.ca.client_cert())))
        .await
        .expect("connect");
    assert!(status(&mut a).await.is_ok());
    drop(a);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), served).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

/// The handshake outcome for a client presenting `cert`: the client's error (if TLS 1.3 lets
/// it finish, the first call's) and the server's.
async fn refused(bench: &Bench, cert: Option<&TestCa>) -> (String, fake_etcd::Error) {
    let (io, served) = bench.serve("cp-a");
    let client = connect(io, client_tls(cert.map(TestCa::client_cert))).await;
    let client_error = match client {
        Err(e) => e,
        Ok(mut c) => match status(&mut c).await {
            Err(s) => s.to_string(),
            Ok(s) => panic!("a refused client was answered: {s:?}"),
        },
    };
    let server_error = match served.await {
        Ok(Err(e)) => e,
        other => panic!("the server accepted the client: {other:?}"),
    };
    (client_error, server_error)
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let bench = Bench::new(&["cp-a"]);
    let other = TestCa::new("another-ca");
    let (_, server_error) = refused(&bench, Some(&other)).await;
    assert!(
        matches!(server_error, fake_etcd::Error::Handshake(_)),
        "{server_error}"
    );
}

#[tokio::test]
async fn a_client_without_certificate_is_refused() {
    let bench = Bench::new(&["cp-a"]);
    let (_, server_error) = refused(&bench, None).await;
    assert!(
        matches!(server_error, fake_etcd::Error::Handshake(_)),
        "{server_error}"
    );
}

#[test]
fn a_ca_bundle_without_certificate_is_an_error() {
    let serving = self_signed_serving(&["x".to_owned()]).expect("serving certificate");
    assert!(matches!(
        server_tls(b"not a certificate", serving),
        Err(fake_etcd::Error::NoCaCertificate)
    ));
}
