//! Strict base64url (RFC 7515 §2): no padding, no whitespace, no non-canonical trailing bits.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Decodes unpadded base64url, refusing padding, foreign characters and non-zero trailing bits
/// (so every byte string has exactly one accepted encoding).
pub fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_padding_and_noncanonical_bits() {
        assert_eq!(decode("Zm9v"), Some(b"foo".to_vec()));
        assert_eq!(encode(b"fo"), "Zm8");
        assert_eq!(decode("Zm8"), Some(b"fo".to_vec()));
        assert_eq!(decode("Zm8="), None, "padding");
        assert_eq!(decode("Zm9"), None, "non-zero trailing bits");
        assert_eq!(decode("Zm+v"), None, "standard alphabet");
        assert_eq!(decode("Zm 9v"), None, "whitespace");
        assert_eq!(decode("Z"), None, "impossible length");
    }
}
