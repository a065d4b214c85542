//! The pure half of a port-forward through the front: which upgrade the client asks for,
//! the headers the backing server gets (the client's negotiation, nothing of its
//! identity), and the headers the client gets back from the backing server's `101`.
//!
//! The front only maps the path: a port-forward's streams carry ports and request IDs,
//! never a name, so once both sides have switched protocols the bytes are spliced as
//! they are.

use http::header::{
    CONNECTION, HeaderMap, HeaderName, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderValue, Method, Version};

use crate::error::{Error, Result};

/// The header both SPDY sides name their stream protocol in (`portforward.k8s.io`).
pub const X_STREAM_PROTOCOL_VERSION: &str = "x-stream-protocol-version";

/// The query parameters of a port-forward: the ports (kubectl's WebSocket form names them
/// there) and the request timeout client-go adds; none names an object.
const QUERY_PARAMETERS: &[&str] = &["ports", "timeout"];

/// The two forms client-go speaks: since v1.30 it tries WebSocket tunnelling first and
/// falls back to SPDY when the server refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// `POST` with `Upgrade: SPDY/3.1`.
    Spdy,
    /// `GET` with `Upgrade: websocket` (SPDY tunnelled in WebSocket frames, or
    /// `v5.channel.k8s.io`-style channels, as the subprotocols say).
    WebSocket,
}

impl Upgrade {
    /// The form of a request, or why it is no port-forward the front can relay.
    pub fn of(method: &Method, version: Version, headers: &HeaderMap) -> Result<Upgrade> {
        let refuse = |why: &'static str| Error::NotAnUpgrade { why };
        if version != Version::HTTP_11 {
            // HTTP/2 has no Upgrade; client-go dials port-forwards over HTTP/1.1.
            return Err(refuse("a port-forward is an HTTP/1.1 upgrade"));
        }
        let connection_upgrade = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        let upgrade = headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let form = match (method, upgrade) {
            (&Method::POST, Some(u)) if u.eq_ignore_ascii_case("SPDY/3.1") => Upgrade::Spdy,
            (&Method::GET, Some(u)) if u.eq_ignore_ascii_case("websocket") => Upgrade::WebSocket,
            (_, None) => return Err(refuse("no Upgrade header: SPDY/3.1 or websocket")),
            _ => {
                return Err(refuse(
                    "only POST with SPDY/3.1 or GET with websocket is served",
                ));
            }
        };
        if !connection_upgrade {
            return Err(refuse("the Connection header does not say Upgrade"));
        }
        Ok(form)
    }

    /// The headers the client negotiates with, copied for the backing server. Nothing
    /// else is passed on: the front authenticates with its own credentials.
    pub fn backing_headers(self, client: &HeaderMap) -> Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        let (upgrade, negotiated): (&'static str, &[HeaderName]) = match self {
            Upgrade::Spdy => (
                "SPDY/3.1",
                &[HeaderName::from_static(X_STREAM_PROTOCOL_VERSION)],
            ),
            Upgrade::WebSocket => (
                "websocket",
                &[
                    SEC_WEBSOCKET_KEY,
                    SEC_WEBSOCKET_VERSION,
                    SEC_WEBSOCKET_PROTOCOL,
                ],
            ),
        };
        headers.insert(UPGRADE, HeaderValue::from_static(upgrade));
        for name in negotiated {
            for value in client.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let required = match self {
            Upgrade::Spdy => HeaderName::from_static(X_STREAM_PROTOCOL_VERSION),
            Upgrade::WebSocket => SEC_WEBSOCKET_KEY,
        };
        if !headers.contains_key(&required) {
            return Err(Error::NotAnUpgrade {
                why: match self {
                    Upgrade::Spdy => "no X-Stream-Protocol-Version offered",
                    Upgrade::WebSocket => "no Sec-WebSocket-Key",
                },
            });
        }
        Ok(headers)
    }

