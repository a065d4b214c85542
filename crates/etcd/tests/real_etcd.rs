//! Wire check against a real etcd server: the hand-written messages read its answers as
//! intended, and its refusals carry the codes and messages the fake sends.
//!
//! Ignored by default: it needs an etcd binary (v3.6 or later), named by the environment
//! variable `FAKE_ETCD_REAL_ETCD_BIN`. Run it with
//! `cargo test -p metal3-fakenode-etcd --test real_etcd -- --ignored`.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_etcd::Refusal;
use fake_etcd::proto::{self, paths};
use fake_etcd::service::refusal_status;
use support::{Client, TestCa, client_tls, connect};
use tonic::Status;

/// Ends the etcd this test started.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

async fn connect_when_up(port: u16, ca: &TestCa) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
            && let Ok(mut client) = connect(tcp, client_tls(Some(ca.client_cert()))).await
        {
            let up: Result<proto::StatusResponse, _> =
                client.call(paths::STATUS, proto::StatusRequest {}).await;
            if up.is_ok_and(|s| s.leader != 0) {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "etcd did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn same_refusal(real: Result<impl std::fmt::Debug, Status>, fake: Refusal) {
    let want = refusal_status(fake);
    match real {
        Err(status) => {
            assert_eq!(status.code(), want.code(), "{status:?}");
            assert_eq!(status.message(), want.message());
        }
        Ok(ok) => panic!("etcd accepted what the fake refuses as {fake:?}: {ok:?}"),
    }
}

#[tokio::test]
#[ignore = "needs an etcd binary named by FAKE_ETCD_REAL_ETCD_BIN"]
async fn messages_and_refusals_match_a_real_etcd() {
    let Some(binary) = std::env::var_os("FAKE_ETCD_REAL_ETCD_BIN") else {
        panic!("set FAKE_ETCD_REAL_ETCD_BIN to an etcd binary");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = TestCa::new("etcd-ca");
    let (cert, key) = ca.serving_cert_pem(&["localhost", "127.0.0.1"]);
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.crt"), &ca.pem).expect("write CA");
    std::fs::write(path("server.crt"), cert).expect("write certificate");
    std::fs::write(path("server.key"), key).expect("write key");
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let _etcd = Running(
        Command::new(binary)
            .arg("--name=cp-a")
            .arg(format!("--data-dir={}", path("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=cp-a={peer_url}"))
            .arg("--client-cert-auth")
            .arg(format!("--trusted-ca-file={}", path("ca.crt").display()))
            .arg(format!("--cert-file={}", path("server.crt").display()))
            .arg(format!("--key-file={}", path("server.key").display()))
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd"),
    );
    let mut etcd = connect_when_up(client_port, &ca).await;
    assert_eq!(etcd.alpn.as_deref(), Some(&b"h2"[..]));

    let status: proto::StatusResponse = etcd
        .call(paths::STATUS, proto::StatusRequest {})
        .await
        .expect("status");
    let header = status.header.clone().expect("status header");
    assert_ne!(header.cluster_id, 0);
    assert_eq!(status.leader, header.member_id, "a single member leads");
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    assert!(status.version.starts_with("3."), "{}", status.version);
    assert!(status.raft_term > 0 && status.db_size > 0 && status.db_size_quota > 0);
    assert!(status.downgrade_info.is_some());

    let list: proto::MemberListResponse = etcd
        .call(
            paths::MEMBER_LIST,
            proto::MemberListRequest { linearizable: true },
        )
        .await
        .expect("member list");
    assert_eq!(list.header.map(|h| h.cluster_id), Some(header.cluster_id));
    let [member] = list.members.as_slice() else {
        panic!("one member expected: {:?}", list.members);
    };
    assert_eq!(member.id, header.member_id);
    assert_eq!(member.name, "cp-a");
    assert_eq!(member.client_urls, [client_url.as_str()]);
    assert_eq!(member.peer_urls, [peer_url.as_str()]);
    assert!(!member.is_learner);

    let alarms: proto::AlarmResponse = etcd
        .call(paths::ALARM, proto::AlarmRequest::default())
        .await
        .expect("alarms");
    assert!(alarms.alarms.is_empty());
    assert_eq!(alarms.header.map(|h| h.member_id), Some(header.member_id));

    let bad: Result<proto::MoveLeaderResponse, _> = etcd
        .call(
            paths::MOVE_LEADER,
            proto::MoveLeaderRequest { target_id: 7 },
        )
        .await;
    same_refusal(bad, Refusal::BadLeaderTransferee);
    let to_self: Result<proto::MoveLeaderResponse, _> = etcd
        .call(
            paths::MOVE_LEADER,
            proto::MoveLeaderRequest {
                target_id: header.member_id,
            },
        )
        .await;
    assert!(to_self.is_ok(), "{to_self:?}");

    let unknown: Result<proto::MemberRemoveResponse, _> = etcd
        .call(paths::MEMBER_REMOVE, proto::MemberRemoveRequest { id: 7 })
        .await;
    same_refusal(unknown, Refusal::MemberNotFound);
    let last: Result<proto::MemberRemoveResponse, _> = etcd
        .call(
            paths::MEMBER_REMOVE,
            proto::MemberRemoveRequest {
                id: header.member_id,
            },
        )
        .await;
    same_refusal(last, Refusal::NotEnoughStartedMembers);
}
