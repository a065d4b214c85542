//! The demo's report: pure arithmetic over what the harness observed and what the
//! controller's `/metrics` said, and its JSON and text forms.

use std::collections::BTreeMap;

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

/// CPU seconds the other processes spent within a measurement's window: what shared the
/// cores with the controller (or the ceiling) while it worked, so that a gap between the
/// two can be told from a difference in the load beside them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CpuBeside {
    pub management_apiserver: f64,
    /// Summed over the workload API servers.
    pub workload_apiservers: f64,
    pub etcd: f64,
    /// The harness: its watches and the trigger, and in the ceiling's window the
    /// ceiling's own requests (it runs in the harness's process).
    pub harness: f64,
}

impl CpuBeside {
    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: CpuBeside) -> CpuBeside {
        CpuBeside {
            management_apiserver: self.management_apiserver - earlier.management_apiserver,
            workload_apiservers: self.workload_apiservers - earlier.workload_apiservers,
            etcd: self.etcd - earlier.etcd,
            harness: self.harness - earlier.harness,
        }
    }

    fn median<'a>(of: impl Iterator<Item = &'a CpuBeside> + Clone) -> CpuBeside {
        let m = |f: fn(&CpuBeside) -> f64| median(of.clone().map(f));
        CpuBeside {
            management_apiserver: m(|c| c.management_apiserver),
            workload_apiservers: m(|c| c.workload_apiservers),
            etcd: m(|c| c.etcd),
            harness: m(|c| c.harness),
        }
    }

    fn text(&self) -> String {
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1} s",
            self.management_apiserver, self.workload_apiservers, self.etcd, self.harness
        )
    }
}

/// What the ceiling (a plain client, no rate limit, the same requests as the controller
/// from a cold start, after the same trigger) did in one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CeilingRun {
    /// Distinct expected Nodes the harness's watch saw Ready.
    pub nodes_created: usize,
    pub missing: usize,
    /// From its clock's start (the trigger's, or its own cold start in a drain) to the
    /// last of its Nodes Ready, seen by the same watch as the controller's.
    pub elapsed_seconds: f64,
    pub nodes_per_second: f64,
    /// Host provisioned -> Node Ready, as for the controller (zero in a drain).
    pub latency_seconds: Latency,
    /// Host provisioned -> the ceiling takes its machine from its watch of the hosts: the
    /// part of its latency before its first request (zero in a drain).
    pub trigger_seconds: Latency,
    /// Requests to the workload API servers (`fakenode_workload_requests_total` of its
    /// own registry, counted by the controller's own request function).
    pub workload_requests: f64,
    pub requests_per_node: f64,
    /// The other processes' CPU within its window.
    pub cpu_beside: CpuBeside,
}

/// One measurement: the controller's run and, with `--ceiling`, the ceiling's in the same
/// control planes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Run {
    /// Distinct expected Nodes seen Ready in the workload API servers.
    pub nodes_created: usize,
    /// Extra Nodes for a host that already had one (must be 0).
    pub duplicates: usize,
    pub missing: usize,
    /// From the clock's start to the last Node Ready: the first host provisioned
    /// (`burst`, `rate`), or the controller's start (`provisioned`, a drain).
    pub elapsed_seconds: f64,
    /// From the first to the last host provisioned (the trigger; it loads the same
    /// machine while the controller works). Zero in a drain.
    pub provisioning_seconds: f64,
    /// In a drain: from the controller's start to its `/readyz` (its caches filled).
    pub controller_ready_seconds: Option<f64>,
    pub nodes_per_second: f64,
    /// Host provisioned (harness clock) -> Node Ready seen by the harness's watch; in a
    /// drain, from the controller's start.
    pub latency_seconds: Latency,
    /// `fakenode_node_creation_latency_seconds` from the controller's `/metrics` (every
    /// shard's buckets added up).
    pub controller_histogram: HistogramSummary,
    /// Mean of `fakenode_reconcile_queue_wait_seconds` (every shard's): the part of the
    /// controller's latency spent between its watch's event and its reconcile's start,
    /// which a plain client does not have. `None` when nothing was observed.
    pub controller_queue_wait_seconds: Option<f64>,
    /// `fakenode_nodes_created_total`, summed over the shards.
    pub controller_nodes_created_total: f64,
    /// `fakenode_workload_requests_total` (all verbs and codes, all shards) once the
    /// last Node was Ready and the controller's requests had settled.
    pub workload_requests: f64,
    /// `workload_requests` per Node created.
    pub requests_per_node: f64,
    /// The controller's requests by purpose (`registration`, `kubeadm_config`,
    /// `heartbeat`...), read at the end of the run: what `requests_per_node` is made of.
    pub requests_by_purpose: BTreeMap<String, f64>,
    /// The other processes' CPU from the clock's start to the last Node Ready.
    pub cpu_beside: CpuBeside,
    pub ceiling: Option<CeilingRun>,
    /// This run's Nodes/s over the ceiling's.
    pub ratio_to_ceiling: Option<f64>,
    /// This run's harness latency p50 over the ceiling's (same trigger, same requests);
    /// none in a drain.
    pub latency_p50_ratio_to_ceiling: Option<f64>,
    /// Summed over the shards' processes (each one's own is in `shards`).
    pub controller_peak_rss_bytes: u64,
    /// Summed over the shards' processes, from their start to the end of the run.
    pub controller_cpu_seconds: f64,
    /// The controller's CPU seconds from the clock's start to the last Node Ready (all
    /// shards), per 1000 Nodes created.
    pub controller_cpu_seconds_per_1000_nodes: f64,
    /// The controller's CPU use over a few seconds once everything was done (all shards).
    pub controller_idle_cpu_percent: f64,
    /// Summed over the shards: each caches clients for its own clusters only.
    pub workload_clients: f64,
    /// Open file descriptors at the end of the run (all shards), and the soft limit each
    /// process had (the controller raises it to the hard limit at start).
    pub controller_open_files: u64,
    pub controller_open_files_limit: Option<u64>,
    /// Metal3Machines that got their providerID (the loop closed by the CAPM3 stand-in).
    pub loop_closed: usize,
    /// Controller processes (`--shards`); 1 runs the controller unsharded.
    pub shard_count: u32,
    /// One entry per controller process, by index.
    pub shards: Vec<ShardReport>,
    /// Through the tenancy front: the fronts' peak resident memory and CPU seconds,
    /// summed over the fronts.
    pub front_peak_rss_bytes: Option<u64>,
    pub front_cpu_seconds: Option<f64>,
    /// `--soak`: the controller left running with its heartbeats after the run.
    pub soak: Option<Soak>,
}

