//! A server session on an upgraded connection: streams in, bytes both ways.
//!
//! One task (the driver) owns the connection and is the only one to read or
//! write it. Streams and the [`Session`] handle share the connection's state
//! behind one mutex; they queue frames and the driver writes them. Reading
//! and writing are independent, so a peer that writes without reading cannot
//! wedge the session while buffers have room, and when they do not, the
//! driver stops reading the socket instead of buffering more.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::{Sink, Stream as _};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::codec::Framed;

use crate::codec::{CodecError, CodecLimits, SpdyCodec};
use crate::frame::{Frame, GoAwayStatus, Headers, RstStatus, flags};

/// Control frames the driver may owe the peer (ping echoes, resets) before it
/// stops reading: a peer that floods pings without reading pays, not our memory.
const MAX_QUEUED_CONTROL: usize = 256;

/// Frames handled per wake-up before the driver yields to other tasks.
const BUDGET: usize = 128;

/// How long a closing session may spend flushing its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What one connection may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub codec: CodecLimits,
    /// Streams open at once; more are refused with RST_STREAM REFUSED_STREAM.
    pub max_concurrent_streams: usize,
    /// Bytes received for one stream and not yet read before the connection
    /// stops being read. A stream may exceed it by one frame.
    pub stream_recv_buffer: usize,
    /// Largest DATA frame written: big writes are split so one stream cannot
    /// hold the connection for long.
    pub max_data_chunk: usize,
    /// Bytes of DATA queued for the connection before writers wait.
    pub send_buffer: usize,
    /// Close a connection with no stream and no frame for this long. The
    /// kubelet's default for streaming connections is four hours.
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            codec: CodecLimits::default(),
            max_concurrent_streams: 256,
            stream_recv_buffer: 256 << 10,
            max_data_chunk: 32 << 10,
            send_buffer: 256 << 10,
            idle_timeout: Some(Duration::from_secs(4 * 60 * 60)),
        }
    }
}

/// Why a session ended other than cleanly.
#[derive(Debug, Clone, Error)]
pub enum SessionError {
    /// The peer sent bytes that are not SPDY/3 frames, or frames over a limit.
    #[error("bad frame from the peer: {0}")]
    Codec(Arc<CodecError>),
    /// The peer broke a rule of the session (stream ids, frame order).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("connection failed: {0}")]
    Io(Arc<io::Error>),
}

impl From<CodecError> for SessionError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => SessionError::Io(Arc::new(e)),
            other => SessionError::Codec(Arc::new(other)),
        }
    }
}

/// One stream's half of the shared state.
#[derive(Default)]
struct Slot {
    recv: VecDeque<Bytes>,
    recv_len: usize,
    remote_fin: bool,
    local_fin: bool,
    reset: Option<RstStatus>,
    /// A [`Stream`] has been handed out; before that the slot waits in `accepted`.
    handed_out: bool,
    /// This stream's frames still in `outbound`.
    queued: usize,
    reader: Option<Waker>,
    /// Waiting for a flush or for `queued` to drain.
    flusher: Option<Waker>,
}

impl Slot {
    fn wake_all(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }
}

struct Inner {
    limits: Limits,
    streams: HashMap<u32, Slot>,
    accepted: VecDeque<(u32, Headers)>,
    outbound: VecDeque<Frame>,
    queued_data: usize,
    queued_control: usize,
    /// Streams waiting for `queued_data` to fall under the send buffer.
    writers: Vec<Waker>,
    driver: Option<Waker>,
    acceptor: Option<Waker>,
    closed_waiters: Vec<Waker>,
    last_remote_id: u32,
    /// A stream whose full buffer holds the connection unread.
    blocked_on: Option<u32>,
    peer_went_away: bool,
    goaway_sent: bool,
    abort: bool,
    /// Set when the driver starts closing: no new frames are accepted.
    closing: bool,
    result: Option<Result<(), SessionError>>,
}

