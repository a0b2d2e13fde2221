//! Rate limits: the generic cell rate algorithm (GCRA) and the IETF `RateLimit` headers.
//!
//! A limit of `rate` requests per `period` with depth `burst` has the emission interval
//! `T = period / rate`. Each key keeps one number, its theoretical arrival time (TAT). A
//! request at `now` is allowed when `max(TAT, now) − now ≤ T·(burst − 1)`; it then moves the
//! TAT to `max(TAT, now) + T`. So `burst` requests may arrive at once and then one per `T`:
//! over any window `D` at most `burst + D/T` requests pass, however many gateways share the
//! state. The arithmetic lives here; storing the TAT atomically is the adapter's job
//! ([`crate::ports::State`]: in memory, or a Redis script that runs [the same steps](gcra) on the
//! server's clock).

use http::{HeaderName, HeaderValue};

use crate::config::RateLimit;
pub use crate::ports::{LimitCheck, LimitStatus};

/// One GCRA step for a key whose stored TAT is `tat_us` (absent: a full bucket). Returns
/// the status and, when allowed, the TAT to store (for [`LimitStatus::reset_us`]).
pub fn gcra(tat_us: Option<u64>, now_us: u64, check: &LimitCheck) -> (LimitStatus, Option<u64>) {
    let t = check.interval_us.max(1);
    let tolerance = t.saturating_mul(u64::from(check.burst.max(1)) - 1);
    let base = tat_us.map_or(now_us, |tat| tat.max(now_us));
    let waited = base - now_us;
    if waited <= tolerance {
        let next = base.saturating_add(t);
        let used = next - now_us;
        let capacity = t.saturating_mul(u64::from(check.burst.max(1)));
        let remaining = capacity.saturating_sub(used) / t;
        (
            LimitStatus {
                allowed: true,
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                retry_after_us: 0,
                reset_us: used,
            },
            Some(next),
        )
    } else {
        (
            LimitStatus {
                allowed: false,
                remaining: 0,
                retry_after_us: waited - tolerance,
                reset_us: waited,
            },
            None,
        )
    }
}

/// [`gcra`] over several keys, all or nothing: the new TATs to store (one per check) only
/// when every check allows the request.
pub fn gcra_all(
    tats: &[Option<u64>],
    now_us: u64,
    checks: &[LimitCheck],
) -> (Vec<LimitStatus>, Option<Vec<u64>>) {
    let mut statuses = Vec::with_capacity(checks.len());
    let mut next = Vec::with_capacity(checks.len());
    for (i, check) in checks.iter().enumerate() {
        let (status, tat) = gcra(tats.get(i).copied().flatten(), now_us, check);
        statuses.push(status);
        if let Some(t) = tat {
            next.push(t);
        }
    }
    let all = next.len() == checks.len();
    (statuses, all.then_some(next))
}

/// Seconds, rounded up, at least 1 when `us` is positive.
fn secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// The `RateLimit-Policy` header (draft-ietf-httpapi-ratelimit-headers): one item per limit,
/// `"name";q=<burst>;w=<seconds to refill the burst>`.
pub fn policy_header(limits: &[&RateLimit]) -> Option<(HeaderName, HeaderValue)> {
    if limits.is_empty() {
        return None;
    }
    let items: Vec<String> = limits
        .iter()
        .map(|l| {
            let window = secs_ceil(l.interval_us().saturating_mul(u64::from(l.burst))).max(1);
            format!("\"{}\";q={};w={window}", l.name, l.burst)
        })
        .collect();
    HeaderValue::from_str(&items.join(", "))
        .ok()
        .map(|v| (HeaderName::from_static("ratelimit-policy"), v))
}

/// The `RateLimit` header for the most constrained limit: `"name";r=<remaining>;t=<reset>`.
pub fn status_header(name: &str, status: &LimitStatus) -> Option<(HeaderName, HeaderValue)> {
    HeaderValue::from_str(&format!(
        "\"{name}\";r={};t={}",
        status.remaining,
        secs_ceil(status.reset_us)
    ))
    .ok()
    .map(|v| (HeaderName::from_static("ratelimit"), v))
}

/// `Retry-After` in whole seconds (at least 1).
pub fn retry_after(status: &LimitStatus) -> (HeaderName, HeaderValue) {
    (
        http::header::RETRY_AFTER,
        HeaderValue::from(secs_ceil(status.retry_after_us).max(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(interval_us: u64, burst: u32) -> LimitCheck {
        LimitCheck {
            key: "k".into(),
            interval_us,
            burst,
        }
    }

    /// Runs `times` (µs) through one key; returns how many passed.
    fn run(c: &LimitCheck, times: impl IntoIterator<Item = u64>) -> usize {
        let mut tat = None;
        let mut passed = 0;
        for now in times {
            let (s, next) = gcra(tat, now, c);
            if s.allowed {
                passed += 1;
                tat = next;
            }
        }
        passed
    }

    #[test]
    fn a_full_bucket_lets_burst_through_then_one_per_interval() {
        let c = check(100_000, 5); // 10/s, burst 5
        assert_eq!(run(&c, std::iter::repeat_n(1_000_000, 20)), 5);
        let (s, tat) = gcra(None, 0, &c);
        assert!(s.allowed);
        assert_eq!(s.remaining, 4);
        assert_eq!(tat, Some(100_000));
        // After the burst: refused with the exact wait.
        let mut tat = None;
        for _ in 0..5 {
            tat = gcra(tat, 0, &c).1.or(tat);
        }
        let (s, _) = gcra(tat, 0, &c);
        assert!(!s.allowed);
        assert_eq!(s.retry_after_us, 100_000);
        assert_eq!(s.reset_us, 500_000);
        let (s, _) = gcra(tat, 100_000, &c);
        assert!(s.allowed, "one interval later one more passes");
    }

    #[test]
    fn over_any_window_at_most_burst_plus_rate() {
        // 20 req/s burst 10, a client hammering every 1 ms for 3 s.
        let c = check(50_000, 10);
        let passed = run(&c, (0..3000).map(|ms| ms * 1000));
        assert!(passed <= 10 + 60, "{passed}");
        assert!(passed >= 10 + 59, "{passed}");
    }

    #[test]
    fn all_or_nothing() {
        let a = check(1_000_000, 2);
        let b = check(1_000_000, 1);
        let (s, next) = gcra_all(&[None, None], 0, &[a.clone(), b.clone()]);
        assert!(s.iter().all(|s| s.allowed));
        let next = next.unwrap();
        // b is exhausted: nothing is stored, a keeps its remaining request.
        let (s, none) = gcra_all(&[Some(next[0]), Some(next[1])], 0, &[a, b]);
        assert!(s[0].allowed && !s[1].allowed);
        assert!(none.is_none());
    }

    #[test]
    fn headers_follow_the_draft() {
        let l = RateLimit {
            name: "per-ip".into(),
            key: crate::config::LimitKey::Ip,
            rate: 10,
            period: std::time::Duration::from_secs(1),
            burst: 20,
        };
        let (n, v) = policy_header(&[&l]).unwrap();
        assert_eq!(n, "ratelimit-policy");
        assert_eq!(v, "\"per-ip\";q=20;w=2");
        let s = LimitStatus {
            allowed: false,
            remaining: 0,
            retry_after_us: 1,
            reset_us: 1_500_000,
        };
        assert_eq!(status_header("per-ip", &s).unwrap().1, "\"per-ip\";r=0;t=2");
        assert_eq!(retry_after(&s).1, "1");
    }
}
