//! SPDY/3 frames as values, and the uncompressed name/value header block.
//!
//! Nothing here touches zlib or I/O, so frames can be built, compared and
//! generated freely in tests; [`crate::codec`] puts them on the wire.

use bytes::Bytes;
use thiserror::Error;

/// The protocol version carried in every control frame.
pub const VERSION: u16 = 3;

/// The largest value of the 24-bit length field: no frame body can exceed it.
pub const MAX_FRAME_BODY: u32 = (1 << 24) - 1;

/// The largest stream id: ids are 31 bits, the top bit is reserved.
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// Control frame type codes.
pub mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// Flag bits of the frame header.
pub mod flags {
    /// Last frame from the sender on this stream (DATA, SYN_STREAM, SYN_REPLY, HEADERS).
    pub const FIN: u8 = 0x01;
    /// SYN_STREAM: the recipient may not send on the stream.
    pub const UNIDIRECTIONAL: u8 = 0x02;
    /// SETTINGS: forget previously persisted settings.
    pub const CLEAR_SETTINGS: u8 = 0x01;
}

/// Why a stream was reset (the RST_STREAM status code).
///
/// A newtype rather than an enum: a peer may send codes this crate does not
/// name, and they must survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RstStatus(pub u32);

impl RstStatus {
    pub const PROTOCOL_ERROR: Self = Self(1);
    pub const INVALID_STREAM: Self = Self(2);
    pub const REFUSED_STREAM: Self = Self(3);
    pub const UNSUPPORTED_VERSION: Self = Self(4);
    pub const CANCEL: Self = Self(5);
    pub const INTERNAL_ERROR: Self = Self(6);
    pub const FLOW_CONTROL_ERROR: Self = Self(7);
    pub const STREAM_IN_USE: Self = Self(8);
    pub const STREAM_ALREADY_CLOSED: Self = Self(9);
    pub const INVALID_CREDENTIALS: Self = Self(10);
    pub const FRAME_TOO_LARGE: Self = Self(11);
}

/// Why a session is being closed (the GOAWAY status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoAwayStatus(pub u32);

impl GoAwayStatus {
    pub const OK: Self = Self(0);
    pub const PROTOCOL_ERROR: Self = Self(1);
    pub const INTERNAL_ERROR: Self = Self(2);
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Per-entry flags (persist value, persisted).
    pub flags: u8,
    /// A 24-bit id.
    pub id: u32,
    pub value: u32,
}

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 3 bits; 0 is the highest priority.
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: RstStatus,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: GoAwayStatus,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this crate does not know (CREDENTIAL, or a
    /// future one). The draft says to ignore those; keeping the body lets a
    /// proxy pass it on unchanged.
    Unknown {
        version: u16,
        kind: u16,
        flags: u8,
        body: Bytes,
    },
}

impl Frame {
    /// The stream a frame belongs to, if any.
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            Frame::SynStream { stream_id, .. }
            | Frame::SynReply { stream_id, .. }
            | Frame::RstStream { stream_id, .. }
            | Frame::Headers { stream_id, .. }
            | Frame::Data { stream_id, .. } => Some(*stream_id),
            Frame::WindowUpdate { stream_id, .. } if *stream_id != 0 => Some(*stream_id),
            _ => None,
        }
    }

    /// Whether the frame carries FLAG_FIN for its stream.
    pub fn is_fin(&self) -> bool {
        match self {
            Frame::SynStream { flags: f, .. }
            | Frame::SynReply { flags: f, .. }
            | Frame::Headers { flags: f, .. }
            | Frame::Data { flags: f, .. } => f & flags::FIN != 0,
            _ => false,
        }
    }
}

/// What is wrong with a name/value header block.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderBlockError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("header block has {0} bytes after its last pair")]
    TrailingBytes(usize),
    #[error("header block declares {declared} pairs, more than the limit of {max}")]
    TooManyHeaders { declared: u32, max: usize },
    #[error("empty header name")]
    EmptyName,
    #[error("header name {0:?} is not lowercase")]
    UppercaseName(String),
    #[error("header name {0:?} appears twice")]
    DuplicateName(String),
    #[error("header name or value is not UTF-8")]
    NotUtf8,
    #[error("header field of {0} bytes does not fit a 32-bit length")]
    FieldTooLong(usize),
}

