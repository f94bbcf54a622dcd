//! Structured report classifier: `STOCK AMOX 120 ORS 40`,
//! `CASES MEASLES 3 CHOLERA 1` into a report kind and item quantities,
//! from a configurable catalogue of item codes and aliases. See README.md.

use std::rc::Rc;

use mhero_sdk::classifier::{
    Classification, Classifier, ClassifierInfo, ClassifyContext, Field, PluginError, PluginInfo,
    PluginKind,
};
use mhero_sdk::host;
use serde_json::Value;

pub struct StockReport;

const MAX_TEXT: usize = 4096;

/// Largest quantity taken; more is a typing error.
pub const MAX_QUANTITY: u64 = 10_000_000;

/// Report keyword → kind, when `reports` is unset.
pub const DEFAULT_REPORTS: &str =
    r#"{"STOCK": "stock", "CASE": "case", "CASES": "case", "CAS": "case", "CASO": "case"}"#;

/// Kind → item code → aliases, when `catalogue` is unset.
pub const DEFAULT_CATALOGUE: &str = r#"{
    "stock": {
        "AMOX": ["AMOX", "AMOXICILLIN", "AMOXY"],
        "ORS": ["ORS", "SRO"],
        "ZINC": ["ZINC", "ZN"],
        "ACT": ["ACT", "COARTEM", "AL"],
        "RDT": ["RDT", "TDR"],
        "PARA": ["PARA", "PARACETAMOL"]
    },
    "case": {
        "MEASLES": ["MEASLES", "ROUGEOLE", "SARAMPO", "SURUA"],
        "CHOLERA": ["CHOLERA", "COLERA", "KIPINDUPINDU"],
        "MALARIA": ["MALARIA", "PALUDISME"],
        "EBOLA": ["EBOLA"],
        "AWD": ["AWD", "DIARRHOEA", "DIARRHEA", "DIARRHEE"]
    }
}"#;

/// Field names the notes use; no item code may take them.
const RESERVED: &[&str] = &["error", "warning", "unknown-item"];

/// Confidence when every token parsed into known items.
const CLEAN: f32 = 0.95;
/// Confidence when some items were unknown or some tokens in error.
const PARTIAL: f32 = 0.6;
/// Confidence when the keyword was there but no item parsed.
const EMPTY: f32 = 0.3;

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
            c => c,
        })
        .collect()
}

/// One catalogue item: its code and the folded words of each alias.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub code: String,
    pub aliases: Vec<Vec<String>>,
}

/// The settings: report keywords (folded) → kind, kind → items.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub reports: Vec<(String, String)>,
    pub catalogue: Vec<(String, Vec<Item>)>,
}

impl Config {
    /// The settings from the host, the defaults where unset: parsed again
    /// only when the host's settings change.
    fn from_host() -> Result<Rc<Self>, PluginError> {
        host::config_cached(["reports", "catalogue"], |[reports, catalogue]| {
            Self::parse(
                reports.unwrap_or(DEFAULT_REPORTS),
                catalogue.unwrap_or(DEFAULT_CATALOGUE),
            )
        })
    }

    /// Parses both settings (JSON) and checks they fit together.
    pub fn parse(reports: &str, catalogue: &str) -> Result<Self, PluginError> {
        let config = Self {
            reports: parse_reports(reports)?,
            catalogue: parse_catalogue(catalogue)?,
        };
        for (keyword, kind) in &config.reports {
            if !config.catalogue.iter().any(|(k, _)| k == kind) {
                return Err(PluginError::invalid(format!(
                    "reports: keyword `{keyword}` names kind `{kind}`, which has no catalogue entry"
                )));
            }
        }
        Ok(config)
    }

    /// The kind a report keyword (folded) starts.
    fn kind(&self, folded: &str) -> Option<&str> {
        self.reports
            .iter()
            .find(|(k, _)| k == folded)
            .map(|(_, kind)| kind.as_str())
    }

    fn items(&self, kind: &str) -> &[Item] {
        self.catalogue
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(&[], |(_, items)| items.as_slice())
    }
}

