//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the gateway continues the
//! caller's trace (or starts one), is one span in it, and hands the backend a `traceparent`
//! naming the span of its call. Ids come from the adapter's [`Entropy`]; without one the
//! request's trace headers pass through untouched.

use http::{HeaderMap, HeaderValue};

use crate::model::Entropy;

/// The `traceparent` field.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` field.
pub const TRACESTATE: &str = "tracestate";

/// A parsed `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The caller's span.
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// This request's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The trace: the caller's, or a new one.
    pub trace_id: [u8; 16],
    /// The gateway's span for this request.
    pub span_id: [u8; 8],
    /// The caller's span, when the trace was continued.
    pub parent_id: Option<[u8; 8]>,
    /// Trace flags passed on (new traces are sampled).
    pub flags: u8,
}

impl Trace {
    /// Continues the trace of `headers`' `traceparent`, or starts one when it is absent,
    /// repeated or invalid. `None` when `entropy` gives no bytes.
    pub fn begin(headers: &HeaderMap, entropy: &dyn Entropy) -> Option<Self> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let incoming = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().and_then(parse),
            _ => None,
        };
        match incoming {
            Some(p) => Some(Self {
                trace_id: p.trace_id,
                span_id: nonzero::<8>(entropy)?,
                parent_id: Some(p.parent_id),
                flags: p.flags,
            }),
            None => {
                let trace_id = nonzero::<16>(entropy)?;
                Some(Self {
                    trace_id,
                    span_id: nonzero::<8>(entropy)?,
                    parent_id: None,
                    flags: 0x01,
                })
            }
        }
    }

    /// True when the caller's trace was continued (its `tracestate` goes on with it; a
    /// restarted trace drops it, as the specification asks).
    pub fn continued(&self) -> bool {
        self.parent_id.is_some()
    }

    /// A new span id in this trace (the backend call's), `None` without entropy.
    pub fn child(&self, entropy: &dyn Entropy) -> Option<[u8; 8]> {
        nonzero::<8>(entropy)
    }

    /// The `traceparent` naming `span` in this trace (version 00).
    pub fn traceparent(&self, span: [u8; 8]) -> HeaderValue {
        let text = format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&span),
            self.flags
        );
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
    }
}

/// `N` random bytes, not all zero (an invalid id); `None` when the source fails or keeps
/// answering zeros (a broken source must not hang the request).
fn nonzero<const N: usize>(entropy: &dyn Entropy) -> Option<[u8; N]> {
    let mut id = [0u8; N];
    for _ in 0..3 {
        entropy.fill(&mut id).ok()?;
        if id != [0; N] {
            return Some(id);
        }
    }
    None
}

/// Parses a `traceparent` value (§3.2): lowercase hex, version `ff` invalid, all-zero ids
/// invalid; version 00 exactly 55 characters; a later version at least 55, its first four
/// fields read and anything after a `-` ignored.
pub fn parse(value: &str) -> Option<TraceParent> {
    let b = value.as_bytes();
    let dash = |i: usize| b.get(i) == Some(&b'-');
    if b.len() < 55 || !dash(2) || !dash(35) || !dash(52) {
        return None;
    }
    let [version] = unhex::<1>(b.get(0..2)?)?;
    match version {
        0xff => return None,
        0x00 if b.len() != 55 => return None,
        _ if b.len() > 55 && !dash(55) => return None,
        _ => {}
    }
    let trace_id = unhex::<16>(b.get(3..35)?)?;
    let parent_id = unhex::<8>(b.get(36..52)?)?;
    let [flags] = unhex::<1>(b.get(53..55)?)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    // A digit per nibble: formatting each byte through `write!("{b:02x}")` was
    // ~2% of a native request's CPU (trace and span ids of every audit record).
    fn digit(nibble: u8) -> char {
        char::from(if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + (nibble - 10)
        })
    }
    let mut out = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        out.push(digit(b >> 4));
        out.push(digit(b & 0x0f));
    }
    out
}

/// An id of `N` bytes from its `2N` lowercase hex digits (as [`hex`] writes them, in audit
/// records); `None` for anything else.
pub fn id_from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    unhex(text.as_bytes())
}

/// `N` bytes from `2N` lowercase hex digits.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *o = digit(*hi)? << 4 | digit(*lo)?;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NoEntropy;
    use std::cell::Cell;

    /// Counts up from 1: ids are predictable and never zero.
    struct Counter(Cell<u8>);
    impl Entropy for Counter {
        fn fill(&self, out: &mut [u8]) -> Result<(), String> {
            for b in out {
                self.0.set(self.0.get().wrapping_add(1));
                *b = self.0.get();
            }
            Ok(())
        }
    }

    /// A broken source: always zeros.
    struct Zeros;
    impl Entropy for Zeros {
        fn fill(&self, out: &mut [u8]) -> Result<(), String> {
            out.fill(0);
            Ok(())
        }
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn hex_writes_every_byte_as_two_lowercase_digits_and_reads_back() {
        let all: Vec<u8> = (0..=255).collect();
        let text = hex(&all);
        for (b, pair) in all.iter().zip(text.as_bytes().chunks(2)) {
            assert_eq!(std::str::from_utf8(pair).unwrap(), format!("{b:02x}"));
        }
        let id: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(37));
        assert_eq!(id_from_hex::<16>(&hex(&id)), Some(id));
    }

    #[test]
    fn the_specifications_examples_parse_and_invalid_values_do_not() {
        let p = parse(VALID).unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.parent_id), "00f067aa0ba902b7");
        assert_eq!(p.flags, 1);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // A later version: the first four fields, whatever follows a dash.
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert_eq!(parse(future).unwrap().trace_id, p.trace_id);
        assert_eq!(parse(&future.replace("01-what", "01what")), None);
        // Not ASCII where the fields are: refused, never a panic on a char boundary.
        assert_eq!(parse(&VALID.replace("4b", "é")), None);
    }

    #[test]
    fn a_callers_trace_is_continued_and_a_missing_or_repeated_one_restarted() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        let t = Trace::begin(&headers, &Counter(Cell::new(0))).unwrap();
        assert!(t.continued());
        assert_eq!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(hex(&t.span_id), "0102030405060708");
        let out = t.traceparent(t.child(&Counter(Cell::new(8))).unwrap());
        assert_eq!(
            out.to_str().unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-090a0b0c0d0e0f10-01"
        );

        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        let t = Trace::begin(&headers, &Counter(Cell::new(0))).unwrap();
        assert!(!t.continued(), "two traceparent fields are no trace");
        assert_eq!(hex(&t.trace_id), "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(t.flags, 1);

        assert_eq!(Trace::begin(&HeaderMap::new(), &NoEntropy), None);
        // A source that only answers zeros gives no trace, and does not hang.
        assert_eq!(Trace::begin(&headers, &Zeros), None);
    }
}
