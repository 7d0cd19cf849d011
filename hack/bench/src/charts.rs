//! SVG charts written next to docs/benchmarks.md by `--write-docs`: pod start latency
//! against the pods already running (from the parallel batches of step 3), for both
//! runtimes. Drawn with plotters' SVG backend, whose text is SVG text (no font files).

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::results::{BERTH, CONTAINERD, Results};
use crate::stats::quantile;

/// One line of a chart: a runtime's (pods running, latency in ms) points.
struct Line {
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Median and 95th percentile (nearest rank) of `v`.
fn median_p95(v: &[f64]) -> Option<(f64, f64)> {
    Some((quantile(v, 0.5)?, quantile(v, 0.95)?))
}

/// Per batch of `par` parallel starts: (pods running before it, median, p95).
fn per_batch(samples: &[f64], par: usize) -> Vec<(f64, f64, f64)> {
    samples
        .chunks(par.max(1))
        .enumerate()
        .filter_map(|(b, chunk)| median_p95(chunk).map(|(m, p)| ((b * par) as f64, m, p)))
        .collect()
}

/// Writes the charts for `results` next to `docs` (the markdown file); returns their file
/// names, for the markdown to link.
pub fn write(results: &Results, docs: &Path) -> Result<Vec<String>> {
    let dir = docs.parent().unwrap_or(Path::new("."));
    let Some(op) = results.op("par") else {
        return Ok(Vec::new());
    };
    let par = results.plan.parallelism;
    let mut lines = Vec::new();
    for (rt, label, color) in [
        (BERTH, "berth", RGBColor(0x1f, 0x77, 0xb4)),
        (CONTAINERD, "containerd", RGBColor(0xd6, 0x27, 0x28)),
    ] {
        let batches = per_batch(&op.samples[rt], par);
        lines.push(Line {
            label: if label == "berth" {
                "berth median"
            } else {
                "containerd median"
            },
            color,
            points: batches.iter().map(|&(x, m, _)| (x, m)).collect(),
        });
        lines.push(Line {
            label: if label == "berth" {
                "berth p95"
            } else {
                "containerd p95"
            },
            color: RGBColor(color.0 / 2 + 0x60, color.1 / 2 + 0x60, color.2 / 2 + 0x60),
            points: batches.iter().map(|&(x, _, p)| (x, p)).collect(),
        });
    }
    if lines.iter().all(|l| l.points.is_empty()) {
        return Ok(Vec::new());
    }
    let name = "benchmarks-pod-start.svg";
    draw(
        &dir.join(name),
        &format!("Pod start, {par} at once, against pods already running"),
        "pods running before the batch",
        "pod start (run + create + start), ms",
        &lines,
    )?;
    Ok(vec![name.to_string()])
}

fn draw(path: &PathBuf, title: &str, x_desc: &str, y_desc: &str, lines: &[Line]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let x_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..(x_max * 1.05).max(1.0), 0.0..(y_max * 1.1).max(1.0))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for l in lines {
        let color = l.color;
        chart
            .draw_series(LineSeries::new(
                l.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(l.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(l.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_by_parallelism_and_ranked() {
        let samples: Vec<f64> = (1..=20).map(f64::from).collect();
        let b = per_batch(&samples, 10);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0], (0.0, 5.0, 10.0));
        assert_eq!(b[1], (10.0, 15.0, 20.0));
        assert_eq!(median_p95(&[]), None);
    }

    #[test]
    fn a_chart_is_an_svg_file_with_its_legend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let lines = [Line {
            label: "berth median",
            color: RGBColor(0, 0, 255),
            points: vec![(0.0, 10.0), (10.0, 12.0)],
        }];
        draw(&path, "t", "x", "y", &lines).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("berth median"));
    }
}
