//! The environment's randomness: max-age jitter and backoff jitter.
//!
//! One generator per environment, not fastrand's per-thread ones, so that it
//! can be reseeded as a whole. SnapStart restores many copies of one
//! snapshot, generator state included: unless reseeded from the OS after
//! restore, every copy would draw the same jitter, and all would refresh
//! their pools (and retry) together.

use std::io::Read as _;
use std::sync::{Mutex, PoisonError};

/// A seedable source of jitter.
#[derive(Debug)]
pub(crate) struct Entropy(Mutex<fastrand::Rng>);

impl Default for Entropy {
    fn default() -> Self {
        Self(Mutex::new(fastrand::Rng::with_seed(os_seed())))
    }
}

impl Entropy {
    /// A uniform draw from `[0, 1)`.
    pub(crate) fn fraction(&self) -> f64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).f64()
    }

    /// Starts a new sequence from fresh OS randomness.
    pub(crate) fn reseed(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).seed(os_seed());
    }

    #[cfg(test)]
    fn snapshot(&self) -> Self {
        Self(Mutex::new(self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()))
    }
}

/// Eight bytes from the kernel; a clock-based seed if that fails.
fn os_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_restores_of_one_snapshot_draw_different_jitter_once_reseeded() {
        let initialized = Entropy::default();
        initialized.fraction();

        // Without reseeding, copies of one state draw the same sequence.
        let (a, b) = (initialized.snapshot(), initialized.snapshot());
        assert_eq!((a.fraction(), a.fraction()), (b.fraction(), b.fraction()));

        let (a, b) = (initialized.snapshot(), initialized.snapshot());
        a.reseed();
        b.reseed();
        assert_ne!((a.fraction(), a.fraction()), (b.fraction(), b.fraction()));
    }
}
