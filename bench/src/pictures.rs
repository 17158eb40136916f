//! The run's pictures as SVG (plotters, SVG backend only, as the fleet's
//! timeline): the warm-latency distribution of every contender, one CDF
//! each on a log latency axis, and the refresh run's latencies over time
//! with the invocations that replaced the pool marked. People compare
//! distributions by looking at them; the tables give the percentiles.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::palette::{legend, COLOURS};

use crate::refresh::{RefreshResult, MAX_AGE_MS};
use crate::warm::WarmResult;

const GREY: RGBColor = RGBColor(120, 120, 120);

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One CDF per contender: for each latency, the fraction of invocations
/// that answered within it. Dashed guides at p50 and p99.
pub(crate) fn warm_latency(warm: &[WarmResult], path: &Path) -> Result<(), String> {
    let all = || warm.iter().flat_map(|w| w.samples.iter().copied().map(millis));
    let (low, high) = all().fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if high <= 0.0 {
        return Ok(());
    }
    let root = SVGBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let n = warm.iter().map(|w| w.samples.len()).max().unwrap_or(0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Warm invocation latency, enqueue → answer ({n} interleaved rounds per contender)"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((low * 0.95..high * 1.05).log_scale(), 0f64..1.0)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_labels(24)
        .x_label_formatter(&|v| format!("{v}"))
        .x_desc("latency, ms (log scale)")
        .y_desc("fraction of invocations answered within")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(draw_error)?;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let guide = DashedLineSeries::new(vec![(low * 0.95, q), (high * 1.05, q)], 4, 4, GREY.stroke_width(1));
        chart.draw_series(guide).map_err(draw_error)?;
        let label = Text::new(name, (low, q - 0.035), ("sans-serif", 12).into_font().color(&GREY));
        chart.draw_series(std::iter::once(label)).map_err(draw_error)?;
    }
    for (i, w) in warm.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut sorted: Vec<f64> = w.samples.iter().copied().map(millis).collect();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len() as f64;
        let points = sorted.iter().enumerate().map(|(rank, &v)| (v, (rank + 1) as f64 / count));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(draw_error)?
            .label(format!("{} (p50 {:.3} ms)", plain(w.contender.label()), millis(w.latency.p50)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    // Between the pooled contenders' tails and connect-per-invocation's curve.
    let (width, height) = chart.plotting_area().dim_in_pixel();
    let legend_at = ((width as f64 * 0.38) as i32, (height as f64 * 0.35) as i32);
    legend(&mut chart, SeriesLabelPosition::Coordinate(legend_at.0, legend_at.1), 13).draw().map_err(draw_error)?;
    root.present().map_err(draw_error)
}

/// Every invocation of the refresh run at the time it was sent: normal
/// ones as small grey dots, the ones that replaced the pool as red rings.
pub(crate) fn refresh_timeline(refresh: &RefreshResult, path: &Path) -> Result<(), String> {
    let points = &refresh.timeline;
    let Some(last) = points.last() else { return Ok(()) };
    let seconds = last.at.as_secs_f64().max(0.001) * 1.02;
    let top = points.iter().map(|p| millis(p.latency)).fold(1.0f64, f64::max) * 1.08;
    let root = SVGBackend::new(path, (1100, 550)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Refresh run: orders with DB_MAX_AGE_MS={MAX_AGE_MS}, one invocation every ~5 ms ({} invocations)",
                points.len()
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..seconds, 0f64..top)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first invocation")
        .y_desc("latency, enqueue → answer, ms")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(draw_error)?;
    let red = COLOURS[3];
    let normal = points.iter().filter(|p| !p.refreshed).map(|p| (p.at.as_secs_f64(), millis(p.latency)));
    chart
        .draw_series(normal.map(|xy| Circle::new(xy, 2, GREY.mix(0.6).filled())))
        .map_err(draw_error)?
        .label(format!("normal ({}, p50 {:.3} ms)", refresh.normal.n, millis(refresh.normal.p50)))
        .legend(|(x, y)| Circle::new((x + 8, y), 3, GREY.filled()));
    let refreshed = points.iter().filter(|p| p.refreshed).map(|p| (p.at.as_secs_f64(), millis(p.latency)));
    chart
        .draw_series(refreshed.map(|xy| Circle::new(xy, 5, red.stroke_width(2))))
        .map_err(draw_error)?
        .label(format!("replaced the pool ({}, p50 {:.3} ms)", refresh.refreshing.n, millis(refresh.refreshing.p50)))
        .legend(move |(x, y)| Circle::new((x + 8, y), 5, red.stroke_width(2)));
    legend(&mut chart, SeriesLabelPosition::UpperRight, 13).draw().map_err(draw_error)?;
    root.present().map_err(draw_error)
}

/// A contender's Markdown label without the backticks.
fn plain(label: &str) -> String {
    label.replace('`', "")
}

fn draw_error(e: impl std::fmt::Display) -> String {
    format!("drawing an SVG: {e}")
}
