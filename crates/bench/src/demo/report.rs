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

/// One controller process of the run. With `--shards N` there are N, each handling the
/// clusters that hash to its index; the figures are its own, so that an uneven split or a
/// slow shard shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShardReport {
    pub index: u32,
    /// Clusters that hash to this shard, and their machines: what it alone must create.
    pub clusters: usize,
    pub nodes_expected: usize,
    /// `fakenode_nodes_created_total{shard="<index>"}` (unlabelled with one shard) from
    /// this process's `/metrics`.
    pub nodes_created: f64,
    /// `nodes_created` over the whole run's elapsed time, so the shards' rates add up to
    /// the total.
    pub nodes_per_second: f64,
    pub peak_rss_bytes: u64,
    pub cpu_seconds: f64,
    pub workload_clients: f64,
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
    /// `fakenode_node_creation_latency_seconds` from the controller's `/metrics` (every
    /// shard's buckets added up).
    pub controller_histogram: HistogramSummary,
    /// `fakenode_nodes_created_total`, summed over the shards.
    pub controller_nodes_created_total: f64,
    pub ceiling_nodes_per_second: Option<f64>,
    pub ratio_to_ceiling: Option<f64>,
    /// Summed over the shards' processes (each one's own is in `shards`).
    pub controller_peak_rss_bytes: u64,
    /// Summed over the shards' processes.
    pub controller_cpu_seconds: f64,
    /// The controller's CPU use over a few seconds once everything was done (all shards).
    pub controller_idle_cpu_percent: f64,
    /// Summed over the shards: each caches clients for its own clusters only.
    pub workload_clients: f64,
    /// Metal3Machines that got their providerID (the loop closed by the CAPM3 stand-in).
    pub loop_closed: usize,
    /// Controller processes (`--shards`); 1 runs the controller unsharded.
    pub shard_count: u32,
    /// One entry per controller process, by index.
    pub shards: Vec<ShardReport>,
}

/// Nearest-rank quantile of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// Reading Prometheus text exposition lives in the test kit: the tests read it too.
pub use metal3_fakenode_testkit::exposition::{
    histogram_buckets, histogram_buckets_with, histogram_quantile, merge_buckets, metric_value,
    metric_value_with, samples,
};

pub fn summarize_histogram(text: &str, name: &str) -> HistogramSummary {
    summarize_buckets(&histogram_buckets(text, name))
}

pub fn summarize_buckets(buckets: &[(f64, f64)]) -> HistogramSummary {
    HistogramSummary {
        count: buckets.last().map(|b| b.1).unwrap_or(0.0),
        p50: histogram_quantile(0.5, buckets),
        p90: histogram_quantile(0.9, buckets),
        p99: histogram_quantile(0.99, buckets),
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
    // One controller needs no breakdown: its line would repeat the total.
    if r.shards.len() > 1 {
        for s in &r.shards {
            line(
                &format!("shard {} of {}", s.index, r.shard_count),
                format!(
                    "{} / {} nodes ({} clusters), {:.1} nodes/s, {:.1} MiB, {:.2} s CPU",
                    s.nodes_created,
                    s.nodes_expected,
                    s.clusters,
                    s.nodes_per_second,
                    s.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                    s.cpu_seconds
                ),
            );
        }
        line(
            "shards total",
            format!(
                "{} nodes, {:.1} nodes/s",
                r.shards.iter().map(|s| s.nodes_created).sum::<f64>(),
                r.shards.iter().map(|s| s.nodes_per_second).sum::<f64>()
            ),
        );
    }
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
    let all = if r.shards.len() > 1 {
        " (all shards)"
    } else {
        ""
    };
    line(
        &format!("controller peak RSS{all}"),
        format!(
            "{:.1} MiB",
            r.controller_peak_rss_bytes as f64 / (1024.0 * 1024.0)
        ),
    );
    line(
        &format!("controller CPU{all}"),
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

    const SHARDED: &str = "# TYPE fakenode_nodes_created_total counter\n\
        fakenode_nodes_created_total{shard=\"1\"} 12\n\
        fakenode_nodes_created_total_other{shard=\"1\"} 99\n\
        fakenode_workload_requests_total{code=\"201\",shard=\"1\",verb=\"create\"} 24\n\
        odd{shard=\"1\",path=\"a,b}\\\"c\\\\\"} 3 1700000000\n\
        h_bucket{shard=\"1\",le=\"0.1\"} 2\nh_bucket{shard=\"1\",le=\"0.2\"} 4\n\
        h_bucket{shard=\"1\",le=\"+Inf\"} 4\nh_count{shard=\"1\"} 4\n";

    #[test]
    fn labelled_samples_are_read_exactly() {
        let shard = [("shard", "1")];
        assert_eq!(
            metric_value_with(SHARDED, "fakenode_nodes_created_total", &shard),
            Some(12.0)
        );
        // Another shard's label, or none, is not this sample.
        assert_eq!(
            metric_value_with(SHARDED, "fakenode_nodes_created_total", &[("shard", "0")]),
            None
        );
        assert_eq!(metric_value(SHARDED, "fakenode_nodes_created_total"), None);
        assert_eq!(
            metric_value_with(
                SHARDED,
                "fakenode_workload_requests_total",
                &[("verb", "create"), ("shard", "1"), ("code", "201")]
            ),
            Some(24.0)
        );
        // Escapes, a comma and a brace inside a value, and a timestamp.
        assert_eq!(
            samples(SHARDED, "odd"),
            [(
                vec![
                    ("shard".to_string(), "1".to_string()),
                    ("path".to_string(), "a,b}\"c\\".to_string())
                ],
                3.0
            )]
        );
        assert_eq!(
            histogram_buckets_with(SHARDED, "h", &shard),
            [(0.1, 2.0), (0.2, 4.0), (f64::INFINITY, 4.0)]
        );
        assert!(histogram_buckets(SHARDED, "h").is_empty());
    }

    #[test]
    fn shards_histograms_add_up_per_bound() {
        let a = vec![(0.1, 2.0), (0.2, 4.0), (f64::INFINITY, 4.0)];
        let b = vec![(0.1, 0.0), (0.2, 6.0), (f64::INFINITY, 6.0)];
        let merged = merge_buckets(&[a, b]);
        assert_eq!(merged, [(0.1, 2.0), (0.2, 10.0), (f64::INFINITY, 10.0)]);
        assert_eq!(summarize_buckets(&merged).count, 10.0);
        assert!(merge_buckets(&[]).is_empty());
    }

    #[test]
    fn the_summary_breaks_a_sharded_run_down_by_shard() {
        let shard = |index, nodes: f64| ShardReport {
            index,
            clusters: nodes as usize,
            nodes_expected: nodes as usize,
            nodes_created: nodes,
            nodes_per_second: nodes / 2.0,
            ..ShardReport::default()
        };
        let one = Report {
            shard_count: 1,
            shards: vec![shard(0, 10.0)],
            ..Report::default()
        };
        assert!(!render(&one).contains("shard"), "{}", render(&one));
        let two = Report {
            shard_count: 2,
            shards: vec![shard(0, 6.0), shard(1, 4.0)],
            ..Report::default()
        };
        let text = render(&two);
        assert!(
            text.contains("shard 0 of 2") && text.contains("shard 1 of 2"),
            "{text}"
        );
        assert!(text.contains("10 nodes, 5.0 nodes/s"), "{text}");
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
            "shard_count",
            "shards",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        for key in ["p50", "p90", "p99", "max"] {
            assert!(v["latency_seconds"].get(key).is_some(), "{key}");
        }
        assert!(v["ceiling_nodes_per_second"].is_null());
    }
}