/// What the heartbeats of a settled deployment cost: the controller alone with its Nodes
/// for a while, after a warm-up in which every Node has beaten at least once.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Soak {
    /// The measured window (the warm-up before it not counted).
    pub seconds: f64,
    pub warm_up_seconds: f64,
    /// Requests with `purpose="heartbeat"` in the window, and all workload requests.
    pub heartbeat_requests: f64,
    pub workload_requests: f64,
    pub heartbeat_requests_per_second: f64,
    /// The controller's CPU over the window (all shards).
    pub cpu_seconds: f64,
    pub cpu_percent_of_a_core: f64,
    pub cpu_seconds_per_1000_requests: f64,
    /// Resident memory (all shards) sampled through the window, first to last.
    pub rss_bytes: Vec<u64>,
    /// The largest sample less the smallest: how flat memory stayed.
    pub rss_spread_bytes: u64,
    /// Peak resident memory (all shards) at the window's end: the run and the heartbeats
    /// since, every client still there.
    pub peak_rss_bytes: u64,
}

impl Soak {
    /// The figures of a window from its counters at both ends and its memory samples.
    pub fn of_window(
        seconds: f64,
        warm_up_seconds: f64,
        heartbeat_requests: f64,
        workload_requests: f64,
        cpu_seconds: f64,
        rss_bytes: Vec<u64>,
        peak_rss_bytes: u64,
    ) -> Soak {
        let spread = match (rss_bytes.iter().max(), rss_bytes.iter().min()) {
            (Some(max), Some(min)) => max - min,
            _ => 0,
        };
        Soak {
            seconds,
            warm_up_seconds,
            heartbeat_requests,
            workload_requests,
            heartbeat_requests_per_second: per_second(heartbeat_requests, seconds),
            cpu_seconds,
            cpu_percent_of_a_core: per_second(cpu_seconds, seconds) * 100.0,
            cpu_seconds_per_1000_requests: if workload_requests > 0.0 {
                cpu_seconds / workload_requests * 1000.0
            } else {
                0.0
            },
            rss_spread_bytes: spread,
            rss_bytes,
            peak_rss_bytes,
        }
    }

    /// Each figure the median of the runs'; the memory samples are each run's own (one
    /// run's are kept).
    fn median(soaks: &[&Soak]) -> Soak {
        if let [only] = soaks {
            return (*only).clone();
        }
        let m = |f: fn(&Soak) -> f64| median(soaks.iter().map(|s| f(s)));
        Soak {
            seconds: m(|s| s.seconds),
            warm_up_seconds: m(|s| s.warm_up_seconds),
            heartbeat_requests: m(|s| s.heartbeat_requests),
            workload_requests: m(|s| s.workload_requests),
            heartbeat_requests_per_second: m(|s| s.heartbeat_requests_per_second),
            cpu_seconds: m(|s| s.cpu_seconds),
            cpu_percent_of_a_core: m(|s| s.cpu_percent_of_a_core),
            cpu_seconds_per_1000_requests: m(|s| s.cpu_seconds_per_1000_requests),
            rss_bytes: Vec::new(),
            rss_spread_bytes: m(|s| s.rss_spread_bytes as f64).round() as u64,
            peak_rss_bytes: m(|s| s.peak_rss_bytes as f64).round() as u64,
        }
    }
}

/// With `--front`: the same measurements with every cluster straight on the shared
/// servers, each made just before its run through the front in the same invocation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WithoutFront {
    pub median: Run,
    pub runs: Vec<Run>,
    /// Nodes/s through the front over Nodes/s without it (the median of each pair's).
    pub nodes_per_second_ratio: Option<f64>,
    /// The harness latency's p50 through the front over that without it; none in a
    /// drain.
    pub latency_p50_ratio: Option<f64>,
}

