//! A FHIR R4 `Questionnaire` read into the questions a flash survey asks:
//! item types `boolean`, `choice`, `integer`, `decimal`, `string`, `date`
//! (a `display` item is text shown before the next question), `enableWhen`
//! for simple branching, and translations (the FHIR `translation`
//! extension on `_text`, `_display` and `_valueString`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dispatch::Body;

const TRANSLATION: &str = "http://hl7.org/fhir/StructureDefinition/translation";
/// Most questions one survey asks.
pub const MAX_QUESTIONS: usize = 50;
/// Most options of one choice question (one SMS lists them).
pub const MAX_OPTIONS: usize = 20;

/// What a question expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Boolean,
    Choice,
    Integer,
    Decimal,
    String,
    Date,
}

impl Kind {
    pub fn fhir(self) -> &'static str {
        match self {
            Kind::Boolean => "boolean",
            Kind::Choice => "choice",
            Kind::Integer => "integer",
            Kind::Decimal => "decimal",
            Kind::String => "string",
            Kind::Date => "date",
        }
    }
}

/// One option of a choice question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// `valueCoding` (system, code), or `valueString` / `valueInteger` as
    /// the code.
    pub system: Option<String>,
    pub code: String,
    /// What the worker reads, per language.
    pub display: Body,
    /// How it was given: `coding`, `string` or `integer`.
    pub value_type: String,
}

/// A value a question was answered with (or a condition compares to).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    Boolean(bool),
    /// The option's index.
    Choice(u32),
    Integer(i64),
    Decimal(f64),
    String(String),
    /// `YYYY-MM-DD`.
    Date(String),
}

/// `enableWhen`: the question is asked only when an earlier answer
/// compares so.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The earlier question's index.
    pub question: u32,
    /// `exists`, `=`, `!=`, `>`, `<`, `>=`, `<=`.
    pub operator: String,
    /// For `exists`: whether it must have been answered.
    pub exists: bool,
    pub answer: Option<Answer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub link_id: String,
    pub text: Body,
    pub kind: Kind,
    pub options: Vec<Choice>,
    pub enable_when: Vec<Condition>,
    /// `enableBehavior` `all` (true) or `any`.
    pub enable_all: bool,
    /// Text of the `display` items just before it.
    pub preface: Option<Body>,
}

/// The questions of a Questionnaire, with its id, title and version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parsed {
    pub id: Option<String>,
    pub url: Option<String>,
    pub title: String,
    pub questions: Vec<Question>,
}

/// Reads a Questionnaire; the error names the element (`item[2].type`).
pub fn parse(q: &Value) -> Result<Parsed, String> {
    if q.get("resourceType").and_then(Value::as_str) != Some("Questionnaire") {
        return Err("resourceType: a Questionnaire is expected".into());
    }
    let mut items = Vec::new();
    flatten(q.get("item"), "item", &mut items)?;
    let mut questions: Vec<Question> = Vec::new();
    let mut preface: Option<Body> = None;
    for (path, item) in &items {
        let link_id = item
            .get("linkId")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{path}.linkId is required"))?
            .to_string();
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
        let text = translated(item, "text")
            .ok_or_else(|| format!("{path}.text is required (it is what the worker reads)"))?;
        let kind = match kind {
            "display" => {
                preface = Some(match preface.take() {
                    Some(p) => join(&p, &text),
                    None => text,
                });
                continue;
            }
            "boolean" => Kind::Boolean,
            "choice" | "coding" => Kind::Choice,
            "integer" => Kind::Integer,
            "decimal" => Kind::Decimal,
            "string" | "text" => Kind::String,
            "date" => Kind::Date,
            other => {
                return Err(format!(
                    "{path}.type {other:?} cannot be asked by message (boolean, choice, integer, decimal, string, date or display)"
                ));
            }
        };
        if questions.iter().any(|x| x.link_id == link_id) {
            return Err(format!("{path}.linkId {link_id:?} is used twice"));
        }
        let mut options = Vec::new();
        if kind == Kind::Choice {
            let list = item
                .get("answerOption")
                .and_then(Value::as_array)
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    format!("{path}.answerOption: a choice question lists its options")
                })?;
            if list.len() > MAX_OPTIONS {
                return Err(format!(
                    "{path}.answerOption: at most {MAX_OPTIONS} options fit a message"
                ));
            }
            for (k, o) in list.iter().enumerate() {
                options.push(option(o).map_err(|e| format!("{path}.answerOption[{k}]{e}"))?);
            }
        }
        let mut enable_when = Vec::new();
        if let Some(list) = item.get("enableWhen").and_then(Value::as_array) {
            for (k, c) in list.iter().enumerate() {
                enable_when.push(
                    condition(c, &questions).map_err(|e| format!("{path}.enableWhen[{k}]{e}"))?,
                );
            }
        }
        let enable_all = match item.get("enableBehavior").and_then(Value::as_str) {
            None | Some("all") => true,
            Some("any") => false,
            Some(other) => return Err(format!("{path}.enableBehavior {other:?}: all or any")),
        };
        questions.push(Question {
            link_id,
            text,
            kind,
            options,
            enable_when,
            enable_all,
            preface: preface.take(),
        });
    }
    if questions.is_empty() {
        return Err("item: the Questionnaire asks no question".into());
    }
    if questions.len() > MAX_QUESTIONS {
        return Err(format!("item: at most {MAX_QUESTIONS} questions"));
    }
    Ok(Parsed {
        id: q.get("id").and_then(Value::as_str).map(str::to_string),
        url: q.get("url").and_then(Value::as_str).map(str::to_string),
        title: q
            .get("title")
            .or_else(|| q.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("Survey")
            .to_string(),
        questions,
    })
}