    /// The headers of the backing server's `101` the client needs to complete its own
    /// side: the protocol chosen and, for WebSocket, the accept key (computed by the
    /// backing server from the client's own key, so it matches).
    pub fn client_headers(self, backing: &HeaderMap) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        let passed: &[HeaderName] = match self {
            Upgrade::Spdy => &[UPGRADE, HeaderName::from_static(X_STREAM_PROTOCOL_VERSION)],
            Upgrade::WebSocket => &[UPGRADE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL],
        };
        for name in passed {
            for value in backing.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }
}

/// The port-forward's query for the backing server: only parameters naming no object
/// are passed on.
pub fn backing_query(query: Option<&str>) -> Result<String> {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !QUERY_PARAMETERS.contains(&name.as_ref()) {
            return Err(Error::UnsupportedQuery {
                name: name.into_owned(),
            });
        }
        out.append_pair(&name, &value);
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const SPDY: &[(&str, &str)] = &[
        ("connection", "Upgrade"),
        ("upgrade", "SPDY/3.1"),
        ("x-stream-protocol-version", "portforward.k8s.io"),
        ("authorization", "Bearer the-clients"),
        ("impersonate-user", "system:admin"),
    ];

    #[test]
    fn a_spdy_upgrade_passes_its_protocols_and_nothing_of_the_clients_identity() {
        let client = headers(SPDY);
        let form = Upgrade::of(&Method::POST, Version::HTTP_11, &client).unwrap();
        assert_eq!(form, Upgrade::Spdy);
        let backing = form.backing_headers(&client).unwrap();
        assert_eq!(backing["upgrade"], "SPDY/3.1");
        assert_eq!(backing["x-stream-protocol-version"], "portforward.k8s.io");
        assert!(!backing.contains_key("authorization"));
        assert!(!backing.contains_key("impersonate-user"));
        let answer = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "portforward.k8s.io"),
            ("date", "now"),
        ]);
        let back = form.client_headers(&answer);
        assert_eq!(back["x-stream-protocol-version"], "portforward.k8s.io");
        assert!(!back.contains_key("date"));
    }

    #[test]
    fn a_websocket_upgrade_passes_its_key_and_subprotocols() {
        let client = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
            ("sec-websocket-protocol", "v5.channel.k8s.io"),
        ]);
        let form = Upgrade::of(&Method::GET, Version::HTTP_11, &client).unwrap();
        assert_eq!(form, Upgrade::WebSocket);
        let backing = form.backing_headers(&client).unwrap();
        assert_eq!(backing.get_all("sec-websocket-protocol").iter().count(), 2);
        assert_eq!(backing["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        let answer = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
        ]);
        let back = form.client_headers(&answer);
        assert_eq!(back["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            back["sec-websocket-protocol"],
            "SPDY/3.1+portforward.k8s.io"
        );
    }

    #[test]
    fn anything_but_the_two_upgrades_is_refused() {
        let spdy = headers(SPDY);
        for (method, version, headers) in [
            (Method::GET, Version::HTTP_11, spdy.clone()),
            (Method::POST, Version::HTTP_2, spdy.clone()),
            (Method::POST, Version::HTTP_11, HeaderMap::new()),
            (
                Method::POST,
                Version::HTTP_11,
                headers(&[("upgrade", "SPDY/3.1")]),
            ),
            (
                Method::GET,
                Version::HTTP_11,
                headers(&[("connection", "Upgrade"), ("upgrade", "h2c")]),
            ),
        ] {
            let err = Upgrade::of(&method, version, &headers).unwrap_err();
            assert_eq!(err.reason(), "not_an_upgrade", "{method} {version:?}");
        }
        let unnegotiated = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        let err = Upgrade::Spdy.backing_headers(&unnegotiated).unwrap_err();
        assert_eq!(err.reason(), "not_an_upgrade");
    }

    #[test]
    fn only_parameters_naming_no_object_are_passed_on() {
        assert_eq!(backing_query(None).unwrap(), "");
        assert_eq!(backing_query(Some("ports=2379")).unwrap(), "ports=2379");
        assert_eq!(backing_query(Some("timeout=30s")).unwrap(), "timeout=30s");
        let err = backing_query(Some("ports=1&container=x")).unwrap_err();
        assert_eq!(err.reason(), "unsupported_query");
    }
}