impl WithoutFront {
    /// `plain[i]` and `fronted[i]` were measured as a pair.
    pub fn of_pairs(plain: Vec<Run>, fronted: &[Run], drain: bool) -> WithoutFront {
        let pairs = || plain.iter().zip(fronted);
        WithoutFront {
            median: Run::median(&plain),
            nodes_per_second_ratio: median_some(
                pairs().map(|(p, f)| ratio(f.nodes_per_second, p.nodes_per_second)),
            ),
            latency_p50_ratio: median_some(pairs().map(|(p, f)| {
                (!drain)
                    .then(|| ratio(f.latency_seconds.p50, p.latency_seconds.p50))
                    .flatten()
            })),
            runs: plain,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub clusters: usize,
    pub workers_per_cluster: usize,
    pub workload_apiservers: usize,
    /// `burst`, `rate` or `provisioned`.
    pub arrival: String,
    /// Machines per second, with `rate`.
    pub arrival_rate: Option<f64>,
    pub concurrency: u16,
    pub full_fidelity: bool,
    pub nodes_expected: usize,
    /// How the clusters reach their servers: `shared` (every cluster straight on a shared
    /// server, seeing all others) or `tenancy-front` (each through its own endpoint).
    pub serving: String,
    /// With `--front`: the same runs without the front, and the front's cost.
    pub without_front: Option<WithoutFront>,
    /// Each figure below (flattened) is the median of `runs`; `duplicates` and `missing`
    /// are the worst run's.
    #[serde(flatten)]
    pub median: Run,
    /// Every run, in order (`--repeat`).
    pub runs: Vec<Run>,
}

/// The median of some figures (the mean of the middle two for an even count); zero for
/// none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The median of the figures present; none when no run has one.
fn median_some(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.into_iter().flatten().collect();
    (!present.is_empty()).then(|| median(present))
}

/// `a / b`, when both are rates worth dividing.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// `count / elapsed`, zero when no time passed.
pub fn per_second(count: f64, elapsed_seconds: f64) -> f64 {
    if elapsed_seconds > 0.0 {
        count / elapsed_seconds
    } else {
        0.0
    }
}

/// `total / nodes`, zero for no Nodes.
pub fn per_node(total: f64, nodes: usize) -> f64 {
    if nodes > 0 { total / nodes as f64 } else { 0.0 }
}

fn median_latency<'a>(all: impl Iterator<Item = &'a Latency> + Clone) -> Latency {
    Latency {
        p50: median(all.clone().map(|l| l.p50)),
        p90: median(all.clone().map(|l| l.p90)),
        p99: median(all.clone().map(|l| l.p99)),
        max: median(all.map(|l| l.max)),
    }
}

/// Each key's median over the maps (a map without the key counts 0).
fn median_by_key<'a>(
    maps: impl Iterator<Item = &'a BTreeMap<String, f64>> + Clone,
) -> BTreeMap<String, f64> {
    let keys: std::collections::BTreeSet<&String> = maps.clone().flat_map(|m| m.keys()).collect();
    keys.into_iter()
        .map(|k| {
            let values = maps.clone().map(|m| m.get(k).copied().unwrap_or(0.0));
            (k.clone(), median(values))
        })
        .collect()
}

/// A counter's samples summed by the values of one of its labels, over several
/// expositions (one per shard).
pub fn sum_by_label<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    name: &str,
    label: &str,
) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for text in texts {
        for (labels, value) in samples(text, name) {
            if let Some((_, v)) = labels.iter().find(|(k, _)| k == label) {
                *sums.entry(v.clone()).or_insert(0.0) += value;
            }
        }
    }
    sums
}

fn median_usize(values: impl Iterator<Item = usize>) -> usize {
    median(values.map(|v| v as f64)).round() as usize
}

impl CeilingRun {
    fn median(runs: &[&CeilingRun]) -> Self {
        let m = |f: fn(&CeilingRun) -> f64| median(runs.iter().map(|r| f(r)));
        Self {
            nodes_created: median_usize(runs.iter().map(|r| r.nodes_created)),
            missing: runs.iter().map(|r| r.missing).max().unwrap_or(0),
            elapsed_seconds: m(|r| r.elapsed_seconds),
            nodes_per_second: m(|r| r.nodes_per_second),
            latency_seconds: median_latency(runs.iter().map(|r| &r.latency_seconds)),
            trigger_seconds: median_latency(runs.iter().map(|r| &r.trigger_seconds)),
            workload_requests: m(|r| r.workload_requests),
            requests_per_node: m(|r| r.requests_per_node),
            cpu_beside: CpuBeside::median(runs.iter().map(|r| &r.cpu_beside)),
        }
    }
}

