//! The protobuf wire format, as far as Kubernetes uses it: varints and length-delimited
//! fields. Every read is bounds-checked, so arbitrary input yields an error, not a panic.

use crate::error::Error;

/// A protobuf wire type; only the two Kubernetes messages use are ever accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireType {
    Varint,
    Len,
}

impl WireType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            WireType::Varint => "varint",
            WireType::Len => "length-delimited",
        }
    }
}

/// A field's key as read from the wire: the wire type is kept raw until the field is
/// known, so an unknown field is reported as unknown whatever its wire type.
pub(crate) struct Key {
    pub(crate) number: u64,
    pub(crate) wire_type: u8,
}

impl Key {
    pub(crate) fn wire_type(&self) -> Option<WireType> {
        match self.wire_type {
            0 => Some(WireType::Varint),
            2 => Some(WireType::Len),
            _ => None,
        }
    }
}

/// A cursor over one message's bytes; `message` names it in errors.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], message: &'static str) -> Self {
        Self { bytes, message }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A varint of at most ten bytes whose value fits 64 bits, as Go's decoder requires.
    pub(crate) fn varint(&mut self) -> Result<u64, Error> {
        let mut value: u64 = 0;
        for (i, &byte) in self.bytes.iter().enumerate().take(10) {
            if i == 9 && byte > 1 {
                return Err(Error::BadVarint {
                    message: self.message,
                });
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        if self.bytes.len() >= 10 {
            Err(Error::BadVarint {
                message: self.message,
            })
        } else {
            Err(Error::Truncated {
                message: self.message,
            })
        }
    }

    pub(crate) fn key(&mut self) -> Result<Key, Error> {
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(Error::BadKey {
                message: self.message,
            });
        }
        Ok(Key {
            number,
            wire_type: (key & 7) as u8,
        })
    }

    /// The payload of a length-delimited field.
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let len = self.varint()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.bytes.len())
            .ok_or(Error::Truncated {
                message: self.message,
            })?;
        let (payload, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut r = Reader::new(&[0x96, 0x01, 0x00], "T");
        assert_eq!(r.varint(), Ok(150));
        assert_eq!(r.varint(), Ok(0));
        assert!(r.is_empty());
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max, "T").varint(), Ok(u64::MAX));
    }

    #[test]
    fn bad_varints() {
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(
            Reader::new(&over, "T").varint(),
            Err(Error::BadVarint { message: "T" })
        );
        let long = [0x80; 11];
        assert_eq!(
            Reader::new(&long, "T").varint(),
            Err(Error::BadVarint { message: "T" })
        );
        assert_eq!(
            Reader::new(&[0x80, 0x80], "T").varint(),
            Err(Error::Truncated { message: "T" })
        );
        assert_eq!(
            Reader::new(&[0x0a, 0x05, 0x01], "T").key().and(Ok(())),
            Ok(())
        );
        let mut r = Reader::new(&[0x05, 0x01], "T");
        assert_eq!(r.bytes(), Err(Error::Truncated { message: "T" }));
        assert!(matches!(
            Reader::new(&[0x02], "T").key(),
            Err(Error::BadKey { message: "T" })
        ));
    }
}
