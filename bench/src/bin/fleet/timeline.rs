//! The fleet's timeline as SVG (plotters, SVG backend only): one panel per
//! measure (environments alive, invocations/s, failures and throttles per
//! second, server connections, p99 latency), one line per scenario on the
//! same clock (every scenario runs the same schedule). The burst is shaded;
//! each fault is a vertical line in its scenario's colour.

use std::path::Path;

use integration_tests::fleet::Bucket;
use plotters::prelude::*;

use crate::palette::{legend, COLOURS};

use crate::scenarios::Ran;

type Measure = (&'static str, fn(&Bucket) -> Option<f64>);

const MEASURES: [Measure; 5] = [
    ("environments alive", |b| Some(b.envs_alive as f64)),
    ("invocations answered per second", |b| Some(b.completed as f64)),
    ("failures + throttles (429) per second", |b| Some((b.failed + b.throttled) as f64)),
    ("server connections (pg_stat_activity, app role)", |b| b.server_connections.map(|c| c as f64)),
    ("p99 latency per second, ms", |b| b.p99.map(|d| d.as_secs_f64() * 1000.0)),
];

pub(crate) fn draw(runs: &[Ran], path: &Path) {
    if runs.is_empty() {
        return;
    }
    let timelines: Vec<Vec<Bucket>> = runs.iter().map(|r| r.report.timeline()).collect();
    let seconds = timelines.iter().map(Vec::len).max().unwrap_or(1) as f64;
    let root = SVGBackend::new(path, (1200, 1500)).into_drawing_area();
    root.fill(&WHITE).expect("fill the SVG");
    let panels = root.split_evenly((MEASURES.len(), 1));
    let marks = &runs[0].report.marks;
    for (panel, (name, measure)) in panels.iter().zip(MEASURES) {
        let top = timelines.iter().flat_map(|t| t.iter().filter_map(measure)).fold(1.0f64, f64::max) * 1.08;
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..seconds, 0f64..top)
            .expect("build a panel");
        chart
            .configure_mesh()
            .x_desc("seconds since the start")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .expect("draw the mesh");
        // The bursts, shaded.
        for mark in marks.iter().filter(|m| !m.fault && m.label.contains("burst")) {
            let area = Rectangle::new(
                [(mark.from.as_secs_f64(), 0.0), (mark.to.as_secs_f64(), top)],
                RGBColor(255, 200, 0).mix(0.12).filled(),
            );
            chart.draw_series(std::iter::once(area)).expect("shade a burst");
        }
        for (i, (ran, timeline)) in runs.iter().zip(&timelines).enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<(f64, f64)> =
                timeline.iter().filter_map(|b| measure(b).map(|v| (b.second as f64 + 0.5, v))).collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .expect("draw a line")
                .label(ran.scenario.key)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
            for fault in ran.report.marks.iter().filter(|m| m.fault) {
                let x = fault.from.as_secs_f64();
                chart
                    .draw_series(std::iter::once(PathElement::new(vec![(x, 0.0), (x, top)], colour.stroke_width(1))))
                    .expect("mark a fault");
                chart
                    .draw_series(std::iter::once(Text::new(
                        fault.label.clone(),
                        (x + 0.3, top * 0.92),
                        ("sans-serif", 12).into_font().color(&colour),
                    )))
                    .expect("label a fault");
            }
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight, 12).draw().expect("draw the legend");
    }
    root.present().expect("write the SVG");
}