impl Inner {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            streams: HashMap::new(),
            accepted: VecDeque::new(),
            outbound: VecDeque::new(),
            queued_data: 0,
            queued_control: 0,
            writers: Vec::new(),
            driver: None,
            acceptor: None,
            closed_waiters: Vec::new(),
            last_remote_id: 0,
            blocked_on: None,
            peer_went_away: false,
            goaway_sent: false,
            abort: false,
            closing: false,
            result: None,
        }
    }

    fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    fn wake_acceptor(&mut self) {
        if let Some(w) = self.acceptor.take() {
            w.wake();
        }
    }

    fn no_new_streams(&self) -> bool {
        self.peer_went_away || self.goaway_sent || self.closing || self.result.is_some()
    }

    fn push_control(&mut self, frame: Frame) {
        self.queued_control += 1;
        self.outbound.push_back(frame);
        self.wake_driver();
    }

    fn push_data(&mut self, id: u32, flags: u8, data: Bytes) {
        self.queued_data += data.len();
        if let Some(slot) = self.streams.get_mut(&id) {
            slot.queued += 1;
        }
        self.outbound.push_back(Frame::Data {
            stream_id: id,
            flags,
            data,
        });
        self.wake_driver();
    }

    fn send_goaway(&mut self, status: GoAwayStatus) {
        if !self.goaway_sent {
            self.goaway_sent = true;
            let last = self.last_remote_id;
            self.push_control(Frame::GoAway {
                last_good_stream_id: last,
                status,
            });
            self.wake_acceptor();
        }
    }

    /// Kills a stream from either side: its queued data is dropped, its
    /// reader and writer see an error.
    fn reset_stream(&mut self, id: u32, status: RstStatus, tell_peer: bool) {
        let Some(slot) = self.streams.get_mut(&id) else {
            return;
        };
        if slot.reset.is_some() {
            return;
        }
        slot.reset = Some(status);
        slot.recv.clear();
        slot.recv_len = 0;
        slot.queued = 0;
        slot.wake_all();
        let handed_out = slot.handed_out;
        let mut dropped = 0;
        self.outbound.retain(|f| match f {
            Frame::Data {
                stream_id, data, ..
            } if *stream_id == id => {
                dropped += data.len();
                false
            }
            _ => true,
        });
        self.release_data(dropped);
        if self.blocked_on == Some(id) {
            self.blocked_on = None;
        }
        if !handed_out {
            // Nobody will ever read it: forget it now.
            self.streams.remove(&id);
            self.accepted.retain(|(i, _)| *i != id);
        }
        if tell_peer {
            self.push_control(Frame::RstStream {
                stream_id: id,
                status,
            });
        }
        self.wake_driver();
    }

    fn release_data(&mut self, bytes: usize) {
        self.queued_data = self.queued_data.saturating_sub(bytes);
        if self.queued_data == 0 || self.queued_data < self.limits.send_buffer {
            for w in self.writers.drain(..) {
                w.wake();
            }
        }
    }

    /// Bookkeeping once the driver has handed a frame to the connection.
    fn sent(&mut self, frame: &Frame) {
        match frame {
            Frame::Data {
                stream_id, data, ..
            } => {
                self.release_data(data.len());
                if let Some(slot) = self.streams.get_mut(stream_id) {
                    slot.queued = slot.queued.saturating_sub(1);
                    if slot.queued == 0
                        && let Some(w) = slot.flusher.take()
                    {
                        w.wake();
                    }
                }
            }
            _ => self.queued_control = self.queued_control.saturating_sub(1),
        }
    }

    fn reading_paused(&mut self) -> bool {
        if self.queued_control >= MAX_QUEUED_CONTROL {
            return true;
        }
        match self.blocked_on {
            Some(id) => match self.streams.get(&id) {
                Some(slot)
                    if slot.recv_len > 0 && slot.recv_len >= self.limits.stream_recv_buffer =>
                {
                    true
                }
                _ => {
                    self.blocked_on = None;
                    false
                }
            },
            None => false,
        }
    }

    fn handle(&mut self, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags: f,
                headers,
                ..
            } => {
                if stream_id.is_multiple_of(2) {
                    return Err(SessionError::Protocol("client opened an even stream id"));
                }
                if stream_id <= self.last_remote_id {
                    return Err(SessionError::Protocol("stream ids did not increase"));
                }
                self.last_remote_id = stream_id;
                if self.no_new_streams() || self.streams.len() >= self.limits.max_concurrent_streams
                {
                    self.push_control(Frame::RstStream {
                        stream_id,
                        status: RstStatus::REFUSED_STREAM,
                    });
                    return Ok(());
                }
                let unidirectional = f & flags::UNIDIRECTIONAL != 0;
                self.streams.insert(
                    stream_id,
                    Slot {
                        remote_fin: f & flags::FIN != 0,
                        // The client asked for a stream we may not write to.
                        local_fin: unidirectional,
                        ..Slot::default()
                    },
                );
                if !unidirectional {
                    self.push_control(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: Headers::new(),
                    });
                }
                self.accepted.push_back((stream_id, headers));
                self.wake_acceptor();
            }
            Frame::SynReply { .. } => {
                return Err(SessionError::Protocol(
                    "SYN_REPLY for a stream we never opened",
                ));
            }
            Frame::Headers {
                stream_id,
                flags: f,
                ..
            } => {
                if f & flags::FIN != 0
                    && let Some(slot) = self.streams.get_mut(&stream_id)
                {
                    slot.remote_fin = true;
                    slot.wake_all();
                }
            }
            Frame::RstStream { stream_id, status } => self.reset_stream(stream_id, status, false),
            Frame::Ping { id } => {
                // Odd ids are the client's; even ones would answer our pings, and we send none.
                if !id.is_multiple_of(2) {
                    self.push_control(Frame::Ping { id });
                }
            }
            Frame::GoAway { .. } => {
                self.peer_went_away = true;
                self.wake_acceptor();
            }
            Frame::Data {
                stream_id,
                flags: f,
                data,
            } => self.handle_data(stream_id, f, data),
            // No flow control (see the crate docs); unknown types are ignored as the draft says.
            Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    fn handle_data(&mut self, id: u32, f: u8, data: Bytes) {
        let limit = self.limits.stream_recv_buffer;
        match self.streams.get_mut(&id) {
            Some(slot) if slot.reset.is_some() => {}
            Some(slot) if slot.remote_fin => {
                self.reset_stream(id, RstStatus::STREAM_ALREADY_CLOSED, true);
            }
            Some(slot) => {
                if !data.is_empty() {
                    slot.recv_len += data.len();
                    slot.recv.push_back(data);
                }
                if f & flags::FIN != 0 {
                    slot.remote_fin = true;
                }
                if let Some(w) = slot.reader.take() {
                    w.wake();
                }
                if slot.recv_len > 0 && slot.recv_len >= limit {
                    self.blocked_on = Some(id);
                }
            }
            // A stream that was never opened; data for one already closed
            // here may still be in flight and is dropped silently.
            None if id > self.last_remote_id || id.is_multiple_of(2) => {
                self.push_control(Frame::RstStream {
                    stream_id: id,
                    status: RstStatus::INVALID_STREAM,
                });
            }
            None => {}
        }
    }

    fn finish(&mut self, result: Result<(), SessionError>) {
        self.closing = true;
        self.result = Some(result);
        for slot in self.streams.values_mut() {
            slot.wake_all();
        }
        for w in self.writers.drain(..) {
            w.wake();
        }
        for w in self.closed_waiters.drain(..) {
            w.wake();
        }
        self.wake_acceptor();
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic elsewhere must not turn into panics here; the state stays usable.
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The server end of one SPDY/3.1 connection.
///
/// Dropping it stops accepting streams (GOAWAY) but lets accepted streams
/// finish; the connection closes when the last of them is dropped.
pub struct Session {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Serves SPDY on `io`, the connection after the `101 Switching Protocols`.
    ///
    /// # Panics
    /// Outside a Tokio runtime, which runs the connection as a task.
    pub fn new<T>(io: T, limits: Limits) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = Arc::new(Mutex::new(Inner::new(limits)));
        let driver = Driver {
            io: Framed::new(io, SpdyCodec::new(limits.codec)),
            inner: inner.clone(),
            last_activity: Instant::now(),
            idle_timeout: limits.idle_timeout,
            idle: limits.idle_timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            phase: Phase::Running,
        };
        tokio::spawn(driver);
        Self { inner }
    }

    /// The next stream the client opened, or `None` once no more can come
    /// (GOAWAY either way, or the connection ended).
    pub async fn accept(&mut self) -> Option<Stream> {
        poll_fn(|cx| {
            let mut inner = lock(&self.inner);
            while let Some((id, headers)) = inner.accepted.pop_front() {
                if let Some(slot) = inner.streams.get_mut(&id) {
                    slot.handed_out = true;
                    return Poll::Ready(Some(Stream {
                        id,
                        headers,
                        inner: self.inner.clone(),
                    }));
                }
            }
            if inner.no_new_streams() {
                return Poll::Ready(None);
            }
            inner.acceptor = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Stops accepting streams (GOAWAY with status OK); open streams carry on.
    pub fn go_away(&self) {
        lock(&self.inner).send_goaway(GoAwayStatus::OK);
    }

    /// Resets every stream and closes the connection now.
    pub fn abort(&self) {
        let mut inner = lock(&self.inner);
        inner.abort = true;
        inner.wake_driver();
    }

    /// Waits until the connection has ended; `Ok` for an orderly end (GOAWAY,
    /// idle timeout, the peer hanging up), the cause otherwise.
    pub async fn closed(&self) -> Result<(), SessionError> {
        poll_fn(|cx| {
            let mut inner = lock(&self.inner);
            match &inner.result {
                Some(result) => Poll::Ready(result.clone()),
                None => {
                    inner.closed_waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut inner = lock(&self.inner);
        let waiting: Vec<u32> = inner.accepted.iter().map(|(id, _)| *id).collect();
        for id in waiting {
            inner.reset_stream(id, RstStatus::REFUSED_STREAM, true);
        }
        inner.send_goaway(GoAwayStatus::OK);
        inner.wake_driver();
    }
}

/// One stream the client opened: its DATA in, ours out.
///
/// `shutdown` sends FIN (the client reads EOF); dropping the stream without
/// it does the same. Reads end with EOF at the client's FIN, and with
/// `ConnectionReset` if either side reset the stream.
pub struct Stream {
    id: u32,
    headers: Headers,
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

fn reset_error(status: RstStatus) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("stream reset with status {}", status.0),
    )
}

fn session_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "SPDY session closed")
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers of the client's SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Abandons the stream in both directions and tells the client why.
    pub fn reset(&self, status: RstStatus) {
        let mut inner = lock(&self.inner);
        if !inner.closing {
            inner.reset_stream(self.id, status, true);
        }
    }

    /// Whether the stream was reset (by either side) and with which status.
    pub fn reset_status(&self) -> Option<RstStatus> {
        lock(&self.inner)
            .streams
            .get(&self.id)
            .and_then(|slot| slot.reset)
    }

    fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.inner);
        let closed = inner.result.is_some();
        let Some(slot) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(session_gone()));
        };
        if let Some(status) = slot.reset {
            return Poll::Ready(Err(reset_error(status)));
        }
        if slot.queued == 0 {
            return Poll::Ready(Ok(()));
        }
        if closed {
            return Poll::Ready(Err(session_gone()));
        }
        slot.flusher = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.inner);
        let limit = inner.limits.stream_recv_buffer;
        let closed = inner.result.is_some();
        let Some(slot) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(session_gone()));
        };
        if let Some(status) = slot.reset {
            return Poll::Ready(Err(reset_error(status)));
        }
        if let Some(front) = slot.recv.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                slot.recv.pop_front();
            }
            slot.recv_len -= n;
            let unblocked = slot.recv_len == 0 || slot.recv_len < limit;
            if unblocked && inner.blocked_on == Some(self.id) {
                inner.blocked_on = None;
                inner.wake_driver();
            }
            return Poll::Ready(Ok(()));
        }
        if slot.remote_fin {
            return Poll::Ready(Ok(()));
        }
        if closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "SPDY session closed before the stream ended",
            )));
        }
        slot.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = lock(&self.inner);
        let limits = inner.limits;
        let stopped = inner.closing;
        // Some room is always granted, so a zero-sized buffer cannot wedge writers.
        let over = inner.queued_data > 0 && inner.queued_data >= limits.send_buffer;
        let Some(slot) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(session_gone()));
        };
        if let Some(status) = slot.reset {
            return Poll::Ready(Err(reset_error(status)));
        }
        if slot.local_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if stopped {
            return Poll::Ready(Err(session_gone()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if over {
            let waker = cx.waker();
            if !inner.writers.iter().any(|w| w.will_wake(waker)) {
                inner.writers.push(waker.clone());
            }
            return Poll::Pending;
        }
        let n = buf.len().min(limits.max_data_chunk.max(1));
        inner.push_data(self.id, 0, Bytes::copy_from_slice(&buf[..n]));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drained(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut inner = lock(&self.inner);
            let stopped = inner.closing;
            let Some(slot) = inner.streams.get_mut(&self.id) else {
                return Poll::Ready(Err(session_gone()));
            };
            if slot.reset.is_none() && !slot.local_fin {
                if stopped {
                    return Poll::Ready(Err(session_gone()));
                }
                slot.local_fin = true;
                inner.push_data(self.id, flags::FIN, Bytes::new());
            }
        }
        self.poll_drained(cx)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut inner = lock(&self.inner);
        let Some(slot) = inner.streams.remove(&self.id) else {
            return;
        };
        if slot.reset.is_none() && !slot.local_fin && !inner.closing {
            inner.push_data(self.id, flags::FIN, Bytes::new());
        }
        if inner.blocked_on == Some(self.id) {
            inner.blocked_on = None;
        }
        inner.wake_driver();
    }
}

enum Phase {
    Running,
    Closing {
        result: Option<Result<(), SessionError>>,
        deadline: Pin<Box<Sleep>>,
    },
    Done,
}

/// The task that owns the connection.
struct Driver<T> {
    io: Framed<T, SpdyCodec>,
    inner: Arc<Mutex<Inner>>,
    last_activity: Instant,
    idle_timeout: Option<Duration>,
    idle: Option<Pin<Box<Sleep>>>,
    phase: Phase,
}

impl<T> Future for Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Running => match this.poll_running(cx) {
                    Poll::Ready(end) => {
                        let mut inner = lock(&this.inner);
                        inner.closing = true;
                        let flush = match &end {
                            Err(SessionError::Io(_)) => false,
                            Err(_) => {
                                inner.send_goaway(GoAwayStatus::PROTOCOL_ERROR);
                                true
                            }
                            Ok(()) => {
                                inner.send_goaway(GoAwayStatus::OK);
                                true
                            }
                        };
                        drop(inner);
                        if !flush {
                            this.finish(end);
                            return Poll::Ready(());
                        }
                        this.phase = Phase::Closing {
                            result: Some(end),
                            deadline: Box::pin(tokio::time::sleep(CLOSE_GRACE)),
                        };
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Closing { result, deadline } => {
                    let timed_out = deadline.as_mut().poll(cx).is_ready();
                    // Write errors end the flush: the connection is going anyway.
                    let done = match write_out(&mut this.io, &this.inner, cx) {
                        Poll::Ready(Ok(_)) => Pin::new(&mut this.io).poll_close(cx).is_ready(),
                        Poll::Ready(Err(_)) => true,
                        Poll::Pending => false,
                    };
                    if !done && !timed_out {
                        return Poll::Pending;
                    }
                    let end = result.take().unwrap_or(Ok(()));
                    this.finish(end);
                    return Poll::Ready(());
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Hands queued frames to the connection and flushes it. `Ready(Ok)` once
/// everything queued is written.
fn write_out<T>(
    io: &mut Framed<T, SpdyCodec>,
    shared: &Mutex<Inner>,
    cx: &mut Context<'_>,
) -> Poll<Result<bool, SessionError>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut wrote = false;
    loop {
        let mut inner = lock(shared);
        if inner.outbound.is_empty() {
            break;
        }
        match Pin::new(&mut *io).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => return Poll::Pending,
        }
        let Some(frame) = inner.outbound.pop_front() else {
            break;
        };
        inner.sent(&frame);
        drop(inner);
        Pin::new(&mut *io).start_send(frame)?;
        wrote = true;
    }
    match Pin::new(&mut *io).poll_flush(cx) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(wrote)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
        Poll::Pending => Poll::Pending,
    }
}

impl<T> Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn finish(&mut self, result: Result<(), SessionError>) {
        self.phase = Phase::Done;
        lock(&self.inner).finish(result);
    }

    /// Serves the connection until it should close; the result says why.
    fn poll_running(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        let mut budget = BUDGET;
        loop {
            let mut progressed = false;
            {
                let mut inner = lock(&self.inner);
                inner.driver = Some(cx.waker().clone());
                if inner.abort {
                    let open: Vec<u32> = inner.streams.keys().copied().collect();
                    for id in open {
                        inner.reset_stream(id, RstStatus::CANCEL, true);
                    }
                    return Poll::Ready(Ok(()));
                }
                while budget > 0 && !inner.reading_paused() {
                    match Pin::new(&mut self.io).poll_next(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            budget -= 1;
                            progressed = true;
                            self.last_activity = Instant::now();
                            inner.handle(frame)?;
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                        // The peer hung up; nothing more can arrive.
                        Poll::Ready(None) => return Poll::Ready(Ok(())),
                        Poll::Pending => break,
                    }
                }
            }
            match write_out(&mut self.io, &self.inner, cx) {
                Poll::Ready(Ok(wrote)) => {
                    if wrote {
                        self.last_activity = Instant::now();
                        progressed = true;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            let (no_streams, drained) = {
                let inner = lock(&self.inner);
                let went_away = inner.peer_went_away || inner.goaway_sent;
                (
                    inner.streams.is_empty(),
                    went_away && inner.streams.is_empty() && inner.outbound.is_empty(),
                )
            };
            if drained || (no_streams && self.idle_expired(cx)) {
                return Poll::Ready(Ok(()));
            }
            if !progressed {
                return Poll::Pending;
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    /// Whether the connection has been quiet for the idle timeout; otherwise
    /// arms the timer for the moment it would be.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.idle_timeout else {
            return false;
        };
        let Some(sleep) = self.idle.as_mut() else {
            return false;
        };
        let due = self.last_activity + timeout;
        if Instant::now() >= due {
            return true;
        }
        if sleep.deadline() != due {
            sleep.as_mut().reset(due);
        }
        // Registers the wake-up; it fires at `due` at the earliest.
        sleep.as_mut().poll(cx).is_ready() && Instant::now() >= due
    }
}