impl Run {
    /// Each figure the median of the runs' (a ratio: the median of the runs' ratios, each
    /// measured like for like in its own run); errors (duplicates, missing) the worst run's.
    pub fn median(runs: &[Run]) -> Run {
        let m = |f: fn(&Run) -> f64| median(runs.iter().map(f));
        let ceilings: Vec<&CeilingRun> = runs.iter().filter_map(|r| r.ceiling.as_ref()).collect();
        let shard_count = runs.iter().map(|r| r.shard_count).max().unwrap_or(0);
        let shards = (0..shard_count)
            .map(|index| {
                let of: Vec<&ShardReport> = runs
                    .iter()
                    .filter_map(|r| r.shards.iter().find(|s| s.index == index))
                    .collect();
                let m = |f: fn(&ShardReport) -> f64| median(of.iter().map(|s| f(s)));
                ShardReport {
                    index,
                    clusters: of.first().map(|s| s.clusters).unwrap_or(0),
                    nodes_expected: of.first().map(|s| s.nodes_expected).unwrap_or(0),
                    nodes_created: m(|s| s.nodes_created),
                    nodes_per_second: m(|s| s.nodes_per_second),
                    peak_rss_bytes: m(|s| s.peak_rss_bytes as f64).round() as u64,
                    cpu_seconds: m(|s| s.cpu_seconds),
                    workload_clients: m(|s| s.workload_clients),
                }
            })
            .collect();
        Run {
            nodes_created: median_usize(runs.iter().map(|r| r.nodes_created)),
            duplicates: runs.iter().map(|r| r.duplicates).max().unwrap_or(0),
            missing: runs.iter().map(|r| r.missing).max().unwrap_or(0),
            elapsed_seconds: m(|r| r.elapsed_seconds),
            provisioning_seconds: m(|r| r.provisioning_seconds),
            controller_ready_seconds: median_some(runs.iter().map(|r| r.controller_ready_seconds)),
            nodes_per_second: m(|r| r.nodes_per_second),
            latency_seconds: median_latency(runs.iter().map(|r| &r.latency_seconds)),
            controller_histogram: HistogramSummary {
                count: m(|r| r.controller_histogram.count),
                p50: m(|r| r.controller_histogram.p50),
                p90: m(|r| r.controller_histogram.p90),
                p99: m(|r| r.controller_histogram.p99),
            },
            controller_queue_wait_seconds: median_some(
                runs.iter().map(|r| r.controller_queue_wait_seconds),
            ),
            controller_nodes_created_total: m(|r| r.controller_nodes_created_total),
            workload_requests: m(|r| r.workload_requests),
            requests_per_node: m(|r| r.requests_per_node),
            requests_by_purpose: median_by_key(runs.iter().map(|r| &r.requests_by_purpose)),
            cpu_beside: CpuBeside::median(runs.iter().map(|r| &r.cpu_beside)),
            ceiling: (!ceilings.is_empty()).then(|| CeilingRun::median(&ceilings)),
            ratio_to_ceiling: median_some(runs.iter().map(|r| r.ratio_to_ceiling)),
            latency_p50_ratio_to_ceiling: median_some(
                runs.iter().map(|r| r.latency_p50_ratio_to_ceiling),
            ),
            controller_peak_rss_bytes: m(|r| r.controller_peak_rss_bytes as f64).round() as u64,
            controller_cpu_seconds: m(|r| r.controller_cpu_seconds),
            controller_cpu_seconds_per_1000_nodes: m(|r| r.controller_cpu_seconds_per_1000_nodes),
            controller_idle_cpu_percent: m(|r| r.controller_idle_cpu_percent),
            workload_clients: m(|r| r.workload_clients),
            controller_open_files: m(|r| r.controller_open_files as f64).round() as u64,
            controller_open_files_limit: runs
                .iter()
                .filter_map(|r| r.controller_open_files_limit)
                .min(),
            loop_closed: median_usize(runs.iter().map(|r| r.loop_closed)),
            shard_count,
            shards,
            front_peak_rss_bytes: median_some(
                runs.iter()
                    .map(|r| r.front_peak_rss_bytes.map(|b| b as f64)),
            )
            .map(|b| b.round() as u64),
            front_cpu_seconds: median_some(runs.iter().map(|r| r.front_cpu_seconds)),
            soak: {
                let soaks: Vec<&Soak> = runs.iter().filter_map(|r| r.soak.as_ref()).collect();
                (!soaks.is_empty()).then(|| Soak::median(&soaks))
            },
        }
    }

    /// Sets the ceiling's figures and the ratios that compare them with this run's.
    pub fn compare_with(&mut self, ceiling: CeilingRun, drain: bool) {
        self.ratio_to_ceiling = ratio(self.nodes_per_second, ceiling.nodes_per_second);
        self.latency_p50_ratio_to_ceiling = if drain {
            None
        } else {
            ratio(self.latency_seconds.p50, ceiling.latency_seconds.p50)
        };
        self.ceiling = Some(ceiling);
    }
}

impl Report {
    /// The report of `runs` (at least one), each figure their median.
    pub fn of_runs(mut config: Report, runs: Vec<Run>) -> Report {
        config.median = Run::median(&runs);
        config.runs = runs;
        config
    }
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

/// The controller's counter of requests to workload API servers, by verb and code.
pub const WORKLOAD_REQUESTS: &str = "fakenode_workload_requests_total";

/// The sum of every sample of a metric, whatever its labels (e.g. a counter's verbs and
/// codes).
pub fn total(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|(_, v)| v).sum()
}

/// The mean of a histogram over every text (e.g. one per shard); `None` without samples.
pub fn histogram_mean<'a>(
    texts: impl IntoIterator<Item = &'a str> + Clone,
    name: &str,
) -> Option<f64> {
    let of = |suffix: &str| {
        texts
            .clone()
            .into_iter()
            .map(|t| total(t, &format!("{name}_{suffix}")))
            .sum::<f64>()
    };
    let count = of("count");
    (count > 0.0).then(|| of("sum") / count)
}

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

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The rates side by side and their ratio, so that a ratio is never read alone.
fn against_ceiling(r: &Run) -> Option<String> {
    let c = r.ceiling.as_ref()?;
    Some(format!(
        "controller {:.1} nodes/s, ceiling {:.1} nodes/s: ratio {}",
        r.nodes_per_second,
        c.nodes_per_second,
        r.ratio_to_ceiling
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    ))
}

