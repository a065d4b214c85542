//! `metav1.FieldsV1` carries its JSON as raw bytes, which the API server keeps verbatim.
//! Parsed into a `Value` they would silently lose duplicate keys and wide numbers, so
//! both are refused; a managed fields trie holds neither.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::Error;

/// The JSON value Go's `FieldsV1.MarshalJSON` prints for these raw bytes.
pub(crate) fn to_json(raw: &[u8]) -> Result<Value, Error> {
    let refuse = |why: String| Error::BadFieldsV1 { why };
    match raw.first() {
        None => return Err(refuse("it is empty".into())),
        // Go reads such bytes as CBOR, which this decoder does not.
        Some(0xf6 | 0xa0..=0xbf | 0xc6..=0xdb) => return Err(refuse("it is CBOR".into())),
        Some(_) => {}
    }
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let value = Strict
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|error| refuse(error.to_string()))?;
    Ok(value)
}

/// A `Value` deserializer that refuses what `Value` cannot hold exactly.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("JSON without duplicate keys or non-integer numbers")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        Err(E::custom(
            "a number that is not a 64-bit integer would not be kept exactly",
        ))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Strict)?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn carries_tries() {
        let raw = br#"{"f:data":{".":{},"f:a":{}},"k:{\"type\":\"Ready\"}":{}}"#;
        assert_eq!(
            to_json(raw),
            Ok(json!({"f:data": {".": {}, "f:a": {}}, "k:{\"type\":\"Ready\"}": {}}))
        );
        assert_eq!(
            to_json(b" [1, -2, null, true] "),
            Ok(json!([1, -2, null, true]))
        );
        assert_eq!(to_json(b"null"), Ok(Value::Null));
    }

    #[test]
    fn refuses_what_it_cannot_keep() {
        for raw in [
            &b""[..],
            b"\xa1\x61a\xa0",
            b"\xf6",
            br#"{"a":{},"a":{}}"#,
            b"{\"a\":1.5}",
            b"18446744073709551616",
            b"{} {}",
            b"{",
            b"\x00",
        ] {
            assert_eq!(
                to_json(raw).map_err(|e| e.reason()),
                Err("bad_fields_v1"),
                "{raw:?}"
            );
        }
    }
}
