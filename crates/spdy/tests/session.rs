//! The server session against a client made of the same codec, in memory.
//! Time is paused: waits that would only end by a timer end at once.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use spdy::frame::flags;
use spdy::{
    CodecError, CodecLimits, Frame, GoAwayStatus, Headers, Limits, RstStatus, Session,
    SessionError, SpdyCodec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::codec::Framed;

/// Long enough for any in-memory exchange; with paused time it costs nothing.
const PATIENCE: Duration = Duration::from_secs(30);

struct Client {
    io: Framed<DuplexStream, SpdyCodec>,
    next_id: u32,
}

impl Client {
    async fn send(&mut self, frame: Frame) {
        self.io.send(frame).await.unwrap();
    }

    /// The next frame, or `None` at EOF or if nothing comes within [`PATIENCE`].
    async fn recv(&mut self) -> Option<Frame> {
        self.recv_within(PATIENCE).await
    }

    async fn recv_within(&mut self, patience: Duration) -> Option<Frame> {
        match tokio::time::timeout(patience, self.io.next()).await {
            Ok(Some(frame)) => Some(frame.unwrap()),
            Ok(None) | Err(_) => None,
        }
    }

    /// Whether nothing at all arrives within [`PATIENCE`].
    async fn silent(&mut self) -> bool {
        tokio::time::timeout(PATIENCE, self.io.next())
            .await
            .is_err()
    }

    async fn open(&mut self, headers: Headers) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers,
        })
        .await;
        id
    }

    async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id: id,
            flags: if fin { flags::FIN } else { 0 },
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }
}

fn pair(limits: Limits) -> (Session, Client) {
    let (server, client) = tokio::io::duplex(64 << 10);
    let session = Session::new(server, limits);
    let client = Client {
        io: Framed::new(client, SpdyCodec::default()),
        next_id: 1,
    };
    (session, client)
}

fn port_forward(kind: &str, request: u32) -> Headers {
    Headers::new()
        .with("streamtype", kind)
        .with("port", "8080")
        .with("requestid", &request.to_string())
}

fn is_reply(frame: &Option<Frame>, id: u32) -> bool {
    matches!(frame, Some(Frame::SynReply { stream_id, .. }) if *stream_id == id)
}

