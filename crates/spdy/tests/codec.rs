//! The wire codec: every frame type both ways, header compression against a
//! real zlib, and malformed input of many kinds.

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, FlushCompress};
use proptest::prelude::*;
use spdy::frame::flags;
use spdy::{
    CodecError, CodecLimits, DICTIONARY, Frame, GoAwayStatus, HeaderBlockError, Headers, RstStatus,
    Setting, SpdyCodec,
};
use tokio_util::codec::{Decoder, Encoder};

/// Two SYN_STREAM frames as kubectl opens a port-forward pair, produced at
/// authoring time by CPython's zlib (level 9, the SPDY dictionary, a sync
/// flush per frame). The second frame's block refers back into the first's,
/// so it only decodes on a codec that has read the first.
const ERROR_STREAM: [u8; 69] = [
    0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3d, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0x25, 0x3a, 0x70, 0x3a, 0x2b, 0x29, 0x4a,
    0x4d, 0xcc, 0x85, 0x16, 0x25, 0xac, 0xa9, 0xa0, 0x80, 0x86, 0x14, 0xcb, 0x45, 0xe0, 0x1c, 0x60,
    0x61, 0x60, 0x61, 0x00, 0xa4, 0x39, 0x8b, 0x20, 0xd1, 0x98, 0x09, 0x4a, 0xde, 0x8c, 0x06, 0x00,
    0x00, 0x00, 0x00, 0xff, 0xff,
];
const DATA_STREAM: [u8; 32] = [
    0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0xc2, 0xaa, 0x19, 0x54, 0x0e, 0x25, 0x12, 0xd6, 0x0b, 0x00, 0x00, 0x00, 0xff, 0xff,
];

fn decode_all(codec: &mut SpdyCodec, bytes: &[u8]) -> Result<Vec<Frame>, CodecError> {
    let mut src = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode(&mut src)? {
        frames.push(frame);
    }
    assert!(src.is_empty(), "{} bytes left undecoded", src.len());
    Ok(frames)
}

fn encode_all(codec: &mut SpdyCodec, frames: &[Frame]) -> BytesMut {
    let mut dst = BytesMut::new();
    for frame in frames {
        codec.encode(frame.clone(), &mut dst).unwrap();
    }
    dst
}

fn syn_stream(id: u32, headers: Headers) -> Frame {
    Frame::SynStream {
        stream_id: id,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers,
    }
}

#[test]
fn decodes_header_blocks_compressed_by_a_real_zlib() {
    let mut codec = SpdyCodec::default();
    let mut wire = ERROR_STREAM.to_vec();
    wire.extend_from_slice(&DATA_STREAM);
    let frames = decode_all(&mut codec, &wire).unwrap();
    let expect = |id, kind| {
        syn_stream(
            id,
            Headers::new()
                .with("streamtype", kind)
                .with("port", "8080")
                .with("requestid", "0"),
        )
    };
    assert_eq!(frames, [expect(1, "error"), expect(3, "data")]);

    // Out of its stream, the second block means nothing.
    let mut fresh = SpdyCodec::default();
    assert!(matches!(
        decode_all(&mut fresh, &DATA_STREAM),
        Err(CodecError::Compression(_))
    ));
}

