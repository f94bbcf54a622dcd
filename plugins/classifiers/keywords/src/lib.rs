//! Rule-based reply classifier: configured keywords, yes/no in four
//! languages, numbers and numbered choices. See README.md.

use mhero_sdk::classifier::{
    AnswerType, Classification, Classifier, ClassifierInfo, ClassifyContext, Field, PluginError,
    PluginInfo, PluginKind,
};
use mhero_sdk::host;

pub struct Keywords;

const MAX_TEXT: usize = 4096;

/// (word, language) — language `None` when several languages share it.
const YES: &[(&str, Option<&str>)] = &[
    ("yes", Some("en")),
    ("y", None),
    ("yeah", Some("en")),
    ("yep", Some("en")),
    ("ok", None),
    ("okay", Some("en")),
    ("sure", Some("en")),
    ("oui", Some("fr")),
    ("ouais", Some("fr")),
    ("o", None),
    ("d'accord", Some("fr")),
    ("dacord", Some("fr")),
    ("sim", Some("pt")),
    ("s", None),
    ("claro", Some("pt")),
    ("certo", Some("pt")),
    ("ndiyo", Some("sw")),
    ("ndio", Some("sw")),
    ("ndyo", Some("sw")),
    ("ee", Some("sw")),
    ("eeh", Some("sw")),
    ("sawa", Some("sw")),
    ("naam", Some("sw")),
];

const NO: &[(&str, Option<&str>)] = &[
    ("no", None),
    ("n", None),
    ("nope", Some("en")),
    ("nah", Some("en")),
    ("non", Some("fr")),
    ("pas", Some("fr")),
    ("nao", Some("pt")),
    ("nem", Some("pt")),
    ("hapana", Some("sw")),
    ("la", Some("sw")),
    ("hakuna", Some("sw")),
    ("sio", Some("sw")),
];

/// Number words 0–20 per language (accents folded).
const NUMBERS: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ],
    ),
    (
        "fr",
        &[
            "zero", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix",
            "onze", "douze", "treize", "quatorze", "quinze", "seize", "dix-sept", "dix-huit",
            "dix-neuf", "vingt",
        ],
    ),
    (
        "pt",
        &[
            "zero",
            "um",
            "dois",
            "tres",
            "quatro",
            "cinco",
            "seis",
            "sete",
            "oito",
            "nove",
            "dez",
            "onze",
            "doze",
            "treze",
            "catorze",
            "quinze",
            "dezesseis",
            "dezessete",
            "dezoito",
            "dezenove",
            "vinte",
        ],
    ),
    (
        "sw",
        &[
            "sifuri",
            "moja",
            "mbili",
            "tatu",
            "nne",
            "tano",
            "sita",
            "saba",
            "nane",
            "tisa",
            "kumi",
            "kumi na moja",
            "kumi na mbili",
            "kumi na tatu",
            "kumi na nne",
            "kumi na tano",
            "kumi na sita",
            "kumi na saba",
            "kumi na nane",
            "kumi na tisa",
            "ishirini",
        ],
    ),
];

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
            '’' | '`' => '\'',
            c => c,
        })
        .collect()
}

/// Words of a folded text: letters, digits, apostrophes and inner hyphens.
fn words(folded: &str) -> Vec<&str> {
    folded
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-' || c == '.' || c == ','))
        .map(|w| w.trim_matches(|c: char| c == '-' || c == '.' || c == ',' || c == '\''))
        .filter(|w| !w.is_empty())
        .collect()
}

fn result(
    label: &str,
    confidence: f32,
    fields: Vec<Field>,
    language: Option<String>,
) -> Classification {
    Classification {
        label: label.into(),
        confidence,
        fields,
        language,
    }
}

fn field(name: &str, value: impl Into<String>) -> Field {
    Field {
        name: name.into(),
        value: value.into(),
    }
}

fn unknown(hint: Option<String>) -> Classification {
    result("unknown", 0.0, Vec::new(), hint)
}

/// Yes or no, from the whole reply or its first word.
pub fn yes_no(folded: &str) -> Option<(&'static str, f32, Option<&'static str>)> {
    let ws = words(folded);
    let first = *ws.first()?;
    for (label, lexicon) in [("yes", YES), ("no", NO)] {
        if let Some((_, lang)) = lexicon.iter().find(|(w, _)| *w == first) {
            let confidence = if ws.len() == 1 { 0.95 } else { 0.8 };
            return Some((label, confidence, *lang));
        }
    }
    None
}

/// A number: digits (with `,` thousands or decimals) or a number word.
pub fn number(folded: &str) -> Option<(String, f32, Option<&'static str>)> {
    for w in words(folded) {
        let digits: String = w.chars().filter(|c| *c != ',').collect();
        if digits.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            let cleaned = digits.trim_end_matches('.');
            if cleaned.parse::<f64>().is_ok() {
                // "1,5" written the French/Portuguese way is a decimal.
                let value = if w.matches(',').count() == 1
                    && w.split(',').nth(1).is_some_and(|d| d.len() != 3)
                {
                    w.replace(',', ".")
                } else {
                    cleaned.to_string()
                };
                return Some((value, 0.95, None));
            }
        }
    }
    // Longest phrase first so "kumi na moja" beats "kumi".
    let mut best: Option<(usize, usize, &'static str)> = None;
    for (lang, list) in NUMBERS {
        for (value, word) in list.iter().enumerate() {
            if contains_phrase(folded, word) && best.is_none_or(|(_, len, _)| word.len() > len) {
                best = Some((value, word.len(), lang));
            }
        }
    }
    best.map(|(value, _, lang)| {
        let shared = NUMBERS
            .iter()
            .filter(|(_, list)| list.get(value).is_some_and(|w| contains_phrase(folded, w)))
            .count()
            > 1;
        (
            value.to_string(),
            0.8,
            if shared { None } else { Some(lang) },
        )
    })
}