/// The name/value pairs of SYN_STREAM, SYN_REPLY and HEADERS, in order.
///
/// Names are lowercase and unique; several values for one name are stored as
/// one value joined by NUL, which is how SPDY/3 carries them on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value; a name already present gets it as one more NUL-separated value.
    pub fn append(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        match self.pairs.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push('\0');
                existing.push_str(value);
            }
            None => self.pairs.push((name, value.to_owned())),
        }
    }

    /// Builder form of [`Headers::append`].
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.append(name, value);
        self
    }

    /// The raw value of a name, with several values still NUL-joined.
    pub fn get_raw(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a name, as Go's `http.Header.Get` reads it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_raw(name).and_then(|v| v.split('\0').next())
    }

    /// Every value of a name.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_raw(name).into_iter().flat_map(|v| v.split('\0'))
    }

    /// Name and raw value pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Serializes to the uncompressed SPDY/3 block: a 32-bit pair count, then
    /// each name and value with a 32-bit length.
    pub fn encode_block(&self, out: &mut Vec<u8>) -> Result<(), HeaderBlockError> {
        let count = u32::try_from(self.pairs.len())
            .map_err(|_| HeaderBlockError::FieldTooLong(self.pairs.len()))?;
        out.extend_from_slice(&count.to_be_bytes());
        for (name, value) in &self.pairs {
            if name.is_empty() {
                return Err(HeaderBlockError::EmptyName);
            }
            for field in [name.as_bytes(), value.as_bytes()] {
                let len = u32::try_from(field.len())
                    .map_err(|_| HeaderBlockError::FieldTooLong(field.len()))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(field);
            }
        }
        Ok(())
    }

    /// Parses an uncompressed block, which must be consumed exactly.
    ///
    /// `max_headers` is checked against the declared count before anything is
    /// allocated, so a forged count cannot reserve memory.
    pub fn decode_block(mut block: &[u8], max_headers: usize) -> Result<Self, HeaderBlockError> {
        let declared = take_u32(&mut block)?;
        if usize::try_from(declared).map_or(true, |n| n > max_headers) {
            return Err(HeaderBlockError::TooManyHeaders {
                declared,
                max: max_headers,
            });
        }
        let mut pairs: Vec<(String, String)> = Vec::with_capacity(declared as usize);
        for _ in 0..declared {
            let name = take_field(&mut block)?;
            let value = take_field(&mut block)?;
            if name.is_empty() {
                return Err(HeaderBlockError::EmptyName);
            }
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(HeaderBlockError::UppercaseName(name));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(HeaderBlockError::DuplicateName(name));
            }
            pairs.push((name, value));
        }
        if !block.is_empty() {
            return Err(HeaderBlockError::TrailingBytes(block.len()));
        }
        Ok(Self { pairs })
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (name, value) in iter {
            headers.append(name, value);
        }
        headers
    }
}

fn take_u32(block: &mut &[u8]) -> Result<u32, HeaderBlockError> {
    let (head, rest) = block
        .split_first_chunk::<4>()
        .ok_or(HeaderBlockError::Truncated)?;
    *block = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_field(block: &mut &[u8]) -> Result<String, HeaderBlockError> {
    let len = take_u32(block)? as usize;
    if block.len() < len {
        return Err(HeaderBlockError::Truncated);
    }
    let (field, rest) = block.split_at(len);
    *block = rest;
    String::from_utf8(field.to_vec()).map_err(|_| HeaderBlockError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_are_joined_by_nul() {
        let h = Headers::new()
            .with("Port", "8080")
            .with("x-multi", "a")
            .with("X-Multi", "b");
        assert_eq!(h.len(), 2);
        assert_eq!(h.get("PORT"), Some("8080"));
        assert_eq!(h.get_raw("x-multi"), Some("a\0b"));
        assert_eq!(h.get("x-multi"), Some("a"));
        assert_eq!(h.get_all("x-multi").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.get_all("missing").count(), 0);
    }

    #[test]
    fn block_round_trips_and_keeps_order() {
        let h: Headers = [("streamtype", "data"), ("port", "80"), ("requestid", "0")]
            .into_iter()
            .collect();
        let mut block = Vec::new();
        h.encode_block(&mut block).unwrap();
        assert_eq!(&block[..4], &[0, 0, 0, 3]);
        assert_eq!(Headers::decode_block(&block, 10).unwrap(), h);
        let names: Vec<_> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["streamtype", "port", "requestid"]);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let pair = |n: &[u8], v: &[u8]| {
            let mut b = Vec::new();
            b.extend_from_slice(&(n.len() as u32).to_be_bytes());
            b.extend_from_slice(n);
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v);
            b
        };
        let block = |count: u32, pairs: &[Vec<u8>]| {
            let mut b = count.to_be_bytes().to_vec();
            for p in pairs {
                b.extend_from_slice(p);
            }
            b
        };
        let cases: Vec<(Vec<u8>, HeaderBlockError)> = vec![
            (vec![0, 0], HeaderBlockError::Truncated),
            (block(1, &[]), HeaderBlockError::Truncated),
            (
                block(u32::MAX, &[]),
                HeaderBlockError::TooManyHeaders {
                    declared: u32::MAX,
                    max: 8,
                },
            ),
            (
                block(1, &[vec![0, 0, 0, 9, b'a']]),
                HeaderBlockError::Truncated,
            ),
            (block(1, &[pair(b"", b"x")]), HeaderBlockError::EmptyName),
            (
                block(1, &[pair(b"Port", b"1")]),
                HeaderBlockError::UppercaseName("Port".into()),
            ),
            (
                block(2, &[pair(b"a", b"1"), pair(b"a", b"2")]),
                HeaderBlockError::DuplicateName("a".into()),
            ),
            (block(1, &[pair(b"a", &[0xff])]), HeaderBlockError::NotUtf8),
            (
                block(0, &[pair(b"a", b"1")]),
                HeaderBlockError::TrailingBytes(10),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(Headers::decode_block(&bytes, 8), Err(want));
        }
    }

    #[test]
    fn empty_names_cannot_be_encoded() {
        let h = Headers::new().with("", "x");
        assert_eq!(
            h.encode_block(&mut Vec::new()),
            Err(HeaderBlockError::EmptyName)
        );
    }
}
