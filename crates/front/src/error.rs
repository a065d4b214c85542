//! One error enum for the front. Every refusal a client sees is one of these, answered as
//! a Kubernetes `Status` (clients such as client-go and kube-rs read its code and reason);
//! `reason()` is bounded so it can label logs and metrics.

use http::StatusCode;
use serde_json::{Value, json};

/// What went wrong, in the request, in the backing server's answer, or in setting up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client asked for something the mapping refuses (an unknown kind, a reserved
    /// label, a name that does not fit beside the prefix...).
    #[error("{0}")]
    Request(tenancy::Error),
    /// The backing server answered something the mapping refuses to show this cluster
    /// (an object of another cluster, an RBAC object that grants something). Only the
    /// reason is shown: the detail may name another cluster's objects.
    #[error("the backing server's answer cannot be shown to this cluster ({})", .0.reason())]
    Answer(tenancy::Error),
    #[error("method {method} is not served on {what}")]
    MethodNotAllowed { method: String, what: &'static str },
    #[error("content type {content_type:?}: {why}")]
    UnsupportedMediaType {
        content_type: String,
        why: &'static str,
    },
    #[error("query parameter {name:?} is not passed on by the tenancy front")]
    UnsupportedQuery { name: String },
    #[error("request body: {0}")]
    BadBody(String),
    /// A protobuf body the decoder cannot read faithfully (a kind or field it does not
    /// know): refused rather than decoded with something missing.
    #[error("protobuf request body: {0}")]
    Protobuf(kube_protobuf::Error),
    #[error("request body larger than {max} bytes")]
    BodyTooLarge { max: usize },
    /// A `pods/portforward` request that is neither of the two upgrades client-go sends.
    #[error("not a port-forward upgrade: {why}")]
    NotAnUpgrade { why: &'static str },
    /// Each open port-forward holds two connections and a task; a cluster gets a bounded
    /// number so that one cluster cannot exhaust the front for all the others.
    #[error("{max} port-forwards of this cluster are open already; try again later")]
    TooManyPortForwards { max: usize },
    #[error("the object changed {attempts} times while the patch was applied; try again")]
    PatchConflict { attempts: u32 },
    /// A strategic merge patch that does not apply (a keyed list item without its key,
    /// an unknown directive...), as the API server would refuse it.
    #[error("the strategic merge patch does not apply: {0}")]
    StrategicPatch(strategic_merge::Error),
    /// The kind's OpenAPI schema could not be read into list strategies.
    #[error("the backing server's OpenAPI schema: {0}")]
    PatchSchema(strategic_merge::Error),
    #[error("the backing server: {0}")]
    Backing(#[from] kube::Error),
    #[error("the backing server answered {status} with a body that is not JSON: {message}")]
    BackingNotJson { status: u16, message: String },
    #[error("the backing server refused {what} ({status}): {message}")]
    BackingRefused {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("cluster {cluster}: its CA: {message}")]
    Ca { cluster: String, message: String },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig of the backing server: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("reading {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the list of served clusters in {path}: {message}")]
    ClusterList { path: String, message: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The management cluster refused or failed a request (recording a prefix on a
    /// Cluster).
    #[error("the management cluster: {0}")]
    Management(kube::Error),
    /// Objects of a removed cluster are still in the backing server after a pass.
    #[error("{remaining} objects of prefix {prefix} remain in the backing server")]
    RemovalIncomplete { prefix: String, remaining: usize },
    #[error("serving metrics and health on {addr}: {source}")]
    Serve {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The front's own reasons; a mapping refusal carries the mapping's reason, so every
    /// value `reason()` returns is here or in [`tenancy::Error::REASONS`].
    pub const REASONS: &'static [&'static str] = &[
        "backing_answer",
        "method_not_allowed",
        "unsupported_media_type",
        "unsupported_query",
        "bad_body",
        "protobuf",
        "body_too_large",
        "not_an_upgrade",
        "too_many_port_forwards",
        "patch_conflict",
        "strategic_patch",
        "patch_schema",
        "backing_unreachable",
        "backing_not_json",
        "backing_refused",
        "ca",
        "certificate",
        "tls",
        "bind",
        "kubeconfig",
        "read_file",
        "cluster_list",
        "metrics",
        "management",
        "removal_incomplete",
        "serve",
    ];

    /// A bounded, snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Request(e) => e.reason(),
            Error::Answer(_) => "backing_answer",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::UnsupportedMediaType { .. } => "unsupported_media_type",
            Error::UnsupportedQuery { .. } => "unsupported_query",
            Error::BadBody(_) => "bad_body",
            Error::Protobuf(_) => "protobuf",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::NotAnUpgrade { .. } => "not_an_upgrade",
            Error::TooManyPortForwards { .. } => "too_many_port_forwards",
            Error::PatchConflict { .. } => "patch_conflict",
            Error::StrategicPatch(_) => "strategic_patch",
            Error::PatchSchema(_) => "patch_schema",
            Error::Backing(_) => "backing_unreachable",
            Error::BackingNotJson { .. } => "backing_not_json",
            Error::BackingRefused { .. } => "backing_refused",
            Error::Ca { .. } => "ca",
            Error::Certificate(_) => "certificate",
            Error::Tls(_) => "tls",
            Error::Bind { .. } => "bind",
            Error::Kubeconfig(_) => "kubeconfig",
            Error::ReadFile { .. } => "read_file",
            Error::ClusterList { .. } => "cluster_list",
            Error::Metrics(_) => "metrics",
            Error::Management(_) => "management",
            Error::RemovalIncomplete { .. } => "removal_incomplete",
            Error::Serve { .. } => "serve",
        }
    }

    /// The HTTP status and the Kubernetes `Status` reason a client gets, as a real API
    /// server would answer the same mistake.
    pub fn status(&self) -> (StatusCode, &'static str) {
        use tenancy::Error as M;
        match self {
            Error::Request(e) => match e {
                M::UnknownResource { .. }
                | M::UnsupportedSubresource { .. }
                | M::UnsupportedPath { .. }
                | M::ForeignName { .. } => (StatusCode::NOT_FOUND, "NotFound"),
                M::ReservedKey { .. } | M::UnsupportedField { .. } => {
                    (StatusCode::FORBIDDEN, "Forbidden")
                }
                M::InvalidName { .. } | M::NameTooLong { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "Invalid")
                }
                M::TableUnsupported { .. } => (StatusCode::NOT_ACCEPTABLE, "NotAcceptable"),
                _ => (StatusCode::BAD_REQUEST, "BadRequest"),
            },
            Error::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            Error::UnsupportedMediaType { .. } | Error::Protobuf(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            Error::UnsupportedQuery { .. } | Error::BadBody(_) | Error::NotAnUpgrade { .. } => {
                (StatusCode::BAD_REQUEST, "BadRequest")
            }
            // The server itself answers some malformed patches 500; the fault is the
            // client's, so it hears 400.
            Error::StrategicPatch(e) if !e.is_schema_fault() => {
                (StatusCode::BAD_REQUEST, "BadRequest")
            }
            Error::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            Error::PatchConflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            Error::TooManyPortForwards { .. } => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            Error::Backing(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    /// The `Status` object a client reads this refusal from.
    pub fn to_status(&self) -> Value {
        let (code, reason) = self.status();
        status_object(code, reason, &self.to_string())
    }
}

/// A failure `Status`, the shape every Kubernetes client decodes errors from.
pub fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_label_is_forbidden_and_an_unknown_kind_not_found() {
        let reserved = Error::Request(tenancy::Error::ReservedKey {
            key: tenancy::CLUSTER_LABEL.into(),
        });
        assert_eq!(reserved.status(), (StatusCode::FORBIDDEN, "Forbidden"));
        assert_eq!(reserved.reason(), "reserved_key");
        let status = reserved.to_status();
        assert_eq!(status["code"], 403);
        assert_eq!(status["kind"], "Status");
        let unknown = Error::Request(tenancy::Error::UnknownResource {
            group: String::new(),
            version: "v1".into(),
            resource: "services".into(),
        });
        assert_eq!(unknown.status().0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn reasons_lists_every_variant_of_the_fronts_own_once() {
        let io = || std::io::Error::other("x");
        let s = String::new;
        let all = [
            Error::Answer(tenancy::Error::UnknownWatchEvent { kind: s() }),
            Error::MethodNotAllowed {
                method: s(),
                what: "",
            },
            Error::UnsupportedMediaType {
                content_type: s(),
                why: "",
            },
            Error::UnsupportedQuery { name: s() },
            Error::BadBody(s()),
            Error::Protobuf(kube_protobuf::Error::BadMagic),
            Error::BodyTooLarge { max: 0 },
            Error::NotAnUpgrade { why: "" },
            Error::TooManyPortForwards { max: 0 },
            Error::PatchConflict { attempts: 0 },
            Error::StrategicPatch(strategic_merge::Error::NotAnObject { what: "" }),
            Error::PatchSchema(strategic_merge::Error::NotAnObject { what: "" }),
            Error::Backing(kube::Error::ReadEvents(io())),
            Error::BackingNotJson {
                status: 0,
                message: s(),
            },
            Error::BackingRefused {
                what: "",
                status: 0,
                message: s(),
            },
            Error::Ca {
                cluster: s(),
                message: s(),
            },
            Error::Certificate(rcgen::Error::CouldNotParseCertificate),
            Error::Tls(rustls::Error::General(s())),
            Error::Bind {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                source: io(),
            },
            Error::Kubeconfig(kube::config::KubeconfigError::CurrentContextNotSet),
            Error::ReadFile {
                path: s(),
                source: io(),
            },
            Error::ClusterList {
                path: s(),
                message: s(),
            },
            Error::Metrics(prometheus::Error::Msg(s())),
            Error::Management(kube::Error::ReadEvents(io())),
            Error::RemovalIncomplete {
                prefix: s(),
                remaining: 0,
            },
            Error::Serve {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                source: io(),
            },
        ];
        let reasons: Vec<&str> = all.iter().map(Error::reason).collect();
        assert_eq!(reasons, Error::REASONS);
        for reason in tenancy::Error::REASONS {
            assert!(
                !Error::REASONS.contains(reason),
                "{reason} means two things"
            );
        }
    }

    #[test]
    fn a_refused_answer_is_the_servers_fault_not_the_clients() {
        let answer = Error::Answer(tenancy::Error::ForeignName {
            what: "Node",
            value: "tbbbbb-node-0".into(),
        });
        assert_eq!(answer.status().0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(Error::REASONS.contains(&answer.reason()));
    }
}
