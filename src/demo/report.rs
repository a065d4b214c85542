//! The demo's report: pure arithmetic over what the harness observed and what the
//! controller's `/metrics` said, and its JSON and text forms.

use serde::Serialize;

/// Latency quantiles in seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// From unsorted samples; all zero when there are none.
    pub fn from_samples(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50: quantile(&sorted, 0.5),
            p90: quantile(&sorted, 0.9),
            p99: quantile(&sorted, 0.99),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// The controller's own creation-latency histogram, as Prometheus would estimate it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HistogramSummary {
    pub count: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub clusters: usize,
    pub workers_per_cluster: usize,
    pub workload_apiservers: usize,
    /// Machines per second; `None`: all at once.
    pub arrival_rate: Option<f64>,
    pub concurrency: u16,
    pub nodes_expected: usize,
    /// Distinct expected Nodes seen Ready in the workload API servers.
    pub nodes_created: usize,
    /// Extra Nodes for a host that already had one (must be 0).
    pub duplicates: usize,
    pub missing: usize,
    /// From the first host provisioned to the last Node Ready.
    pub elapsed_seconds: f64,
    /// From the first to the last host provisioned (the trigger; it loads the same
    /// machine while the controller works).
    pub provisioning_seconds: f64,
    pub nodes_per_second: f64,
    /// Host provisioned (harness clock) -> Node Ready seen by the harness's watch.
    pub latency_seconds: Latency,
    /// `fakenode_node_creation_latency_seconds` from the controller's `/metrics`.
    pub controller_histogram: HistogramSummary,
    pub controller_nodes_created_total: f64,
    pub ceiling_nodes_per_second: Option<f64>,
    pub ratio_to_ceiling: Option<f64>,
    pub controller_peak_rss_bytes: u64,
    pub controller_cpu_seconds: f64,
    /// The controller's CPU use over a few seconds once everything was done.
    pub controller_idle_cpu_percent: f64,
    pub workload_clients: f64,
    /// Metal3Machines that got their providerID (the loop closed by the CAPM3 stand-in).
    pub loop_closed: usize,
}

/// Nearest-rank quantile of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The value of an unlabelled sample `name` in Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// `(le, cumulative count)` of histogram `name`, in exposition order (ascending `le`).
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// What PromQL's `histogram_quantile` returns for cumulative `buckets`: linear
/// interpolation inside the bucket holding the rank; the highest finite bound if the rank
/// falls in `+Inf`.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let in_bucket = count - lower.1;
            if in_bucket <= 0.0 {
                return le;
            }
            return lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket;
        }
        lower = (le, count);
    }
    lower.0
}

pub fn summarize_histogram(text: &str, name: &str) -> HistogramSummary {
    let buckets = histogram_buckets(text, name);
    HistogramSummary {
        count: buckets.last().map(|b| b.1).unwrap_or(0.0),
        p50: histogram_quantile(0.5, &buckets),
        p90: histogram_quantile(0.9, &buckets),
        p99: histogram_quantile(0.99, &buckets),
    }
}

fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

/// The report for a person.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<34} {v}\n"));
    line(
        "clusters",
        format!(
            "{} ({} worker(s) each, {} workload API server(s))",
            r.clusters, r.workers_per_cluster, r.workload_apiservers
        ),
    );
    line(
        "arrival",
        r.arrival_rate
            .map(|a| format!("{a} machines/s"))
            .unwrap_or_else(|| "all at once".into()),
    );
    line(
        "nodes expected / created",
        format!("{} / {}", r.nodes_expected, r.nodes_created),
    );
    line(
        "duplicates / missing",
        format!("{} / {}", r.duplicates, r.missing),
    );
    line(
        "elapsed",
        format!(
            "{:.2} s (hosts provisioned over the first {:.2} s)",
            r.elapsed_seconds, r.provisioning_seconds
        ),
    );
    line("throughput", format!("{:.1} nodes/s", r.nodes_per_second));
    let l = &r.latency_seconds;
    line(
        "latency p50/p90/p99/max (harness)",
        format!(
            "{} / {} / {} / {}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max)
        ),
    );
    let h = &r.controller_histogram;
    line(
        "latency p50/p90/p99 (controller)",
        format!(
            "{} / {} / {} ({} samples)",
            ms(h.p50),
            ms(h.p90),
            ms(h.p99),
            h.count
        ),
    );
    if let (Some(c), Some(ratio)) = (r.ceiling_nodes_per_second, r.ratio_to_ceiling) {
        line(
            "ceiling (plain client)",
            format!("{c:.1} nodes/s, ratio {ratio:.2}"),
        );
    }
    line(
        "controller peak RSS",
        format!(
            "{:.1} MiB",
            r.controller_peak_rss_bytes as f64 / (1024.0 * 1024.0)
        ),
    );
    line(
        "controller CPU",
        format!(
            "{:.2} s busy, {:.2} % idle",
            r.controller_cpu_seconds, r.controller_idle_cpu_percent
        ),
    );
    line("workload clients", format!("{}", r.workload_clients));
    line(
        "loop closed (providerID set)",
        format!("{} / {}", r.loop_closed, r.nodes_expected),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::from_samples(&samples);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Latency::from_samples(&[]), Latency::default());
        assert_eq!(Latency::from_samples(&[3.0]).p99, 3.0);
    }

    const TEXT: &str = "# HELP x\n# TYPE h histogram\n\
        h_bucket{le=\"0.1\"} 0\nh_bucket{le=\"0.2\"} 50\nh_bucket{le=\"0.4\"} 100\n\
        h_bucket{le=\"+Inf\"} 100\nh_sum 20\nh_count 100\nfakenode_workload_clients 7\n";

    #[test]
    fn histograms_are_estimated_as_prometheus_does() {
        let b = histogram_buckets(TEXT, "h");
        assert_eq!(b.len(), 4);
        assert_eq!(histogram_quantile(0.5, &b), 0.2);
        // rank 90 lies 80% into the (0.2, 0.4] bucket.
        assert!((histogram_quantile(0.9, &b) - 0.36).abs() < 1e-9);
        assert!(histogram_quantile(0.5, &[]).is_nan());
        let s = summarize_histogram(TEXT, "h");
        assert_eq!(s.count, 100.0);
        // A rank in +Inf answers the highest finite bound.
        assert_eq!(
            histogram_quantile(0.99, &[(1.0, 1.0), (f64::INFINITY, 10.0)]),
            1.0
        );
    }

    #[test]
    fn plain_samples_are_read() {
        assert_eq!(metric_value(TEXT, "fakenode_workload_clients"), Some(7.0));
        assert_eq!(metric_value(TEXT, "h_count"), Some(100.0));
        assert_eq!(metric_value(TEXT, "absent"), None);
    }

    #[test]
    fn the_json_has_the_documented_keys() {
        let v = serde_json::to_value(Report::default()).unwrap();
        for key in [
            "clusters",
            "nodes_expected",
            "nodes_created",
            "duplicates",
            "elapsed_seconds",
            "nodes_per_second",
            "latency_seconds",
            "ceiling_nodes_per_second",
            "ratio_to_ceiling",
            "controller_peak_rss_bytes",
            "controller_cpu_seconds",
            "workload_clients",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        for key in ["p50", "p90", "p99", "max"] {
            assert!(v["latency_seconds"].get(key).is_some(), "{key}");
        }
        assert!(v["ceiling_nodes_per_second"].is_null());
    }
}
