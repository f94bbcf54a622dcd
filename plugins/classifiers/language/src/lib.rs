//! Language classifier: which of the configured languages a health
//! worker's reply is written in, from function words, greetings, yes/no
//! words and accents (no model). See README.md.

use mhero_sdk::classifier::{
    Classification, Classifier, ClassifierInfo, ClassifyContext, Field, PluginError, PluginInfo,
    PluginKind,
};
use mhero_sdk::host;

pub struct Language;

const MAX_TEXT: usize = 4096;

/// The languages it knows, BCP 47 primary codes; the default setting.
pub const SUPPORTED: &[&str] = &["en", "fr", "pt", "sw"];

/// Common words per language, lowercase with accents folded. A word listed
/// under several languages is shared evidence, split between them.
const LEXICON: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "the", "and", "is", "are", "was", "you", "your", "yes", "yeah", "no", "not", "thanks",
            "thank", "hello", "hi", "i", "we", "our", "my", "me", "have", "has", "had", "of", "to",
            "in", "it", "this", "that", "there", "for", "with", "please", "good", "morning",
            "today", "a", "do", "as", "on", "am", "but", "very", "will",
        ],
    ),
    (
        "fr",
        &[
            "le",
            "la",
            "les",
            "de",
            "des",
            "du",
            "et",
            "est",
            "je",
            "vous",
            "nous",
            "oui",
            "non",
            "merci",
            "bonjour",
            "bonsoir",
            "salut",
            "pas",
            "ne",
            "un",
            "une",
            "avec",
            "pour",
            "dans",
            "sur",
            "il",
            "elle",
            "sont",
            "avons",
            "avez",
            "ai",
            "au",
            "aux",
            "ce",
            "ca",
            "qui",
            "que",
            "mais",
            "tres",
            "bien",
            "a",
            "en",
            "on",
            "me",
            "se",
            "plus",
            "aujourd'hui",
        ],
    ),
    (
        "pt",
        &[
            "o", "a", "os", "as", "de", "do", "da", "dos", "das", "e", "nao", "sim", "obrigado",
            "obrigada", "ola", "voce", "voces", "nos", "um", "uma", "com", "para", "por", "tem",
            "temos", "tenho", "esta", "estamos", "sao", "bom", "boa", "dia", "tarde", "muito",
            "que", "mas", "mais", "no", "na", "em", "eu", "me", "se", "ja",
        ],
    ),
    (
        "sw",
        &[
            "na",
            "ni",
            "ya",
            "wa",
            "kwa",
            "za",
            "la",
            "hapana",
            "ndiyo",
            "ndio",
            "asante",
            "habari",
            "sana",
            "leo",
            "nzuri",
            "jambo",
            "sawa",
            "hakuna",
            "kuna",
            "tuna",
            "hatuna",
            "nina",
            "sina",
            "mimi",
            "sisi",
            "wewe",
            "yetu",
            "katika",
            "lakini",
            "bado",
            "karibu",
            "tafadhali",
            "kesho",
            "hii",
            "huu",
            "pia",
            "kila",
        ],
    ),
];

/// What comes before the apostrophe of a French elision (`l'`, `c'est`).
const FR_ELISIONS: &[&str] = &[
    "l", "d", "j", "c", "n", "m", "t", "s", "qu", "jusqu", "lorsqu", "puisqu",
];

/// What comes after the apostrophe of an English contraction (`don't`).
const EN_CONTRACTIONS: &[&str] = &["t", "s", "m", "re", "ve", "ll", "d"];

/// Accents only Portuguese writes among the four (ç by convention, though
/// French has it too).
const PT_MARKS: &[char] = &['ç', 'ã', 'õ', 'á', 'í', 'ó', 'ú'];

/// Accents that point to French.
const FR_MARKS: &[char] = &['é', 'è', 'ê', 'à', 'ù', 'ë', 'ï', 'î', 'û', 'œ'];

/// Weight of one listed word, elision or contraction.
const WORD: f32 = 1.0;

/// Weight of the accents of one word no lexicon knows.
const MARK: f32 = 0.5;

/// Highest confidence it gives.
const MAX_CONFIDENCE: f32 = 0.95;

