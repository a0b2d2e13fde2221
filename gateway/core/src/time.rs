//! Time as a value: the core never reads a clock, every entry point takes a [`Timestamp`].

use std::time::Duration;

/// A point in time: the duration since the Unix epoch, as supplied by the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The timestamp `secs` seconds after the Unix epoch.
    pub const fn from_unix_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// The timestamp `millis` milliseconds after the Unix epoch.
    pub const fn from_unix_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// The timestamp at `since_epoch` after the Unix epoch.
    pub const fn from_duration(since_epoch: Duration) -> Self {
        Self(since_epoch)
    }

    /// Whole seconds since the Unix epoch (what JWT NumericDate claims compare against).
    pub const fn unix_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// Milliseconds since the Unix epoch, saturating.
    pub fn unix_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// Microseconds since the Unix epoch, saturating.
    pub fn unix_micros(self) -> u64 {
        u64::try_from(self.0.as_micros()).unwrap_or(u64::MAX)
    }

    /// This timestamp moved `d` later, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }

    /// The time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}
