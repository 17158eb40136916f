//! Durations as log fields: milliseconds with a fraction, as the EMF
//! records and the structured logs show them.

use std::time::Duration;

/// `d` in milliseconds, with microseconds as the fraction.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
