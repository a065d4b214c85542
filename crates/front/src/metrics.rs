//! The front's Prometheus metrics. No label names a cluster, so cardinality stays bounded
//! with a thousand clusters behind one front: verbs, HTTP codes and refusal reasons are
//! all finite sets.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The verbs of the `verb` label: what a request does, whichever cluster sent it.
pub const VERBS: &[&str] = &[
    "get", "watch", "create", "update", "patch", "delete", "other",
];

pub struct Metrics {
    pub registry: Registry,
    /// Clusters with a listener up.
    pub served_clusters: IntGauge,
    /// Clusters naming the front that it does not serve, counted once per distinct
    /// refusal, by reason.
    pub refusals: IntCounterVec,
    /// Requests answered, by verb and HTTP status code.
    pub requests: IntCounterVec,
    /// Watches relayed now.
    pub watches_open: IntGauge,
    /// Removed clusters whose objects were all deleted from the backing server.
    pub clusters_removed: IntCounter,
    /// Failed attempts to remove a cluster's objects, by reason; retried with backoff.
    pub removal_errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let name = |n: &str, help: &str| Opts::new(format!("metal3_fakenode_front_{n}"), help);
        let served_clusters = IntGauge::with_opts(name(
            "served_clusters",
            "Workload clusters the front serves (a listener each)",
        ))?;
        let refusals = IntCounterVec::new(
            name(
                "refusals_total",
                "Clusters naming the front that it refused to serve, once per distinct refusal",
            ),
            &["reason"],
        )?;
        let requests = IntCounterVec::new(
            name(
                "requests_total",
                "Requests answered to workload-cluster clients",
            ),
            &["verb", "code"],
        )?;
        let watches_open = IntGauge::with_opts(name(
            "watches_open",
            "Watch streams relayed from the backing server now",
        ))?;
        let clusters_removed = IntCounter::with_opts(name(
            "clusters_removed_total",
            "Deleted or recreated clusters whose objects were removed from the backing server",
        ))?;
        let removal_errors = IntCounterVec::new(
            name(
                "removal_errors_total",
                "Failed attempts to remove a cluster's objects from the backing server",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(served_clusters.clone()))?;
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(watches_open.clone()))?;
        registry.register(Box::new(clusters_removed.clone()))?;
        registry.register(Box::new(removal_errors.clone()))?;
        Ok(Metrics {
            registry,
            served_clusters,
            refusals,
            requests,
            watches_open,
            clusters_removed,
            removal_errors,
        })
    }

    /// The text exposition format, as `/metrics` answers.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Counts one answered request.
    pub fn request(&self, verb: &'static str, code: u16) {
        self.requests
            .with_label_values(&[verb, &code.to_string()])
            .inc();
    }
}

/// The `verb` label of a request: its method, a GET with `watch` set being a watch.
pub fn verb(method: &http::Method, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
    });
    match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// Counts a watch as open while it lives.
pub struct OpenWatch(IntGauge);

impl OpenWatch {
    pub fn new(gauge: &IntGauge) -> OpenWatch {
        gauge.inc();
        OpenWatch(gauge.clone())
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn verbs_are_cluster_agnostic_and_bounded() {
        assert_eq!(
            verb(&Method::GET, Some("watch=true&labelSelector=a")),
            "watch"
        );
        assert_eq!(verb(&Method::GET, Some("watch=false")), "get");
        assert_eq!(verb(&Method::GET, None), "get");
        assert_eq!(verb(&Method::PATCH, None), "patch");
        assert_eq!(verb(&Method::OPTIONS, None), "other");
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(VERBS.contains(&verb(&method, None)));
        }
    }

    #[test]
    fn an_open_watch_is_counted_until_dropped() {
        let metrics = Metrics::new().unwrap();
        let open = OpenWatch::new(&metrics.watches_open);
        assert_eq!(metrics.watches_open.get(), 1);
        drop(open);
        assert_eq!(metrics.watches_open.get(), 0);
        metrics.request("get", 200);
        assert!(
            metrics
                .render()
                .unwrap()
                .contains("metal3_fakenode_front_requests_total")
        );
    }
}
