//! The etcd v3 messages the fake answers with, written by hand with `prost` derives.
//!
//! Field numbers and types follow etcd's `api/etcdserverpb/rpc.proto` (v3.6): a wrong tag
//! would not fail loudly, the Go client would just read zeroes. Only the messages of the
//! calls the KubeadmControlPlane controller makes are here, with every field that
//! `clientv3` or the controller reads (and a few more that a real member always sets).

/// gRPC method paths, as etcd's services are named in package `etcdserverpb`.
pub mod paths {
    /// `Cluster.MemberList`: KCP's `Client.Members`.
    pub const MEMBER_LIST: &str = "/etcdserverpb.Cluster/MemberList";
    /// `Cluster.MemberRemove`: KCP's `Client.RemoveMember`.
    pub const MEMBER_REMOVE: &str = "/etcdserverpb.Cluster/MemberRemove";
    /// `Maintenance.Status`: called by KCP on every new client, for the leader and errors.
    pub const STATUS: &str = "/etcdserverpb.Maintenance/Status";
    /// `Maintenance.Alarm`: `clientv3`'s `AlarmList` is an `Alarm` call with action GET.
    pub const ALARM: &str = "/etcdserverpb.Maintenance/Alarm";
    /// `Maintenance.MoveLeader`: KCP's `Client.MoveLeader`, sent to the leader.
    pub const MOVE_LEADER: &str = "/etcdserverpb.Maintenance/MoveLeader";
}

/// Sent with every response; KCP reads `cluster_id` from the `MemberList` header.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// KCP reads `ID`, `name`, `peerURLs`, `clientURLs` and `isLearner`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Member {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub peer_urls: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

/// `clientv3` sets `linearizable` unless asked for a serializable list; a fake has
/// nothing to be stale about, so it is read and ignored.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberListRequest {
    #[prost(bool, tag = "1")]
    pub linearizable: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberListResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberRemoveRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// Carries the members left after the removal, as etcd does.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberRemoveResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StatusRequest {}

/// KCP reads `leader` (to find the leader's member) and `errors` (any entry makes every
/// etcd member unhealthy in its conditions).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(int64, tag = "3")]
    pub db_size: i64,
    #[prost(uint64, tag = "4")]
    pub leader: u64,
    #[prost(uint64, tag = "5")]
    pub raft_index: u64,
    #[prost(uint64, tag = "6")]
    pub raft_term: u64,
    #[prost(uint64, tag = "7")]
    pub raft_applied_index: u64,
    #[prost(string, repeated, tag = "8")]
    pub errors: Vec<String>,
    #[prost(int64, tag = "9")]
    pub db_size_in_use: i64,
    #[prost(bool, tag = "10")]
    pub is_learner: bool,
    #[prost(string, tag = "11")]
    pub storage_version: String,
    #[prost(int64, tag = "12")]
    pub db_size_quota: i64,
    #[prost(message, optional, tag = "13")]
    pub downgrade_info: Option<DowngradeInfo>,
}

/// A v3.6 member always reports one, disabled unless a downgrade is under way.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DowngradeInfo {
    #[prost(bool, tag = "1")]
    pub enabled: bool,
    #[prost(string, tag = "2")]
    pub target_version: String,
}

/// etcd's `AlarmType`; KCP names NOSPACE and CORRUPT in conditions and ignores NONE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AlarmType {
    None = 0,
    Nospace = 1,
    Corrupt = 2,
}

/// etcd's `AlarmRequest.AlarmAction`; `clientv3`'s `AlarmList` sends GET for all members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AlarmAction {
    Get = 0,
    Activate = 1,
    Deactivate = 2,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AlarmRequest {
    #[prost(enumeration = "AlarmAction", tag = "1")]
    pub action: i32,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(enumeration = "AlarmType", tag = "3")]
    pub alarm: i32,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AlarmMember {
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
    #[prost(enumeration = "AlarmType", tag = "2")]
    pub alarm: i32,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AlarmResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub alarms: Vec<AlarmMember>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MoveLeaderRequest {
    #[prost(uint64, tag = "1")]
    pub target_id: u64,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MoveLeaderResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Hand-encoded bytes pin the tags: `Member{ID:1, name:"a", peerURLs:["p"],
    /// clientURLs:["c"], isLearner:true}` as protoc would lay it out.
    #[test]
    fn member_tags_match_rpc_proto() {
        let m = Member {
            id: 1,
            name: "a".into(),
            peer_urls: vec!["p".into()],
            client_urls: vec!["c".into()],
            is_learner: true,
        };
        let want = [
            0x08, 0x01, 0x12, 0x01, b'a', 0x1a, 0x01, b'p', 0x22, 0x01, b'c', 0x28, 0x01,
        ];
        assert_eq!(m.encode_to_vec(), want);
    }

    #[test]
    fn status_leader_and_errors_tags_match_rpc_proto() {
        let s = StatusResponse {
            leader: 7,
            errors: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(s.encode_to_vec(), [0x20, 0x07, 0x42, 0x01, b'x']);
    }

    #[test]
    fn header_and_alarm_tags_match_rpc_proto() {
        let r = AlarmResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4,
            }),
            alarms: vec![AlarmMember {
                member_id: 5,
                alarm: AlarmType::Nospace as i32,
            }],
        };
        let want = [
            0x0a, 0x08, 0x08, 0x01, 0x10, 0x02, 0x18, 0x03, 0x20, 0x04, 0x12, 0x04, 0x08, 0x05,
            0x10, 0x01,
        ];
        assert_eq!(r.encode_to_vec(), want);
    }

    #[test]
    fn requests_decode_from_rpc_proto_layout() {
        let remove = MemberRemoveRequest::decode(&[0x08, 0x2a][..]).ok();
        assert_eq!(remove, Some(MemberRemoveRequest { id: 42 }));
        let mv = MoveLeaderRequest::decode(&[0x08, 0x2a][..]).ok();
        assert_eq!(mv, Some(MoveLeaderRequest { target_id: 42 }));
        let alarm = AlarmRequest::decode(&[0x08, 0x00, 0x10, 0x00, 0x18, 0x00][..]).ok();
        assert_eq!(alarm.map(|a| a.action()), Some(AlarmAction::Get));
        let list = MemberListRequest::decode(&[0x08, 0x01][..]).ok();
        assert_eq!(list, Some(MemberListRequest { linearizable: true }));
    }
}
