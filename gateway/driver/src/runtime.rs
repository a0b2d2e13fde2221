//! The runtime services every adapter gives the core the same way: random bytes from the
//! platform's source (the OS natively, `wasi:random` in a component, `crypto.getRandomValues`
//! in a Worker) and a monotonic clock where the platform has a usable one.

use portcullis_core::{Entropy, MonotonicClock};

/// The platform's cryptographically secure random source (through `getrandom`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemEntropy;

impl Entropy for SystemEntropy {
    fn fill(&self, out: &mut [u8]) -> Result<(), String> {
        getrandom::fill(out).map_err(|e| e.to_string())
    }
}

/// `std::time::Instant` from the moment it was made: natively and in `wasi:clocks`
/// components. Not for Cloudflare Workers (no `Instant` on `wasm32-unknown-unknown`, and the
/// platform stops time while code runs), which give the core no clock.
#[derive(Clone, Copy, Debug)]
pub struct InstantClock(std::time::Instant);

impl InstantClock {
    /// A clock whose origin is now.
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }
}

impl MonotonicClock for InstantClock {
    fn micros(&self) -> Option<u64> {
        u64::try_from(self.0.elapsed().as_micros()).ok()
    }
}