/// A JSON object, or an error naming the setting and its expected shape.
fn object<'a>(
    value: &'a Value,
    what: &str,
    shape: &str,
) -> Result<&'a serde_json::Map<String, Value>, PluginError> {
    value
        .as_object()
        .ok_or_else(|| PluginError::invalid(format!("{what} must be a table of {shape}")))
}

fn parse_json(raw: &str, key: &str) -> Result<Value, PluginError> {
    serde_json::from_str(raw)
        .map_err(|e| PluginError::invalid(format!("setting `{key}` is not a table: {e}")))
}

/// `reports`: keyword → kind.
fn parse_reports(raw: &str) -> Result<Vec<(String, String)>, PluginError> {
    let value = parse_json(raw, "reports")?;
    object(&value, "setting `reports`", "keyword = kind")?
        .iter()
        .map(|(keyword, kind)| {
            let kind = kind.as_str().ok_or_else(|| {
                PluginError::invalid(format!("reports.{keyword} must be a report kind (text)"))
            })?;
            let folded = fold(keyword.trim());
            if folded.is_empty() || folded.contains(char::is_whitespace) {
                return Err(PluginError::invalid(format!(
                    "reports: keyword `{keyword}` must be one word"
                )));
            }
            Ok((folded, kind.to_string()))
        })
        .collect()
}

/// `catalogue`: kind → item code → aliases.
fn parse_catalogue(raw: &str) -> Result<Vec<(String, Vec<Item>)>, PluginError> {
    let value = parse_json(raw, "catalogue")?;
    object(&value, "setting `catalogue`", "kind = { item = [aliases] }")?
        .iter()
        .map(|(kind, items)| {
            let items = object(items, &format!("catalogue.{kind}"), "item = [aliases]")?
                .iter()
                .map(|(code, aliases)| parse_item(kind, code, aliases))
                .collect::<Result<Vec<_>, _>>()?;
            check_aliases(kind, &items)?;
            Ok((kind.clone(), items))
        })
        .collect()
}

/// One item: its code is an alias too.
fn parse_item(kind: &str, code: &str, aliases: &Value) -> Result<Item, PluginError> {
    let path = format!("catalogue.{kind}.{code}");
    if code.trim().is_empty() || RESERVED.iter().any(|r| r.eq_ignore_ascii_case(code)) {
        return Err(PluginError::invalid(format!(
            "{path}: item code `{code}` is empty or reserved ({})",
            RESERVED.join(", ")
        )));
    }
    let list = aliases
        .as_array()
        .ok_or_else(|| PluginError::invalid(format!("{path} must be a list of aliases")))?;
    let mut words: Vec<Vec<String>> = vec![alias_words(code)];
    for alias in list {
        let alias = alias
            .as_str()
            .ok_or_else(|| PluginError::invalid(format!("{path} holds a non-text entry")))?;
        if !alias.chars().any(char::is_alphabetic) {
            return Err(PluginError::invalid(format!(
                "{path}: alias `{alias}` has no letter"
            )));
        }
        let w = alias_words(alias);
        if !words.contains(&w) {
            words.push(w);
        }
    }
    Ok(Item {
        code: code.to_string(),
        aliases: words,
    })
}

/// The folded words of an alias, split as report texts are.
fn alias_words(alias: &str) -> Vec<String> {
    pieces(&fold(alias))
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// No alias may name two items of the same kind.
fn check_aliases(kind: &str, items: &[Item]) -> Result<(), PluginError> {
    for (i, a) in items.iter().enumerate() {
        for b in &items[i + 1..] {
            if let Some(alias) = a.aliases.iter().find(|w| b.aliases.contains(w)) {
                return Err(PluginError::invalid(format!(
                    "catalogue.{kind}: alias `{}` names both {} and {}",
                    alias.join(" "),
                    a.code,
                    b.code
                )));
            }
        }
    }
    Ok(())
}

/// Whether a piece is `1,200` (thousands) or `2,5` (a decimal): one
/// number, not two.
fn is_comma_number(piece: &str) -> bool {
    let mut parts = piece.split(',');
    let first = parts.next().unwrap_or_default();
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(first) && piece.contains(',') && parts.all(all_digits)
}

/// The tokens of a report: split at spaces, `=`, `:`, `;` and commas
/// (except inside `1,200`), a closing `.` dropped.
fn pieces(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '=' | ':' | ';'))
        .flat_map(|p| {
            if is_comma_number(p) {
                vec![p]
            } else {
                p.split(',').collect()
            }
        })
        .map(|p| p.trim_end_matches('.'))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Whether a token is meant as a quantity: a digit, maybe after a sign.
