//! A validating admission webhook served over TLS on loopback, which denies every request
//! it is sent with a chosen HTTP status code. Registered in a real API server, it makes
//! that server answer a client with that code (e.g. 429), as a server-side policy would.

use std::net::SocketAddr;
use std::sync::Arc;

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

/// Serves the webhook in the current runtime; returns its URL and the CA (PEM) that
/// signed its certificate, for the webhook configuration's `caBundle`.
pub async fn deny_with(code: u16) -> (String, String) {
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
    let url = format!("https://{}/deny", tcp.local_addr().unwrap());
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    let app = axum::Router::new().route(
        "/deny",
        post(move |Json(review): Json<Value>| async move {
            Json(json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": false,
                    "status": {"code": code, "message": format!("denied with {code} by the test webhook")},
                },
            }))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, ca.cert_pem())
}