#[tokio::test(start_paused = true)]
async fn several_streams_are_accepted_and_replied_to() {
    let (mut session, mut client) = pair(Limits::default());
    let mut ids = Vec::new();
    for request in 0..3 {
        ids.push(client.open(port_forward("error", request)).await);
        ids.push(client.open(port_forward("data", request)).await);
    }
    let mut streams = Vec::new();
    for (n, &id) in ids.iter().enumerate() {
        let stream = session.accept().await.unwrap();
        assert_eq!(stream.id(), id);
        let kind = if n % 2 == 0 { "error" } else { "data" };
        assert_eq!(stream.headers().get("streamtype"), Some(kind));
        assert_eq!(
            stream.headers().get("requestid"),
            Some((n / 2).to_string().as_str())
        );
        assert!(is_reply(&client.recv().await, id));
        streams.push(stream);
    }
    for (stream, id) in streams.into_iter().zip(ids) {
        // Dropped without shutdown: the client still gets a clean FIN.
        drop(stream);
        assert_eq!(
            client.recv().await,
            Some(Frame::Data {
                stream_id: id,
                flags: flags::FIN,
                data: Bytes::new(),
            })
        );
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn one_mebibyte_moves_each_way_through_one_stream() {
    move_a_mebibyte_each_way().await;
}

/// The same on worker threads in real time, where wake-ups race for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_moves_each_way_on_worker_threads() {
    for _ in 0..4 {
        move_a_mebibyte_each_way().await;
    }
}

async fn move_a_mebibyte_each_way() {
    const LEN: usize = 1 << 20;
    let limits = Limits {
        max_data_chunk: 16 << 10,
        ..Limits::default()
    };
    let (mut session, mut client) = pair(limits);
    let id = client.open(port_forward("data", 0)).await;
    let stream = session.accept().await.unwrap();

    let server = tokio::spawn(async move {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let writer = async {
            wr.write_all(&pattern(LEN, 7)).await.unwrap();
            wr.shutdown().await.unwrap();
        };
        let reader = async {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        got
    });

    let (mut sink, mut frames) = client.io.split();
    let sender = tokio::spawn(async move {
        for chunk in pattern(LEN, 3).chunks(32 << 10) {
            sink.send(Frame::Data {
                stream_id: id,
                flags: 0,
                data: Bytes::copy_from_slice(chunk),
            })
            .await
            .unwrap();
        }
        sink.send(Frame::Data {
            stream_id: id,
            flags: flags::FIN,
            data: Bytes::new(),
        })
        .await
        .unwrap();
        sink
    });
    let mut received = Vec::new();
    loop {
        match frames.next().await.unwrap().unwrap() {
            Frame::SynReply { stream_id, .. } => assert_eq!(stream_id, id),
            Frame::Data {
                stream_id,
                flags: f,
                data,
            } => {
                assert_eq!(stream_id, id);
                assert!(data.len() <= 16 << 10, "DATA of {} bytes", data.len());
                received.extend_from_slice(&data);
                if f & flags::FIN != 0 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(received == pattern(LEN, 7), "server to client corrupted");
    assert!(
        server.await.unwrap() == pattern(LEN, 3),
        "client to server corrupted"
    );
    drop(sender.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn client_pings_are_echoed_and_settings_ignored() {
    let (_session, mut client) = pair(Limits::default());
    client
        .send(Frame::Settings {
            flags: 0,
            entries: vec![],
        })
        .await;
    client
        .send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1000,
        })
        .await;
    client.send(Frame::Ping { id: 1 }).await;
    // An even id would answer a server ping; the server sent none, so it is ignored.
    client.send(Frame::Ping { id: 2 }).await;
    client.send(Frame::Ping { id: 3 }).await;
    assert_eq!(client.recv().await, Some(Frame::Ping { id: 1 }));
    assert_eq!(client.recv().await, Some(Frame::Ping { id: 3 }));
    assert!(client.silent().await);
}

#[tokio::test(start_paused = true)]
async fn fin_from_the_client_is_eof_and_shutdown_is_fin() {
    let (mut session, mut client) = pair(Limits::default());
    let id = client.open(port_forward("error", 0)).await;
    let mut stream = session.accept().await.unwrap();
    client.data(id, b"hello", true).await;
    let mut got = String::new();
    stream.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello");
    stream.write_all(b"bye").await.unwrap();
    stream.shutdown().await.unwrap();
    assert!(stream.write_all(b"more").await.is_err());
    assert!(is_reply(&client.recv().await, id));
    assert_eq!(
        client.recv().await,
        Some(Frame::Data {
            stream_id: id,
            flags: 0,
            data: Bytes::from_static(b"bye"),
        })
    );
    assert_eq!(
        client.recv().await,
        Some(Frame::Data {
            stream_id: id,
            flags: flags::FIN,
            data: Bytes::new(),
        })
    );
    // Once both sides are done and the stream is dropped, nothing more is sent.
    drop(stream);
    assert!(client.silent().await);
}

#[tokio::test(start_paused = true)]
async fn a_reset_from_the_client_fails_reads_and_writes() {
    let (mut session, mut client) = pair(Limits::default());
    let id = client.open(port_forward("data", 0)).await;
    let mut stream = session.accept().await.unwrap();
    assert!(is_reply(&client.recv().await, id));
    client
        .send(Frame::RstStream {
            stream_id: id,
            status: RstStatus::CANCEL,
        })
        .await;
    let mut buf = [0u8; 8];
    let err = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(stream.reset_status(), Some(RstStatus::CANCEL));
    let err = stream.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    // A reset stream is not closed again with a FIN.
    drop(stream);
    assert!(client.silent().await);
}

#[tokio::test(start_paused = true)]
async fn the_server_can_reset_a_stream() {
    let (mut session, mut client) = pair(Limits::default());
    let id = client.open(port_forward("data", 0)).await;
    let mut stream = session.accept().await.unwrap();
    stream.reset(RstStatus::INTERNAL_ERROR);
    assert!(stream.write_all(b"x").await.is_err());
    assert!(is_reply(&client.recv().await, id));
    assert_eq!(
        client.recv().await,
        Some(Frame::RstStream {
            stream_id: id,
            status: RstStatus::INTERNAL_ERROR,
        })
    );
    // Late data for the reset stream is dropped quietly.
    client.data(id, b"late", false).await;
    assert!(client.silent().await);
}

#[tokio::test(start_paused = true)]
async fn goaway_stops_accepting_and_ends_when_streams_finish() {
    let (mut session, mut client) = pair(Limits::default());
    let id = client.open(port_forward("data", 0)).await;
    client
        .send(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::OK,
        })
        .await;
    let mut stream = session.accept().await.unwrap();
    assert!(session.accept().await.is_none());
    assert!(is_reply(&client.recv().await, id));

    // The open stream still works.
    client.data(id, b"ping", true).await;
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ping");
    stream.write_all(b"pong").await.unwrap();
    drop(stream);
    assert!(matches!(client.recv().await, Some(Frame::Data { .. })));
    assert!(matches!(
        client.recv().await,
        Some(Frame::Data {
            flags: flags::FIN,
            ..
        })
    ));
    assert_eq!(
        client.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: id,
            status: GoAwayStatus::OK,
        })
    );
    assert_eq!(client.recv().await, None, "connection closed");
    session.closed().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn go_away_from_the_server_refuses_new_streams() {
    let (mut session, mut client) = pair(Limits::default());
    let first = client.open(port_forward("data", 0)).await;
    let stream = session.accept().await.unwrap();
    session.go_away();
    assert!(session.accept().await.is_none());
    assert!(is_reply(&client.recv().await, first));
    assert_eq!(
        client.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: first,
            status: GoAwayStatus::OK,
        })
    );
    let late = client.open(port_forward("data", 1)).await;
    assert_eq!(
        client.recv().await,
        Some(Frame::RstStream {
            stream_id: late,
            status: RstStatus::REFUSED_STREAM,
        })
    );
    drop(stream);
    assert!(matches!(client.recv().await, Some(Frame::Data { .. })));
    assert_eq!(client.recv().await, None);
    session.closed().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_but_not_one_with_streams() {
    let limits = Limits {
        idle_timeout: Some(Duration::from_secs(60)),
        ..Limits::default()
    };
    let (mut session, mut client) = pair(limits);

    // A stream held open for longer than the timeout keeps the connection.
    let id = client.open(port_forward("data", 0)).await;
    let stream = session.accept().await.unwrap();
    assert!(is_reply(&client.recv().await, id));
    tokio::time::sleep(Duration::from_secs(300)).await;
    client.send(Frame::Ping { id: 1 }).await;
    assert_eq!(client.recv().await, Some(Frame::Ping { id: 1 }));

    // Without streams, quiet for the timeout: GOAWAY and close.
    drop(stream);
    assert!(matches!(client.recv().await, Some(Frame::Data { .. })));
    let quiet_from = tokio::time::Instant::now();
    assert_eq!(
        client.recv_within(Duration::from_secs(600)).await,
        Some(Frame::GoAway {
            last_good_stream_id: id,
            status: GoAwayStatus::OK,
        })
    );
    let waited = quiet_from.elapsed();
    assert!(
        waited >= Duration::from_secs(59) && waited <= Duration::from_secs(61),
        "closed after {waited:?}"
    );
    assert_eq!(client.recv().await, None);
    session.closed().await.unwrap();
    assert!(session.accept().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_frame_over_the_limit_ends_the_session_with_protocol_error() {
    let limits = Limits {
        codec: CodecLimits {
            max_frame_len: 1024,
            ..CodecLimits::default()
        },
        ..Limits::default()
    };
    let (mut session, mut client) = pair(limits);
    let id = client.open(port_forward("data", 0)).await;
    let mut stream = session.accept().await.unwrap();
    client.data(id, &[0u8; 1025], false).await;
    assert!(is_reply(&client.recv().await, id));
    assert_eq!(
        client.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: id,
            status: GoAwayStatus::PROTOCOL_ERROR,
        })
    );
    assert_eq!(client.recv().await, None);
    match session.closed().await {
        Err(SessionError::Codec(e)) => assert!(matches!(
            *e,
            CodecError::FrameTooLarge {
                len: 1025,
                max: 1024
            }
        )),
        other => panic!("{other:?}"),
    }
    let mut buf = [0u8; 1];
    assert!(stream.read(&mut buf).await.is_err());
    assert!(stream.write_all(b"x").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn stream_ids_that_go_backwards_are_a_protocol_error() {
    let (mut session, mut client) = pair(Limits::default());
    client.next_id = 5;
    let id = client.open(Headers::new()).await;
    client.next_id = 3;
    client.open(Headers::new()).await;
    let _stream = session.accept().await.unwrap();
    assert!(is_reply(&client.recv().await, id));
    assert_eq!(
        client.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: id,
            status: GoAwayStatus::PROTOCOL_ERROR,
        })
    );
    assert!(matches!(
        session.closed().await,
        Err(SessionError::Protocol(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn garbage_ends_the_session_with_an_error() {
    let (server, mut raw) = tokio::io::duplex(4096);
    let session = Session::new(server, Limits::default());
    raw.write_all(&[0x80, 0x02, 0, 1, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    // A GOAWAY (PROTOCOL_ERROR) and then EOF.
    assert_eq!(rest, [0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert!(matches!(
        session.closed().await,
        Err(SessionError::Codec(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn streams_over_the_concurrency_limit_are_refused() {
    let limits = Limits {
        max_concurrent_streams: 2,
        ..Limits::default()
    };
    let (mut session, mut client) = pair(limits);
    let a = client.open(Headers::new()).await;
    let b = client.open(Headers::new()).await;
    let c = client.open(Headers::new()).await;
    assert!(is_reply(&client.recv().await, a));
    assert!(is_reply(&client.recv().await, b));
    assert_eq!(
        client.recv().await,
        Some(Frame::RstStream {
            stream_id: c,
            status: RstStatus::REFUSED_STREAM,
        })
    );
    let first = session.accept().await.unwrap();
    let _second = session.accept().await.unwrap();
    // A slot frees once a stream is dropped.
    drop(first);
    assert!(matches!(client.recv().await, Some(Frame::Data { .. })));
    let d = client.open(Headers::new()).await;
    assert!(is_reply(&client.recv().await, d));
    assert_eq!(session.accept().await.unwrap().id(), d);
}

#[tokio::test(start_paused = true)]
async fn a_full_stream_buffer_stops_reading_the_connection() {
    let limits = Limits {
        stream_recv_buffer: 64 << 10,
        ..Limits::default()
    };
    let (mut session, mut client) = pair(limits);
    let id = client.open(Headers::new()).await;
    let mut stream = session.accept().await.unwrap();
    assert!(is_reply(&client.recv().await, id));

    // Fill the stream's buffer, then ask for a ping: it waits behind the data.
    for _ in 0..4 {
        client.data(id, &[1u8; 16 << 10], false).await;
    }
    client.send(Frame::Ping { id: 1 }).await;
    assert!(client.silent().await, "the server read past a full buffer");

    // Reading the stream lets the connection be read again.
    let mut buf = vec![0u8; 64 << 10];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(client.recv().await, Some(Frame::Ping { id: 1 }));
}

#[tokio::test(start_paused = true)]
async fn data_for_a_stream_never_opened_is_refused() {
    let (_session, mut client) = pair(Limits::default());
    client.data(9, b"?", false).await;
    assert_eq!(
        client.recv().await,
        Some(Frame::RstStream {
            stream_id: 9,
            status: RstStatus::INVALID_STREAM,
        })
    );
}

#[tokio::test(start_paused = true)]
async fn the_peer_hanging_up_ends_streams_and_session() {
    let (mut session, mut client) = pair(Limits::default());
    let id = client.open(Headers::new()).await;
    let mut stream = session.accept().await.unwrap();
    client.data(id, b"partial", false).await;
    drop(client);
    let mut got = Vec::new();
    let err = stream.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(got, b"partial");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    session.closed().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn zero_sized_buffers_still_move_data() {
    let limits = Limits {
        stream_recv_buffer: 0,
        send_buffer: 0,
        max_data_chunk: 0,
        ..Limits::default()
    };
    let (mut session, mut client) = pair(limits);
    let id = client.open(Headers::new()).await;
    let mut stream = session.accept().await.unwrap();
    client.data(id, b"abc", true).await;
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"abc");
    stream.write_all(b"xy").await.unwrap();
    stream.shutdown().await.unwrap();
    assert!(is_reply(&client.recv().await, id));
    let mut echoed = Vec::new();
    while let Some(Frame::Data { data, flags: f, .. }) = client.recv().await {
        echoed.extend_from_slice(&data);
        if f & flags::FIN != 0 {
            break;
        }
    }
    assert_eq!(echoed, b"xy");
}
