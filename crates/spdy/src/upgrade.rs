//! The HTTP/1.1 handshake before SPDY: which requests to upgrade, and how to answer.
//!
//! The kubelet first negotiates a stream protocol (for port-forward,
//! `portforward.k8s.io`) from the client's `X-Stream-Protocol-Version`
//! headers, then checks `Connection: Upgrade` and `Upgrade: SPDY/3.1`, and
//! answers `101 Switching Protocols`. Its refusals are 400 for a malformed
//! request and 403, listing what it accepts, when no protocol matches. This
//! module makes those decisions without any HTTP server; the caller writes
//! the response and hands the raw connection to [`crate::Session`].

use http::header::{CONNECTION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, UPGRADE};
use http::{Response, StatusCode};
use thiserror::Error;

/// The `Upgrade` token of the only SPDY version spoken.
pub const SPDY_31: &str = "SPDY/3.1";

/// The client's stream protocols, most preferred first; the server's choice in the 101.
pub const X_STREAM_PROTOCOL_VERSION: HeaderName =
    HeaderName::from_static("x-stream-protocol-version");

/// The server's protocols, sent with a 403 when none matched.
pub const X_ACCEPTED_STREAM_PROTOCOL_VERSIONS: HeaderName =
    HeaderName::from_static("x-accepted-stream-protocol-versions");

/// An upgrade the server agrees to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The stream protocol chosen: the client's most preferred one the server supports.
    pub protocol: String,
}

impl Accepted {
    /// The `101 Switching Protocols` to send before speaking SPDY.
    pub fn response(&self) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static(SPDY_31));
        // The protocol came from a request header, so it is a valid value.
        if let Ok(value) = HeaderValue::from_str(&self.protocol) {
            headers.insert(X_STREAM_PROTOCOL_VERSION, value);
        }
        response
    }
}

/// An upgrade the server turns down, with the status and text to answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{status}: {message}")]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
    /// The server's protocols, announced when none of the client's matched.
    pub accepted: Vec<String>,
}

impl Refused {
    fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
            accepted: Vec::new(),
        }
    }

    /// A plain-text response with the message, as the kubelet sends.
    pub fn response(&self) -> Response<String> {
        let mut response = Response::new(format!("{}\n", self.message));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        for protocol in &self.accepted {
            if let Ok(value) = HeaderValue::from_str(protocol) {
                headers.append(X_ACCEPTED_STREAM_PROTOCOL_VERSIONS, value);
            }
        }
        response
    }
}

/// Whether any value of a header contains `token`, ignoring case (the
/// kubelet's test, loose enough for `Connection: keep-alive, Upgrade`).
fn mentions(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    let token = token.to_ascii_lowercase();
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains(&token))
    })
}

/// Decides how to answer an upgrade request, given the stream protocols the
/// server supports.
pub fn negotiate(request: &HeaderMap, supported: &[&str]) -> Result<Accepted, Refused> {
    if supported.is_empty() {
        return Err(Refused {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "unable to upgrade: the server supports no stream protocol".into(),
            accepted: Vec::new(),
        });
    }
    let values: Vec<&HeaderValue> = request.get_all(X_STREAM_PROTOCOL_VERSION).iter().collect();
    if values.is_empty() {
        return Err(Refused::bad_request(format!(
            "unable to upgrade: header {X_STREAM_PROTOCOL_VERSION} is missing"
        )));
    }
    // Each value may itself be a comma-separated list.
    let offered: Vec<&str> = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Err(Refused::bad_request(format!(
            "unable to upgrade: header {X_STREAM_PROTOCOL_VERSION} names no protocol"
        )));
    }
    let Some(protocol) = offered.iter().find(|p| supported.contains(p)) else {
        return Err(Refused {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
            ),
            accepted: supported.iter().map(|p| p.to_string()).collect(),
        });
    };
    if !mentions(request, CONNECTION, "upgrade") || !mentions(request, UPGRADE, SPDY_31) {
        return Err(Refused::bad_request(
            "unable to upgrade: missing upgrade headers in request".into(),
        ));
    }
    Ok(Accepted {
        protocol: protocol.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT_FORWARD: &str = "portforward.k8s.io";

    fn request(protocols: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        for p in protocols {
            h.append(X_STREAM_PROTOCOL_VERSION, HeaderValue::from_str(p).unwrap());
        }
        h
    }

    #[test]
    fn accepts_the_clients_preferred_supported_protocol() {
        let req = request(&["v4.channel.k8s.io", PORT_FORWARD, "v1.other"]);
        let accepted = negotiate(&req, &["v1.other", PORT_FORWARD]).unwrap();
        assert_eq!(accepted.protocol, PORT_FORWARD);
        let response = accepted.response();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[CONNECTION], "Upgrade");
        assert_eq!(response.headers()[UPGRADE], "SPDY/3.1");
        assert_eq!(response.headers()[X_STREAM_PROTOCOL_VERSION], PORT_FORWARD);
    }

    #[test]
    fn reads_comma_separated_values_and_loose_upgrade_headers() {
        let mut req = request(&[" a , portforward.k8s.io"]);
        req.insert(CONNECTION, HeaderValue::from_static("keep-alive, upgrade"));
        req.insert(UPGRADE, HeaderValue::from_static("spdy/3.1"));
        assert_eq!(
            negotiate(&req, &[PORT_FORWARD]).unwrap().protocol,
            PORT_FORWARD
        );
    }

    #[test]
    fn refuses_without_a_protocol_header() {
        let refused = negotiate(&request(&[]), &[PORT_FORWARD]).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        let refused = negotiate(&request(&[" , "]), &[PORT_FORWARD]).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn refuses_unknown_protocols_and_lists_its_own() {
        let refused = negotiate(&request(&["v9.nope"]), &[PORT_FORWARD, "b"]).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let response = refused.response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let listed: Vec<_> = response
            .headers()
            .get_all(X_ACCEPTED_STREAM_PROTOCOL_VERSIONS)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(listed, [PORT_FORWARD, "b"]);
        assert!(response.body().contains("v9.nope"));
    }

    #[test]
    fn refuses_without_upgrade_headers() {
        let mut req = request(&[PORT_FORWARD]);
        req.remove(UPGRADE);
        assert_eq!(
            negotiate(&req, &[PORT_FORWARD]).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let mut req = request(&[PORT_FORWARD]);
        req.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            negotiate(&req, &[PORT_FORWARD]).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let mut req = request(&[PORT_FORWARD]);
        req.insert(CONNECTION, HeaderValue::from_static("close"));
        assert_eq!(
            negotiate(&req, &[PORT_FORWARD]).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn refuses_when_the_server_supports_nothing() {
        let refused = negotiate(&request(&[PORT_FORWARD]), &[]).unwrap_err();
        assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
