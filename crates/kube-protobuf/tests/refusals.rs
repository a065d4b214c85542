//! Bodies built field by field: what is decoded and what is refused, and why.

use kube_protobuf::{Error, decode};
use proptest::prelude::*;
use serde_json::json;

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn len(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(number) << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn num(number: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(number) << 3, &mut out);
    varint(value, &mut out);
    out
}

fn envelope(api_version: &str, kind: &str, raw: &[u8], extra: &[u8]) -> Vec<u8> {
    let type_meta = [len(1, api_version.as_bytes()), len(2, kind.as_bytes())].concat();
    [
        b"k8s\x00".to_vec(),
        len(1, &type_meta),
        len(2, raw),
        extra.to_vec(),
    ]
    .concat()
}

fn body(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    envelope(api_version, kind, raw, &[])
}

fn meta(fields: &[Vec<u8>]) -> Vec<u8> {
    len(1, &fields.concat())
}

fn reason(result: Result<serde_json::Value, Error>) -> &'static str {
    match result {
        Ok(value) => panic!("decoded {value}"),
        Err(error) => error.reason(),
    }
}

#[test]
fn a_minimal_secret() {
    let raw = [meta(&[len(1, b"s"), len(3, b"ns")]), len(3, b"Opaque")].concat();
    assert_eq!(
        decode(&body("v1", "Secret", &raw)),
        Ok(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}, "type": "Opaque"})
        )
    );
}

#[test]
fn an_empty_object_prints_go_zero_values() {
    assert_eq!(
        decode(&body("rbac.authorization.k8s.io/v1", "RoleBinding", &[])),
        Ok(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {}, "roleRef": {"apiGroup": "", "kind": "", "name": ""}
        }))
    );
}

#[test]
fn map_entries_default_and_repeat_as_in_go() {
    // An entry without key or value, and a key given twice: the last value stands.
    let raw = [
        len(2, &[]),
        len(2, &[len(1, b"k"), len(2, b"\x01")].concat()),
        len(2, &[len(1, b"k"), len(2, b"\x02")].concat()),
    ]
    .concat();
    assert_eq!(
        decode(&body("v1", "Secret", &raw)),
        Ok(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}, "data": {"": "", "k": "Ag=="}})
        )
    );
}

#[test]
fn delete_options_under_any_api_version() {
    let raw = len(4, b"Orphan");
    assert_eq!(
        decode(&body("example.com/v9", "DeleteOptions", &raw)),
        Ok(
            json!({"apiVersion": "example.com/v9", "kind": "DeleteOptions", "propagationPolicy": "Orphan"})
        )
    );
    // Without apiVersion the API server assumes meta.k8s.io/v1; JSON may omit it too.
    assert_eq!(
        decode(&body("", "DeleteOptions", &raw)),
        Ok(json!({"kind": "DeleteOptions", "propagationPolicy": "Orphan"}))
    );
}

#[test]
fn booleans_and_negative_integers() {
    let raw = [num(1, u64::MAX), num(3, 2)].concat();
    assert_eq!(
        decode(&body("v1", "DeleteOptions", &raw)),
        Ok(
            json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": -1, "orphanDependents": true})
        )
    );
}

#[test]
fn time_keeps_whole_seconds_and_an_explicit_epoch() {
    let time = [num(1, 1_741_964_966), num(2, 999_999_999)].concat();
    let raw = meta(&[len(8, &time), len(9, &num(2, 5))]);
    assert_eq!(
        decode(&body("v1", "ConfigMap", &raw)),
        Ok(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"creationTimestamp": "2025-03-14T15:09:26Z", "deletionTimestamp": "1970-01-01T00:00:00Z"}
        }))
    );
}

#[test]
fn refuses_bad_magic() {
    for bad in [&b""[..], b"k8s", b"k8s\x01", b"{\"kind\":\"Secret\"}"] {
        assert_eq!(decode(bad), Err(Error::BadMagic));
    }
}

#[test]
fn refuses_unknown_kinds() {
    let error = decode(&body("v1", "Pod", &[])).expect_err("Pod");
    assert_eq!(
        error,
        Error::UnsupportedKind {
            api_version: "v1".into(),
            kind: "Pod".into()
        }
    );
    let message = error.to_string();
    assert!(message.contains("\"Pod\" in \"v1\""), "{message}");
    assert!(message.contains("v1 Secret"), "{message}");
    assert_eq!(
        reason(decode(&body("apps/v1", "Secret", &[]))),
        "unsupported_kind"
    );
    assert_eq!(
        reason(decode(&body(
            "rbac.authorization.k8s.io/v1beta1",
            "Role",
            &[]
        ))),
        "unsupported_kind"
    );
}

