//! SVG charts of one or several results, overlaid so runs can be compared at a glance:
//! the latency percentile spectrum (log scale, the tail stretched as HdrHistogram's
//! plotter does), latency over time (p50 and p99 per second), and throughput over time.
//! Everything comes from the results JSON, so `spate bench plot a.json b.json` draws
//! what the runs drew for themselves.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{BenchError, Result};
use crate::latency::SpectrumPoint;
use crate::results::RunResult;

const SIZE: (u32, u32) = (1100, 640);

/// Draws the three charts of `results` into `dir`.
pub fn charts(results: &[RunResult], dir: &Path) -> Result<()> {
    spectrum(results, &dir.join("latency-spectrum.svg"))?;
    over_time(results, &dir.join("latency-over-time.svg"))?;
    throughput(results, &dir.join("throughput-over-time.svg"))
}

fn failed(path: &Path) -> impl Fn(String) -> BenchError + '_ {
    move |why| BenchError::Plot {
        what: path.display().to_string(),
        why,
    }
}

/// A series to draw: its legend and points.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// "Nines" on the x axis: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9 …
fn nines(percentile: f64) -> f64 {
    let tail = (1.0 - percentile / 100.0).max(1e-7);
    -tail.log10()
}

fn spectrum_series(name: String, points: &[SpectrumPoint]) -> Option<Series> {
    (!points.is_empty()).then(|| Series {
        name,
        points: points
            .iter()
            .map(|p| (nines(p.percentile), p.micros as f64 / 1000.0))
            .collect(),
    })
}

fn spectrum(results: &[RunResult], path: &Path) -> Result<()> {
    let mut series = Vec::new();
    for r in results {
        series.extend(spectrum_series(format!("{} ack", r.label), &r.ack_spectrum));
        series.extend(spectrum_series(
            format!("{} end-to-end", r.label),
            &r.e2e_spectrum,
        ));
    }
    let label = |x: &f64| {
        let p = 100.0 * (1.0 - 10f64.powf(-x));
        format!("p{}", trim(p))
    };
    draw(
        path,
        "Latency by percentile",
        "percentile",
        "latency (ms, log)",
        &series,
        true,
        &label,
    )
}

fn over_time(results: &[RunResult], path: &Path) -> Result<()> {
    let mut series = Vec::new();
    for r in results {
        type Pick = fn(&crate::results::Second) -> Option<u64>;
        let picks: [(&str, Pick); 4] = [
            ("ack p50", |s| s.ack_p50_us),
            ("ack p99", |s| s.ack_p99_us),
            ("end-to-end p50", |s| s.e2e_p50_us),
            ("end-to-end p99", |s| s.e2e_p99_us),
        ];
        for (what, pick) in picks {
            let points: Vec<(f64, f64)> = r
                .timeline
                .iter()
                .filter_map(|s| pick(s).map(|us| (f64::from(s.second), us as f64 / 1000.0)))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    name: format!("{} {what}", r.label),
                    points,
                });
            }
        }
    }
    draw(
        path,
        "Latency over time",
        "second",
        "latency (ms, log)",
        &series,
        true,
        &|x| format!("{x:.0}"),
    )
}

fn throughput(results: &[RunResult], path: &Path) -> Result<()> {
    let mut series = Vec::new();
    for r in results {
        if r.produce.is_some() {
            series.push(Series {
                name: format!("{} acknowledged", r.label),
                points: r
                    .timeline
                    .iter()
                    .map(|s| (f64::from(s.second), s.acknowledged as f64))
                    .collect(),
            });
        }
        if r.consume.is_some() {
            series.push(Series {
                name: format!("{} consumed", r.label),
                points: r
                    .timeline
                    .iter()
                    .map(|s| (f64::from(s.second), s.consumed as f64))
                    .collect(),
            });
        }
    }
    draw(
        path,
        "Throughput over time",
        "second",
        "records per second",
        &series,
        false,
        &|x| format!("{x:.0}"),
    )
}

fn trim(p: f64) -> String {
    let text = format!("{p:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[allow(clippy::too_many_arguments)]
fn draw(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log_y: bool,
    x_label: &dyn Fn(&f64) -> String,
) -> Result<()> {
    let fail = failed(path);
    let all = series.iter().flat_map(|s| &s.points);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.clone().map(|p| p.1).fold(0.0, f64::max).max(1e-3);
    let y_min = all
        .map(|p| p.1)
        .filter(|y| *y > 0.0)
        .fold(f64::MAX, f64::min)
        .min(y_max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75);
    let colour = |i: usize| Palette99::pick(i).to_rgba();
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_label_formatter(x_label)
                .y_labels(12)
                .draw()
                .map_err(|e| fail(e.to_string()))?;
            for (i, s) in series.iter().enumerate() {
                let c = colour(i);
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().map(|&(x, y)| (x, y.max(y_min))),
                        c.stroke_width(2),
                    ))
                    .map_err(|e| fail(e.to_string()))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            }
            if !series.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| fail(e.to_string()))?;
            }
        }};
    }
    if log_y {
        // From a power of ten, where plotters starts its log-scale labels.
        let y_min = if y_min == f64::MAX {
            1e-3
        } else {
            10f64.powf(y_min.log10().floor())
        };
        finish!(builder
            .build_cartesian_2d(0f64..x_max, (y_min..y_max * 1.25).log_scale())
            .map_err(|e| fail(e.to_string()))?);
    } else {
        finish!(builder
            .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.1)
            .map_err(|e| fail(e.to_string()))?);
    }
    root.present().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_stretch_the_tail() {
        assert!(nines(0.0).abs() < 1e-12);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert!(nines(100.0).is_finite());
        assert_eq!(trim(99.9), "99.9");
        assert_eq!(trim(90.0), "90");
    }
}
