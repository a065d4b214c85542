//! One workload cluster's requests, answered through the backing server: the path,
//! query and body mapped into the backing server's terms, the request sent with the
//! front's own credentials (the client's identity is not passed on, nor any header but
//! the media types), and the answer mapped back, watches event by event. Port-forwards
//! are the one exception to reading whole answers: after the upgrade both connections'
//! bytes are spliced.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use tenancy::paths::{self, ApiPath, ResourcePath};
use tenancy::{Prefix, Subresource, Target};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::discovery;
use crate::error::{Error, Result, status_object};
use crate::metrics::{self, Metrics, OpenWatch};
use crate::patch_schemas::PatchSchemas;
use crate::portforward::Upgrade;
use crate::request::{self, PatchKind};
use crate::watch::{self, EventLines};

/// Errors a streamed answer can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every answer: whole, or streamed for watches.
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// Request bodies above this are refused, as the API server's own limit (3 MiB) does.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Port-forwards open at once per cluster. KCP opens one per etcd member it reads, for the
/// length of a reconcile; a cluster needing more than this is stuck or hostile.
pub const MAX_PORT_FORWARDS: usize = 64;

/// How often a patch is retried when the object changes between read and write.
const PATCH_ATTEMPTS: u32 = 5;

const JSON: &str = "application/json";

/// The front's side of one served cluster.
pub struct ClusterProxy {
    /// For logs: the Cluster's namespace/name.
    cluster: String,
    prefix: Prefix,
    backing: kube::Client,
    metrics: Arc<Metrics>,
    /// Dropped with the proxy, i.e. when the cluster is no longer served: its
    /// port-forwards, which outlive the request that opened them, end then too.
    cut_off: tokio::sync::watch::Sender<()>,
    /// One permit per open port-forward, up to [`MAX_PORT_FORWARDS`].
    port_forwards: std::sync::Arc<tokio::sync::Semaphore>,
    /// Shared by every cluster of the front: the backing server's list strategies.
    schemas: Arc<PatchSchemas>,
}

