//! Keeping a plugin's secrets out of what the broker writes down: dead
//! letter reasons, retry history, logs, and `mhero plugin test` output.
//!
//! A [`Redactor`] knows the values of the plugin's settings whose names say
//! they are secret (tokens, keys, passwords…) and replaces them wherever
//! they appear; it also strips credentials from URLs in free text
//! (`user:password@` and the values of secret-looking query parameters),
//! which is how a gateway echoing a request back usually leaks them.

use std::borrow::Cow;
use std::collections::HashMap;

/// What stands in for a secret.
pub const REDACTED: &str = "[redacted]";

/// A word of a setting, header or query parameter name that marks its
/// value as secret when the word contains it (`bot_token`, `appsecret`).
const SECRET_PARTS: [&str; 8] = [
    "token",
    "secret",
    "password",
    "passwd",
    "credential",
    "signature",
    "apikey",
    "authorization",
];
/// Words that mark a value as secret only as whole words (`api_key`, but
/// not `keywords`).
const SECRET_WORDS: [&str; 5] = ["key", "sig", "pass", "auth", "pin"];

/// Shorter values are not treated as secrets (they would redact ordinary
/// words and numbers).
const MIN_SECRET_LEN: usize = 6;

/// Whether a setting, header or parameter of this name holds a secret.
/// An idempotency key is an id, not a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let words: Vec<&str> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.contains(&"idempotency") {
        return false;
    }
    words
        .iter()
        .any(|w| SECRET_WORDS.contains(w) || SECRET_PARTS.iter().any(|p| w.contains(p)))
}

#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Secret values, longest first (so one containing another is
    /// replaced whole).
    values: Vec<String>,
}

impl Redactor {
    /// Secrets are the settings whose names say so.
    pub fn from_settings(settings: &HashMap<String, String>) -> Self {
        let mut values: Vec<String> = settings
            .iter()
            .filter(|(k, v)| is_secret_name(k) && v.len() >= MIN_SECRET_LEN)
            .map(|(_, v)| v.clone())
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    /// `text` with every known secret, URL credential and secret query
    /// value replaced by [`REDACTED`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), REDACTED));
            }
        }
        match scrub_urls(&out) {
            Some(scrubbed) => Cow::Owned(scrubbed),
            None => out,
        }
    }

    /// A header's value as it may be shown.
    pub fn header_value<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if is_secret_name(name) {
            Cow::Borrowed(REDACTED)
        } else {
            self.redact(value)
        }
    }
}

/// Removes `user:password@` after `://`, and the values of secret-named
/// query parameters, from every URL in `text`; `None` when there was
/// nothing to remove.
fn scrub_urls(text: &str) -> Option<String> {
    if !text.contains("://") && !text.contains('=') {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    // Userinfo: `scheme://user:pass@host` → `scheme://[redacted]@host`.
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c == '"')
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    // Query parameters: `token=abc` → `token=[redacted]`.
    let mut scrubbed = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(eq) = rest.find('=') {
        let (before, after) = rest.split_at(eq);
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        let name = &before[name_start..];
        scrubbed.push_str(before);
        scrubbed.push('=');
        let after = &after[1..];
        let value_end = after
            .find(|c: char| matches!(c, '&' | '#' | '"' | '\'' | ',' | ';') || c.is_whitespace())
            .unwrap_or(after.len());
        if !name.is_empty() && is_secret_name(name) && value_end > 0 {
            scrubbed.push_str(REDACTED);
            changed = true;
        } else {
            scrubbed.push_str(&after[..value_end]);
        }
        rest = &after[value_end..];
    }
    scrubbed.push_str(rest);
    changed.then_some(scrubbed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::from_settings(&HashMap::from([
            ("token".to_string(), "tok-3f9a7c".to_string()),
            ("api_key".to_string(), "AKIA12345678".to_string()),
            ("base_url".to_string(), "https://gw.example".to_string()),
            ("sender".to_string(), "MOH-LR".to_string()),
            ("webhook_secret".to_string(), "abc".to_string()),
        ]))
    }

    #[test]
    fn secret_settings_are_replaced_wherever_they_appear() {
        let r = redactor();
        assert_eq!(
            r.redact(
                "invalid token tok-3f9a7c (key AKIA12345678) from MOH-LR at https://gw.example"
            ),
            "invalid token [redacted] (key [redacted]) from MOH-LR at https://gw.example"
        );
        // Too short to tell from ordinary text: left alone.
        assert_eq!(r.redact("abc"), "abc");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn url_credentials_and_secret_query_values_are_removed() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("POST https://admin:hunter2@gw.example/send?to=+231&api_key=zz9&x=1 failed"),
            "POST https://[redacted]@gw.example/send?to=+231&api_key=[redacted]&x=1 failed"
        );
        assert_eq!(
            r.redact(r#"{"url":"http://u:p@h/x?access_token=q"}"#),
            r#"{"url":"http://[redacted]@h/x?access_token=[redacted]"}"#
        );
        assert_eq!(r.redact("count=3 lane=bulk"), "count=3 lane=bulk");
    }

    #[test]
    fn secret_headers_are_hidden_whole() {
        let r = redactor();
        assert_eq!(r.header_value("Authorization", "Bearer x"), REDACTED);
        assert_eq!(r.header_value("X-Api-Key", "k"), REDACTED);
        assert_eq!(
            r.header_value("content-type", "application/json"),
            "application/json"
        );
        assert_eq!(r.header_value("Idempotency-Key", "c1-7"), "c1-7");
        assert!(!is_secret_name("keywords"));
        assert!(is_secret_name("bot_token") && is_secret_name("X-Hub-Signature-256"));
    }
}