#[test]
fn refuses_an_envelope_without_type_meta() {
    assert_eq!(
        decode(&body("v1", "", &[])),
        Err(Error::MissingTypeMeta { what: "kind" })
    );
    assert_eq!(
        decode(&body("", "Secret", &[])),
        Err(Error::MissingTypeMeta { what: "apiVersion" })
    );
    assert_eq!(
        decode(b"k8s\x00"),
        Err(Error::MissingTypeMeta { what: "kind" })
    );
}

#[test]
fn refuses_content_encodings_and_types() {
    assert_eq!(
        decode(&envelope("v1", "Secret", &[], &len(3, b"gzip"))),
        Err(Error::ContentEncoding("gzip".into()))
    );
    assert_eq!(
        decode(&envelope("v1", "Secret", &[], &len(4, b"application/json"))),
        Err(Error::ContentType("application/json".into()))
    );
    let accepted = [len(3, b""), len(4, kube_protobuf::MEDIA_TYPE.as_bytes())].concat();
    assert!(decode(&envelope("v1", "Secret", &[], &accepted)).is_ok());
}

#[test]
fn refuses_unknown_fields() {
    // ObjectMeta's 16 (clusterName) is gone upstream.
    let error = decode(&body("v1", "Secret", &meta(&[len(16, b"x")]))).expect_err("16");
    assert_eq!(
        error,
        Error::UnknownField {
            message: "ObjectMeta",
            number: 16
        }
    );
    assert_eq!(
        error.to_string(),
        "field 16 of ObjectMeta is not known to the decoder"
    );
    // Unknown whatever the wire type: fixed64, fixed32, groups.
    for key in [0x31u8, 0x35, 0x33] {
        let raw = [key, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode(&body("v1", "ConfigMap", &raw)),
            Err(Error::UnknownField {
                message: "ConfigMap",
                number: 6
            })
        );
    }
    // In the envelope, in a Timestamp, in a map entry, in FieldsV1.
    assert_eq!(
        reason(decode(&envelope("v1", "Secret", &[], &len(5, b"")))),
        "unknown_field"
    );
    assert_eq!(
        decode(&body("v1", "Secret", &meta(&[len(8, &num(3, 1))]))),
        Err(Error::UnknownField {
            message: "Timestamp",
            number: 3
        })
    );
    assert_eq!(
        decode(&body("v1", "Secret", &len(2, &len(3, b"")))),
        Err(Error::UnknownField {
            message: "map entry",
            number: 3
        })
    );
    let entry = len(7, &len(2, b"{}"));
    assert_eq!(
        decode(&body("v1", "Secret", &meta(&[len(17, &entry)]))),
        Err(Error::UnknownField {
            message: "FieldsV1",
            number: 2
        })
    );
}

#[test]
fn refuses_wrong_wire_types() {
    assert_eq!(
        decode(&body("v1", "Secret", &num(1, 0))),
        Err(Error::WrongWireType {
            message: "Secret",
            field: "metadata",
            number: 1,
            found: 0,
            expected: "length-delimited"
        })
    );
    assert_eq!(
        reason(decode(&body("v1", "Secret", &len(5, b"\x01")))),
        "wrong_wire_type"
    );
    // A fixed32 where a bool belongs.
    assert_eq!(
        reason(decode(&body("v1", "Secret", b"\x2d\x01\x00\x00\x00"))),
        "wrong_wire_type"
    );
    assert_eq!(
        reason(decode(&body("v1", "Secret", &meta(&[num(8, 1)])))),
        "wrong_wire_type"
    );
}

#[test]
fn refuses_repeated_singular_fields() {
    assert_eq!(
        decode(&body("v1", "Secret", &meta(&[len(1, b"a"), len(1, b"b")]))),
        Err(Error::DuplicateField {
            message: "ObjectMeta",
            field: "name",
            number: 1
        })
    );
    assert_eq!(
        reason(decode(&body(
            "v1",
            "Secret",
            &[meta(&[]), meta(&[])].concat()
        ))),
        "duplicate_field"
    );
    let twice = [num(1, 1), num(1, 2)].concat();
    assert_eq!(
        reason(decode(&body("v1", "Secret", &meta(&[len(8, &twice)])))),
        "duplicate_field"
    );
}

#[test]
fn refuses_invalid_utf8() {
    assert_eq!(
        decode(&body("v1", "Secret", &len(3, b"\xff"))),
        Err(Error::InvalidUtf8 {
            message: "Secret",
            field: "type",
            number: 3
        })
    );
    assert_eq!(
        reason(decode(&body("v1", "Secret", &len(4, &len(1, b"\xc3"))))),
        "invalid_utf8"
    );
    let type_meta = [len(1, b"v1\xff"), len(2, b"Secret")].concat();
    let bad_api_version = [&b"k8s\x00"[..], &len(1, &type_meta)].concat();
    assert_eq!(reason(decode(&bad_api_version)), "invalid_utf8");
}