/// One line per run, for `--repeat`.
fn run_line(r: &Run, drain: bool) -> String {
    let mut text = format!(
        "{:.1} nodes/s in {:.2} s, {}/{} dup/missing, {:.2} requests/Node, {:.2} CPU s/1000 Nodes",
        r.nodes_per_second,
        r.elapsed_seconds,
        r.duplicates,
        r.missing,
        r.requests_per_node,
        r.controller_cpu_seconds_per_1000_nodes
    );
    if !drain {
        text.push_str(&format!(", p50 {}", ms(r.latency_seconds.p50)));
    }
    text.push_str(&format!(", peak RSS {}", mib(r.controller_peak_rss_bytes)));
    if let Some(s) = &r.soak {
        text.push_str(&format!(
            ", soak {:.2} % of a core, RSS spread {}",
            s.cpu_percent_of_a_core,
            mib(s.rss_spread_bytes)
        ));
    }
    if let Some(c) = &r.ceiling {
        text.push_str(&format!(
            "; ceiling {:.1} nodes/s in {:.2} s, ratio {}",
            c.nodes_per_second,
            c.elapsed_seconds,
            r.ratio_to_ceiling
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into())
        ));
        if !drain {
            text.push_str(&format!(", p50 {}", ms(c.latency_seconds.p50)));
        }
    }
    text
}

