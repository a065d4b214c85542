//! Bodies marshalled by the real Go encoder (client-go's protobuf serializer), each with
//! the JSON Go prints for the object Go's decoder reads back from the same bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;
use serde_json::Value;

struct Vector {
    name: String,
    body: Vec<u8>,
    json: Value,
}

fn vectors() -> Vec<Vector> {
    let all: Value = serde_json::from_str(include_str!("vectors.json")).expect("vectors.json");
    all.as_array()
        .expect("an array")
        .iter()
        .map(|v| Vector {
            name: v["name"].as_str().expect("name").to_owned(),
            body: BASE64
                .decode(v["protobuf"].as_str().expect("protobuf"))
                .expect("base64"),
            json: v["json"].clone(),
        })
        .collect()
}

fn vector(name: &str) -> Vector {
    vectors()
        .into_iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no vector {name}"))
}

macro_rules! vector_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let v = vector(stringify!($name));
                assert_eq!(kube_protobuf::decode(&v.body), Ok(v.json));
            }
        )*

        #[test]
        fn every_vector_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for v in vectors() {
                assert!(tested.contains(&v.name.as_str()), "{} is not tested", v.name);
            }
        }
    };
}

vector_tests!(
    bootstrap_token_secret,
    secret_string_data_immutable_false,
    configmap_update_with_managed_fields,
    configmap_immutable_empty,
    namespace_terminating,
    namespace_minimal,
    namespace_odd_times,
    cluster_role_binding,
    cluster_role_with_rules_and_aggregation,
    role_without_rules,
    role_binding_empty_role_ref,
    delete_options_core,
    delete_options_rbac_orphan,
    delete_options_meta_group,
    eviction,
    eviction_without_options,
    lease,
    lease_empty_spec,
    lease_zero_and_pre_epoch_times,
);

/// Every kind `supported()` lists has a real vector.
#[test]
fn every_supported_kind_has_a_vector() {
    let seen: Vec<(String, String)> = vectors()
        .iter()
        .map(|v| {
            (
                v.json["apiVersion"].as_str().unwrap_or_default().to_owned(),
                v.json["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (api_version, kind) in kube_protobuf::supported() {
        assert!(
            seen.iter().any(|(a, k)| a == api_version && k == kind),
            "{api_version} {kind}"
        );
    }
}

/// A cut anywhere inside the object's bytes is an error; a cut anywhere at all is not a
/// panic. (A cut between envelope fields can leave a valid, shorter envelope.)
#[test]
fn truncated_vectors_are_errors() {
    for v in vectors() {
        let type_meta_len = usize::from(v.body[5]);
        let raw_key = 6 + type_meta_len;
        assert_eq!(v.body[raw_key], 0x12, "{}", v.name);
        // Go writes the empty contentEncoding and contentType after the object.
        assert!(v.body.ends_with(b"\x1a\x00\x22\x00"), "{}", v.name);
        for cut in 0..v.body.len() {
            let result = kube_protobuf::decode(&v.body[..cut]);
            if cut < 4 || (raw_key < cut && cut < v.body.len() - 4) {
                assert!(result.is_err(), "{} cut at {cut}: {result:?}", v.name);
            }
        }
    }
}

proptest! {
    /// One byte changed anywhere in a real body: an error or an object, never a panic.
    #[test]
    fn mutated_vectors_never_panic(index in 0usize..19, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let vectors = vectors();
        let mut body = vectors[index % vectors.len()].body.clone();
        let i = at.index(body.len());
        body[i] = byte;
        if let Ok(value) = kube_protobuf::decode(&body) {
            prop_assert!(value["kind"].is_string());
        }
    }

    /// Bytes spliced into a real body at any point: never a panic.
    #[test]
    fn spliced_vectors_never_panic(index in 0usize..19, at in any::<prop::sample::Index>(), extra in prop::collection::vec(any::<u8>(), 0..16)) {
        let vectors = vectors();
        let mut body = vectors[index % vectors.len()].body.clone();
        let i = at.index(body.len());
        body.splice(i..i, extra);
        let _ = kube_protobuf::decode(&body);
    }
}
