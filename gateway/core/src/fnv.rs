//! A cheap, stable, non-cryptographic hash.

/// FNV-1a of `text`: a cheap, stable spread (backend choice, state sharding).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
