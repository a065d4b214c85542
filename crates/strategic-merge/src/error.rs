//! Why a patch cannot be applied, or a schema cannot be read. One enum for the crate, so a
//! caller can answer every refusal alike; `reason()` is bounded so it can label metrics.

/// A patch refused, or an OpenAPI document that does not describe the kind asked for.
/// Paths are field names joined by dots, list items left implicit (`spec.containers.env`);
/// `.` is the object itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{what} is not a JSON object")]
    NotAnObject { what: &'static str },
    #[error("unknown directive $patch: {directive} in `{path}`")]
    UnknownDirective { path: String, directive: String },
    #[error("$patch: merge is not accepted in `{path}`: merging is what a patch does by default")]
    MergeDirective { path: String },
    #[error("merge key `{key}` missing from an item of `{path}`")]
    MissingMergeKey { path: String, key: String },
    #[error("`{path}` is merged by key `{key}`, but one of its items is not a JSON object")]
    ItemNotObject { path: String, key: String },
    #[error("`{path}` holds objects but has no merge key, so its items cannot be merged")]
    NoMergeKey { path: String },
    #[error("`{path}` mixes objects with other values in one list")]
    MixedList { path: String },
    #[error("`{path}` is a list of lists, which strategic merge patches do not support")]
    ListOfLists { path: String },
    #[error("`{directive}` in `{path}` {expected}")]
    MalformedDirective {
        path: String,
        directive: String,
        expected: &'static str,
    },
    #[error("the patch of `{path}` sets `{key}`, which its $retainKeys list leaves out")]
    NotRetained { path: String, key: String },
    #[error("the items of `{path}` in the patch are not in the order of its $setElementOrder list")]
    OrderMismatch { path: String },
    #[error("`{path}` must be a list to be ordered by $setElementOrder")]
    NotAList { path: String },
    #[error("{what} nests deeper than {max} levels")]
    TooDeep { what: &'static str, max: usize },
    #[error("the OpenAPI document has no schema for kind {kind} of {api_version}")]
    KindNotFound { api_version: String, kind: String },
    #[error("the OpenAPI document does not define {reference}")]
    UnresolvedReference { reference: String },
    #[error("`{field}` in the OpenAPI document has an unknown patch strategy {value:?}")]
    InvalidStrategy { field: String, value: String },
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Every value `reason()` can return, so metrics can start each at zero.
    pub const REASONS: &'static [&'static str] = &[
        "not_an_object",
        "unknown_directive",
        "merge_directive",
        "missing_merge_key",
        "item_not_object",
        "no_merge_key",
        "mixed_list",
        "list_of_lists",
        "malformed_directive",
        "not_retained",
        "order_mismatch",
        "not_a_list",
        "too_deep",
        "kind_not_found",
        "unresolved_reference",
        "invalid_strategy",
    ];

    /// A bounded, snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotAnObject { .. } => "not_an_object",
            Error::UnknownDirective { .. } => "unknown_directive",
            Error::MergeDirective { .. } => "merge_directive",
            Error::MissingMergeKey { .. } => "missing_merge_key",
            Error::ItemNotObject { .. } => "item_not_object",
            Error::NoMergeKey { .. } => "no_merge_key",
            Error::MixedList { .. } => "mixed_list",
            Error::ListOfLists { .. } => "list_of_lists",
            Error::MalformedDirective { .. } => "malformed_directive",
            Error::NotRetained { .. } => "not_retained",
            Error::OrderMismatch { .. } => "order_mismatch",
            Error::NotAList { .. } => "not_a_list",
            Error::TooDeep { .. } => "too_deep",
            Error::KindNotFound { .. } => "kind_not_found",
            Error::UnresolvedReference { .. } => "unresolved_reference",
            Error::InvalidStrategy { .. } => "invalid_strategy",
        }
    }

    /// Whether the fault lies with the OpenAPI document rather than with the patch: a
    /// server answers the former as its own error (500), the latter as the client's (4xx).
    pub fn is_schema_fault(&self) -> bool {
        matches!(
            self,
            Error::KindNotFound { .. }
                | Error::UnresolvedReference { .. }
                | Error::InvalidStrategy { .. }
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
            Error::NotAnObject { what: "" },
            Error::UnknownDirective {
                path: s(),
                directive: s(),
            },
            Error::MergeDirective { path: s() },
            Error::MissingMergeKey {
                path: s(),
                key: s(),
            },
            Error::ItemNotObject {
                path: s(),
                key: s(),
            },
            Error::NoMergeKey { path: s() },
            Error::MixedList { path: s() },
            Error::ListOfLists { path: s() },
            Error::MalformedDirective {
                path: s(),
                directive: s(),
                expected: "",
            },
            Error::NotRetained {
                path: s(),
                key: s(),
            },
            Error::OrderMismatch { path: s() },
            Error::NotAList { path: s() },
            Error::TooDeep { what: "", max: 0 },
            Error::KindNotFound {
                api_version: s(),
                kind: s(),
            },
            Error::UnresolvedReference { reference: s() },
            Error::InvalidStrategy {
                field: s(),
                value: s(),
            },
        ];
        let reasons: Vec<_> = all.iter().map(Error::reason).collect();
        assert_eq!(reasons, Error::REASONS);
    }

    #[test]
    fn messages_name_the_field() {
        let e = Error::MissingMergeKey {
            path: "status.conditions".into(),
            key: "type".into(),
        };
        assert_eq!(
            e.to_string(),
            "merge key `type` missing from an item of `status.conditions`"
        );
        assert!(!e.is_schema_fault());
    }
}
