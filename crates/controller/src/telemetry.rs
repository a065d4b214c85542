//! Logging: text for people, JSON for log pipelines; `RUST_LOG` filters (default `info`).
//!
//! Two guards keep one odd API answer from flooding or breaking the logs:
//! - kube's client logs the whole response body at WARN when it cannot decode it (a
//!   workload cluster answering with a megabyte of HTML would log all of it), so events of
//!   the `kube_client::client` target at WARN and above are dropped, unless `RUST_LOG`
//!   names that target. That target also warns `timeout in poll` and `eof in poll` when a
//!   watch stream ends; the watchers resume such streams by themselves, so those go too.
//! - every record is at most [`MAX_RECORD`] bytes: text is cut and marked, JSON is
//!   replaced by a small object that is still one valid JSON object per line.

use std::borrow::Cow;
use std::io::{self, Write};

use serde::Deserialize;
use tracing::{Dispatch, Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How records are written: text for people, JSON for log pipelines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The longest record written, newline included.
pub const MAX_RECORD: usize = 4096;

/// The target (module) of kube's body-dumping `warn!`s.
const KUBE_CLIENT: &str = "kube_client::client";

/// How much of an over-long JSON record its replacement keeps, at most.
const JSON_KEPT: usize = 3072;

/// Longest level, target or timestamp carried over into a replacement JSON record.
const JSON_FIELD: usize = 128;

pub fn init(format: LogFormat) {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = dispatch(format, rust_log.as_deref(), io::stdout).try_init();
}

/// The subscriber `init` installs, writing to `writer`, with `rust_log` as `RUST_LOG`.
pub fn dispatch<W>(format: LogFormat, rust_log: Option<&str>, writer: W) -> Dispatch
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = rust_log
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let kept: Vec<&'static str> = SILENCED
        .into_iter()
        .filter(|t| rust_log.is_some_and(|s| names_target(s, t)))
        .collect();
    let silence = filter_fn(move |meta| !is_silenced(meta) || kept.contains(&meta.target()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Capped::new(writer, format));
    match format {
        LogFormat::Text => Dispatch::new(builder.finish().with(silence)),
        LogFormat::Json => Dispatch::new(builder.json().flatten_event(true).finish().with(silence)),
    }
}

/// Whether a `RUST_LOG` value has a directive for exactly `target` (e.g.
/// `kube_client::client=warn`): then the user asked for it and gets it.
fn names_target(rust_log: &str, target: &str) -> bool {
    rust_log.split(',').any(|directive| {
        let name = directive.split(['=', '[']).next().unwrap_or_default();
        name.trim() == target
    })
}

/// Targets whose WARN and ERROR events are dropped unless `RUST_LOG` names them: kube's
/// client dumps whole response bodies there; kube's watcher warns there at every retry of
/// a failing watch (every few seconds while RBAC is missing or the API server is gone),
/// which the controller says itself, once per outage.
const SILENCED: [&str; 2] = [KUBE_CLIENT, "kube_runtime::watcher"];

fn is_silenced(meta: &Metadata<'_>) -> bool {
    meta.is_event()
        && SILENCED.contains(&meta.target())
        && (*meta.level() == Level::WARN || *meta.level() == Level::ERROR)
}

/// A [`MakeWriter`] whose writers cap every record at [`MAX_RECORD`] bytes.
///
/// tracing-subscriber's fmt layer formats an event into a buffer and hands it to a writer
/// of its own with one `write_all` (tracing-subscriber 0.3, `fmt_layer.rs`, `on_event`),
/// so each `write` here is one whole record; `records_stay_bounded_through_the_subscriber`
/// would catch a change of that.
pub struct Capped<M> {
    inner: M,
    format: LogFormat,
}

impl<M> Capped<M> {
    pub fn new(inner: M, format: LogFormat) -> Self {
        Self { inner, format }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Capped<M> {
    type Writer = CappedWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        CappedWriter {
            inner: self.inner.make_writer(),
            format: self.format,
            level: None,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        CappedWriter {
            inner: self.inner.make_writer_for(meta),
            format: self.format,
            level: Some(*meta.level()),
        }
    }
}

/// Writes each record it is given, capped; see [`Capped`].
pub struct CappedWriter<W> {
    inner: W,
    format: LogFormat,
    /// The event's level, for a replacement record whose original is not JSON.
    level: Option<Level>,
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        self.inner
            .write_all(&cap(record, self.format, self.level))?;
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The record as written: unchanged when short enough (and, in JSON, an object), else
/// cut (text) or replaced (JSON), never over [`MAX_RECORD`] bytes.
pub fn cap(record: &[u8], format: LogFormat, level: Option<Level>) -> Cow<'_, [u8]> {
    match format {
        LogFormat::Text if record.len() <= MAX_RECORD => Cow::Borrowed(record),
        LogFormat::Text => Cow::Owned(cut_text(record)),
        LogFormat::Json if record.len() <= MAX_RECORD && record.starts_with(b"{") => {
            Cow::Borrowed(record)
        }
        LogFormat::Json => Cow::Owned(replace_json(record, level)),
    }
}

fn cut_text(record: &[u8]) -> Vec<u8> {
    let marker = format!(" [truncated from {} bytes]\n", record.len());
    let keep = char_floor(record, MAX_RECORD.saturating_sub(marker.len()));
    let keep = before_partial_escape(&record[..keep]);
    let mut out = Vec::with_capacity(MAX_RECORD);
    out.extend_from_slice(&record[..keep]);
    out.extend_from_slice(marker.as_bytes());
    out
}

/// The largest length `<= max` that does not split a UTF-8 character of `bytes`.
fn char_floor(bytes: &[u8], max: usize) -> usize {
    let mut end = max.min(bytes.len());
    // A continuation byte (0b10xx_xxxx) right after the cut means a character straddles it.
    while end > 0 && end < bytes.len() && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    end
}

/// Where to cut `kept` so that it does not end inside an ANSI escape sequence (the text
/// format colours levels and field names), which would garble the marker after it.
fn before_partial_escape(kept: &[u8]) -> usize {
    match kept.iter().rposition(|b| *b == 0x1b) {
        // A CSI sequence ends with a byte in 0x40..=0x7e after its `[`.
        Some(esc)
            if !kept[esc + 1..]
                .iter()
                .skip(1)
                .any(|b| (0x40..=0x7e).contains(b)) =>
        {
            esc
        }
        _ => kept.len(),
    }
}

/// The fields of a JSON record worth carrying over; the rest is skipped unparsed.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    level: Option<Cow<'a, str>>,
    #[serde(borrow)]
    target: Option<Cow<'a, str>>,
}

fn replace_json(record: &[u8], level: Option<Level>) -> Vec<u8> {
    let head: Option<Head<'_>> = serde_json::from_slice(record).ok();
    let short =
        |s: Option<Cow<'_, str>>| s.map(|s| s[..char_floor(s.as_bytes(), JSON_FIELD)].to_string());
    let (timestamp, recorded_level, target) = match head {
        Some(h) => (short(h.timestamp), short(h.level), short(h.target)),
        None => (None, None, None),
    };
    let level = recorded_level.or_else(|| level.map(|l| l.to_string()));
    let text = String::from_utf8_lossy(record);
    let text = text.trim_end_matches('\n');
    let replacement = |kept: &str| {
        let object = serde_json::json!({
            "timestamp": timestamp,
            "level": level,
            "target": target,
            "message": format!("log record of {} bytes truncated", record.len()),
            "truncated": true,
            "record": kept,
        });
        let mut out = object.to_string().into_bytes();
        out.push(b'\n');
        out
    };
    // Escaping grows the kept text (quotes, control characters): keep what fits escaped.
    let budget = MAX_RECORD.saturating_sub(replacement("").len());
    let mut used = 0;
    let mut kept = 0;
    for (at, c) in text.char_indices() {
        used += escaped_len(c);
        if used > budget || at + c.len_utf8() > JSON_KEPT {
            break;
        }
        kept = at + c.len_utf8();
    }
    let mut out = replacement(&text[..kept]);
    // Should serde_json ever escape more than `escaped_len` says, keep less.
    while out.len() > MAX_RECORD && kept > 0 {
        kept = char_floor(text.as_bytes(), kept.saturating_sub(out.len() - MAX_RECORD));
        out = replacement(&text[..kept]);
    }
    out
}

/// The length of `c` in a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Everything written, for assertions.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;

        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    /// A text record of exactly `len` bytes, newline included.
    fn text_record(len: usize, fill: char) -> Vec<u8> {
        let mut s = String::from("2025-01-01T00:00:00Z  WARN demo: ");
        while s.len() + fill.len_utf8() < len {
            s.push(fill);
        }
        while s.len() < len - 1 {
            s.push('x');
        }
        s.push('\n');
        assert_eq!(s.len(), len);
        s.into_bytes()
    }

    /// A JSON record of exactly `len` bytes, newline included.
    fn json_record(len: usize, fill: &str) -> Vec<u8> {
        let head = r#"{"timestamp":"2025-01-01T00:00:00Z","level":"WARN","message":""#;
        let tail = r#"","target":"kube_client::client"}"#;
        let mut message = String::new();
        while head.len() + message.len() + fill.len() + tail.len() < len {
            message.push_str(fill);
        }
        while head.len() + message.len() + tail.len() < len - 1 {
            message.push('x');
        }
        let record = format!("{head}{message}{tail}\n");
        assert_eq!(record.len(), len);
        serde_json::from_str::<serde_json::Value>(&record).unwrap();
        record.into_bytes()
    }

    fn assert_one_line(out: &[u8]) -> &str {
        let text = std::str::from_utf8(out).expect("valid UTF-8");
        assert!(out.len() <= MAX_RECORD, "{} bytes", out.len());
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
        text
    }

    #[test]
    fn text_at_the_limit_is_unchanged() {
        let record = text_record(MAX_RECORD, 'a');
        assert_eq!(&*cap(&record, LogFormat::Text, None), &record[..]);
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        for (len, fill) in [
            (MAX_RECORD + 1, 'a'),
            (MAX_RECORD * 50, 'b'),
            (MAX_RECORD + 1, 'é'),
            (MAX_RECORD + 2, '€'),
            (MAX_RECORD + 3, '😀'),
            (MAX_RECORD * 3, '😀'),
        ] {
            let record = text_record(len, fill);
            let out = cap(&record, LogFormat::Text, None);
            let text = assert_one_line(&out);
            assert!(
                text.ends_with(&format!(" [truncated from {len} bytes]\n")),
                "{len} {fill}: {}",
                &text[text.len() - 60..]
            );
            let kept = text.split(" [truncated").next().unwrap();
            assert!(record.starts_with(kept.as_bytes()));
            // Nothing is given away: at most one character short of the limit.
            assert!(out.len() > MAX_RECORD - fill.len_utf8(), "{}", out.len());
        }
    }

    #[test]
    fn a_cut_never_ends_inside_a_colour_code() {
        let mut record = text_record(MAX_RECORD + 100, 'a');
        let marker_len = format!(" [truncated from {} bytes]\n", record.len()).len();
        let at = MAX_RECORD - marker_len - 2;
        record[at..at + 4].copy_from_slice(b"\x1b[3m");
        let out = cap(&record, LogFormat::Text, None);
        let text = assert_one_line(&out);
        assert!(!text.contains('\x1b'), "{}", &text[text.len() - 60..]);
        assert_eq!(before_partial_escape(b"a\x1b[3mb"), 6);
        assert_eq!(before_partial_escape(b"a\x1b[3"), 1);
        assert_eq!(before_partial_escape(b"a\x1b"), 1);
    }

    #[test]
    fn json_at_the_limit_is_unchanged() {
        let record = json_record(MAX_RECORD, "a");
        assert_eq!(&*cap(&record, LogFormat::Json, None), &record[..]);
    }

    #[test]
    fn long_json_is_replaced_by_a_small_object() {
        for (len, fill) in [
            (MAX_RECORD + 1, "a"),
            (MAX_RECORD * 100, "é"),
            (MAX_RECORD + 2, "€"),
            (MAX_RECORD * 2, "😀"),
            // Escaping makes these grow: quotes and control characters.
            (MAX_RECORD * 2, "\\\""),
            (MAX_RECORD * 2, "\\u0001"),
        ] {
            let record = json_record(len, fill);
            let out = cap(&record, LogFormat::Json, Some(Level::INFO));
            let line = assert_one_line(&out);
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["truncated"], true);
            assert_eq!(v["level"], "WARN", "the record's level, not the fallback");
            assert_eq!(v["target"], "kube_client::client");
            assert_eq!(v["timestamp"], "2025-01-01T00:00:00Z");
            assert!(v["message"].as_str().unwrap().contains(&len.to_string()));
            let kept = v["record"].as_str().unwrap();
            assert!(kept.len() <= JSON_KEPT);
            // As much as fits: all it may keep, or up to the last character that fits.
            assert!(
                kept.len() > JSON_KEPT - 4 || out.len() > MAX_RECORD - 6,
                "{fill:?}: kept {} bytes in {}",
                kept.len(),
                out.len()
            );
            assert!(record.starts_with(kept.as_bytes()), "{fill:?}");
        }
    }

    #[test]
    fn a_record_that_is_not_json_becomes_json() {
        let out = cap(
            b"Unable to format the following event\n",
            LogFormat::Json,
            Some(Level::ERROR),
        );
        let v: serde_json::Value = serde_json::from_str(assert_one_line(&out)).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["record"], "Unable to format the following event");
        let long = text_record(MAX_RECORD * 2, 'z');
        let out = cap(&long, LogFormat::Json, None);
        let v: serde_json::Value = serde_json::from_str(assert_one_line(&out)).unwrap();
        assert_eq!(v["level"], serde_json::Value::Null);
        assert_eq!(v["truncated"], true);
    }

    #[test]
    fn the_replacement_fits_even_with_outlandish_fields() {
        let target = "\u{1}".repeat(MAX_RECORD);
        let record = serde_json::json!({"level": "\"".repeat(MAX_RECORD), "target": target,
            "timestamp": "\\".repeat(MAX_RECORD), "message": "\u{2}".repeat(MAX_RECORD)});
        let record = format!("{record}\n");
        let out = cap(record.as_bytes(), LogFormat::Json, None);
        serde_json::from_str::<serde_json::Value>(assert_one_line(&out)).unwrap();
    }

    #[test]
    fn records_stay_bounded_through_the_subscriber() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let sink = Sink::default();
            let dispatch = dispatch(format, Some("info"), sink.clone());
            tracing::dispatcher::with_default(&dispatch, || {
                tracing::info!(body = %"é".repeat(10_000), "a long one");
                tracing::info!("a short one");
                // Debug escapes the newlines, so each event stays one line in text too.
                tracing::warn!(error = ?"\"quoted\"\n".repeat(2_000), "escapes");
            });
            let text = sink.text();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 3, "{format:?}: {text}");
            for line in &lines {
                assert!(line.len() < MAX_RECORD, "{format:?}: {} bytes", line.len());
                if format == LogFormat::Json {
                    serde_json::from_str::<serde_json::Value>(line).unwrap();
                }
            }
            assert!(lines[1].contains("a short one"));
            assert!(lines[0].contains("truncated"));
        }
    }

    #[test]
    fn rust_log_may_name_the_kube_target() {
        assert!(names_target("info,kube_client::client=warn", KUBE_CLIENT));
        assert!(names_target("kube_client::client[req]=debug", KUBE_CLIENT));
        assert!(names_target(" kube_client::client ", KUBE_CLIENT));
        assert!(!names_target("info,kube_client=debug", KUBE_CLIENT));
        assert!(!names_target("kube_client::client::tls=warn", KUBE_CLIENT));
        assert!(!names_target("", KUBE_CLIENT));
    }

    /// A kube client whose API server answers every request with `body`.
    fn client_answering(body: &'static str) -> kube::Client {
        let service = tower::service_fn(move |_: http::Request<kube::client::Body>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(kube::client::Body::from(
                body.as_bytes().to_vec(),
            )))
        });
        kube::Client::new(service, "default")
    }

    /// Logs what kube logs for an answer it cannot decode, under `rust_log`.
    async fn kube_logs_for_garbage(rust_log: &str, marker: &'static str) -> String {
        let sink = Sink::default();
        let dispatch = dispatch(LogFormat::Text, Some(rust_log), sink.clone());
        let _guard = tracing::dispatcher::set_default(&dispatch);
        let client = client_answering(marker);
        let request = http::Request::get("/api/v1/nodes")
            .body(Vec::new())
            .unwrap();
        let result = client.request::<serde_json::Value>(request).await;
        assert!(
            matches!(result, Err(kube::Error::SerdeError(_))),
            "{result:?}"
        );
        tracing::warn!(target: "kube_client::client::tls", "a sibling's warning");
        sink.text()
    }

    #[tokio::test]
    async fn kube_never_dumps_a_body_unless_asked() {
        const MARKER: &str = "<html>MARKER-7f3a not JSON</html>";
        let logs = kube_logs_for_garbage("info", MARKER).await;
        assert!(!logs.contains("MARKER-7f3a"), "{logs}");
        assert!(logs.contains("a sibling's warning"), "{logs}");
        let logs = kube_logs_for_garbage("debug", MARKER).await;
        assert!(!logs.contains("MARKER-7f3a"), "{logs}");
        // The same call with the target named: the dump is there, so the filter is what
        // hid it above.
        let logs = kube_logs_for_garbage("info,kube_client::client=warn", MARKER).await;
        assert!(logs.contains("MARKER-7f3a"), "{logs}");
    }
}