impl ClusterProxy {
    pub fn new(
        cluster: String,
        prefix: Prefix,
        backing: kube::Client,
        metrics: Arc<Metrics>,
        schemas: Arc<PatchSchemas>,
    ) -> ClusterProxy {
        ClusterProxy {
            cluster,
            prefix,
            backing,
            metrics,
            schemas,
            cut_off: tokio::sync::watch::Sender::new(()),
            port_forwards: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PORT_FORWARDS)),
        }
    }

    /// Answers one request; every refusal is a Kubernetes `Status`.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let span = tracing::info_span!(
            "request",
            cluster = %self.cluster,
            method = %request.method(),
            path = %request.uri().path(),
        );
        let verb = metrics::verb(request.method(), request.uri().query());
        async {
            let response = match self.route(request).await {
                Ok(response) => {
                    tracing::debug!(status = response.status().as_u16(), "answered");
                    response
                }
                Err(e) => {
                    tracing::info!(reason = e.reason(), error = %e, "refused");
                    json_response(e.status().0, &e.to_status())
                }
            };
            self.metrics.request(verb, response.status().as_u16());
            response
        }
        .instrument(span)
        .await
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<ResponseBody>> {
        match paths::parse(request.uri().path()).map_err(Error::Request)? {
            ApiPath::Server(path) => self.server(request, path).await,
            ApiPath::Discovery(path) => self.discovery(request, path).await,
            ApiPath::Resource(path) => self.resource(request, path).await,
        }
    }

    /// `/`, `/version`, health checks and OpenAPI: the backing server's answer, as is.
    async fn server(
        &self,
        request: Request<Incoming>,
        path: String,
    ) -> Result<Response<ResponseBody>> {
        read_only(request.method(), "the server's own paths")?;
        let uri = with_query(path, request.uri().query());
        let accept = header(&request, ACCEPT).unwrap_or("*/*").to_string();
        let answer = self
            .send(Method::GET, &uri, &accept, None, Vec::new())
            .await?;
        let status = answer.status();
        let content_type = answer.headers().get(CONTENT_TYPE).cloned();
        let body = answer.into_body().collect_bytes().await?;
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        if let Some(content_type) = content_type {
            response.headers_mut().insert(CONTENT_TYPE, content_type);
        }
        Ok(response)
    }

    /// Discovery, filtered to what the front isolates.
    async fn discovery(
        &self,
        request: Request<Incoming>,
        path: String,
    ) -> Result<Response<ResponseBody>> {
        read_only(request.method(), "discovery")?;
        let answer = self
            .send(Method::GET, &path, JSON, None, Vec::new())
            .await?;
        let (status, value) = json_answer(answer).await?;
        if !status.is_success() {
            return Ok(json_response(status, &value));
        }
        match discovery::filter(&path, value) {
            Ok(filtered) => Ok(json_response(status, &filtered)),
            Err(discovery::NotServed) => Ok(json_response(
                StatusCode::NOT_FOUND,
                &status_object(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{path} is not served by the tenancy front"),
                ),
            )),
        }
    }

    async fn resource(
        &self,
        request: Request<Incoming>,
        path: ResourcePath,
    ) -> Result<Response<ResponseBody>> {
        if path.target.subresource == Some(Subresource::PortForward) {
            return self.port_forward(request, path).await;
        }
        let target = path.target;
        let backing_path = path.backing_path(&self.prefix).map_err(Error::Request)?;
        let query = request::backing_query(&self.prefix, &path, request.uri().query())?;
        let uri = with_query(backing_path.clone(), Some(&query.query));
        let accept = request::backing_accept(header(&request, ACCEPT));
        let method = request.method().clone();
        match method {
            Method::GET if query.watch => self.watch(&uri, &accept, target).await,
            Method::GET => {
                let answer = self
                    .send(Method::GET, &uri, &accept, None, Vec::new())
                    .await?;
                self.mapped_answer(answer, &target).await
            }
            Method::POST | Method::PUT => {
                let content_type = header(&request, CONTENT_TYPE).map(str::to_string);
                let body = body_bytes(request).await?;
                let object = request::body_object(content_type.as_deref(), &body)?
                    .ok_or_else(|| Error::BadBody("the request has no object".into()))?;
                let object =
                    tenancy::to_backing(&self.prefix, &target, object).map_err(Error::Request)?;
                let body =
                    serde_json::to_vec(&object).map_err(|e| Error::BadBody(e.to_string()))?;
                let answer = self.send(method, &uri, &accept, Some(JSON), body).await?;
                self.mapped_answer(answer, &target).await
            }
            Method::PATCH => {
                let kind = request::patch_kind(header(&request, CONTENT_TYPE))?;
                let patch = body_bytes(request).await?;
                let schema = match kind {
                    request::PatchKind::Strategic => Some(
                        self.schemas
                            .schema(target.resource.group, &path.version, target.resource.kind)
                            .await?,
                    ),
                    _ => None,
                };
                let patch = Patcher {
                    kind,
                    schema: schema.as_deref(),
                    body: &patch,
                };
                self.patch(patch, &backing_path, &uri, &accept, target)
                    .await
            }
            Method::DELETE => {
                // DeleteOptions name nothing the front maps: passed on as JSON.
                let content_type = header(&request, CONTENT_TYPE).map(str::to_string);
                let options =
                    request::body_object(content_type.as_deref(), &body_bytes(request).await?)?;
                let (content_type, body) = match options {
                    Some(options) => (
                        Some(JSON),
                        serde_json::to_vec(&options).map_err(|e| Error::BadBody(e.to_string()))?,
                    ),
                    None => (None, Vec::new()),
                };
                let answer = self
                    .send(Method::DELETE, &uri, &accept, content_type, body)
                    .await?;
                self.mapped_answer(answer, &target).await
            }
            other => Err(Error::MethodNotAllowed {
                method: other.to_string(),
                what: "resources",
            }),
        }
    }

    /// A port-forward: the same upgrade asked of the backing server for the mapped Pod,
    /// with the front's credentials and the client's protocol offer; once both sides have
    /// switched protocols their bytes are spliced (the streams name no object, so nothing
    /// in them is mapped). A refusal of the backing server reaches the client mapped back.
    async fn port_forward(
        &self,
        mut request: Request<Incoming>,
        path: ResourcePath,
    ) -> Result<Response<ResponseBody>> {
        let form = Upgrade::of(request.method(), request.version(), request.headers())?;
        let headers = form.backing_headers(request.headers())?;
        let query = crate::portforward::backing_query(request.uri().query())?;
        let backing_path = path.backing_path(&self.prefix).map_err(Error::Request)?;
        let permit = self
            .port_forwards
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManyPortForwards {
                max: MAX_PORT_FORWARDS,
            })?;
        let mut backing_request = Request::builder()
            .method(request.method().clone())
            .uri(with_query(backing_path, Some(&query)))
            .body(kube::client::Body::empty())
            .map_err(|e| Error::Backing(kube::Error::HttpError(e)))?;
        *backing_request.headers_mut() = headers;
        let answer = self.backing.send(backing_request).await?;
        if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Client-go falls back from WebSocket to SPDY on this answer (a 400 or 403
            // of an older server), so it must keep its status.
            return self.mapped_answer(answer, &path.target).await;
        }
        let client_headers = form.client_headers(answer.headers());
        let client_side = hyper::upgrade::on(&mut request);
        let backing_side = hyper::upgrade::on(answer);
        let mut cut_off = self.cut_off.subscribe();
        tokio::spawn(
            async move {
                let _permit = permit;
                let (client, backing) = match tokio::try_join!(client_side, backing_side) {
                    Ok(both) => both,
                    Err(e) => {
                        tracing::info!(error = %e, "a port-forward upgrade did not complete");
                        return;
                    }
                };
                tracing::debug!(?form, "port-forward spliced");
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut backing = hyper_util::rt::TokioIo::new(backing);
                tokio::select! {
                    moved = tokio::io::copy_bidirectional(&mut client, &mut backing) => match moved {
                        Ok((up, down)) => tracing::debug!(up, down, "port-forward ended"),
                        Err(e) => tracing::debug!(error = %e, "port-forward broke off"),
                    },
                    _ = cut_off.changed() => {
                        tracing::info!("port-forward cut off: the cluster is no longer served");
                    }
                }
            }
            .in_current_span(),
        );
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = client_headers;
        Ok(response)
    }

    /// Applies a patch to the client's view of the object and writes the result back with
    /// the resourceVersion it was read at, so a concurrent write is never overwritten:
    /// on a conflict the patch is applied again to the new version, unless the client's
    /// patch named a resourceVersion itself (then the conflict is the client's answer).
    async fn patch(
        &self,
        patch: Patcher<'_>,
        backing_path: &str,
        uri: &str,
        accept: &str,
        target: Target,
    ) -> Result<Response<ResponseBody>> {
        for attempt in 1..=PATCH_ATTEMPTS {
            let current = self
                .send(Method::GET, backing_path, JSON, None, Vec::new())
                .await?;
            let (status, stored) = json_answer(current).await?;
            let stored =
                tenancy::from_backing(&self.prefix, &target, stored).map_err(Error::Answer)?;
            if !status.is_success() {
                return Ok(json_response(status, &stored));
            }
            let mut view = stored;
            let read_at = view["metadata"]["resourceVersion"].clone();
            request::apply_patch(patch.kind, patch.schema, &mut view, patch.body)?;
            let metadata = view
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| Error::BadBody("the patched object has no metadata".into()))?;
            let precondition = match metadata.get("resourceVersion") {
                Some(rv) if !rv.is_null() && *rv != read_at => true,
                _ => {
                    metadata.insert("resourceVersion".into(), read_at);
                    false
                }
            };
            // Left out, the server keeps the field ownership it has.
            metadata.remove("managedFields");
            let object =
                tenancy::to_backing(&self.prefix, &target, view).map_err(Error::Request)?;
            let body = serde_json::to_vec(&object).map_err(|e| Error::BadBody(e.to_string()))?;
            let answer = self
                .send(Method::PUT, uri, accept, Some(JSON), body)
                .await?;
            if answer.status() == StatusCode::CONFLICT && !precondition && attempt < PATCH_ATTEMPTS
            {
                tracing::debug!(
                    attempt,
                    "the object changed during a patch; applying it again"
                );
                continue;
            }
            return self.mapped_answer(answer, &target).await;
        }
        Err(Error::PatchConflict {
            attempts: PATCH_ATTEMPTS,
        })
    }

    /// Streams a watch: each event line mapped as it arrives. An event that cannot be
    /// shown ends the stream with an ERROR event; a client that goes away ends the
    /// backing watch.
    async fn watch(
        &self,
        uri: &str,
        accept: &str,
        target: Target,
    ) -> Result<Response<ResponseBody>> {
        let answer = self
            .send(Method::GET, uri, accept, None, Vec::new())
            .await?;
        if !answer.status().is_success() {
            return self.mapped_answer(answer, &target).await;
        }
        let (events, received) = mpsc::channel::<Bytes>(64);
        let prefix = self.prefix.clone();
        let mut body = answer.into_body();
        let open = OpenWatch::new(&self.metrics.watches_open);
        tokio::spawn(
            async move {
                // Counted until the relay ends, whichever side ended it.
                let _open = open;
                let mut lines = EventLines::default();
                loop {
                    let chunk = match body.frame().await {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => data,
                            Err(_) => continue,
                        },
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "the backing watch broke off");
                            return;
                        }
                        None => break,
                    };
                    for line in lines.push(&chunk) {
                        if !relay(&events, &prefix, &target, &line).await {
                            return;
                        }
                    }
                }
                if let Some(line) = lines.finish() {
                    relay(&events, &prefix, &target, &line).await;
                }
            }
            .in_current_span(),
        );
        let stream = futures::stream::unfold(received, |mut received| async move {
            received
                .recv()
                .await
                .map(|line| (Ok::<_, BoxError>(Frame::data(line)), received))
        });
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, http::HeaderValue::from_static(JSON));
        Ok(response)
    }

    async fn mapped_answer(
        &self,
        answer: Response<kube::client::Body>,
        target: &Target,
    ) -> Result<Response<ResponseBody>> {
        let (status, value) = json_answer(answer).await?;
        let mapped = tenancy::from_backing(&self.prefix, target, value).map_err(|e| {
            tracing::warn!(error = %e, "an answer of the backing server refused");
            Error::Answer(e)
        })?;
        Ok(json_response(status, &mapped))
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        accept: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Response<kube::client::Body>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(ACCEPT, accept);
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(kube::client::Body::from(body))
            .map_err(|e| Error::Backing(kube::Error::HttpError(e)))?;
        Ok(self.backing.send(request).await?)
    }
}