fn looks_like_quantity(token: &str) -> bool {
    let unsigned = token.strip_prefix(['-', '+', '−']).unwrap_or(token);
    unsigned.starts_with(|c: char| c.is_ascii_digit())
        || (unsigned.starts_with('.') && unsigned[1..].starts_with(|c: char| c.is_ascii_digit()))
}

/// A quantity: a whole number from 0 to [`MAX_QUANTITY`]; why not, else.
pub fn quantity(token: &str) -> Result<u64, String> {
    if token.starts_with(['-', '−']) {
        return Err(format!("{token} is negative"));
    }
    let digits = token.strip_prefix('+').unwrap_or(token);
    let thousands = digits.contains(',')
        && digits
            .split(',')
            .enumerate()
            .all(|(i, p)| (i == 0 && p.len() <= 3) || p.len() == 3);
    let digits = if thousands {
        digits.replace(',', "")
    } else {
        digits.to_string()
    };
    if digits.contains(['.', ',']) {
        return Err(format!("{token} is not a whole number"));
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{token} is not a quantity"));
    }
    match digits.parse::<u64>() {
        Ok(n) if n <= MAX_QUANTITY => Ok(n),
        _ => Err(format!("{token} is over {MAX_QUANTITY}")),
    }
}

/// A word glued to its quantity (`amox120`): the word and the digits.
fn split_glued(token: &str) -> Option<(&str, &str)> {
    let at = token.find(|c: char| c.is_ascii_digit())?;
    let (word, digits) = token.split_at(at);
    (!word.is_empty()
        && word.chars().all(char::is_alphabetic)
        && digits.bytes().all(|b| b.is_ascii_digit()))
    .then_some((word, digits))
}

/// The item an alias at the start of `tokens` names (longest alias first),
/// and how many tokens it takes.
fn match_item<'c>(items: &'c [Item], tokens: &[String]) -> Option<(&'c Item, usize)> {
    items
        .iter()
        .flat_map(|item| item.aliases.iter().map(move |a| (item, a)))
        .filter(|(_, alias)| !alias.is_empty() && tokens.starts_with(alias))
        .max_by_key(|(_, alias)| alias.len())
        .map(|(item, alias)| (item, alias.len()))
}

/// What the last word named, waiting for its quantity.
enum Pending {
    Known(String),
    Unknown(String),
}

impl Pending {
    fn name(&self) -> &str {
        match self {
            Pending::Known(s) | Pending::Unknown(s) => s,
        }
    }
}

/// A report being read: items in order, notes in the order met.
#[derive(Default)]
struct Reading {
    items: Vec<(String, u64)>,
    notes: Vec<Field>,
    unknown: usize,
    errors: usize,
    pending: Option<Pending>,
}

impl Reading {
    fn note(&mut self, name: &str, value: String) {
        match name {
            "error" => self.errors += 1,
            "unknown-item" => self.unknown += 1,
            _ => {}
        }
        self.notes.push(field(name, value));
    }

    /// A word that names an item (or not); the previous one had no quantity.
    fn word(&mut self, next: Pending) {
        self.no_quantity();
        self.pending = Some(next);
    }

