//! A validating admission webhook served over TLS on loopback, which denies requests with a
//! chosen HTTP status code (and Retry-After). Registered in a real API server, it makes
//! that server answer a client with that code (e.g. 429), as a server-side policy would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::routing::post;
use metal3_fakenode_testkit::envtest::certs::ClusterCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A failed handshake concerns that connection only.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves a webhook that denies every request with `code`, in the current runtime;
/// returns its URL and the CA (PEM) that signed its certificate, for the webhook
/// configuration's `caBundle`.
pub async fn deny_with(code: u16) -> (String, String) {
    serve(move |_| Some((code, None))).await
}

/// What a [`throttle_first`] webhook saw: when each review arrived and whether it was
/// denied.
pub type Arrivals = Arc<Mutex<Vec<(Instant, bool)>>>;

/// A webhook that answers the first `denials` requests 429 with `retryAfterSeconds`
/// (which the API server turns into a `Retry-After` header), as API Priority and Fairness
/// would, and lets the others through.
pub async fn throttle_first(
    denials: usize,
    retry_after_seconds: u32,
) -> (String, String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let seen = Arc::clone(&arrivals);
    let (url, ca) = serve(move |_| {
        let mut seen = seen.lock().unwrap();
        let deny = seen.len() < denials;
        seen.push((Instant::now(), deny));
        deny.then_some((429, Some(retry_after_seconds)))
    })
    .await;
    (url, ca, arrivals)
}

/// Serves the webhook: `decide` gets each review and answers `None` to allow it, or the
/// code (and Retry-After seconds) to deny it with.
async fn serve(
    decide: impl Fn(&Value) -> Option<(u16, Option<u32>)> + Clone + Send + Sync + 'static,
) -> (String, String) {
    let ca = ClusterCa::new("webhook-ca").unwrap();
    let serving = ca.serving_cert().unwrap();
    let certs = vec![CertificateDer::from_pem_slice(serving.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/review", tcp.local_addr().unwrap());
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    let app = axum::Router::new().route(
        "/review",
        post(move |Json(review): Json<Value>| async move {
            let uid = review["request"]["uid"].clone();
            let response = match decide(&review) {
                None => json!({"uid": uid, "allowed": true}),
                Some((code, retry_after)) => {
                    let mut status = json!({
                        "code": code,
                        "message": format!("denied with {code} by the test webhook"),
                    });
                    if let Some(seconds) = retry_after {
                        status["details"] = json!({"retryAfterSeconds": seconds});
                    }
                    json!({"uid": uid, "allowed": false, "status": status})
                }
            };
            Json(json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": response,
            }))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, ca.cert_pem())
}
