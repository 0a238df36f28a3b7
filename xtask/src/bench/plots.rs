//! The report's plots, SVG files beside it (plotters, SVG backend only): a figure against the
//! NSG's rule count for each dataplane (median, with the repetitions' min-max as error bars),
//! and a latency distribution (the share of round trips at or below each latency).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::{median, min_max};

/// One dataplane's line: (x, samples at x).
pub(super) struct Curve<'a> {
    pub(super) label: &'a str,
    pub(super) points: Vec<(f64, &'a [f64])>,
}

const COLORS: [RGBColor; 3] = [
    RGBColor(0, 90, 181),
    RGBColor(220, 50, 32),
    RGBColor(90, 90, 90),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e:?}")
}

/// `curves` against rules per NSG (log scale), to `path`.
pub(super) fn against_rules(
    path: &Path,
    title: &str,
    y_desc: &str,
    curves: &[Curve<'_>],
) -> Result<()> {
    let points: Vec<(f64, f64, f64, f64)> = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .filter(|(_, v)| !v.is_empty())
        .map(|(x, v)| {
            let (lo, hi) = min_max(v);
            (*x, median(v), lo, hi)
        })
        .collect();
    if points.is_empty() {
        return Err(anyhow!("no sample to plot in {}", path.display()));
    }
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let y_max = points.iter().map(|p| p.3).fold(0.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0.7f64..x_max).log_scale(), 0f64..y_max.max(1e-9))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("rules per NSG (log scale)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(err)?;
    for (i, curve) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64, f64, f64)> = curve
            .points
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(x, v)| {
                let (lo, hi) = min_max(v);
                (*x, median(v), lo, hi)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(curve.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
            )
            .map_err(err)?;
        chart
            .draw_series(
                pts.iter()
                    .map(|p| ErrorBar::new_vertical(p.0, p.2, p.1, p.3, color, 8)),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A tick label without needless decimals.
fn short(y: f64) -> String {
    if y.abs() >= 100.0 || y == y.trunc() {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

/// The distribution of `series`' latencies (each sorted, microseconds): for each, the
/// percentage of round trips at or below a latency, on a log scale from the fastest round
/// trip to the slowest (the body and the tail both visible).
pub(super) fn latency_distribution(
    path: &Path,
    title: &str,
    series: &[(&str, &[f64])],
) -> Result<()> {
    let all = || series.iter().flat_map(|(_, v)| v.iter().copied());
    let top = all().fold(0.0, f64::max);
    let bottom = all().filter(|x| *x > 0.0).fold(f64::INFINITY, f64::min);
    if top <= 0.0 || !bottom.is_finite() {
        return Err(anyhow!("no latency to plot in {}", path.display()));
    }
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((bottom * 0.9..top * 1.1).log_scale(), 0f64..100f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("round trip, us (log scale)")
        .y_desc("round trips at or below, %")
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .draw()
        .map_err(err)?;
    for (i, (label, v)) in series.iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        // At most about 500 points per line: one per 0.2 % of the samples.
        let step = (v.len() / 500).max(1);
        let n = v.len() as f64;
        let pts = v
            .iter()
            .enumerate()
            .filter(|(j, x)| (j % step == 0 || *j + 1 == v.len()) && **x > 0.0)
            .map(|(j, x)| (*x, (j + 1) as f64 * 100.0 / n));
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(format!(
                "{label} (p50 {:.0} us, p99 {:.0} us, {} round trips)",
                super::measure::percentile(v, 50.0),
                super::measure::percentile(v, 99.0),
                v.len()
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both plots come out as SVG files with their lines and legends.
    #[test]
    fn plots_are_svg() {
        let dir = std::env::temp_dir().join(format!("vnetd-bench-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (v, r) = ([900.0, 1000.0, 1100.0], [400.0, 500.0]);
        let rules = dir.join("rules.svg");
        against_rules(
            &rules,
            "new connections/s",
            "connections/s",
            &[
                Curve {
                    label: "vnetd",
                    points: vec![(1.0, &v[..]), (1000.0, &v[..])],
                },
                Curve {
                    label: "bridge + iptables",
                    points: vec![(1.0, &v[..]), (1000.0, &r[..])],
                },
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&rules).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("bridge + iptables"),
            "{svg}"
        );
        let lat = dir.join("latency.svg");
        let sorted: Vec<f64> = (1..=1000).map(f64::from).collect();
        latency_distribution(&lat, "TCP_RR", &[("vnetd", &sorted), ("reference", &[])]).unwrap();
        let svg = std::fs::read_to_string(&lat).unwrap();
        assert!(svg.contains("vnetd (p50 500 us"), "{svg}");
        assert!(against_rules(&rules, "t", "y", &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