fn every_kind_of_frame() -> Vec<Frame> {
    let headers = Headers::new()
        .with("streamtype", "data")
        .with("port", "80")
        .with("x-multi", "one")
        .with("x-multi", "two");
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 7,
            slot: 3,
            flags: flags::FIN | flags::UNIDIRECTIONAL,
            headers: headers.clone(),
        },
        Frame::SynReply {
            stream_id: 1,
            flags: flags::FIN,
            headers: Headers::new(),
        },
        Frame::RstStream {
            stream_id: 1,
            status: RstStatus::REFUSED_STREAM,
        },
        Frame::Settings {
            flags: flags::CLEAR_SETTINGS,
            entries: vec![
                Setting {
                    flags: 1,
                    id: 4,
                    value: 100,
                },
                Setting {
                    flags: 0,
                    id: 7,
                    value: 65536,
                },
            ],
        },
        Frame::Settings {
            flags: 0,
            entries: vec![],
        },
        Frame::Ping { id: 1 },
        Frame::GoAway {
            last_good_stream_id: 5,
            status: GoAwayStatus::PROTOCOL_ERROR,
        },
        Frame::Headers {
            stream_id: 3,
            flags: 0,
            headers,
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 0x7fff_ffff,
        },
        Frame::Data {
            stream_id: 3,
            flags: flags::FIN,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Data {
            stream_id: 0x7fff_ffff,
            flags: 0,
            data: Bytes::new(),
        },
        Frame::Unknown {
            version: 3,
            kind: 10, // CREDENTIAL
            flags: 0,
            body: Bytes::from_static(&[1, 2, 3]),
        },
    ]
}

#[test]
fn every_frame_type_round_trips() {
    let frames = every_kind_of_frame();
    let mut tx = SpdyCodec::default();
    let mut rx = SpdyCodec::default();
    let wire = encode_all(&mut tx, &frames);
    assert_eq!(decode_all(&mut rx, &wire).unwrap(), frames);
}

#[test]
fn fixed_layouts_match_the_draft() {
    let mut codec = SpdyCodec::default();
    let wire = encode_all(
        &mut codec,
        &[
            Frame::Ping { id: 0x0102_0304 },
            Frame::RstStream {
                stream_id: 5,
                status: RstStatus::CANCEL,
            },
            Frame::Data {
                stream_id: 7,
                flags: flags::FIN,
                data: Bytes::from_static(b"ab"),
            },
        ],
    );
    assert_eq!(
        &wire[..],
        [
            0x80, 3, 0, 6, 0, 0, 0, 4, 1, 2, 3, 4, // PING
            0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5, // RST_STREAM CANCEL
            0, 0, 0, 7, 1, 0, 0, 2, b'a', b'b', // DATA with FIN
        ]
    );
}

#[test]
fn header_compression_continues_across_frames_of_one_connection() {
    let mut tx = SpdyCodec::default();
    let mut rx = SpdyCodec::default();
    let frames: Vec<Frame> = (0..20)
        .map(|i| {
            syn_stream(
                2 * i + 1,
                Headers::new()
                    .with("streamtype", if i % 2 == 0 { "error" } else { "data" })
                    .with("port", "8080")
                    .with("requestid", &(i / 2).to_string()),
            )
        })
        .collect();
    let wire = encode_all(&mut tx, &frames);
    // Repeated blocks shrink as the shared window learns them.
    assert!(wire.len() < frames.len() * 40, "{} bytes", wire.len());
    // Fed in pieces of every size, the decoder still sees the same frames.
    for piece in [1, 7, 64] {
        let mut rx = SpdyCodec::default();
        let mut src = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(piece) {
            src.extend_from_slice(chunk);
            while let Some(frame) = rx.decode(&mut src).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, frames);
    }
    assert_eq!(decode_all(&mut rx, &wire).unwrap(), frames);
}

#[test]
fn unknown_control_frames_are_skipped_whole() {
    let mut wire = vec![0x80, 3, 0, 10, 0xff, 0, 0, 3, 9, 9, 9];
    wire.extend_from_slice(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    let frames = decode_all(&mut SpdyCodec::default(), &wire).unwrap();
    assert!(matches!(
        frames[0],
        Frame::Unknown {
            kind: 10,
            flags: 0xff,
            ..
        }
    ));
    assert_eq!(frames[1], Frame::Ping { id: 1 });
}

/// Compresses raw bytes as a peer's header stream would.
fn zlib_block(compress: &mut Compress, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 1024);
    compress
        .compress_vec(raw, &mut out, FlushCompress::Sync)
        .unwrap();
    assert_eq!(compress.total_in() as usize, raw.len());
    out
}