/// Items in the order they are asked; a `group` item's children in place.
fn flatten<'a>(
    items: Option<&'a Value>,
    path: &str,
    out: &mut Vec<(String, &'a Value)>,
) -> Result<(), String> {
    let Some(items) = items else {
        return Ok(());
    };
    let list = items
        .as_array()
        .ok_or_else(|| format!("{path}: a list is expected"))?;
    for (i, item) in list.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if item.get("type").and_then(Value::as_str) == Some("group") {
            flatten(item.get("item"), &format!("{here}.item"), out)?;
        } else {
            out.push((here, item));
        }
    }
    Ok(())
}

fn join(a: &Body, b: &Body) -> Body {
    let mut out = Body::text(&format!("{}\n{}", a.default, b.default));
    for (lang, t) in &b.variants {
        let first = a.variants.get(lang).unwrap_or(&a.default);
        out.variants.insert(lang.clone(), format!("{first}\n{t}"));
    }
    out
}

/// `element` with its translations (`_element.extension`).
fn translated(v: &Value, element: &str) -> Option<Body> {
    let default = v.get(element)?.as_str()?.trim();
    if default.is_empty() {
        return None;
    }
    let mut body = Body::text(default);
    let extensions = v
        .get(format!("_{element}"))
        .and_then(|e| e.get("extension"))
        .and_then(Value::as_array);
    for ext in extensions.into_iter().flatten() {
        if ext.get("url").and_then(Value::as_str) != Some(TRANSLATION) {
            continue;
        }
        let parts = ext.get("extension").and_then(Value::as_array);
        let part = |name: &str, key: &str| {
            parts
                .into_iter()
                .flatten()
                .find(|p| p.get("url").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        if let (Some(lang), Some(content)) =
            (part("lang", "valueCode"), part("content", "valueString"))
        {
            body.variants.insert(lang, content);
        }
    }
    Some(body)
}

fn option(o: &Value) -> Result<Choice, String> {
    if let Some(c) = o.get("valueCoding") {
        let code = c
            .get("code")
            .and_then(Value::as_str)
            .ok_or(".valueCoding.code is required")?;
        let display = translated(c, "display").unwrap_or_else(|| Body::text(code));
        return Ok(Choice {
            system: c.get("system").and_then(Value::as_str).map(str::to_string),
            code: code.to_string(),
            display,
            value_type: "coding".into(),
        });
    }
    if let Some(s) = translated(o, "valueString") {
        return Ok(Choice {
            system: None,
            code: s.default.clone(),
            display: s,
            value_type: "string".into(),
        });
    }
    if let Some(n) = o.get("valueInteger").and_then(Value::as_i64) {
        return Ok(Choice {
            system: None,
            code: n.to_string(),
            display: Body::text(&n.to_string()),
            value_type: "integer".into(),
        });
    }
    Err(": valueCoding, valueString or valueInteger is expected".into())
}

fn condition(c: &Value, earlier: &[Question]) -> Result<Condition, String> {
    let link = c
        .get("question")
        .and_then(Value::as_str)
        .ok_or(".question is required")?;
    let index = earlier
        .iter()
        .position(|q| q.link_id == link)
        .ok_or_else(|| format!(".question {link:?} is not an earlier question"))?;
    let q = &earlier[index];
    let operator = c
        .get("operator")
        .and_then(Value::as_str)
        .ok_or(".operator is required")?;
    if !matches!(operator, "exists" | "=" | "!=" | ">" | "<" | ">=" | "<=") {
        return Err(format!(
            ".operator {operator:?} is not a FHIR enableWhen operator"
        ));
    }
    if operator == "exists" {
        return Ok(Condition {
            question: index as u32,
            operator: operator.into(),
            exists: c
                .get("answerBoolean")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            answer: None,
        });
    }
    let answer = if let Some(b) = c.get("answerBoolean").and_then(Value::as_bool) {
        Answer::Boolean(b)
    } else if let Some(n) = c.get("answerInteger").and_then(Value::as_i64) {
        Answer::Integer(n)
    } else if let Some(n) = c.get("answerDecimal").and_then(Value::as_f64) {
        Answer::Decimal(n)
    } else if let Some(d) = c.get("answerDate").and_then(Value::as_str) {
        Answer::Date(d.to_string())
    } else if let Some(code) = c
        .get("answerCoding")
        .and_then(|x| x.get("code"))
        .and_then(Value::as_str)
        .or_else(|| c.get("answerString").and_then(Value::as_str))
    {
        match q.options.iter().position(|o| o.code == code) {
            Some(i) => Answer::Choice(i as u32),
            None if q.kind == Kind::String => Answer::String(code.to_string()),
            None => return Err(format!(".answer {code:?} is not an option of {link:?}")),
        }
    } else {
        return Err(".answer[x] is required".into());
    };
    Ok(Condition {
        question: index as u32,
        operator: operator.into(),
        exists: true,
        answer: Some(answer),
    })
}

impl Condition {
    /// Whether it holds for the answers given so far.
    pub fn holds(&self, answers: &[(u32, Answer)]) -> bool {
        let given = answers
            .iter()
            .rev()
            .find(|(q, _)| *q == self.question)
            .map(|(_, a)| a);
        if self.operator == "exists" {
            return given.is_some() == self.exists;
        }
        let (Some(a), Some(b)) = (given, &self.answer) else {
            return self.operator == "!=";
        };
        let ordering = match (a, b) {
            (Answer::Integer(x), Answer::Integer(y)) => Some(x.cmp(y)),
            (Answer::Decimal(x), Answer::Decimal(y)) => x.partial_cmp(y),
            (Answer::Integer(x), Answer::Decimal(y)) => (*x as f64).partial_cmp(y),
            (Answer::Decimal(x), Answer::Integer(y)) => x.partial_cmp(&(*y as f64)),
            (Answer::Date(x), Answer::Date(y)) => Some(x.cmp(y)),
            _ => None,
        };
        match self.operator.as_str() {
            "=" => a == b || ordering == Some(std::cmp::Ordering::Equal),
            "!=" => a != b && ordering != Some(std::cmp::Ordering::Equal),
            ">" => ordering == Some(std::cmp::Ordering::Greater),
            "<" => ordering == Some(std::cmp::Ordering::Less),
            ">=" => ordering.is_some_and(|o| o != std::cmp::Ordering::Less),
            "<=" => ordering.is_some_and(|o| o != std::cmp::Ordering::Greater),
            _ => false,
        }
    }
}

impl Question {
    /// Whether it is asked, given the answers so far.
    pub fn enabled(&self, answers: &[(u32, Answer)]) -> bool {
        if self.enable_when.is_empty() {
            return true;
        }
        if self.enable_all {
            self.enable_when.iter().all(|c| c.holds(answers))
        } else {
            self.enable_when.iter().any(|c| c.holds(answers))
        }
    }
}