    /// A quantity token, for the pending item.
    fn quantity(&mut self, token: &str) {
        let q = quantity(token);
        match (self.pending.take(), q) {
            (None, _) => self.note("error", format!("{token}: quantity without an item")),
            (Some(Pending::Known(code)), Ok(n)) => self.set(code, n),
            (Some(Pending::Unknown(word)), Ok(_)) => self.note("unknown-item", word),
            (Some(Pending::Known(name)), Err(why)) => self.note("error", format!("{name}: {why}")),
            (Some(Pending::Unknown(name)), Err(why)) => {
                self.note("unknown-item", name.clone());
                self.note("error", format!("{name}: {why}"));
            }
        }
    }

    /// The pending word, if any, had no quantity.
    fn no_quantity(&mut self) {
        if let Some(p) = self.pending.take() {
            self.note("error", format!("{}: no quantity", p.name()));
        }
    }

    /// Records an item; a repeated one keeps its last value, with a warning.
    fn set(&mut self, code: String, n: u64) {
        if let Some(slot) = self.items.iter_mut().find(|(c, _)| *c == code) {
            slot.1 = n;
            self.note(
                "warning",
                format!("{code} repeated: kept the last value, {n}"),
            );
        } else {
            self.items.push((code, n));
        }
    }

    fn confidence(&self) -> f32 {
        if self.items.is_empty() {
            EMPTY
        } else if self.unknown > 0 || self.errors > 0 {
            PARTIAL
        } else {
            CLEAN
        }
    }

    fn into_classification(self, kind: &str) -> Classification {
        let confidence = self.confidence();
        let mut fields: Vec<Field> = self
            .items
            .into_iter()
            .map(|(code, n)| field(&code, n.to_string()))
            .collect();
        fields.extend(self.notes);
        Classification {
            label: kind.into(),
            confidence,
            fields,
            language: None,
        }
    }
}

fn field(name: &str, value: impl Into<String>) -> Field {
    Field {
        name: name.into(),
        value: value.into(),
    }
}

fn unknown() -> Classification {
    Classification {
        label: "unknown".into(),
        confidence: 0.0,
        fields: Vec::new(),
        language: None,
    }
}

/// Reads a report; `None` when it does not start with a report keyword.
pub fn read_report(text: &str, config: &Config) -> Option<Classification> {
    let raw = pieces(text);
    let folded: Vec<String> = raw.iter().map(|t| fold(t)).collect();
    let kind = config.kind(folded.first()?)?;
    let items = config.items(kind);
    let mut r = Reading::default();
    if raw.len() == 1 {
        r.note("error", "no items".into());
    }
    let mut i = 1;
    while i < raw.len() {
        if let Some((item, len)) = match_item(items, &folded[i..]) {
            r.word(Pending::Known(item.code.clone()));
            i += len;
            continue;
        }
        let token = raw[i];
        if looks_like_quantity(token) {
            r.quantity(token);
        } else if let Some((word, digits)) = split_glued(token) {
            let next = match_item(items, &[fold(word)]).map_or_else(
                || Pending::Unknown(word.into()),
                |(item, _)| Pending::Known(item.code.clone()),
            );
            r.word(next);
            r.quantity(digits);
        } else {
            r.word(Pending::Unknown(token.into()));
        }
        i += 1;
    }
    r.no_quantity();
    Some(r.into_classification(kind))
}

impl Classifier for StockReport {
    fn describe() -> ClassifierInfo {
        ClassifierInfo {
            plugin: PluginInfo {
                name: "stock-report".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Classifier,
                summary: "Structured SMS reports (STOCK AMOX 120 ORS 40, CASES MEASLES 3) into items and quantities"
                    .into(),
            },
            languages: vec!["en".into(), "fr".into(), "pt".into(), "sw".into()],
        }
    }

    /// The context is ignored: a report says what it is by its first word.
    fn classify(text: String, _context: ClassifyContext) -> Result<Classification, PluginError> {
        if text.len() > MAX_TEXT {
            return Err(PluginError::invalid(format!(
                "reply of {} bytes is over {MAX_TEXT}",
                text.len()
            )));
        }
        let config = Config::from_host()?;
        Ok(read_report(&text, &config).unwrap_or_else(unknown))
    }
}

mhero_sdk::export_classifier!(StockReport);

#[cfg(test)]
mod tests;
