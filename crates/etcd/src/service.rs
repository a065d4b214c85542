//! The gRPC side: etcd's `Cluster` and `Maintenance` services for the calls KCP makes,
//! written on `tonic`'s per-call plumbing, and one TLS + HTTP/2 connection served with it.
//!
//! How KCP (Cluster API v1.13) reaches a member (`controlplane/kubeadm/internal`):
//! - `cluster.go`: a client certificate signed by the `<cluster>-etcd` CA, and
//!   `InsecureSkipVerify`, so the serving certificate may be self-signed.
//! - `etcd_client_generator.go`: a port-forward to Pod `kube-system/etcd-<node>` port 2379,
//!   one connection per member it asks; `etcd/etcd.go`: `clientv3.New`, then `Status` at once.
//! - `clientv3` v3.6 `New` makes no call by itself (no auth without a user name, no version
//!   check unless `RejectOldCluster`, no auto sync without an interval). Its `Status` dials a
//!   second connection to the endpoint. grpc-go requires ALPN `h2` from the server.
//! - `clientv3` retries `Status`, `MemberList`, `Alarm` and `MoveLeader` on `Unavailable`
//!   until the call times out; other codes fail at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;
use tonic::server::{Grpc, UnaryService};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::Error;
use crate::members::{Change, Refusal, View};
use crate::proto::{self, paths};

/// Requests are a few bytes; anything larger is not from KCP.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// KCP makes one call at a time per client; a little headroom, no more.
pub const MAX_CONCURRENT_STREAMS: u32 = 8;
/// A handshake that has not finished by then is not going to.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds the header block a client may send.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The version a member reports in `Status`; a v3.6 server, as `clientv3` v3.6 expects.
pub const REPORTED_VERSION: &str = "3.6.10";
/// A fresh member's database: a few pages. Not read by KCP.
const DB_SIZE: i64 = 20 * 1024;
/// etcd's default backend quota (2 GiB).
const DB_SIZE_QUOTA: i64 = 2 * 1024 * 1024 * 1024;

/// The cluster as seen by the member a connection is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalView {
    pub view: View,
    /// The answering member's name (its node name). If it is not a present member, the member
    /// answers as a stopped etcd would (Unavailable), which `clientv3` retries until its call
    /// times out: a caller that knows a member is gone does better to refuse the connection,
    /// as a real removed member's Pod would.
    pub local: String,
}

/// The names RPCs are counted under ([`Backend::observe`]): the etcd methods KCP calls.
pub mod methods {
    pub const MEMBER_LIST: &str = "MemberList";
    pub const MEMBER_REMOVE: &str = "MemberRemove";
    pub const STATUS: &str = "Status";
    pub const ALARM: &str = "Alarm";
    pub const MOVE_LEADER: &str = "MoveLeader";
    /// Every one, e.g. to export their counters at zero from the start.
    pub const ALL: [&str; 5] = [MEMBER_LIST, MEMBER_REMOVE, STATUS, ALARM, MOVE_LEADER];
}

