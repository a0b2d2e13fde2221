//! What the core asks of the runtime that is neither state nor a remote call: random bytes
//! (trace and span ids, login state) and a monotonic clock (phase timings). The core never
//! reads either itself; adapters answer, and an adapter without one says so.

/// Cryptographically secure random bytes.
pub trait Entropy {
    /// Fills `out`, or says why it cannot.
    fn fill(&self, out: &mut [u8]) -> Result<(), String>;
}

/// No random source: ids that need one are not minted (traces are not continued) and
/// browser login is refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEntropy;

impl Entropy for NoEntropy {
    fn fill(&self, _: &mut [u8]) -> Result<(), String> {
        Err("this adapter has no random source".into())
    }
}

/// A monotonic clock in microseconds from an arbitrary origin (phase timings).
pub trait MonotonicClock {
    /// Microseconds since the clock's origin; `None` when the runtime has no usable clock
    /// (Cloudflare Workers stop time while code runs).
    fn micros(&self) -> Option<u64>;
}

/// No monotonic clock: decisions carry no phase timings.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoClock;

impl MonotonicClock for NoClock {
    fn micros(&self) -> Option<u64> {
        None
    }
}