/// Lowercases and folds the accents the four languages use.
pub fn fold(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' => 'a',
            'ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            '’' | '‘' | '`' => '\'',
            c => c,
        })
        .collect()
}

/// Words of a lowercased text: letters, digits and inner apostrophes.
fn words(lower: &str) -> impl Iterator<Item = &str> {
    lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .map(|w| w.trim_matches(|c: char| c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
}

/// Per-language evidence, over the candidate languages only.
#[derive(Debug)]
struct Scores {
    langs: Vec<(&'static str, f32)>,
}

impl Scores {
    fn new(candidates: &[&'static str]) -> Self {
        Self {
            langs: candidates.iter().map(|l| (*l, 0.0)).collect(),
        }
    }

    /// Splits `weight` between the candidates among `langs`; `false` when
    /// none is a candidate.
    fn add(&mut self, langs: &[&str], weight: f32) -> bool {
        let n = self.langs.iter().filter(|(l, _)| langs.contains(l)).count();
        if n == 0 {
            return false;
        }
        for (l, s) in &mut self.langs {
            if langs.contains(l) {
                *s += weight / n as f32;
            }
        }
        true
    }

    /// The best language, its score and the runner-up's.
    fn best(&self) -> Option<(&'static str, f32, f32)> {
        let mut sorted = self.langs.clone();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (lang, best) = *sorted.first()?;
        let second = sorted.get(1).map_or(0.0, |(_, s)| *s);
        Some((lang, best, second))
    }
}

/// The languages whose lexicon lists a folded word.
fn lexicon_langs(folded: &str) -> Vec<&'static str> {
    LEXICON
        .iter()
        .filter(|(_, list)| list.contains(&folded))
        .map(|(lang, _)| *lang)
        .collect()
}

/// Scores one word (lowercase, accents kept) into `scores`.
fn score_word(word: &str, scores: &mut Scores) {
    let folded = fold(word);
    if scores.add(&lexicon_langs(&folded), WORD) {
        return;
    }
    if let Some((before, after)) = word.split_once(['\'', '’']) {
        if FR_ELISIONS.contains(&before) {
            scores.add(&["fr"], WORD);
            score_word(after, scores);
            return;
        }
        if EN_CONTRACTIONS.contains(&after) {
            scores.add(&["en"], WORD);
            scores.add(&lexicon_langs(&fold(before)), WORD);
            return;
        }
    }
    let pt = word.chars().filter(|c| PT_MARKS.contains(c)).count();
    let fr = word.chars().filter(|c| FR_MARKS.contains(c)).count();
    if pt > fr {
        scores.add(&["pt"], MARK);
    } else if fr > pt {
        scores.add(&["fr"], MARK);
    }
}

/// The language a text is written in, among `candidates`, with a
/// confidence; `None` when nothing tells or two languages tie.
pub fn detect(text: &str, candidates: &[&'static str]) -> Option<(&'static str, f32)> {
    let lower = text.to_lowercase();
    let mut scores = Scores::new(candidates);
    for word in words(&lower) {
        score_word(word, &mut scores);
    }
    let (lang, best, second) = scores.best()?;
    if best <= 0.0 || best - second < 1e-3 {
        return None;
    }
    Some((lang, confidence(best, second)))
}

/// Grows with the lead over the runner-up and with the amount of
/// evidence: one word alone gives 0.5, five clear words 0.83.
fn confidence(best: f32, second: f32) -> f32 {
    let c = ((best - second) / (best + 1.0)).clamp(0.0, MAX_CONFIDENCE);
    (c * 100.0).round() / 100.0
}

/// The candidate languages, from the `languages` setting (a JSON list of
/// codes, parsed once per instance); all supported ones when unset.
fn configured_languages() -> Result<std::rc::Rc<Vec<&'static str>>, PluginError> {
    host::config_cached(["languages"], |[raw]| match raw {
        None => Ok(SUPPORTED.to_vec()),
        Some(raw) => parse_languages(raw),
    })
}

/// Parses the `languages` setting; unknown codes are named in the error.
pub fn parse_languages(raw: &str) -> Result<Vec<&'static str>, PluginError> {
    let value: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| PluginError::invalid(format!("setting `languages` is not a list: {e}")))?;
    let list = value.as_array().ok_or_else(|| {
        PluginError::invalid("setting `languages` must be a list of language codes")
    })?;
    let mut langs = Vec::new();
    let mut unknown = Vec::new();
    for entry in list {
        let code = entry.as_str().ok_or_else(|| {
            PluginError::invalid(format!(
                "setting `languages` holds a non-text entry {entry}"
            ))
        })?;
        let code = code.trim().to_ascii_lowercase();
        match SUPPORTED.iter().find(|s| **s == code) {
            Some(s) if !langs.contains(s) => langs.push(*s),
            Some(_) => {}
            None => unknown.push(code),
        }
    }
    if !unknown.is_empty() {
        return Err(PluginError::invalid(format!(
            "setting `languages` names unsupported languages: {} (supported: {})",
            unknown.join(", "),
            SUPPORTED.join(", ")
        )));
    }
    if langs.is_empty() {
        return Err(PluginError::invalid(
            "setting `languages` must name at least one language",
        ));
    }
    Ok(langs)
}

fn unknown() -> Classification {
    Classification {
        label: "unknown".into(),
        confidence: 0.0,
        fields: Vec::new(),
        language: None,
    }
}

fn detected(lang: &str, confidence: f32) -> Classification {
    Classification {
        label: "language".into(),
        confidence,
        fields: vec![Field {
            name: "language".into(),
            value: lang.into(),
        }],
        language: Some(lang.into()),
    }
}

impl Classifier for Language {
    fn describe() -> ClassifierInfo {
        ClassifierInfo {
            plugin: PluginInfo {
                name: "language".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Classifier,
                summary:
                    "Which language a reply is written in (en, fr, pt, sw), from common words and accents"
                        .into(),
            },
            languages: SUPPORTED.iter().map(|l| l.to_string()).collect(),
        }
    }

    /// The context (expected answer, choices, language hint) is ignored:
    /// the answer comes from the text alone.
    fn classify(text: String, _context: ClassifyContext) -> Result<Classification, PluginError> {
        if text.len() > MAX_TEXT {
            return Err(PluginError::invalid(format!(
                "reply of {} bytes is over {MAX_TEXT}",
                text.len()
            )));
        }
        let candidates = configured_languages()?;
        Ok(detect(&text, &candidates).map_or_else(unknown, |(lang, c)| detected(lang, c)))
    }
}

mhero_sdk::export_classifier!(Language);

#[cfg(test)]
mod tests;
