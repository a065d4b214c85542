//! Frames to bytes and back, with SPDY/3 header compression.
//!
//! Header blocks of one direction form a single zlib stream primed with
//! [`DICTIONARY`], flushed (not finished) after each frame. So the codec is
//! stateful: one instance per connection, frames in wire order. The decoder
//! and the encoder keep separate zlib streams, each created on first use so
//! a codec used in one direction only does not pay for the other.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use crate::dictionary::{DICTIONARY, DICTIONARY_ID};
use crate::frame::{
    Frame, GoAwayStatus, HeaderBlockError, Headers, MAX_FRAME_BODY, MAX_STREAM_ID, RstStatus,
    Setting, VERSION, kind,
};

/// Bytes of the frame header common to control and data frames.
const HEADER_LEN: usize = 8;

/// What the decoder accepts before it has read or inflated a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecLimits {
    /// Largest frame body accepted; a longer one is refused from its header
    /// alone, before any of it is buffered.
    pub max_frame_len: u32,
    /// Largest header block once inflated: a few bytes of zlib can claim megabytes.
    pub max_header_block: usize,
    /// Most name/value pairs in one header block.
    pub max_headers: usize,
}

impl Default for CodecLimits {
    fn default() -> Self {
        Self {
            // Go clients send one DATA frame per Write; io.Copy writes 32 KiB.
            max_frame_len: 1 << 20,
            max_header_block: 64 << 10,
            max_headers: 128,
        }
    }
}

/// Why bytes could not be read as frames, or a frame not written.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u32, max: u32 },
    #[error("control frame of SPDY version {0}; only version 3 is spoken")]
    UnsupportedVersion(u16),
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        frame: &'static str,
        reason: &'static str,
    },
    #[error("header block inflates past {max} bytes")]
    HeaderBlockTooLarge { max: usize },
    #[error("bad header block: {0}")]
    HeaderBlock(#[from] HeaderBlockError),
    #[error("header compression: {0}")]
    Compression(String),
    #[error("frame cannot be encoded: {0}")]
    Unencodable(&'static str),
}

fn malformed(frame: &'static str, reason: &'static str) -> CodecError {
    CodecError::Malformed { frame, reason }
}

/// A SPDY/3 framer for [`tokio_util::codec::Framed`] and friends.
pub struct SpdyCodec {
    limits: CodecLimits,
    inflate: Option<Decompress>,
    deflate: Option<Compress>,
    /// Reused buffer for uncompressed header blocks being encoded.
    scratch: Vec<u8>,
}

impl SpdyCodec {
    pub fn new(limits: CodecLimits) -> Self {
        Self {
            limits,
            inflate: None,
            deflate: None,
            scratch: Vec::new(),
        }
    }

    pub fn limits(&self) -> &CodecLimits {
        &self.limits
    }

    fn decode_headers(&mut self, compressed: &[u8]) -> Result<Headers, CodecError> {
        let block = self.inflate(compressed)?;
        Ok(Headers::decode_block(&block, self.limits.max_headers)?)
    }

    /// Inflates one frame's worth of the header stream, never holding more
    /// than `max_header_block + 1` bytes of output.
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, CodecError> {
        let max = self.limits.max_header_block;
        let z = self.inflate.get_or_insert_with(|| Decompress::new(true));
        let mut out: Vec<u8> = Vec::with_capacity(max.saturating_add(1).min(1024));
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                let room = out.len().max(1024).min(max.saturating_add(1) - out.len());
                out.reserve_exact(room);
            }
            let (in_before, out_before) = (z.total_in(), z.total_out());
            let result = z.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            let consumed_now = progress(in_before, z.total_in());
            consumed += consumed_now;
            let produced = progress(out_before, z.total_out());
            match result {
                Ok(Status::StreamEnd) => {
                    // The peer finished its zlib stream: no later frame could carry headers.
                    return Err(CodecError::Compression("header stream ended".into()));
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        z.set_dictionary(&DICTIONARY)
                            .map_err(|e| CodecError::Compression(e.to_string()))?;
                        continue;
                    }
                    Some(_) => {
                        return Err(CodecError::Compression(
                            "header stream primed with an unknown dictionary".into(),
                        ));
                    }
                    None => return Err(CodecError::Compression(e.to_string())),
                },
            }
            if out.len() > max {
                return Err(CodecError::HeaderBlockTooLarge { max });
            }
            let input_done = consumed == input.len();
            if input_done && out.len() < out.capacity() {
                // All input is in and room is left: zlib has flushed everything it holds.
                return Ok(out);
            }
            if consumed_now == 0 && produced == 0 {
                if input_done {
                    return Ok(out);
                }
                return Err(CodecError::Compression(
                    "header stream made no progress".into(),
                ));
            }
        }
    }

    /// Deflates `self.scratch` into `dst` as the next piece of the header stream.
    fn deflate_scratch(&mut self, dst: &mut BytesMut) -> Result<(), CodecError> {
        let z = match &mut self.deflate {
            Some(z) => z,
            None => {
                let mut z = Compress::new(Compression::default(), true);
                z.set_dictionary(&DICTIONARY)
                    .map_err(|e| CodecError::Compression(e.to_string()))?;
                self.deflate.insert(z)
            }
        };
        let input = &self.scratch;
        let mut out: Vec<u8> = Vec::with_capacity(input.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let in_before = z.total_in();
            z.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| CodecError::Compression(e.to_string()))?;
            consumed += progress(in_before, z.total_in());
            // A sync flush is complete once all input is in and output space is left over.
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        dst.extend_from_slice(&out);
        Ok(())
    }

    /// Compresses a header block into `dst`, after the fixed fields already there.
    fn encode_headers(&mut self, headers: &Headers, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.scratch.clear();
        headers.encode_block(&mut self.scratch)?;
        self.deflate_scratch(dst)
    }
}

