//! Reading Prometheus text exposition: what the tests, the demo and the e2e run scrape
//! from the controller and the API servers.

/// The value of an unlabelled sample `name` in Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    metric_value_with(text, name, &[])
}

/// The value of the sample `name` whose labels are exactly `labels` (in any order), e.g.
/// `[("shard", "1")]` for a sharded controller, whose every sample carries its shard.
pub fn metric_value_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(l, _)| same_labels(l, labels))
        .map(|(_, v)| v)
}

/// `(le, cumulative count)` of histogram `name`, in exposition order (ascending `le`).
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    histogram_buckets_with(text, name, &[])
}

/// The buckets of the series of histogram `name` whose labels besides `le` are exactly
/// `labels`.
pub fn histogram_buckets_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    samples(text, &format!("{name}_bucket"))
        .into_iter()
        .filter_map(|(mut l, count)| {
            let at = l.iter().position(|(k, _)| k == "le")?;
            let (_, le) = l.remove(at);
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            same_labels(&l, labels).then_some((le, count))
        })
        .collect()
}

/// Several processes' buckets of one histogram as one (what `sum by (le)` gives): counts
/// added per bound. The processes share the bucket layout, being the same binary.
pub fn merge_buckets(all: &[Vec<(f64, f64)>]) -> Vec<(f64, f64)> {
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for buckets in all {
        for &(le, count) in buckets {
            match merged.iter_mut().find(|(bound, _)| *bound == le) {
                Some((_, total)) => *total += count,
                None => merged.push((le, count)),
            }
        }
    }
    merged.sort_by(|a, b| a.0.total_cmp(&b.0));
    merged
}

/// Every sample of the metric `name`: its labels and value. Label values are unescaped
/// (`\\`, `\"`, `\n`), so a value holding `,` or `}` does not cut the set short.
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, rest) = match rest.strip_prefix('{') {
                Some(inner) => parse_labels(inner)?,
                None => (Vec::new(), rest),
            };
            // `name value [timestamp]`: the value is the first field after the name.
            if !rest.starts_with([' ', '\t']) {
                return None;
            }
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

/// `a="x",b="y"}` (after the opening brace): the pairs and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once('=')?;
        let mut chars = rest.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        s = &rest[1 + end + 1..];
    }
}

fn same_labels(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    have.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
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
