//! One cluster's TLS listener. Dropping it stops accepting and closes its connections,
//! watches included, so a cluster no longer served is cut off at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::proxy::ClusterProxy;

/// A handshake that takes longer is abandoned (a silent client must not hold a task).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running listener; dropping it stops it.
pub struct Listener {
    local_addr: SocketAddr,
    // Dropped with the listener, which tells the accept loop and connections to stop.
    _stop: watch::Sender<()>,
}

impl Listener {
    /// Binds `addr` and serves `proxy` there, TLS configured by `tls`.
    pub async fn start(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        proxy: ClusterProxy,
    ) -> Result<Listener> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let (stop, stopped) = watch::channel(());
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let span = tracing::info_span!("listener", %local_addr);
        tokio::spawn(accept_loop(listener, acceptor, Arc::new(proxy), stopped).instrument(span));
        Ok(Listener {
            local_addr,
            _stop: stop,
        })
    }

    /// The address bound (the port chosen, when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    proxy: Arc<ClusterProxy>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let connection = connection(tcp, acceptor.clone(), proxy.clone(), stopped.clone());
                    tokio::spawn(connection.instrument(tracing::debug_span!("connection", %peer)));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tracing::info!("listener stopped");
}

async fn connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    proxy: Arc<ClusterProxy>,
    mut stopped: watch::Receiver<()>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // A certificate of another cluster (or none) ends here.
            tracing::info!(error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(request).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    // With upgrades: port-forwards switch protocols on the client's connection.
    let served = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = stopped.changed() => {}
    }
}
