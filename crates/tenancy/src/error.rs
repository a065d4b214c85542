//! Why something cannot be mapped. One enum for the whole crate, so the front can answer
//! every refusal alike; `reason()` is bounded so it can label metrics.

/// A mapping refused. Each variant says what a client (or the backing server) sent that
/// cannot be isolated, never a silent pass-through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("cluster key: {field} {message}")]
    InvalidClusterKey {
        field: &'static str,
        message: &'static str,
    },
    #[error("{value:?} is not a cluster prefix (a letter then {len} lowercase letters or digits)", len = crate::prefix::PREFIX_LEN - 1)]
    InvalidPrefix { value: String },
    #[error(
        "Cluster {cluster} has several recorded prefixes ({prefixes}); the record must be repaired"
    )]
    ConflictingAllocations { cluster: String, prefixes: String },
    #[error("no free prefix for Cluster {cluster} after {attempts} candidates")]
    NoFreePrefix { cluster: String, attempts: u32 },
    #[error("{what} {value:?} cannot be mapped: {rule}")]
    InvalidName {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error(
        "{what} {value:?} is too long to map: at most {max} characters fit beside the cluster prefix"
    )]
    NameTooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("{what} {value:?} does not belong to this cluster")]
    ForeignName { what: &'static str, value: String },
    #[error(
        "resource {resource} in group {group:?} version {version:?} is not isolated by the tenancy front"
    )]
    UnknownResource {
        group: String,
        version: String,
        resource: String,
    },
    #[error("kind {kind} of {api_version:?} is not isolated by the tenancy front")]
    UnknownKind { api_version: String, kind: String },
    #[error("expected {expected}, found {found}")]
    KindMismatch { expected: String, found: String },
    #[error("subresource {subresource:?} of {resource} is not isolated by the tenancy front")]
    UnsupportedSubresource {
        resource: String,
        subresource: String,
    },
    #[error("path {path:?}: {why}")]
    UnsupportedPath { path: String, why: &'static str },
    #[error("{key} is reserved to the tenancy front: a client may not set, change or remove it")]
    ReservedKey { key: String },
    #[error("object {name:?} has no tenancy label: it was not written through the front")]
    MissingTenancyLabel { name: String },
    #[error("object {name:?} is labelled for cluster {found:?}, not this one")]
    ForeignObject { name: String, found: String },
    #[error("{path}: expected {expected}")]
    Malformed {
        path: String,
        expected: &'static str,
    },
    #[error("selector {selector:?}: {why}")]
    UnsupportedSelector { selector: String, why: &'static str },
    #[error("{field}: {why}")]
    UnsupportedField { field: String, why: &'static str },
    #[error(
        "{what} grants permissions in the backing server; it was not written through the front"
    )]
    NotInert { what: String },
    #[error("{what}: the front's record is unreadable: {message}")]
    CorruptRecord { what: &'static str, message: String },
    #[error("watch event type {kind:?} is unknown")]
    UnknownWatchEvent { kind: String },
    #[error("Table answers for {resource} carry names the front does not map; ask for JSON")]
    TableUnsupported { resource: String },
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Every value `reason()` can return, so metrics can start each at zero.
    pub const REASONS: &'static [&'static str] = &[
        "invalid_cluster_key",
        "invalid_prefix",
        "conflicting_allocations",
        "no_free_prefix",
        "invalid_name",
        "name_too_long",
        "foreign_name",
        "unknown_resource",
        "unknown_kind",
        "kind_mismatch",
        "unsupported_subresource",
        "unsupported_path",
        "reserved_key",
        "missing_tenancy_label",
        "foreign_object",
        "malformed",
        "unsupported_selector",
        "unsupported_field",
        "rbac_not_inert",
        "corrupt_record",
        "unknown_watch_event",
        "table_unsupported",
    ];

    /// A bounded, snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidClusterKey { .. } => "invalid_cluster_key",
            Error::InvalidPrefix { .. } => "invalid_prefix",
            Error::ConflictingAllocations { .. } => "conflicting_allocations",
            Error::NoFreePrefix { .. } => "no_free_prefix",
            Error::InvalidName { .. } => "invalid_name",
            Error::NameTooLong { .. } => "name_too_long",
            Error::ForeignName { .. } => "foreign_name",
            Error::UnknownResource { .. } => "unknown_resource",
            Error::UnknownKind { .. } => "unknown_kind",
            Error::KindMismatch { .. } => "kind_mismatch",
            Error::UnsupportedSubresource { .. } => "unsupported_subresource",
            Error::UnsupportedPath { .. } => "unsupported_path",
            Error::ReservedKey { .. } => "reserved_key",
            Error::MissingTenancyLabel { .. } => "missing_tenancy_label",
            Error::ForeignObject { .. } => "foreign_object",
            Error::Malformed { .. } => "malformed",
            Error::UnsupportedSelector { .. } => "unsupported_selector",
            Error::UnsupportedField { .. } => "unsupported_field",
            Error::NotInert { .. } => "rbac_not_inert",
            Error::CorruptRecord { .. } => "corrupt_record",
            Error::UnknownWatchEvent { .. } => "unknown_watch_event",
            Error::TableUnsupported { .. } => "table_unsupported",
        }
    }

    /// Whether the fault lies with what the backing server answered rather than with the
    /// client's request: the front answers the former as a server error (500), the latter
    /// as a client error (400/403/404).
    pub fn is_backing_fault(&self) -> bool {
        matches!(
            self,
            Error::MissingTenancyLabel { .. }
                | Error::ForeignObject { .. }
                | Error::NotInert { .. }
                | Error::CorruptRecord { .. }
                | Error::UnknownWatchEvent { .. }
                | Error::ConflictingAllocations { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_lists_every_variant_once() {
        let s = String::new;
        let all = [
            Error::InvalidClusterKey {
                field: "",
                message: "",
            },
            Error::InvalidPrefix { value: s() },
            Error::ConflictingAllocations {
                cluster: s(),
                prefixes: s(),
            },
            Error::NoFreePrefix {
                cluster: s(),
                attempts: 0,
            },
            Error::InvalidName {
                what: "",
                value: s(),
                rule: "",
            },
            Error::NameTooLong {
                what: "",
                value: s(),
                max: 0,
            },
            Error::ForeignName {
                what: "",
                value: s(),
            },
            Error::UnknownResource {
                group: s(),
                version: s(),
                resource: s(),
            },
            Error::UnknownKind {
                api_version: s(),
                kind: s(),
            },
            Error::KindMismatch {
                expected: s(),
                found: s(),
            },
            Error::UnsupportedSubresource {
                resource: s(),
                subresource: s(),
            },
            Error::UnsupportedPath { path: s(), why: "" },
            Error::ReservedKey { key: s() },
            Error::MissingTenancyLabel { name: s() },
            Error::ForeignObject {
                name: s(),
                found: s(),
            },
            Error::Malformed {
                path: s(),
                expected: "",
            },
            Error::UnsupportedSelector {
                selector: s(),
                why: "",
            },
            Error::UnsupportedField {
                field: s(),
                why: "",
            },
            Error::NotInert { what: s() },
            Error::CorruptRecord {
                what: "",
                message: s(),
            },
            Error::UnknownWatchEvent { kind: s() },
            Error::TableUnsupported { resource: s() },
        ];
        let reasons: Vec<&str> = all.iter().map(Error::reason).collect();
        assert_eq!(reasons, Error::REASONS);
        let mut unique = reasons.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), reasons.len());
    }
}
