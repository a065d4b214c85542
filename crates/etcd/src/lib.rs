//! Fake etcd members for the KubeadmControlPlane controller: the etcd v3 gRPC calls it makes
//! through a port-forward to `kube-system/etcd-<node>` (Status, MemberList, AlarmList,
//! MoveLeader, MemberRemove), answered from plain data the caller stores.
//!
//! - [`proto`]: the etcd messages, by hand.
//! - [`members`]: the membership derived from node names and stored facts, and the decisions
//!   for `MoveLeader` and `MemberRemove` as changes to store.
//! - [`service`]: the gRPC router over a [`Backend`], and one TLS + HTTP/2 connection.
//! - [`tls`]: the server TLS configuration and a self-signed serving certificate.

pub mod members;
pub mod proto;
pub mod service;
pub mod tls;

pub use members::{Candidate, Change, Member, Refusal, View};
pub use service::{Backend, EtcdService, LocalView, serve_connection};
pub use tls::{self_signed_serving, server_tls};

/// Why a connection could not be served or the TLS configuration not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("TLS handshake did not finish in time")]
    HandshakeTimeout,
    #[error("HTTP/2 connection failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("the etcd CA bundle holds no certificate")]
    NoCaCertificate,
    #[error("unreadable PEM in the etcd CA bundle: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("client certificate verifier: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}