fn spdy_compressor() -> Compress {
    let mut c = Compress::new(Compression::best(), true);
    c.set_dictionary(&DICTIONARY).unwrap();
    c
}

fn syn_stream_with_block(id: u32, block: &[u8]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    wire.put_u32(0x8003_0001);
    wire.put_u32(10 + block.len() as u32);
    wire.put_u32(id);
    wire.put_u32(0);
    wire.put_u16(0);
    wire.extend_from_slice(block);
    wire.to_vec()
}

fn raw_block(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = (pairs.len() as u32).to_be_bytes().to_vec();
    for (n, v) in pairs {
        b.extend_from_slice(&(n.len() as u32).to_be_bytes());
        b.extend_from_slice(n);
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v);
    }
    b
}

fn decode_err(limits: CodecLimits, wire: &[u8]) -> CodecError {
    let mut codec = SpdyCodec::new(limits);
    let mut src = BytesMut::from(wire);
    loop {
        match codec.decode(&mut src) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error from {wire:02x?}"),
            Err(e) => return e,
        }
    }
}

#[test]
fn a_frame_over_the_limit_is_refused_from_its_header() {
    let limits = CodecLimits {
        max_frame_len: 1024,
        ..CodecLimits::default()
    };
    // Only the header has arrived; the claimed 16 MiB is never reserved.
    let mut codec = SpdyCodec::new(limits);
    let mut src = BytesMut::from(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
    match codec.decode(&mut src) {
        Err(CodecError::FrameTooLarge { len, max }) => {
            assert_eq!((len, max), (0xff_ffff, 1024));
        }
        other => panic!("{other:?}"),
    }
    assert!(src.capacity() < 4096);
    // The limit itself is accepted.
    let mut ok = vec![0, 0, 0, 1, 0, 0, 4, 0];
    ok.resize(8 + 1024, 0);
    assert_eq!(
        decode_all(&mut SpdyCodec::new(limits), &ok).unwrap().len(),
        1
    );
}

#[test]
fn a_header_bomb_stops_at_the_inflated_limit() {
    let limits = CodecLimits {
        max_header_block: 4096,
        ..CodecLimits::default()
    };
    let huge = vec![b'a'; 4 << 20];
    let raw = raw_block(&[(b"x", &huge)]);
    let block = zlib_block(&mut spdy_compressor(), &raw);
    assert!(block.len() < 16 << 10, "the bomb is small: {}", block.len());
    let err = decode_err(limits, &syn_stream_with_block(1, &block));
    assert!(
        matches!(err, CodecError::HeaderBlockTooLarge { max: 4096 }),
        "{err:?}"
    );
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let limits = CodecLimits::default();
    let good_block = zlib_block(&mut spdy_compressor(), &raw_block(&[(b"a", b"b")]));
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0..200)
        .map(|i| (format!("h{i}").into_bytes(), b"v".to_vec()))
        .collect();
    let many: Vec<(&[u8], &[u8])> = many.iter().map(|(n, v)| (&n[..], &v[..])).collect();

    let mut wrong_dict = Compress::new(Compression::best(), true);
    wrong_dict
        .set_dictionary(b"not the spdy dictionary")
        .unwrap();
    let mut finished = spdy_compressor();
    let mut finished_block = Vec::with_capacity(256);
    finished
        .compress_vec(
            &raw_block(&[(b"a", b"b")]),
            &mut finished_block,
            FlushCompress::Finish,
        )
        .unwrap();

    let malformed = |e: &CodecError| matches!(e, CodecError::Malformed { .. });
    let compression = |e: &CodecError| matches!(e, CodecError::Compression(_));
    type Check = Box<dyn Fn(&CodecError) -> bool>;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        (
            "version 2",
            vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],
            Box::new(|e| matches!(e, CodecError::UnsupportedVersion(2))),
        ),
        (
            "DATA on stream 0",
            vec![0, 0, 0, 0, 0, 0, 0, 1, 7],
            Box::new(malformed),
        ),
        (
            "SYN_STREAM shorter than its fixed fields",
            vec![0x80, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 1, 0, 0],
            Box::new(malformed),
        ),
        (
            "SYN_STREAM on stream 0",
            syn_stream_with_block(0, &good_block),
            Box::new(malformed),
        ),
        (
            "SYN_REPLY shorter than a stream id",
            vec![0x80, 3, 0, 2, 0, 0, 0, 2, 0, 1],
            Box::new(malformed),
        ),
        (
            "HEADERS on stream 0",
            vec![0x80, 3, 0, 8, 0, 0, 0, 4, 0, 0, 0, 0],
            Box::new(malformed),
        ),
        (
            "RST_STREAM of 7 bytes",
            vec![0x80, 3, 0, 3, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 1],
            Box::new(malformed),
        ),
        (
            "RST_STREAM with status 0",
            vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0],
            Box::new(malformed),
        ),
        (
            "RST_STREAM on stream 0",
            vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],
            Box::new(malformed),
        ),
        (
            "SETTINGS claiming more entries than it holds",
            vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
            Box::new(malformed),
        ),
        (
            "SETTINGS shorter than its count",
            vec![0x80, 3, 0, 4, 0, 0, 0, 2, 0, 0],
            Box::new(malformed),
        ),
        (
            "PING of 5 bytes",
            vec![0x80, 3, 0, 6, 0, 0, 0, 5, 0, 0, 0, 1, 0],
            Box::new(malformed),
        ),
        (
            "GOAWAY without a status (SPDY/2 layout)",
            vec![0x80, 3, 0, 7, 0, 0, 0, 4, 0, 0, 0, 1],
            Box::new(malformed),
        ),
        (
            "WINDOW_UPDATE of 4 bytes",
            vec![0x80, 3, 0, 9, 0, 0, 0, 4, 0, 0, 0, 1],
            Box::new(malformed),
        ),
        (
            "a header block that is not zlib",
            syn_stream_with_block(1, b"definitely not deflate"),
            Box::new(compression),
        ),
        (
            "an empty header block",
            syn_stream_with_block(1, &[]),
            Box::new(|e| matches!(e, CodecError::HeaderBlock(HeaderBlockError::Truncated))),
        ),
        (
            "a header block primed with another dictionary",
            syn_stream_with_block(1, &zlib_block(&mut wrong_dict, &raw_block(&[]))),
            Box::new(compression),
        ),
        (
            "a header stream finished instead of flushed",
            syn_stream_with_block(1, &finished_block),
            Box::new(compression),
        ),
        (
            "more headers than allowed",
            syn_stream_with_block(1, &zlib_block(&mut spdy_compressor(), &raw_block(&many))),
            Box::new(|e| {
                matches!(
                    e,
                    CodecError::HeaderBlock(HeaderBlockError::TooManyHeaders { declared: 200, .. })
                )
            }),
        ),
        (
            "an uppercase header name",
            syn_stream_with_block(
                1,
                &zlib_block(&mut spdy_compressor(), &raw_block(&[(b"Port", b"1")])),
            ),
            Box::new(|e| {
                matches!(
                    e,
                    CodecError::HeaderBlock(HeaderBlockError::UppercaseName(_))
                )
            }),
        ),
        (
            "a header block with bytes after its pairs",
            syn_stream_with_block(1, &{
                let mut raw = raw_block(&[(b"a", b"b")]);
                raw.extend_from_slice(b"junk");
                zlib_block(&mut spdy_compressor(), &raw)
            }),
            Box::new(|e| {
                matches!(
                    e,
                    CodecError::HeaderBlock(HeaderBlockError::TrailingBytes(4))
                )
            }),
        ),
    ];
    for (name, wire, check) in cases {
        let err = decode_err(limits, &wire);
        assert!(check(&err), "{name}: unexpected {err:?}");
    }
}

