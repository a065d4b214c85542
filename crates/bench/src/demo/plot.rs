//! The demo's chart (SVG): Nodes Ready over time, and the latency distribution.

use std::path::Path;

use plotters::prelude::*;

/// `ready_at`: seconds since the clock started (the first host provisioned, or the
/// controller's start in a drain), one per Node;
/// `latencies`: seconds, one per Node.
pub fn write_svg(path: &Path, ready_at: &[f64], latencies: &[f64]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(600);

    let mut times: Vec<f64> = ready_at.to_vec();
    times.sort_by(f64::total_cmp);
    let t_max = times.last().copied().unwrap_or(1.0).max(0.001);
    // Nodes are counted: a whole-numbered axis.
    let count = u32::try_from(times.len()).unwrap_or(u32::MAX).max(1);
    let mut chart = ChartBuilder::on(&left)
        .caption("Nodes Ready over time", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max * 1.05, 0u32..count + count / 20 + 1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds (from the first host provisioned, or the controller's start)")
        .y_desc("Nodes")
        .x_label_formatter(&|v| axis_label(*v))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            times.iter().zip(1u32..).map(|(t, n)| (*t, n)),
            &BLUE,
        ))
        .map_err(|e| err(&e))?;

    const BINS: usize = 40;
    let ms: Vec<f64> = latencies.iter().map(|l| l * 1000.0).collect();
    let l_max = ms.iter().copied().fold(0.0, f64::max).max(1.0);
    let width = l_max / BINS as f64;
    let mut counts = [0u32; BINS];
    for l in &ms {
        counts[((l / width) as usize).min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&right)
        .caption("Creation latency", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..l_max * 1.02, 0u32..top + top / 10 + 1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (host provisioned, or controller start -> Node Ready)")
        .y_desc("Nodes")
        .x_label_formatter(&|v| axis_label(*v))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, c)| {
            let x0 = i as f64 * width;
            Rectangle::new([(x0, 0), (x0 + width, *c)], BLUE.mix(0.6).filled())
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// An axis label: a whole number without decimals, anything else with as few as it
/// needs (at most three).
pub fn axis_label(value: f64) -> String {
    if !value.is_finite() {
        return String::new();
    }
    let rounded = (value * 1000.0).round() / 1000.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        let text = format!("{rounded:.3}");
        text.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::axis_label;

    #[test]
    fn whole_values_are_labelled_as_whole_numbers() {
        assert_eq!(axis_label(0.0), "0");
        assert_eq!(axis_label(200.0), "200");
        assert_eq!(axis_label(2.5), "2.5");
        assert_eq!(axis_label(0.125), "0.125");
        assert_eq!(axis_label(0.1 + 0.2), "0.3");
        assert_eq!(axis_label(-3.0), "-3");
        assert_eq!(axis_label(f64::NAN), "");
    }

    #[test]
    fn the_svg_labels_whole_counts_without_decimals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.svg");
        let ready: Vec<f64> = (1..=200).map(|i| f64::from(i) / 100.0).collect();
        super::write_svg(&path, &ready, &ready).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        // Each label is a text element's line of its own.
        let labels: Vec<&str> = svg.lines().filter(|l| l.parse::<f64>().is_ok()).collect();
        assert!(
            labels.contains(&"200") && labels.contains(&"0.2"),
            "{labels:?}"
        );
        assert!(!labels.iter().any(|l| l.ends_with(".0")), "{labels:?}");
    }
    #[test]
    fn an_svg_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.svg");
        super::write_svg(&path, &[0.1, 0.2, 0.5], &[0.01, 0.02, 0.2]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("Creation latency"));
        // No samples at all still makes a (blank) chart rather than an error.
        super::write_svg(&path, &[], &[]).unwrap();
    }
}