/// What the controller provides: where the facts are read and stored.
///
/// Every call reads the view afresh, so that all replicas answering for one cluster agree.
pub trait Backend: Send + Sync + 'static {
    /// Identifies the member a connection is for (e.g. the cluster and node).
    type Target: Clone + Send + Sync + 'static;

    fn view(&self, target: &Self::Target)
    -> impl Future<Output = Result<LocalView, Status>> + Send;

    /// Persists a decision; it must be visible to `view` on every replica afterwards.
    fn apply(
        &self,
        target: &Self::Target,
        change: Change,
    ) -> impl Future<Output = Result<(), Status>> + Send;

    /// Told of every answered call (the method's name and the gRPC code), for metrics.
    fn observe(&self, _method: &'static str, _code: tonic::Code) {}

    /// The marker candidate for a leader move; wall-clock milliseconds unless overridden.
    fn now_marker(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// The status etcd sends for a refusal: the same code and message, so `clientv3` maps it to
/// the same typed error.
pub fn refusal_status(refusal: Refusal) -> Status {
    let code = match refusal {
        Refusal::NotLeader | Refusal::BadLeaderTransferee => Code::FailedPrecondition,
        // etcd's server maps this one to its client-side error, which goes out as Unknown.
        Refusal::NotEnoughStartedMembers => Code::Unknown,
        Refusal::MemberNotFound => Code::NotFound,
        Refusal::Stopped => Code::Unavailable,
    };
    Status::new(code, refusal.to_string())
}

fn member_pb(m: &crate::members::Member) -> proto::Member {
    proto::Member {
        id: m.id,
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// The answering member's ID for the header, or the refusal of a stopped member.
fn local_id(seen: &LocalView) -> Result<u64, Status> {
    seen.view
        .member_named(&seen.local)
        .map(|m| m.id)
        .ok_or_else(|| refusal_status(Refusal::Stopped))
}

fn header(seen: &LocalView, member_id: u64) -> Option<proto::ResponseHeader> {
    Some(proto::ResponseHeader {
        cluster_id: seen.view.cluster_id,
        member_id,
        revision: 1,
        raft_term: seen.view.raft_term,
    })
}

/// Answers one member's calls, whatever the transport.
struct Calls<B: Backend> {
    backend: Arc<B>,
    target: B::Target,
}

impl<B: Backend> Calls<B> {
    async fn member_list(
        &self,
        _: proto::MemberListRequest,
    ) -> Result<proto::MemberListResponse, Status> {
        let seen = self.backend.view(&self.target).await?;
        let id = local_id(&seen)?;
        Ok(proto::MemberListResponse {
            header: header(&seen, id),
            members: seen.view.members.iter().map(member_pb).collect(),
        })
    }

    async fn member_remove(
        &self,
        req: proto::MemberRemoveRequest,
    ) -> Result<proto::MemberRemoveResponse, Status> {
        let seen = self.backend.view(&self.target).await?;
        let id = local_id(&seen)?;
        let change = seen
            .view
            .remove_member(&seen.local, req.id)
            .map_err(refusal_status)?;
        self.backend.apply(&self.target, change).await?;
        Ok(proto::MemberRemoveResponse {
            header: header(&seen, id),
            members: seen
                .view
                .members_without(req.id)
                .iter()
                .map(member_pb)
                .collect(),
        })
    }

    async fn status(&self, _: proto::StatusRequest) -> Result<proto::StatusResponse, Status> {
        let seen = self.backend.view(&self.target).await?;
        let id = local_id(&seen)?;
        let mut errors = Vec::new();
        let leader = seen.view.leader_id.unwrap_or(0);
        if leader == 0 {
            errors.push("etcdserver: no leader".to_owned());
        }
        Ok(proto::StatusResponse {
            header: header(&seen, id),
            version: REPORTED_VERSION.to_owned(),
            db_size: DB_SIZE,
            leader,
            raft_index: seen.view.raft_term,
            raft_term: seen.view.raft_term,
            raft_applied_index: seen.view.raft_term,
            errors,
            db_size_in_use: DB_SIZE,
            is_learner: false,
            storage_version: "3.6.0".to_owned(),
            db_size_quota: DB_SIZE_QUOTA,
            downgrade_info: Some(proto::DowngradeInfo::default()),
        })
    }

    /// Only GET: a fake member never raises an alarm, and none can be set.
    async fn alarm(&self, req: proto::AlarmRequest) -> Result<proto::AlarmResponse, Status> {
        if req.action() != proto::AlarmAction::Get {
            return Err(Status::unimplemented(
                "fake etcd: alarms can only be listed",
            ));
        }
        let seen = self.backend.view(&self.target).await?;
        let id = local_id(&seen)?;
        Ok(proto::AlarmResponse {
            header: header(&seen, id),
            alarms: Vec::new(),
        })
    }

    async fn move_leader(
        &self,
        req: proto::MoveLeaderRequest,
    ) -> Result<proto::MoveLeaderResponse, Status> {
        let seen = self.backend.view(&self.target).await?;
        let id = local_id(&seen)?;
        let now = self.backend.now_marker();
        if let Some(change) = seen
            .view
            .move_leader(&seen.local, req.target_id, now)
            .map_err(refusal_status)?
        {
            self.backend.apply(&self.target, change).await?;
        }
        Ok(proto::MoveLeaderResponse {
            header: header(&seen, id),
        })
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// One method of [`Calls`] as tonic's unary service.
struct Method<B: Backend, Req, Resp> {
    name: &'static str,
    calls: Arc<Calls<B>>,
    handler: fn(Arc<Calls<B>>, Req) -> BoxFuture<Resp, Status>,
}

impl<B, Req, Resp> UnaryService<Req> for Method<B, Req, Resp>
where
    B: Backend,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Future = BoxFuture<Response<Resp>, Status>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        let fut = (self.handler)(self.calls.clone(), request.into_inner());
        let (calls, name) = (self.calls.clone(), self.name);
        Box::pin(async move {
            let result = fut.await;
            let code = result
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok);
            calls.backend.observe(name, code);
            result.map(Response::new)
        })
    }
}

/// The router: etcd's method paths to the calls above; every other path is Unimplemented,
/// as a gRPC server answers for a method it does not know.
pub struct EtcdService<B: Backend> {
    calls: Arc<Calls<B>>,
}

impl<B: Backend> Clone for EtcdService<B> {
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
        }
    }
}

impl<B: Backend> EtcdService<B> {
    /// The service answering as the member `target` designates.
    pub fn new(backend: Arc<B>, target: B::Target) -> Self {
        Self {
            calls: Arc::new(Calls { backend, target }),
        }
    }
}

async fn unary<B, Req, Resp, ReqBody>(
    name: &'static str,
    calls: Arc<Calls<B>>,
    handler: fn(Arc<Calls<B>>, Req) -> BoxFuture<Resp, Status>,
    req: http::Request<ReqBody>,
) -> http::Response<Body>
where
    B: Backend,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut grpc =
        Grpc::new(ProstCodec::<Resp, Req>::default()).max_decoding_message_size(MAX_REQUEST_BYTES);
    grpc.unary(
        Method {
            name,
            calls,
            handler,
        },
        req,
    )
    .await
}

