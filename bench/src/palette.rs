//! The charts' colours and legend, shared by `scripts/bench`'s pictures and
//! the fleet timeline (two binaries of this crate, so the file is included
//! by path).

use plotters::chart::{ChartContext, SeriesLabelPosition, SeriesLabelStyle};
use plotters::coord::CoordTranslate;
use plotters::prelude::DrawingBackend;
use plotters::style::{Color as _, RGBColor, BLACK, WHITE};

/// A categorical palette (matplotlib's tab10, first seven).
pub(crate) const COLOURS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// Every chart's legend: a light box with a thin border at `position`, its
/// labels `font_size` pixels high. Call `draw` on it.
pub(crate) fn legend<'a, 'b, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &'b mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> SeriesLabelStyle<'a, 'b, DB, CT> {
    let mut style = chart.configure_series_labels();
    style
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", font_size));
    style
}