#[test]
fn frames_that_cannot_be_encoded_are_errors() {
    let bad = [
        Frame::Data {
            stream_id: 0,
            flags: 0,
            data: Bytes::new(),
        },
        Frame::RstStream {
            stream_id: 1,
            status: RstStatus(0),
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 0x8000_0000,
        },
        syn_stream(0x8000_0001, Headers::new()),
        Frame::Unknown {
            version: 3,
            kind: 6,
            flags: 0,
            body: Bytes::new(),
        },
        Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from(vec![0; 1 << 24]),
        },
    ];
    for frame in bad {
        let mut dst = BytesMut::new();
        let mut codec = SpdyCodec::default();
        assert!(
            matches!(
                codec.encode(frame.clone(), &mut dst),
                Err(CodecError::Unencodable(_))
            ),
            "{frame:?}"
        );
        assert!(dst.is_empty(), "nothing half-written for {frame:?}");
    }
}

fn arb_headers() -> impl Strategy<Value = Headers> {
    prop::collection::vec(("[a-z0-9:-]{1,12}", "[ -~]{0,24}"), 0..6).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    })
}

fn arb_id() -> impl Strategy<Value = u32> {
    1..=0x7fff_ffffu32
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            arb_id(),
            0..=0x7fff_ffffu32,
            0..8u8,
            any::<u8>(),
            any::<u8>(),
            arb_headers()
        )
            .prop_map(
                |(stream_id, associated_to, priority, slot, flags, headers)| Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    flags,
                    headers,
                }
            ),
        (arb_id(), any::<u8>(), arb_headers()).prop_map(|(stream_id, flags, headers)| {
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
        }),
        (arb_id(), 1..=u32::MAX).prop_map(|(stream_id, s)| Frame::RstStream {
            stream_id,
            status: RstStatus(s),
        }),
        (
            any::<u8>(),
            prop::collection::vec((any::<u8>(), 0..=0xff_ffffu32, any::<u32>()), 0..5)
        )
            .prop_map(|(flags, e)| Frame::Settings {
                flags,
                entries: e
                    .into_iter()
                    .map(|(flags, id, value)| Setting { flags, id, value })
                    .collect(),
            }),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (0..=0x7fff_ffffu32, any::<u32>()).prop_map(|(last, s)| Frame::GoAway {
            last_good_stream_id: last,
            status: GoAwayStatus(s),
        }),
        (arb_id(), any::<u8>(), arb_headers()).prop_map(|(stream_id, flags, headers)| {
            Frame::Headers {
                stream_id,
                flags,
                headers,
            }
        }),
        (0..=0x7fff_ffffu32, 0..=0x7fff_ffffu32)
            .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
        (
            arb_id(),
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(stream_id, flags, data)| Frame::Data {
                stream_id,
                flags,
                data: data.into(),
            }),
        (
            10..=u16::MAX,
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(kind, flags, body)| Frame::Unknown {
                version: 3,
                kind,
                flags,
                body: body.into(),
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_frame_sequences_round_trip(frames in prop::collection::vec(arb_frame(), 1..12)) {
        let mut tx = SpdyCodec::default();
        let mut rx = SpdyCodec::default();
        let wire = encode_all(&mut tx, &frames);
        prop_assert_eq!(decode_all(&mut rx, &wire).unwrap(), frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut codec = SpdyCodec::new(CodecLimits { max_frame_len: 1024, ..CodecLimits::default() });
        let mut src = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec.decode(&mut src) {}
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_frame_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..512),
        flip in any::<(usize, u8)>(),
    ) {
        // Mutate a real compressed frame so the inflater is driven mid-stream.
        let mut wire = ERROR_STREAM.to_vec();
        let mut second = DATA_STREAM.to_vec();
        let at = 8 + flip.0 % (second.len() - 8);
        second[at] ^= flip.1;
        wire.extend_from_slice(&second);
        wire.extend_from_slice(&tail);
        let mut codec = SpdyCodec::default();
        let mut src = BytesMut::from(&wire[..]);
        while let Ok(Some(_)) = codec.decode(&mut src) {}
    }
}
