//! Kubernetes protobuf request bodies decoded into the JSON the API server would accept
//! for the same object, so a proxy that rewrites JSON can carry clients that send
//! protobuf (controller-runtime does for built-in kinds).
//!
//! Written by hand: no maintained Rust crate maps Kubernetes protobuf to its JSON form
//! (k8s-pb has prost types without JSON).
//!
//! The JSON is what Go's `encoding/json` prints for the object Go's protobuf decoder
//! reads from the same bytes: field tables mirror each Go struct's pointers and
//! `omitempty`, so an empty string Go always writes to the wire is dropped where Go's
//! JSON drops it, and a nil slice without `omitempty` prints as `null`. Whatever cannot
//! be carried faithfully is refused, never dropped: an unknown kind, an unknown field
//! number, a wire type Kubernetes does not use, a repeated singular field, invalid
//! UTF-8, a time outside years 0000 to 9999, a content encoding.
//!
//! Modules:
//! - [`error`]: the one error enum.
//! - `wire`: varints and length-delimited fields, bounds-checked.
//! - `schema`: the field tables of the supported kinds.
//! - `decode`: one message to JSON; `time` and `fields_v1` for the two special types.

mod decode;
pub mod error;
mod fields_v1;
mod schema;
mod time;
mod wire;

use serde_json::{Map, Value};

pub use error::Error;

use decode::{At, Decoder, small_message, string};
use schema::KINDS;
use wire::WireType;

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The four bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\x00";

/// Far deeper than any supported kind nests.
const MAX_DEPTH: usize = 32;

/// The kinds whose bodies [`decode`] reads, as (apiVersion, kind). DeleteOptions is also
/// read under any other apiVersion, as the API server reads a DELETE body.
pub fn supported() -> impl Iterator<Item = (&'static str, &'static str)> {
    KINDS
        .iter()
        .map(|&(api_version, kind, _)| (api_version, kind))
}

pub(crate) fn supported_list() -> String {
    let kinds: Vec<String> = supported()
        .map(|(api_version, kind)| format!("{api_version} {kind}"))
        .collect();
    kinds.join(", ")
}

/// A protobuf body (magic, then a `runtime.Unknown` envelope) as the JSON object the API
/// server would accept, with `apiVersion` and `kind` from the envelope.
pub fn decode(body: &[u8]) -> Result<Value, Error> {
    decode_with(
        body,
        &Decoder {
            max_depth: MAX_DEPTH,
        },
    )
}

fn decode_with(body: &[u8], decoder: &Decoder) -> Result<Value, Error> {
    let envelope = Envelope::read(body.strip_prefix(MAGIC).ok_or(Error::BadMagic)?)?;
    if !envelope.content_encoding.is_empty() {
        return Err(Error::ContentEncoding(envelope.content_encoding));
    }
    if !envelope.content_type.is_empty() && envelope.content_type != MEDIA_TYPE {
        return Err(Error::ContentType(envelope.content_type));
    }
    let (api_version, kind) = (envelope.api_version, envelope.kind);
    if kind.is_empty() {
        return Err(Error::MissingTypeMeta { what: "kind" });
    }
    let is_delete_options = kind == "DeleteOptions";
    if api_version.is_empty() && !is_delete_options {
        // The API server would default it from the request path, which the decoder has not.
        return Err(Error::MissingTypeMeta { what: "apiVersion" });
    }
    let message = KINDS
        .iter()
        .find(|&&(known_version, known_kind, _)| {
            known_kind == kind && (known_version == api_version || is_delete_options)
        })
        .map(|&(_, _, message)| message)
        .ok_or_else(|| Error::UnsupportedKind {
            api_version: api_version.clone(),
            kind: kind.clone(),
        })?;
    let fields = decoder.message(message, envelope.raw, 0)?;
    let mut object = Map::new();
    object.insert("kind".to_owned(), Value::String(kind));
    if !api_version.is_empty() {
        object.insert("apiVersion".to_owned(), Value::String(api_version));
    }
    object.extend(fields);
    Ok(Value::Object(object))
}

/// `runtime.Unknown` {1 typeMeta {1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding,
/// 4 contentType}.
#[derive(Default)]
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Envelope<'a> {
    fn read(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut envelope = Envelope::default();
        let mut type_meta = None;
        small_message(
            "Unknown",
            bytes,
            &[
                (1, "typeMeta", WireType::Len),
                (2, "raw", WireType::Len),
                (3, "contentEncoding", WireType::Len),
                (4, "contentType", WireType::Len),
            ],
            |index, reader, at| {
                let bytes = reader.bytes()?;
                match index {
                    0 => type_meta = Some(bytes),
                    1 => envelope.raw = bytes,
                    2 => envelope.content_encoding = string(bytes, at)?,
                    _ => envelope.content_type = string(bytes, at)?,
                }
                Ok(())
            },
        )?;
        small_message(
            "TypeMeta",
            type_meta.unwrap_or_default(),
            &[(1, "apiVersion", WireType::Len), (2, "kind", WireType::Len)],
            |index, reader, at: At| {
                let value = string(reader.bytes()?, at)?;
                match index {
                    0 => envelope.api_version = value,
                    _ => envelope.kind = value,
                }
                Ok(())
            },
        )?;
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Eviction whose deleteOptions carries preconditions: three messages deep.
    const EVICTION: &[u8] =
        b"k8s\x00\x0a\x15\x0a\x09policy/v1\x12\x08Eviction\x12\x06\x12\x04\x12\x02\x0a\x00";

    #[test]
    fn depth_is_bounded() {
        assert!(decode(EVICTION).is_ok());
        assert_eq!(
            decode_with(EVICTION, &Decoder { max_depth: 1 }),
            Err(Error::TooDeep { limit: 1 })
        );
        assert!(decode_with(EVICTION, &Decoder { max_depth: 2 }).is_ok());
    }

    #[test]
    fn reasons_are_listed() {
        for error in [
            Error::BadMagic,
            Error::TooDeep { limit: 1 },
            Error::ContentType("x".into()),
        ] {
            assert!(Error::REASONS.contains(&error.reason()));
        }
    }
}