/// A client's patch, with what applying it takes.
struct Patcher<'a> {
    kind: PatchKind,
    /// The kind's list strategies, for a strategic merge patch.
    schema: Option<&'a strategic_merge::Schema>,
    body: &'a [u8],
}

/// Relays one event line; false when the stream is over (the client left, or the event
/// could not be shown and an ERROR event was sent instead).
async fn relay(
    events: &mpsc::Sender<Bytes>,
    prefix: &Prefix,
    target: &Target,
    line: &[u8],
) -> bool {
    match watch::map_event_line(prefix, target, line) {
        Ok(event) => events.send(event).await.is_ok(),
        Err(error_event) => {
            let _ = events.send(error_event).await;
            false
        }
    }
}

fn read_only(method: &Method, what: &'static str) -> Result<()> {
    match *method {
        Method::GET => Ok(()),
        _ => Err(Error::MethodNotAllowed {
            method: method.to_string(),
            what,
        }),
    }
}

fn header(request: &Request<Incoming>, name: http::header::HeaderName) -> Option<&str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn with_query(path: String, query: Option<&str>) -> String {
    match query {
        Some(query) if !query.is_empty() => format!("{path}?{query}"),
        _ => path,
    }
}

async fn body_bytes(request: Request<Incoming>) -> Result<Bytes> {
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Error::BodyTooLarge { max: MAX_BODY })
        }
        Err(e) => Err(Error::BadBody(e.to_string())),
    }
}

/// The backing server's answer as JSON, with its status.
async fn json_answer(answer: Response<kube::client::Body>) -> Result<(StatusCode, Value)> {
    let status = answer.status();
    let bytes = answer.into_body().collect_bytes().await?;
    let value = serde_json::from_slice(&bytes).map_err(|e| Error::BackingNotJson {
        status: status.as_u16(),
        message: e.to_string(),
    })?;
    Ok((status, value))
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(JSON));
    response
}
