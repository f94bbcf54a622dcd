//! Webhook signatures: HMAC-SHA256 over the raw body, as hex with a
//! `sha256=` prefix — Meta's `X-Hub-Signature-256` (WhatsApp Cloud API,
//! Messenger), GitHub's, the sandbox gateway's.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn sha256_header(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in mac.finalize().into_bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `header` (`sha256=<hex>`, hex in either case) is the signature
/// of `body` under `secret`, compared in constant time.
pub fn verify_sha256_header(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Meta's webhook subscription check (WhatsApp Cloud API, Messenger):
/// `GET …?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`. The
/// challenge to echo when the verify token is `expected`; `Err(true)` when
/// the token does not match, `Err(false)` when the query is not a check.
pub fn hub_challenge(url: &str, expected: &str) -> Result<String, bool> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let (mut mode, mut token, mut challenge) = (None, None, None);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "hub.mode" => mode = Some(v),
            "hub.verify_token" => token = Some(v),
            "hub.challenge" => challenge = Some(v),
            _ => {}
        }
    }
    if mode != Some("subscribe") || challenge.is_none_or(str::is_empty) {
        return Err(false);
    }
    if !crate::same_secret(token.unwrap_or_default().as_bytes(), expected.as_bytes()) {
        return Err(true);
    }
    Ok(challenge.unwrap_or_default().to_string())
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published example of the same scheme.
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn the_published_vector() {
        assert_eq!(sha256_header(SECRET, BODY), SIGNATURE);
        assert!(verify_sha256_header(SECRET, BODY, SIGNATURE));
        assert!(verify_sha256_header(
            SECRET,
            BODY,
            &SIGNATURE.to_uppercase().replace("SHA256=", "sha256=")
        ));
    }

    #[test]
    fn the_subscription_check() {
        let url = "/webhooks/wa?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=vt";
        assert_eq!(hub_challenge(url, "vt"), Ok("1158201444".into()));
        assert_eq!(hub_challenge(url, "other"), Err(true));
        assert_eq!(
            hub_challenge("/webhooks/wa?hub.challenge=1&hub.verify_token=vt", "vt"),
            Err(false)
        );
        assert_eq!(
            hub_challenge("/webhooks/wa?hub.mode=subscribe&hub.verify_token=vt", "vt"),
            Err(false)
        );
    }

    #[test]
    fn anything_else_does_not_verify() {
        assert!(!verify_sha256_header(SECRET, b"Hello, World?", SIGNATURE));
        assert!(!verify_sha256_header(b"another secret", BODY, SIGNATURE));
        assert!(!verify_sha256_header(SECRET, BODY, &SIGNATURE[7..]));
        assert!(!verify_sha256_header(SECRET, BODY, "sha256=zz"));
        assert!(!verify_sha256_header(SECRET, BODY, "sha256=757"));
        assert!(!verify_sha256_header(SECRET, BODY, ""));
    }
}