impl<B, ReqBody> tower::Service<http::Request<ReqBody>> for EtcdService<B>
where
    B: Backend,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let calls = self.calls.clone();
        match req.uri().path() {
            paths::MEMBER_LIST => Box::pin(async move {
                Ok(unary(
                    methods::MEMBER_LIST,
                    calls,
                    |c, r| Box::pin(async move { c.member_list(r).await }),
                    req,
                )
                .await)
            }),
            paths::MEMBER_REMOVE => Box::pin(async move {
                Ok(unary(
                    methods::MEMBER_REMOVE,
                    calls,
                    |c, r| Box::pin(async move { c.member_remove(r).await }),
                    req,
                )
                .await)
            }),
            paths::STATUS => Box::pin(async move {
                Ok(unary(
                    methods::STATUS,
                    calls,
                    |c, r| Box::pin(async move { c.status(r).await }),
                    req,
                )
                .await)
            }),
            paths::ALARM => Box::pin(async move {
                Ok(unary(
                    methods::ALARM,
                    calls,
                    |c, r| Box::pin(async move { c.alarm(r).await }),
                    req,
                )
                .await)
            }),
            paths::MOVE_LEADER => Box::pin(async move {
                Ok(unary(
                    methods::MOVE_LEADER,
                    calls,
                    |c, r| Box::pin(async move { c.move_leader(r).await }),
                    req,
                )
                .await)
            }),
            path => {
                let status = Status::unimplemented(format!("fake etcd: {path} is not served"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Serves one connection (e.g. a port-forward stream) as the member `target` designates:
/// TLS with a client certificate, then HTTP/2, until the peer closes it.
pub async fn serve_connection<IO, B>(
    io: IO,
    tls: Arc<rustls::ServerConfig>,
    backend: Arc<B>,
    target: B::Target,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
        .await
        .map_err(|_| Error::HandshakeTimeout)?
        .map_err(Error::Handshake)?;
    let service = TowerToHyperService::new(EtcdService::new(backend, target));
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    match served {
        Err(e) if !closed_by_peer(&e) => Err(Error::Http(e)),
        _ => Ok(()),
    }
}

/// A client that goes away without a goodbye (a port-forward torn down, a process ended) is
/// how these connections usually end, not a failure.
fn closed_by_peer(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
            );
        }
        source = err.source();
    }
    false
}
