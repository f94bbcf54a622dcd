//! Trigger words and the text forms replies are compared in.

use std::collections::BTreeMap;

use mhero_proto::DeliveryId;
use sha2::{Digest, Sha256};

/// `word` upper case, accents and surrounding punctuation removed:
/// `Arrêt!` → `ARRET`.
pub fn fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.trim().chars() {
        match unaccent(c) {
            Some(s) => out.push_str(s),
            None => out.extend(c.to_uppercase()),
        }
    }
    out.trim_matches(|c: char| !c.is_alphanumeric()).to_string()
}

/// Latin letters with diacritics, upper-cased without them.
fn unaccent(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => "A",
        'ç' | 'Ç' => "C",
        'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => "E",
        'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => "I",
        'ñ' | 'Ñ' => "N",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' => "O",
        'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => "U",
        'ý' | 'ÿ' | 'Ý' => "Y",
        'œ' | 'Œ' => "OE",
        'æ' | 'Æ' => "AE",
        _ => return None,
    })
}

/// The trigger table: folded word → action.
#[derive(Clone, Debug, Default)]
pub struct Triggers {
    words: BTreeMap<String, String>,
}

impl Triggers {
    pub fn new(keywords: &BTreeMap<String, Vec<String>>) -> Self {
        let mut words = BTreeMap::new();
        for (action, ws) in keywords {
            for w in ws {
                words.insert(fold(w), action.clone());
            }
        }
        Self { words }
    }

    /// The action `text`'s first word triggers, with the word as written.
    pub fn matching<'t>(&self, text: &'t str) -> Option<(&str, &'t str)> {
        let first = text.split_whitespace().next()?;
        self.words
            .get(&fold(first))
            .map(|action| (action.as_str(), first))
    }
}

/// The duplicate-window key of a message: its sender on its channel, its
/// text (compared without case or extra spaces), and the message it
/// answers.
pub fn digest(channel: u32, from: &str, text: &str, answers: Option<DeliveryId>) -> u64 {
    let mut h = Sha256::new();
    h.update(channel.to_be_bytes());
    if let Some(d) = answers {
        h.update(d.campaign.0.to_be_bytes());
        h.update(d.index.to_be_bytes());
    }
    h.update(from.trim().as_bytes());
    h.update([0]);
    for (i, w) in text.split_whitespace().enumerate() {
        if i > 0 {
            h.update([b' ']);
        }
        h.update(w.to_lowercase().as_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_fold_without_case_accents_or_punctuation() {
        assert_eq!(fold("Arrêt!"), "ARRET");
        assert_eq!(fold(" stop. "), "STOP");
        assert_eq!(fold("Relatório"), "RELATORIO");
        assert_eq!(fold("DÉMARRER"), "DEMARRER");
        assert_eq!(fold("..."), "");
    }

    #[test]
    fn the_first_word_triggers() {
        let t = Triggers::new(&crate::inbound::InboundConfig::default().keywords);
        assert_eq!(t.matching("arrêt svp"), Some(("opt_out", "arrêt")));
        assert_eq!(t.matching("Stop!"), Some(("opt_out", "Stop!")));
        assert_eq!(t.matching("STOCK AMOX 120"), Some(("stock", "STOCK")));
        assert_eq!(t.matching("help"), Some(("help", "help")));
        // Only the first word: a sentence that mentions it is not one.
        assert_eq!(t.matching("please do not stop"), None);
        assert_eq!(t.matching("   "), None);
    }

    #[test]
    fn a_digest_ignores_case_and_spacing_but_not_sender_channel_or_question() {
        let a = digest(1, "+231770000001", "Yes  I  agree", None);
        assert_eq!(a, digest(1, "+231770000001", " yes i agree ", None));
        assert_ne!(a, digest(2, "+231770000001", "yes i agree", None));
        assert_ne!(a, digest(1, "+231770000002", "yes i agree", None));
        assert_ne!(a, digest(1, "+231770000001", "yes I disagree", None));
        let q = |i| Some(DeliveryId::new(mhero_proto::CampaignId(3), i));
        assert_eq!(digest(1, "+1", "1", q(7)), digest(1, "+1", "1", q(7)));
        assert_ne!(
            digest(1, "+1", "1", q(7)),
            digest(1, "+1", "1", q(8)),
            "the same answer to the next question"
        );
    }
}
