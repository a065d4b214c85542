//! Why a protobuf body cannot be decoded. One enum, so the front answers every refusal
//! alike; `reason()` is bounded so it can label metrics.

/// A body refused. Each variant names what was sent that the decoder cannot carry over
/// faithfully; nothing is ever dropped silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the body does not start with the Kubernetes protobuf magic \"k8s\\x00\"")]
    BadMagic,
    #[error("the protobuf body is truncated in {message}")]
    Truncated { message: &'static str },
    #[error("the protobuf body has a varint longer than 64 bits in {message}")]
    BadVarint { message: &'static str },
    #[error("the protobuf body has a field number 0 in {message}")]
    BadKey { message: &'static str },
    #[error("field {number} of {message} is not known to the decoder")]
    UnknownField { message: &'static str, number: u64 },
    #[error("field {number} ({field}) of {message} has wire type {found}, expected {expected}")]
    WrongWireType {
        message: &'static str,
        field: &'static str,
        number: u32,
        found: u8,
        expected: &'static str,
    },
    #[error("field {number} ({field}) of {message} appears more than once")]
    DuplicateField {
        message: &'static str,
        field: &'static str,
        number: u32,
    },
    #[error("field {number} ({field}) of {message} is not valid UTF-8")]
    InvalidUtf8 {
        message: &'static str,
        field: &'static str,
        number: u32,
    },
    #[error("field {number} ({field}) of {message} is out of range: {why}")]
    OutOfRange {
        message: &'static str,
        field: &'static str,
        number: u32,
        why: &'static str,
    },
    #[error("a managed fields entry's fieldsV1 cannot be carried as JSON: {why}")]
    BadFieldsV1 { why: String },
    #[error("the protobuf body nests messages deeper than {limit}")]
    TooDeep { limit: usize },
    #[error("the protobuf envelope names no {what}")]
    MissingTypeMeta { what: &'static str },
    #[error(
        "protobuf bodies of kind {kind:?} in {api_version:?} are not decoded (supported: {}); send JSON",
        crate::supported_list()
    )]
    UnsupportedKind { api_version: String, kind: String },
    #[error("the protobuf envelope has content encoding {0:?}; only none is decoded")]
    ContentEncoding(String),
    #[error("the protobuf envelope has content type {0:?}; only {media} is decoded", media = crate::MEDIA_TYPE)]
    ContentType(String),
}

impl Error {
    /// Every value `reason()` can return, so metrics can start each at zero.
    pub const REASONS: &'static [&'static str] = &[
        "bad_magic",
        "truncated",
        "bad_varint",
        "bad_key",
        "unknown_field",
        "wrong_wire_type",
        "duplicate_field",
        "invalid_utf8",
        "out_of_range",
        "bad_fields_v1",
        "too_deep",
        "missing_type_meta",
        "unsupported_kind",
        "content_encoding",
        "content_type",
    ];

    /// A bounded, snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadMagic => "bad_magic",
            Error::Truncated { .. } => "truncated",
            Error::BadVarint { .. } => "bad_varint",
            Error::BadKey { .. } => "bad_key",
            Error::UnknownField { .. } => "unknown_field",
            Error::WrongWireType { .. } => "wrong_wire_type",
            Error::DuplicateField { .. } => "duplicate_field",
            Error::InvalidUtf8 { .. } => "invalid_utf8",
            Error::OutOfRange { .. } => "out_of_range",
            Error::BadFieldsV1 { .. } => "bad_fields_v1",
            Error::TooDeep { .. } => "too_deep",
            Error::MissingTypeMeta { .. } => "missing_type_meta",
            Error::UnsupportedKind { .. } => "unsupported_kind",
            Error::ContentEncoding(_) => "content_encoding",
            Error::ContentType(_) => "content_type",
        }
    }
}
