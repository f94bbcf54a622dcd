//! How the broker signs a webhook body: `sha256=<hex HMAC-SHA256(secret,
//! body)>`, the form GitHub and many gateways use. Integrators' webhooks
//! ([`crate::inbound::subscribers`]) carry it, and the sandbox gateway
//! signs its own webhooks so, as its connector verifies them.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", crate::store::hex(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn signs_as_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
