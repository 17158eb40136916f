//! The charts' colours, shared by `scripts/bench`'s pictures and the fleet
//! timeline (two binaries of this crate, so the file is included by path).

use plotters::style::RGBColor;

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