#[test]
fn refuses_values_out_of_range() {
    let spec = |field: Vec<u8>| len(2, &field);
    assert_eq!(
        decode(&body(
            "coordination.k8s.io/v1",
            "Lease",
            &spec(num(2, 1 << 31))
        )),
        Err(Error::OutOfRange {
            message: "LeaseSpec",
            field: "leaseDurationSeconds",
            number: 2,
            why: "not a 32-bit integer"
        })
    );
    assert!(
        decode(&body(
            "coordination.k8s.io/v1",
            "Lease",
            &spec(num(2, (1 << 31) - 1))
        ))
        .is_ok()
    );
    let year_10000 = num(1, 253_402_300_800);
    assert_eq!(
        reason(decode(&body("v1", "Secret", &meta(&[len(8, &year_10000)])))),
        "out_of_range"
    );
    assert_eq!(
        reason(decode(&body(
            "coordination.k8s.io/v1",
            "Lease",
            &spec(len(3, &year_10000))
        ))),
        "out_of_range"
    );
}

#[test]
fn refuses_fields_v1_it_cannot_carry() {
    for raw in [&b""[..], b"\xa1\x61a\xa0", br#"{"a":{},"a":{}}"#, b"{"] {
        let entry = len(7, &len(1, raw));
        assert_eq!(
            reason(decode(&body("v1", "ConfigMap", &meta(&[len(17, &entry)])))),
            "bad_fields_v1",
            "{raw:?}"
        );
    }
    let entry = len(7, &[]);
    assert_eq!(
        decode(&body("v1", "ConfigMap", &meta(&[len(17, &entry)]))),
        Ok(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"managedFields": [{"fieldsV1": null}]}})
        )
    );
}

#[test]
fn refuses_broken_wire_data() {
    assert_eq!(
        decode(&body("v1", "Secret", b"\x0a\x05\x0a")),
        Err(Error::Truncated { message: "Secret" })
    );
    assert_eq!(
        reason(decode(&body(
            "v1",
            "Secret",
            b"\x28\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f"
        ))),
        "bad_varint"
    );
    assert_eq!(
        reason(decode(&body("v1", "Secret", b"\x00\x00"))),
        "bad_key"
    );
    assert_eq!(reason(decode(b"k8s\x00\x0a\x80")), "truncated");
}

#[test]
fn every_reason_is_listed() {
    let errors = [
        Error::BadMagic,
        Error::Truncated { message: "m" },
        Error::BadVarint { message: "m" },
        Error::BadKey { message: "m" },
        Error::UnknownField {
            message: "m",
            number: 1,
        },
        Error::WrongWireType {
            message: "m",
            field: "f",
            number: 1,
            found: 1,
            expected: "varint",
        },
        Error::DuplicateField {
            message: "m",
            field: "f",
            number: 1,
        },
        Error::InvalidUtf8 {
            message: "m",
            field: "f",
            number: 1,
        },
        Error::OutOfRange {
            message: "m",
            field: "f",
            number: 1,
            why: "w",
        },
        Error::BadFieldsV1 { why: "w".into() },
        Error::TooDeep { limit: 1 },
        Error::MissingTypeMeta { what: "kind" },
        Error::UnsupportedKind {
            api_version: "v1".into(),
            kind: "Pod".into(),
        },
        Error::ContentEncoding("gzip".into()),
        Error::ContentType("x".into()),
    ];
    let reasons: Vec<&str> = errors.iter().map(Error::reason).collect();
    assert_eq!(reasons, Error::REASONS);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    /// Arbitrary object bytes inside a well-formed envelope, for each kind.
    #[test]
    fn arbitrary_objects_never_panic(kind in 0usize..10, raw in prop::collection::vec(any::<u8>(), 0..256)) {
        let (api_version, kind) = kube_protobuf::supported().nth(kind).unwrap_or(("v1", "Secret"));
        if let Ok(value) = decode(&body(api_version, kind, &raw)) {
            prop_assert_eq!(value["kind"].as_str(), Some(kind));
        }
    }

    /// Arbitrary sequences of well-formed fields, which reach deeper than random bytes.
    #[test]
    fn arbitrary_fields_never_panic(fields in prop::collection::vec((1u32..20, any::<bool>(), prop::collection::vec(any::<u8>(), 0..12)), 0..12)) {
        let mut raw = Vec::new();
        for (number, is_len, payload) in fields {
            if is_len {
                raw.extend(len(number, &payload));
            } else {
                raw.extend(num(number, payload.iter().fold(0u64, |v, b| v << 8 | u64::from(*b))));
            }
        }
        for (api_version, kind) in kube_protobuf::supported() {
            let _ = decode(&body(api_version, kind, &raw));
            let _ = decode(&body(api_version, kind, &len(1, &raw)));
            let _ = decode(&body(api_version, kind, &len(2, &raw)));
        }
    }
}