/// Whether `phrase` occurs in `folded` as whole words.
pub fn contains_phrase(folded: &str, phrase: &str) -> bool {
    let phrase = fold(phrase);
    let ws = words(folded);
    let ps = words(&phrase);
    !ps.is_empty() && ws.windows(ps.len()).any(|win| win == ps.as_slice())
}

/// The 1-based index of the choice a reply picks.
pub fn choice(folded: &str, choices: &[String]) -> Option<(usize, f32)> {
    if choices.is_empty() {
        return None;
    }
    let trimmed = folded.trim();
    // A choice's own text.
    if let Some(i) = choices.iter().position(|c| fold(c).trim() == trimmed) {
        return Some((i + 1, 0.95));
    }
    let ws = words(folded);
    let mut it = ws.iter().copied();
    let mut first = it.next()?;
    if matches!(
        first,
        "option" | "choice" | "choix" | "opcao" | "chaguo" | "no." | "number"
    ) {
        first = it.next()?;
    }
    let token = first.trim_matches(|c: char| c == '(' || c == ')' || c == '.');
    let index = if let Ok(n) = token.parse::<usize>() {
        n
    } else if token.len() == 1 && token.chars().all(|c| c.is_ascii_lowercase()) {
        (token.as_bytes()[0] - b'a') as usize + 1
    } else {
        return choices
            .iter()
            .position(|c| contains_phrase(folded, c))
            .map(|i| (i + 1, 0.7));
    };
    (1..=choices.len())
        .contains(&index)
        .then_some((index, if ws.len() == 1 { 0.95 } else { 0.85 }))
}

/// Configured keywords: label → words, from the `keywords` setting (JSON),
/// parsed once per instance.
fn configured_keywords() -> Result<std::rc::Rc<KeywordTable>, PluginError> {
    host::config_cached(["keywords"], |[raw]| match raw {
        None => Ok(Vec::new()),
        Some(raw) => parse_keywords(raw),
    })
}

/// Label → words, in the order configured.
type KeywordTable = Vec<(String, Vec<String>)>;

fn parse_keywords(raw: &str) -> Result<KeywordTable, PluginError> {
    let value: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| PluginError::invalid(format!("setting `keywords` is not a table: {e}")))?;
    let table = value.as_object().ok_or_else(|| {
        PluginError::invalid("setting `keywords` must be a table of label = [words]")
    })?;
    table
        .iter()
        .map(|(label, words)| {
            let list = words
                .as_array()
                .ok_or_else(|| {
                    PluginError::invalid(format!("keywords.{label} must be a list of words"))
                })?
                .iter()
                .map(|w| {
                    w.as_str().map(str::to_string).ok_or_else(|| {
                        PluginError::invalid(format!("keywords.{label} holds a non-text entry"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((label.clone(), list))
        })
        .collect()
}

impl Classifier for Keywords {
    fn describe() -> ClassifierInfo {
        ClassifierInfo {
            plugin: PluginInfo {
                name: "keywords".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Classifier,
                summary: "Keywords to labels; yes/no (en, fr, pt, sw); numbers; numbered choices"
                    .into(),
            },
            languages: vec!["en".into(), "fr".into(), "pt".into(), "sw".into()],
        }
    }

    fn classify(text: String, context: ClassifyContext) -> Result<Classification, PluginError> {
        if text.len() > MAX_TEXT {
            return Err(PluginError::invalid(format!(
                "reply of {} bytes is over {MAX_TEXT}",
                text.len()
            )));
        }
        let folded = fold(&text);
        let hint = context.language_hint.clone();
        let lang = |l: Option<&str>| l.map(str::to_string).or_else(|| hint.clone());
        let out = match context.expected {
            AnswerType::YesNo => {
                yes_no(&folded).map(|(label, c, l)| result(label, c, Vec::new(), lang(l)))
            }
            AnswerType::Number => number(&folded)
                .map(|(v, c, l)| result("number", c, vec![field("number", v)], lang(l))),
            AnswerType::Choice => choice(&folded, &context.choices).map(|(i, c)| {
                result(
                    &context.choices[i - 1],
                    c,
                    vec![field("choice-index", i.to_string())],
                    hint.clone(),
                )
            }),
            AnswerType::FreeText => {
                let keywords = configured_keywords()?;
                keywords
                    .iter()
                    .find_map(|(label, ws)| {
                        ws.iter()
                            .find(|w| contains_phrase(&folded, w))
                            .map(|w| (label, w))
                    })
                    .map(|(label, w)| {
                        result(label, 0.9, vec![field("keyword", w.clone())], hint.clone())
                    })
                    .or_else(|| {
                        yes_no(&folded)
                            .map(|(label, c, l)| result(label, c * 0.8, Vec::new(), lang(l)))
                    })
            }
        };
        Ok(out.unwrap_or_else(|| unknown(hint)))
    }
}

mhero_sdk::export_classifier!(Keywords);

#[cfg(test)]
mod tests;
