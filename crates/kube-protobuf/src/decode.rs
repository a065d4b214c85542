//! One message from the wire to the JSON Go would print for it after unmarshalling: the
//! field tables say which fields exist and when Go's JSON prints them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::schema::{Field, Json, MapValue, Message, Scalar, Type};
use crate::wire::{Reader, WireType};
use crate::{fields_v1, time};

/// What has been read of one field so far.
enum Slot {
    One(Value),
    Many(Vec<Value>),
    Map(Map<String, Value>),
}

/// Decodes messages, refusing nesting deeper than `max_depth` (the known messages nest
/// a few levels; the limit guards the recursion should a table ever become cyclic).
pub(crate) struct Decoder {
    pub(crate) max_depth: usize,
}

impl Scalar {
    fn wire_type(self) -> WireType {
        match self {
            Scalar::Bool | Scalar::Int32 | Scalar::Int64 => WireType::Varint,
            _ => WireType::Len,
        }
    }
}

impl Type {
    fn wire_type(self) -> WireType {
        match self {
            Type::One(scalar) | Type::Many(scalar) => scalar.wire_type(),
            Type::Map(_) => WireType::Len,
        }
    }
}

/// Go's `omitempty` test for the scalars it applies to here.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(entries) => entries.is_empty(),
    }
}

/// Where a value is read from, for errors.
#[derive(Clone, Copy)]
pub(crate) struct At {
    message: &'static str,
    field: &'static str,
    number: u32,
}

impl At {
    fn of(message: &'static Message, field: &'static Field) -> Self {
        At {
            message: message.name,
            field: field.name,
            number: field.number,
        }
    }

    fn out_of_range(self, why: &'static str) -> Error {
        Error::OutOfRange {
            message: self.message,
            field: self.field,
            number: self.number,
            why,
        }
    }
}

pub(crate) fn string(bytes: &[u8], at: At) -> Result<String, Error> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| Error::InvalidUtf8 {
            message: at.message,
            field: at.field,
            number: at.number,
        })
}

fn int32(value: u64, at: At) -> Result<i32, Error> {
    // Go writes a negative int32 sign-extended to 64 bits.
    i32::try_from(value as i64).map_err(|_| at.out_of_range("not a 32-bit integer"))
}

