//! Watch answers, event by event: the backing server writes one JSON event per line;
//! each is mapped into the client's terms as soon as its line is complete, so a watch
//! through the front is as live as one against the server itself.

use bytes::Bytes;
use serde_json::{Value, json};
use tenancy::{Prefix, Target};

use crate::error::status_object;

/// Cuts a byte stream into lines; a line split across chunks waits for its end.
#[derive(Debug, Default)]
pub struct EventLines {
    partial: Vec<u8>,
}

impl EventLines {
    /// The lines `chunk` completes, without their newlines; blank lines are skipped.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for byte in chunk {
            if *byte == b'\n' {
                let line = std::mem::take(&mut self.partial);
                if line.iter().any(|b| !b.is_ascii_whitespace()) {
                    lines.push(line);
                }
            } else {
                self.partial.push(*byte);
            }
        }
        lines
    }

    /// What is left when the stream ends: a last event without a newline.
    pub fn finish(self) -> Option<Vec<u8>> {
        self.partial
            .iter()
            .any(|b| !b.is_ascii_whitespace())
            .then_some(self.partial)
    }
}

/// One backing event line as the client's event line; `Err` carries the ERROR event that
/// ends the stream (an event that cannot be shown is never passed on).
pub fn map_event_line(prefix: &Prefix, target: &Target, line: &[u8]) -> Result<Bytes, Bytes> {
    let event: Value = serde_json::from_slice(line).map_err(|e| {
        error_event(&format!(
            "the backing server sent a watch event that is not JSON: {e}"
        ))
    })?;
    let mapped = tenancy::watch_event_from_backing(prefix, target, event).map_err(|e| {
        // The detail may name another cluster's objects: only the reason is shown.
        tracing::warn!(error = %e, "a watch event of the backing server refused");
        error_event(&format!(
            "the backing server's watch event cannot be shown to this cluster ({})",
            e.reason()
        ))
    })?;
    Ok(line_of(&mapped))
}

/// An ERROR event with an internal-error Status, as a real server ends a broken watch.
pub fn error_event(message: &str) -> Bytes {
    let status = status_object(
        http::StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        message,
    );
    line_of(&json!({"type": "ERROR", "object": status}))
}

fn line_of(value: &Value) -> Bytes {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenancy::kinds::by_plural;

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let mut lines = EventLines::default();
        assert!(lines.push(b"{\"a\":").is_empty());
        assert_eq!(lines.push(b"1}\n\n{\"b\""), vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(lines.push(b":2}\n"), vec![b"{\"b\":2}".to_vec()]);
        assert!(lines.push(b"{\"c\":3}").is_empty());
        assert_eq!(lines.finish(), Some(b"{\"c\":3}".to_vec()));
    }

    #[test]
    fn events_are_mapped_and_a_foreign_one_ends_the_watch() {
        let prefix = Prefix::parse("taaaaa").unwrap();
        let nodes = Target::new(by_plural("", "v1", "nodes").unwrap());
        let own = json!({"type": "ADDED", "object": {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": "taaaaa-node-0", "labels": {tenancy::CLUSTER_LABEL: "taaaaa"}}}});
        let line = map_event_line(&prefix, &nodes, own.to_string().as_bytes()).unwrap();
        let event: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(event["object"]["metadata"]["name"], "node-0");
        assert!(line.ends_with(b"\n"));

        let foreign = json!({"type": "ADDED", "object": {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": "tbbbbb-node-0", "labels": {tenancy::CLUSTER_LABEL: "tbbbbb"}}}});
        let error = map_event_line(&prefix, &nodes, foreign.to_string().as_bytes()).unwrap_err();
        let event: Value = serde_json::from_slice(&error).unwrap();
        assert_eq!(event["type"], "ERROR");
        assert_eq!(event["object"]["code"], 500);
        assert!(
            !error.windows(6).any(|w| w == b"tbbbbb"),
            "no name of another cluster leaks"
        );
    }
}
