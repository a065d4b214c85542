//! The demo's chart (SVG): Nodes Ready over time, and the latency distribution.

use std::path::Path;

use plotters::prelude::*;

/// `ready_at`: seconds since the first host was provisioned, one per Node;
/// `latencies`: seconds, one per Node.
pub fn write_svg(path: &Path, ready_at: &[f64], latencies: &[f64]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(600);

    let mut times: Vec<f64> = ready_at.to_vec();
    times.sort_by(f64::total_cmp);
    let t_max = times.last().copied().unwrap_or(1.0).max(0.001);
    let mut chart = ChartBuilder::on(&left)
        .caption("Nodes Ready over time", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max * 1.05, 0.0..(times.len().max(1) as f64) * 1.05)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first host was provisioned")
        .y_desc("Nodes")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            times.iter().enumerate().map(|(i, t)| (*t, (i + 1) as f64)),
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
        .x_desc("milliseconds (host provisioned -> Node Ready)")
        .y_desc("Nodes")
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

#[cfg(test)]
mod tests {
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