/// The fields of a small fixed message (`Timestamp`, `FieldsV1`, a map entry): each
/// key read, checked against `fields` (number, name, wire type) and handed to `read`.
pub(crate) fn small_message<'a>(
    name: &'static str,
    bytes: &'a [u8],
    fields: &[(u32, &'static str, WireType)],
    mut read: impl FnMut(usize, &mut Reader<'a>, At) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut seen = vec![false; fields.len()];
    let mut reader = Reader::new(bytes, name);
    while !reader.is_empty() {
        let key = reader.key()?;
        let (index, &(number, field, wire)) = fields
            .iter()
            .enumerate()
            .find(|(_, (number, ..))| u64::from(*number) == key.number)
            .ok_or(Error::UnknownField {
                message: name,
                number: key.number,
            })?;
        let at = At {
            message: name,
            field,
            number,
        };
        if key.wire_type() != Some(wire) {
            return Err(wrong_wire_type(at, key.wire_type, wire));
        }
        if std::mem::replace(&mut seen[index], true) {
            return Err(Error::DuplicateField {
                message: name,
                field,
                number,
            });
        }
        read(index, &mut reader, at)?;
    }
    Ok(())
}

fn wrong_wire_type(at: At, found: u8, expected: WireType) -> Error {
    Error::WrongWireType {
        message: at.message,
        field: at.field,
        number: at.number,
        found,
        expected: expected.name(),
    }
}

/// `Timestamp` {1 seconds int64, 2 nanos int32}; `None` for the empty message, which Go
/// reads as the zero time.
fn timestamp(bytes: &[u8]) -> Result<Option<(i64, i32)>, Error> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let (mut seconds, mut nanos) = (0, 0);
    small_message(
        "Timestamp",
        bytes,
        &[
            (1, "seconds", WireType::Varint),
            (2, "nanos", WireType::Varint),
        ],
        |index, reader, at| {
            let value = reader.varint()?;
            match index {
                0 => seconds = value as i64,
                _ => nanos = int32(value, at)?,
            }
            Ok(())
        },
    )?;
    Ok(Some((seconds, nanos)))
}

fn fields_v1(bytes: &[u8]) -> Result<Value, Error> {
    let mut raw = None;
    small_message(
        "FieldsV1",
        bytes,
        &[(1, "Raw", WireType::Len)],
        |_, reader, _| {
            raw = Some(reader.bytes()?);
            Ok(())
        },
    )?;
    // A FieldsV1 without Raw prints as null, as Go's MarshalJSON does.
    raw.map_or(Ok(Value::Null), fields_v1::to_json)
}

/// A map entry {1 key, 2 value}; either may be absent and then is empty, as in Go.
fn entry(bytes: &[u8], value_type: MapValue) -> Result<(String, Value), Error> {
    let (mut key, mut value) = (String::new(), Value::String(String::new()));
    small_message(
        "map entry",
        bytes,
        &[(1, "key", WireType::Len), (2, "value", WireType::Len)],
        |index, reader, at| {
            let bytes = reader.bytes()?;
            match (index, value_type) {
                (0, _) => key = string(bytes, at)?,
                (_, MapValue::String) => value = Value::String(string(bytes, at)?),
                (_, MapValue::Bytes) => value = Value::String(BASE64.encode(bytes)),
            }
            Ok(())
        },
    )?;
    Ok((key, value))
}

impl Decoder {
    /// The JSON object Go prints for `message` unmarshalled from `bytes`.
    pub(crate) fn message(
        &self,
        message: &'static Message,
        bytes: &[u8],
        depth: usize,
    ) -> Result<Map<String, Value>, Error> {
        if depth > self.max_depth {
            return Err(Error::TooDeep {
                limit: self.max_depth,
            });
        }
        let mut slots: Vec<Option<Slot>> = message.fields.iter().map(|_| None).collect();
        let mut reader = Reader::new(bytes, message.name);
        while !reader.is_empty() {
            let key = reader.key()?;
            let (index, field) = message.field(key.number).ok_or(Error::UnknownField {
                message: message.name,
                number: key.number,
            })?;
            let at = At::of(message, field);
            let expected = field.ty.wire_type();
            if key.wire_type() != Some(expected) {
                return Err(wrong_wire_type(at, key.wire_type, expected));
            }
            let slot = &mut slots[index];
            match field.ty {
                Type::One(scalar) => {
                    if slot.is_some() {
                        // Go would keep the last value or merge messages; no encoder
                        // repeats a singular field, so refusing loses nothing meant.
                        return Err(Error::DuplicateField {
                            message: message.name,
                            field: field.name,
                            number: field.number,
                        });
                    }
                    *slot = Some(Slot::One(self.scalar(scalar, &mut reader, at, depth)?));
                }
                Type::Many(scalar) => {
                    let value = self.scalar(scalar, &mut reader, at, depth)?;
                    if let Some(Slot::Many(items)) = slot {
                        items.push(value);
                    } else {
                        *slot = Some(Slot::Many(vec![value]));
                    }
                }
                Type::Map(value_type) => {
                    // A repeated key keeps the last value, as in Go.
                    let (key, value) = entry(reader.bytes()?, value_type)?;
                    if let Some(Slot::Map(entries)) = slot {
                        entries.insert(key, value);
                    } else {
                        *slot = Some(Slot::Map(Map::from_iter([(key, value)])));
                    }
                }
            }
        }

        let mut object = Map::new();
        for (field, slot) in message.fields.iter().zip(slots) {
            let value = match slot {
                Some(Slot::One(value)) => match field.json {
                    Json::OmitEmpty if is_empty(&value) => continue,
                    Json::OmitZero if value.is_null() => continue,
                    _ => value,
                },
                Some(Slot::Many(items)) => Value::Array(items),
                Some(Slot::Map(entries)) => Value::Object(entries),
                None if field.json == Json::Always => self.zero(field.ty, depth)?,
                None => continue,
            };
            object.insert(field.name.to_owned(), value);
        }
        Ok(object)
    }

    fn scalar(
        &self,
        scalar: Scalar,
        reader: &mut Reader<'_>,
        at: At,
        depth: usize,
    ) -> Result<Value, Error> {
        Ok(match scalar {
            Scalar::String => Value::String(string(reader.bytes()?, at)?),
            Scalar::Bool => Value::Bool(reader.varint()? != 0),
            Scalar::Int32 => Value::from(int32(reader.varint()?, at)?),
            Scalar::Int64 => Value::from(reader.varint()? as i64),
            Scalar::Time => match timestamp(reader.bytes()?)? {
                None => Value::Null,
                // Go keeps whole seconds of a Time; the nanoseconds are dropped.
                Some((seconds, _)) => time::time(seconds)
                    .map_err(|why| at.out_of_range(why))?
                    .map_or(Value::Null, Value::String),
            },
            Scalar::MicroTime => match timestamp(reader.bytes()?)? {
                None => Value::Null,
                Some((seconds, nanos)) => time::micro_time(seconds, nanos)
                    .map_err(|why| at.out_of_range(why))?
                    .map_or(Value::Null, Value::String),
            },
            Scalar::FieldsV1 => fields_v1(reader.bytes()?)?,
            Scalar::Message(message) => {
                Value::Object(self.message(message, reader.bytes()?, depth + 1)?)
            }
        })
    }

    /// What Go prints for a field the wire does not carry: its zero value.
    fn zero(&self, ty: Type, depth: usize) -> Result<Value, Error> {
        Ok(match ty {
            Type::One(Scalar::String) => Value::String(String::new()),
            Type::One(Scalar::Bool) => Value::Bool(false),
            Type::One(Scalar::Int32 | Scalar::Int64) => Value::from(0),
            Type::One(Scalar::Message(message)) => {
                Value::Object(self.message(message, &[], depth + 1)?)
            }
            // Zero times, nil FieldsV1, nil slices and nil maps all print as null.
            Type::One(Scalar::Time | Scalar::MicroTime | Scalar::FieldsV1)
            | Type::Many(_)
            | Type::Map(_) => Value::Null,
        })
    }
}