impl Default for SpdyCodec {
    fn default() -> Self {
        Self::new(CodecLimits::default())
    }
}

fn progress(before: u64, after: u64) -> usize {
    usize::try_from(after.saturating_sub(before)).unwrap_or(usize::MAX)
}

fn stream_id(word: u32, frame: &'static str) -> Result<u32, CodecError> {
    match word & MAX_STREAM_ID {
        0 => Err(malformed(frame, "stream id 0")),
        id => Ok(id),
    }
}

fn word(body: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&body[at..at + 4]);
    u32::from_be_bytes(b)
}

impl Decoder for SpdyCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let first = word(src, 0);
        let second = word(src, 4);
        let flags = (second >> 24) as u8;
        let len = second & MAX_FRAME_BODY;
        if len > self.limits.max_frame_len {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.limits.max_frame_len,
            });
        }
        let total = HEADER_LEN + len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut raw = src.split_to(total);
        raw.advance(HEADER_LEN);
        let body = raw.freeze();

        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: stream_id(first, "DATA")?,
                flags,
                data: body,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(CodecError::UnsupportedVersion(version));
        }
        self.decode_control(first as u16, flags, body).map(Some)
    }
}

impl SpdyCodec {
    fn decode_control(&mut self, kind: u16, flags: u8, body: Bytes) -> Result<Frame, CodecError> {
        let len = body.len();
        let exact = |frame: &'static str, want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(malformed(frame, "wrong length"))
            }
        };
        let at_least = |frame: &'static str, want: usize| {
            if len >= want {
                Ok(())
            } else {
                Err(malformed(frame, "too short"))
            }
        };
        Ok(match kind {
            kind::SYN_STREAM => {
                at_least("SYN_STREAM", 10)?;
                let stream_id = stream_id(word(&body, 0), "SYN_STREAM")?;
                Frame::SynStream {
                    stream_id,
                    associated_to: word(&body, 4) & MAX_STREAM_ID,
                    priority: body[8] >> 5,
                    slot: body[9],
                    flags,
                    headers: self.decode_headers(&body[10..])?,
                }
            }
            kind::SYN_REPLY => {
                at_least("SYN_REPLY", 4)?;
                Frame::SynReply {
                    stream_id: stream_id(word(&body, 0), "SYN_REPLY")?,
                    flags,
                    headers: self.decode_headers(&body[4..])?,
                }
            }
            kind::HEADERS => {
                at_least("HEADERS", 4)?;
                Frame::Headers {
                    stream_id: stream_id(word(&body, 0), "HEADERS")?,
                    flags,
                    headers: self.decode_headers(&body[4..])?,
                }
            }
            kind::RST_STREAM => {
                exact("RST_STREAM", 8)?;
                let stream_id = stream_id(word(&body, 0), "RST_STREAM")?;
                match word(&body, 4) {
                    0 => return Err(malformed("RST_STREAM", "status 0")),
                    status => Frame::RstStream {
                        stream_id,
                        status: RstStatus(status),
                    },
                }
            }
            kind::SETTINGS => {
                at_least("SETTINGS", 4)?;
                let count = u64::from(word(&body, 0));
                if count * 8 + 4 != len as u64 {
                    return Err(malformed("SETTINGS", "entry count disagrees with length"));
                }
                let entries = body[4..]
                    .chunks_exact(8)
                    .map(|e| {
                        let id = word(e, 0);
                        Setting {
                            flags: (id >> 24) as u8,
                            id: id & 0x00ff_ffff,
                            value: word(e, 4),
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            kind::PING => {
                exact("PING", 4)?;
                Frame::Ping { id: word(&body, 0) }
            }
            kind::GOAWAY => {
                exact("GOAWAY", 8)?;
                Frame::GoAway {
                    last_good_stream_id: word(&body, 0) & MAX_STREAM_ID,
                    status: GoAwayStatus(word(&body, 4)),
                }
            }
            kind::WINDOW_UPDATE => {
                exact("WINDOW_UPDATE", 8)?;
                Frame::WindowUpdate {
                    stream_id: word(&body, 0) & MAX_STREAM_ID,
                    delta: word(&body, 4) & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown {
                version: VERSION,
                kind: other,
                flags,
                body,
            },
        })
    }
}

fn check_id(id: u32, zero_ok: bool) -> Result<(), CodecError> {
    if id > MAX_STREAM_ID {
        Err(CodecError::Unencodable("stream id above 2^31-1"))
    } else if id == 0 && !zero_ok {
        Err(CodecError::Unencodable("stream id 0"))
    } else {
        Ok(())
    }
}

impl Encoder<Frame> for SpdyCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        let result = self.encode_into(frame, dst);
        if result.is_err() {
            // Leave no half-written frame behind.
            dst.truncate(start);
        }
        result
    }
}

impl SpdyCodec {
    fn encode_into(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        let (first, flags) = match &frame {
            Frame::Data {
                stream_id, flags, ..
            } => {
                check_id(*stream_id, false)?;
                (*stream_id, *flags)
            }
            Frame::Unknown {
                version,
                kind,
                flags,
                ..
            } => {
                if (kind::SYN_STREAM..=kind::WINDOW_UPDATE).contains(kind) && *kind != 5 {
                    return Err(CodecError::Unencodable("Unknown frame of a known type"));
                }
                if *version > 0x7fff {
                    return Err(CodecError::Unencodable("version above 15 bits"));
                }
                (
                    0x8000_0000 | u32::from(*version) << 16 | u32::from(*kind),
                    *flags,
                )
            }
            other => (control_word(other), control_flags(other)),
        };
        dst.put_u32(first);
        dst.put_u32(0); // flags and length, patched below
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                headers,
                ..
            } => {
                check_id(stream_id, false)?;
                check_id(associated_to, true)?;
                if priority > 7 {
                    return Err(CodecError::Unencodable("priority above 7"));
                }
                dst.put_u32(stream_id);
                dst.put_u32(associated_to);
                dst.put_u8(priority << 5);
                dst.put_u8(slot);
                self.encode_headers(&headers, dst)?;
            }
            Frame::SynReply {
                stream_id, headers, ..
            }
            | Frame::Headers {
                stream_id, headers, ..
            } => {
                check_id(stream_id, false)?;
                dst.put_u32(stream_id);
                self.encode_headers(&headers, dst)?;
            }
            Frame::RstStream { stream_id, status } => {
                check_id(stream_id, false)?;
                if status.0 == 0 {
                    return Err(CodecError::Unencodable("RST_STREAM status 0"));
                }
                dst.put_u32(stream_id);
                dst.put_u32(status.0);
            }
            Frame::Settings { entries, .. } => {
                let count = u32::try_from(entries.len())
                    .map_err(|_| CodecError::Unencodable("too many settings"))?;
                dst.put_u32(count);
                for e in entries {
                    if e.id > 0x00ff_ffff {
                        return Err(CodecError::Unencodable("setting id above 24 bits"));
                    }
                    dst.put_u32(u32::from(e.flags) << 24 | e.id);
                    dst.put_u32(e.value);
                }
            }
            Frame::Ping { id } => dst.put_u32(id),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                check_id(last_good_stream_id, true)?;
                dst.put_u32(last_good_stream_id);
                dst.put_u32(status.0);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                check_id(stream_id, true)?;
                if delta > 0x7fff_ffff {
                    return Err(CodecError::Unencodable("window delta above 2^31-1"));
                }
                dst.put_u32(stream_id);
                dst.put_u32(delta);
            }
            Frame::Data { data, .. } => dst.extend_from_slice(&data),
            Frame::Unknown { body, .. } => dst.extend_from_slice(&body),
        }
        let body_len = dst.len() - start - HEADER_LEN;
        let len = u32::try_from(body_len)
            .ok()
            .filter(|&l| l <= MAX_FRAME_BODY)
            .ok_or(CodecError::Unencodable("body longer than 2^24-1 bytes"))?;
        let patched = (u32::from(flags) << 24 | len).to_be_bytes();
        dst[start + 4..start + HEADER_LEN].copy_from_slice(&patched);
        Ok(())
    }
}

fn control_word(frame: &Frame) -> u32 {
    let kind = match frame {
        Frame::SynStream { .. } => kind::SYN_STREAM,
        Frame::SynReply { .. } => kind::SYN_REPLY,
        Frame::RstStream { .. } => kind::RST_STREAM,
        Frame::Settings { .. } => kind::SETTINGS,
        Frame::Ping { .. } => kind::PING,
        Frame::GoAway { .. } => kind::GOAWAY,
        Frame::Headers { .. } => kind::HEADERS,
        Frame::WindowUpdate { .. } => kind::WINDOW_UPDATE,
        Frame::Data { .. } | Frame::Unknown { .. } => 0,
    };
    0x8000_0000 | u32::from(VERSION) << 16 | u32::from(kind)
}

fn control_flags(frame: &Frame) -> u8 {
    match frame {
        Frame::SynStream { flags, .. }
        | Frame::SynReply { flags, .. }
        | Frame::Headers { flags, .. }
        | Frame::Settings { flags, .. } => *flags,
        // The draft defines no flags for these.
        _ => 0,
    }
}