/// The report for a person.
pub fn render(report: &Report) -> String {
    let r = &report.median;
    let drain = report.arrival == "provisioned";
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<38} {v}\n"));
    line(
        "clusters",
        format!(
            "{} ({} worker(s) each, {} workload API server(s))",
            report.clusters, report.workers_per_cluster, report.workload_apiservers
        ),
    );
    line(
        "serving",
        match report.serving.as_str() {
            "tenancy-front" => format!(
                "through a tenancy front per server (each cluster its own endpoint){}",
                match (r.front_peak_rss_bytes, r.front_cpu_seconds) {
                    (Some(rss), Some(cpu)) => format!(": {}, {cpu:.1} s CPU", mib(rss)),
                    _ => String::new(),
                }
            ),
            _ => "straight on the shared servers (every cluster sees all others)".into(),
        },
    );
    line(
        "arrival",
        match (report.arrival.as_str(), report.arrival_rate) {
            (_, Some(a)) => format!("{a} machines/s (rate)"),
            ("provisioned", _) => {
                "every host provisioned before the controller starts (a drain)".into()
            }
            _ => "all at once (burst)".into(),
        },
    );
    if report.runs.len() > 1 {
        line(
            "runs",
            format!(
                "{}: each figure is the median, every run is listed below",
                report.runs.len()
            ),
        );
    }
    line(
        "nodes expected / created",
        format!("{} / {}", report.nodes_expected, r.nodes_created),
    );
    line(
        "duplicates / missing",
        format!("{} / {}", r.duplicates, r.missing),
    );
    line(
        "elapsed",
        if drain {
            format!(
                "{:.2} s from the controller's start (ready after {:.2} s)",
                r.elapsed_seconds,
                r.controller_ready_seconds.unwrap_or(0.0)
            )
        } else {
            format!(
                "{:.2} s (hosts provisioned over the first {:.2} s)",
                r.elapsed_seconds, r.provisioning_seconds
            )
        },
    );
    line("throughput", format!("{:.1} nodes/s", r.nodes_per_second));
    // One controller needs no breakdown: its line would repeat the total.
    if r.shards.len() > 1 {
        for s in &r.shards {
            line(
                &format!("shard {} of {}", s.index, r.shard_count),
                format!(
                    "{} / {} nodes ({} clusters), {:.1} nodes/s, {}, {:.2} s CPU",
                    s.nodes_created,
                    s.nodes_expected,
                    s.clusters,
                    s.nodes_per_second,
                    mib(s.peak_rss_bytes),
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
    let quantiles = |l: &Latency| {
        format!(
            "{} / {} / {} / {}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max)
        )
    };
    line(
        "latency p50/p90/p99/max (harness)",
        quantiles(&r.latency_seconds),
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
    if let Some(wait) = r.controller_queue_wait_seconds {
        line(
            "of which its queue (mean)",
            format!("{} from its watch's event to its reconcile", ms(wait)),
        );
    }
    if let Some(c) = &r.ceiling {
        line(
            "ceiling (plain client, no rate limit)",
            format!(
                "{} / {} Nodes in {:.2} s",
                c.nodes_created, report.nodes_expected, c.elapsed_seconds
            ),
        );
        if let Some(text) = against_ceiling(r) {
            line("throughput against the ceiling", text);
        }
        if !drain {
            line(
                "latency p50/p90/p99/max (ceiling)",
                quantiles(&c.latency_seconds),
            );
            line(
                "of which its watch of the hosts",
                quantiles(&c.trigger_seconds),
            );
            line(
                "latency p50 against the ceiling",
                format!(
                    "controller {}, ceiling {}: ratio {}",
                    ms(r.latency_seconds.p50),
                    ms(c.latency_seconds.p50),
                    r.latency_p50_ratio_to_ceiling
                        .map(|x| format!("{x:.2}"))
                        .unwrap_or_else(|| "-".into())
                ),
            );
        }
    }
    line(
        "other CPU (mgmt/workload/etcd/harness)",
        match &r.ceiling {
            Some(c) => format!(
                "controller's window {}, ceiling's {} (its requests in the harness's)",
                r.cpu_beside.text(),
                c.cpu_beside.text()
            ),
            None => r.cpu_beside.text(),
        },
    );
    line(
        "requests per Node (workload)",
        match &r.ceiling {
            Some(c) => format!(
                "controller {:.2} ({} requests), ceiling {:.2} ({} requests)",
                r.requests_per_node, r.workload_requests, c.requests_per_node, c.workload_requests
            ),
            None => format!(
                "{:.2} ({} requests)",
                r.requests_per_node, r.workload_requests
            ),
        },
    );
    if !r.requests_by_purpose.is_empty() {
        let parts: Vec<String> = r
            .requests_by_purpose
            .iter()
            .filter(|(_, n)| **n > 0.0)
            .map(|(purpose, n)| format!("{purpose} {n}"))
            .collect();
        line("requests by purpose (controller)", parts.join(", "));
    }
    let all = if r.shards.len() > 1 {
        " (all shards)"
    } else {
        ""
    };
    line(
        &format!("controller CPU per 1000 Nodes{all}"),
        format!("{:.2} s", r.controller_cpu_seconds_per_1000_nodes),
    );
    line(
        &format!("controller peak RSS{all}"),
        mib(r.controller_peak_rss_bytes),
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
        &format!("controller open files{all}"),
        match r.controller_open_files_limit {
            Some(limit) => format!("{} (limit {limit})", r.controller_open_files),
            None => format!("{}", r.controller_open_files),
        },
    );
    if let Some(s) = &r.soak {
        line(
            "heartbeat soak",
            format!(
                "{:.0} s after {:.0} s of warm-up: {:.1} heartbeat requests/s",
                s.seconds, s.warm_up_seconds, s.heartbeat_requests_per_second
            ),
        );
        line(
            "soak CPU",
            format!(
                "{:.2} % of a core, {:.2} s per 1000 requests ({} requests)",
                s.cpu_percent_of_a_core, s.cpu_seconds_per_1000_requests, s.workload_requests
            ),
        );
        let spread = format!("spread {}", mib(s.rss_spread_bytes));
        line(
            "soak RSS",
            match (s.rss_bytes.first(), s.rss_bytes.last()) {
                (Some(first), Some(last)) => format!(
                    "{} first, {} last, {spread} over {} samples",
                    mib(*first),
                    mib(*last),
                    s.rss_bytes.len()
                ),
                // The median of several runs keeps no samples of its own.
                _ => spread,
            },
        );
        line("peak RSS, run and soak", mib(s.peak_rss_bytes));
    }
    line(
        "loop closed (providerID set)",
        format!("{} / {}", r.loop_closed, report.nodes_expected),
    );
    if report.runs.len() > 1 {
        for (i, run) in report.runs.iter().enumerate() {
            line(&format!("run {}", i + 1), run_line(run, drain));
        }
    }
    if let Some(w) = &report.without_front {
        let plain = &w.median;
        let ratio = |x: Option<f64>| x.map_or_else(|| "-".into(), |x| format!("{x:.2}"));
        line(
            "without the front (same invocation)",
            format!(
                "{:.1} nodes/s, latency p50 {}, {:.2} requests per Node",
                plain.nodes_per_second,
                ms(plain.latency_seconds.p50),
                plain.requests_per_node
            ),
        );
        line(
            "through the front / without it",
            format!(
                "throughput {}, latency p50 {}",
                ratio(w.nodes_per_second_ratio),
                ratio(w.latency_p50_ratio)
            ),
        );
        if w.runs.len() > 1 {
            for (i, run) in w.runs.iter().enumerate() {
                line(
                    &format!("run {} without the front", i + 1),
                    run_line(run, drain),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soak_window_gives_rates_per_second_and_per_request_and_the_memory_spread() {
        let mib = 1024 * 1024;
        let soak = Soak::of_window(
            600.0,
            60.0,
            15_000.0,
            15_100.0,
            6.0,
            vec![80 * mib, 82 * mib, 81 * mib],
            84 * mib,
        );
        assert_eq!(soak.heartbeat_requests_per_second, 25.0);
        assert_eq!(soak.cpu_percent_of_a_core, 1.0);
        assert!((soak.cpu_seconds_per_1000_requests - 6.0 / 15.1).abs() < 1e-9);
        assert_eq!(soak.rss_spread_bytes, 2 * mib);
        assert_eq!(soak.peak_rss_bytes, 84 * mib);
        let empty = Soak::of_window(0.0, 0.0, 0.0, 0.0, 0.0, Vec::new(), 0);
        assert_eq!(
            (
                empty.heartbeat_requests_per_second,
                empty.cpu_seconds_per_1000_requests
            ),
            (0.0, 0.0)
        );
        assert_eq!(empty.rss_spread_bytes, 0);
    }

    #[test]
    fn requests_are_summed_by_purpose_over_the_shards() {
        let a = "fakenode_workload_requests_total{code=\"201\",purpose=\"registration\",verb=\"create\"} 10\n\
                 fakenode_workload_requests_total{code=\"200\",purpose=\"heartbeat\",verb=\"patch\"} 4\n\
                 fakenode_workload_requests_total{code=\"409\",purpose=\"registration\",verb=\"create\"} 1\n";
        let b = "fakenode_workload_requests_total{code=\"200\",purpose=\"heartbeat\",verb=\"patch\"} 6\n";
        let sums = sum_by_label([a, b], WORKLOAD_REQUESTS, "purpose");
        assert_eq!(
            sums,
            BTreeMap::from([
                ("heartbeat".to_string(), 10.0),
                ("registration".to_string(), 11.0)
            ])
        );
        let runs = [
            BTreeMap::from([("heartbeat".to_string(), 10.0)]),
            BTreeMap::from([("registration".to_string(), 3.0)]),
            BTreeMap::from([
                ("heartbeat".to_string(), 4.0),
                ("registration".to_string(), 5.0),
            ]),
        ];
        let m = median_by_key(runs.iter());
        assert_eq!(m["heartbeat"], 4.0);
        assert_eq!(m["registration"], 3.0);
    }

    #[test]
    fn the_fronts_cost_is_the_median_of_each_pairs_ratio() {
        let run = |rate: f64, p50: f64| Run {
            nodes_per_second: rate,
            latency_seconds: Latency {
                p50,
                ..Latency::default()
            },
            ..Run::default()
        };
        let plain = vec![run(100.0, 0.25), run(80.0, 0.5), run(120.0, 0.25)];
        let fronted = [run(50.0, 0.5), run(60.0, 0.75), run(90.0, 0.25)];
        let w = WithoutFront::of_pairs(plain, &fronted, false);
        // Ratios 0.5, 0.75, 0.75 and 2, 1.5, 1: medians 0.75 and 1.5.
        assert_eq!(w.nodes_per_second_ratio, Some(0.75));
        assert_eq!(w.latency_p50_ratio, Some(1.5));
        assert_eq!(w.median.nodes_per_second, 100.0);
        let drained = WithoutFront::of_pairs(vec![run(100.0, 0.1)], &fronted[..1], true);
        assert_eq!(drained.latency_p50_ratio, None);
    }

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
    fn a_counters_samples_add_up_whatever_their_labels() {
        assert_eq!(total(SHARDED, WORKLOAD_REQUESTS), 24.0);
        let two = "fakenode_workload_requests_total{code=\"201\",verb=\"create\"} 10\n\
            fakenode_workload_requests_total{code=\"200\",verb=\"patch\"} 20\n\
            fakenode_workload_requests_total_other 5\n";
        assert_eq!(total(two, WORKLOAD_REQUESTS), 30.0);
        assert_eq!(total(two, "absent"), 0.0);
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
    fn a_histograms_mean_is_taken_over_every_shard() {
        let a = "q_sum 0.004\nq_count 2\n";
        let b = "q_sum{shard=\"1\"} 0.011\nq_count{shard=\"1\"} 3\n";
        let mean = histogram_mean([a, b], "q").unwrap();
        assert!((mean - 0.003).abs() < 1e-12, "{mean}");
        assert_eq!(histogram_mean(["q_sum 0\nq_count 0\n"], "q"), None);
        assert_eq!(histogram_mean([""], "q"), None);
    }

    fn report(runs: Vec<Run>) -> Report {
        Report::of_runs(
            Report {
                clusters: 10,
                nodes_expected: 10,
                arrival: "burst".into(),
                ..Report::default()
            },
            runs,
        )
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
        let one = report(vec![Run {
            shard_count: 1,
            shards: vec![shard(0, 10.0)],
            ..Run::default()
        }]);
        assert!(!render(&one).contains("shard"), "{}", render(&one));
        let two = report(vec![Run {
            shard_count: 2,
            shards: vec![shard(0, 6.0), shard(1, 4.0)],
            ..Run::default()
        }]);
        let text = render(&two);
        assert!(
            text.contains("shard 0 of 2") && text.contains("shard 1 of 2"),
            "{text}"
        );
        assert!(text.contains("10 nodes, 5.0 nodes/s"), "{text}");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median([]), 0.0);
        assert_eq!(median([f64::NAN, 5.0]), 5.0);
        assert_eq!(median_some([None, Some(2.0), Some(4.0)]), Some(3.0));
        assert_eq!(median_some([None, None]), None);
    }

    #[test]
    fn ratios_and_rates_never_divide_by_zero() {
        assert_eq!(ratio(50.0, 100.0), Some(0.5));
        assert_eq!(ratio(50.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(per_second(100.0, 4.0), 25.0);
        assert_eq!(per_second(100.0, 0.0), 0.0);
        assert_eq!(per_node(300.0, 100), 3.0);
        assert_eq!(per_node(300.0, 0), 0.0);
    }

    fn measured(rate: f64, ceiling: f64, p50: f64, duplicates: usize) -> Run {
        let mut run = Run {
            nodes_created: 10,
            duplicates,
            elapsed_seconds: 10.0 / rate,
            nodes_per_second: rate,
            latency_seconds: Latency {
                p50,
                ..Latency::default()
            },
            requests_per_node: 3.0,
            shard_count: 1,
            shards: vec![ShardReport {
                nodes_per_second: rate,
                ..ShardReport::default()
            }],
            ..Run::default()
        };
        run.compare_with(
            CeilingRun {
                nodes_created: 10,
                nodes_per_second: ceiling,
                latency_seconds: Latency {
                    p50: 0.01,
                    ..Latency::default()
                },
                ..CeilingRun::default()
            },
            false,
        );
        run
    }

    #[test]
    fn each_figure_of_repeated_runs_is_their_median_and_errors_the_worst() {
        let runs = vec![
            measured(40.0, 100.0, 0.02, 0),
            measured(80.0, 100.0, 0.03, 1),
            measured(60.0, 50.0, 0.04, 0),
        ];
        assert_eq!(runs[0].ratio_to_ceiling, Some(0.4));
        assert_eq!(runs[0].latency_p50_ratio_to_ceiling, Some(2.0));
        let r = report(runs);
        assert_eq!(r.runs.len(), 3);
        let m = &r.median;
        assert_eq!(m.nodes_per_second, 60.0);
        assert_eq!(m.shards[0].nodes_per_second, 60.0);
        assert_eq!(m.latency_seconds.p50, 0.03);
        // The ratio is the median of the runs' own ratios (0.4, 0.8, 1.2).
        assert_eq!(m.ratio_to_ceiling, Some(0.8));
        assert_eq!(m.ceiling.as_ref().map(|c| c.nodes_per_second), Some(100.0));
        assert_eq!(m.duplicates, 1, "the worst run's");
        let text = render(&r);
        assert!(text.contains("3: each figure is the median"), "{text}");
        assert!(text.contains("run 1") && text.contains("run 3"), "{text}");
        // Every ratio stands beside both rates.
        assert!(
            text.contains("controller 60.0 nodes/s, ceiling 100.0 nodes/s: ratio 0.80"),
            "{text}"
        );
        assert!(text.contains("ratio 1.20"), "{text}");
        assert!(
            text.contains("controller 30.0 ms, ceiling 10.0 ms: ratio 3.00"),
            "{text}"
        );
    }

    #[test]
    fn the_cpu_beside_each_window_is_what_each_process_spent_in_it_side_by_side() {
        let at = |m, w, e, h| CpuBeside {
            management_apiserver: m,
            workload_apiservers: w,
            etcd: e,
            harness: h,
        };
        let spent = at(10.0, 20.0, 5.0, 3.0).since(at(4.0, 8.0, 1.0, 2.5));
        assert_eq!(spent, at(6.0, 12.0, 4.0, 0.5));
        let runs: Vec<Run> = [1.0, 3.0, 2.0]
            .into_iter()
            .map(|x| {
                let mut run = Run {
                    nodes_per_second: 1.0,
                    cpu_beside: at(x, 2.0 * x, 0.0, 0.0),
                    ..Run::default()
                };
                run.compare_with(
                    CeilingRun {
                        nodes_per_second: 1.0,
                        cpu_beside: at(10.0 * x, 0.0, 0.0, x),
                        ..CeilingRun::default()
                    },
                    true,
                );
                run
            })
            .collect();
        let r = report(runs);
        assert_eq!(r.median.cpu_beside, at(2.0, 4.0, 0.0, 0.0));
        let ceiling = r.median.ceiling.as_ref().map(|c| c.cpu_beside);
        assert_eq!(ceiling, Some(at(20.0, 0.0, 0.0, 2.0)));
        let text = render(&r);
        assert!(
            text.contains(
                "controller's window 2.0 / 4.0 / 0.0 / 0.0 s, ceiling's 20.0 / 0.0 / 0.0 / 2.0 s"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_drain_has_no_latency_ratio_and_says_when_the_controller_was_ready() {
        let mut run = Run {
            nodes_created: 10,
            nodes_per_second: 5.0,
            controller_ready_seconds: Some(0.5),
            ..Run::default()
        };
        run.compare_with(
            CeilingRun {
                nodes_per_second: 10.0,
                ..CeilingRun::default()
            },
            true,
        );
        assert_eq!(run.ratio_to_ceiling, Some(0.5));
        assert_eq!(run.latency_p50_ratio_to_ceiling, None);
        let r = Report::of_runs(
            Report {
                arrival: "provisioned".into(),
                ..Report::default()
            },
            vec![run],
        );
        let text = render(&r);
        assert!(
            text.contains("a drain") && text.contains("ready after 0.50 s"),
            "{text}"
        );
        assert!(!text.contains("latency p50 against"), "{text}");
        assert!(!text.contains("run 1"), "one run, no list: {text}");
    }

    #[test]
    fn the_json_has_the_documented_keys() {
        let v = serde_json::to_value(report(vec![Run::default()])).unwrap();
        for key in [
            "clusters",
            "arrival",
            "nodes_expected",
            "nodes_created",
            "duplicates",
            "elapsed_seconds",
            "nodes_per_second",
            "latency_seconds",
            "ceiling",
            "ratio_to_ceiling",
            "requests_per_node",
            "controller_cpu_seconds_per_1000_nodes",
            "controller_peak_rss_bytes",
            "controller_cpu_seconds",
            "workload_clients",
            "shard_count",
            "shards",
            "runs",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        for key in ["p50", "p90", "p99", "max"] {
            assert!(v["latency_seconds"].get(key).is_some(), "{key}");
        }
        assert!(v["ceiling"].is_null());
        assert_eq!(v["runs"].as_array().map(Vec::len), Some(1));
    }
}
