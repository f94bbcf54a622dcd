//! Audience selectors: a small query language over the directory's
//! indexes, evaluated as set algebra on their bitmaps.
//!
//! ```text
//! role:nurse AND location:Location/bong AND NOT group:retired
//! (role:midwife OR role:"community health worker") AND lang:fr
//! has:whatsapp AND org:Organization/moh
//! *
//! ```
//!
//! - Terms are `field:value`; a value with spaces or parentheses is
//!   quoted (`"…"`, with `\"` and `\\` inside).
//! - Fields: `role` (role or cadre), `location` (a place and everything
//!   inside it: facility → district → county → country), `facility` (that
//!   place only), `org` (organization), `group`, `lang` (primary language:
//!   `fr` matches `fr-LR`), `has` (an address of that kind: `tel`,
//!   `whatsapp`, `telegram`, `messenger`, `email`). `*` is everyone.
//! - A `location`, `facility`, `org` or `group` value without a type is
//!   read as `Location/…`, `Location/…`, `Organization/…`, `Group/…`; a
//!   group is also found by its name. `role`, `lang` and `has` values are
//!   case-insensitive; resource ids are not.
//! - `NOT` binds tightest, then `AND`, then `OR`; parentheses group.
//!   Operators are upper or lower case.
//! - Only active contacts who have not opted out are ever selected: `NOT x`
//!   is every such contact outside `x`.

use std::fmt;

/// Longest selector, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Most terms in one selector.
pub const MAX_TERMS: usize = 256;
/// Deepest nesting of parentheses and `NOT`.
pub const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Role,
    Location,
    Facility,
    Org,
    Group,
    Lang,
    Has,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::Role,
        Field::Location,
        Field::Facility,
        Field::Org,
        Field::Group,
        Field::Lang,
        Field::Has,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Field::Role => "role",
            Field::Location => "location",
            Field::Facility => "facility",
            Field::Org => "org",
            Field::Group => "group",
            Field::Lang => "lang",
            Field::Has => "has",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Everyone (`*`).
    All,
    Term(Field, String),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("*"),
            Expr::Term(field, value) => {
                let bare = !value.is_empty()
                    && !value
                        .chars()
                        .any(|c| c.is_whitespace() || matches!(c, '(' | ')' | '"' | '\\'));
                if bare {
                    write!(f, "{}:{value}", field.name())
                } else {
                    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
                    write!(f, "{}:\"{escaped}\"", field.name())
                }
            }
            Expr::Not(e) => match **e {
                Expr::And(_) | Expr::Or(_) => write!(f, "NOT ({e})"),
                _ => write!(f, "NOT {e}"),
            },
            Expr::And(es) | Expr::Or(es) => {
                let op = if matches!(self, Expr::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(op)?;
                    }
                    // An OR inside an AND keeps its parentheses.
                    match (self, e) {
                        (Expr::And(_), Expr::Or(_))
                        | (_, Expr::And(_))
                        | (Expr::Or(_), Expr::Or(_)) => write!(f, "({e})")?,
                        _ => write!(f, "{e}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// A selector that does not parse: what is wrong and where (byte offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.at)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Open,
    Close,
    All,
    And,
    Or,
    Not,
    Term(Field, String),
}

fn tokens(input: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let err = |at: usize, message: String| ParseError { at, message };
    let bytes = input.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        match c {
            b'(' => {
                out.push((start, Token::Open));
                i += 1;
            }
            b')' => {
                out.push((start, Token::Close));
                i += 1;
            }
            _ => {
                // A word: up to whitespace, a parenthesis, or (after
                // `field:`) a quoted value.
                while i < bytes.len()
                    && !bytes[i].is_ascii_whitespace()
                    && !matches!(bytes[i], b'(' | b')' | b'"')
                {
                    i += 1;
                }
                let word = &input[start..i];
                if i < bytes.len() && bytes[i] == b'"' {
                    let Some(field) = word.strip_suffix(':') else {
                        return Err(err(i, "a quoted value must follow `field:`".into()));
                    };
                    let field = parse_field(field, start)?;
                    i += 1;
                    let mut value = String::new();
                    loop {
                        let Some(ch) = input[i..].chars().next() else {
                            return Err(err(start, "unterminated quoted value".into()));
                        };
                        i += ch.len_utf8();
                        match ch {
                            '"' => break,
                            '\\' => match input[i..].chars().next() {
                                Some(e @ ('"' | '\\')) => {
                                    value.push(e);
                                    i += 1;
                                }
                                _ => {
                                    return Err(err(
                                        i - 1,
                                        "only \\\" and \\\\ are escapes in a quoted value".into(),
                                    ));
                                }
                            },
                            _ => value.push(ch),
                        }
                    }
                    out.push((start, term(field, value, start)?));
                    continue;
                }
                let token = match word {
                    "*" => Token::All,
                    w if w.eq_ignore_ascii_case("and") => Token::And,
                    w if w.eq_ignore_ascii_case("or") => Token::Or,
                    w if w.eq_ignore_ascii_case("not") => Token::Not,
                    w => match w.split_once(':') {
                        Some((field, value)) => {
                            term(parse_field(field, start)?, value.to_string(), start)?
                        }
                        None => {
                            return Err(err(
                                start,
                                format!(
                                    "{w:?} is not a term: write field:value ({}), `*`, AND, OR, NOT or parentheses",
                                    fields()
                                ),
                            ));
                        }
                    },
                };
                out.push((start, token));
            }
        }
    }
    Ok(out)
}

fn fields() -> String {
    Field::ALL.map(Field::name).join(", ")
}

fn parse_field(name: &str, at: usize) -> Result<Field, ParseError> {
    Field::ALL
        .into_iter()
        .find(|f| f.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| ParseError {
            at,
            message: format!("unknown field {name:?} (fields: {})", fields()),
        })
}

fn term(field: Field, value: String, at: usize) -> Result<Token, ParseError> {
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(ParseError {
            at,
            message: format!("`{}:` needs a value", field.name()),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(ParseError {
            at,
            message: "a value may not contain control characters".into(),
        });
    }
    Ok(Token::Term(field, value))
}

/// Parses a selector.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    if input.len() > MAX_SELECTOR_BYTES {
        return Err(ParseError {
            at: MAX_SELECTOR_BYTES,
            message: format!(
                "the selector is {} bytes; at most {MAX_SELECTOR_BYTES}",
                input.len()
            ),
        });
    }
    let tokens = tokens(input)?;
    let terms = tokens
        .iter()
        .filter(|(_, t)| matches!(t, Token::Term(..) | Token::All))
        .count();
    if terms > MAX_TERMS {
        return Err(ParseError {
            at: 0,
            message: format!("{terms} terms; at most {MAX_TERMS}"),
        });
    }
    if tokens.is_empty() {
        return Err(ParseError {
            at: 0,
            message: "the selector is empty (`*` selects everyone)".into(),
        });
    }
    let mut p = Parser {
        tokens,
        pos: 0,
        end: input.len(),
    };
    let expr = p.or(0)?;
    if let Some((at, t)) = p.tokens.get(p.pos) {
        return Err(ParseError {
            at: *at,
            message: match t {
                Token::Close => "a `)` without its `(`".into(),
                _ => "expected AND or OR between terms".into(),
            },
        });
    }
    Ok(expr)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(a, _)| *a)
    }

    fn deep(&self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError {
                at: self.at(),
                message: format!("nested more than {MAX_DEPTH} deep"),
            });
        }
        Ok(())
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut parts = vec![self.and(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            parts.push(self.and(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut parts = vec![self.not(depth)?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            parts.push(self.not(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    fn not(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if self.peek() == Some(&Token::Not) {
            self.deep(depth + 1)?;
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not(depth + 1)?)));
        }
        self.atom(depth)
    }

    fn atom(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let at = self.at();
        let Some((_, token)) = self.tokens.get(self.pos).cloned() else {
            return Err(ParseError {
                at,
                message: "the selector ends where a term was expected".into(),
            });
        };
        self.pos += 1;
        match token {
            Token::All => Ok(Expr::All),
            Token::Term(field, value) => Ok(Expr::Term(field, value)),
            Token::Open => {
                self.deep(depth + 1)?;
                let e = self.or(depth + 1)?;
                if self.peek() != Some(&Token::Close) {
                    return Err(ParseError {
                        at: self.at(),
                        message: format!("the `(` at byte {at} is not closed"),
                    });
                }
                self.pos += 1;
                Ok(e)
            }
            Token::Close => Err(ParseError {
                at,
                message: "a `)` where a term was expected".into(),
            }),
            Token::And | Token::Or => Err(ParseError {
                at,
                message: "AND or OR where a term was expected".into(),
            }),
            Token::Not => unreachable!("handled by not()"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(f: Field, v: &str) -> Expr {
        Expr::Term(f, v.into())
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let e = parse("role:nurse AND location:Location/bong AND NOT group:retired").unwrap();
        assert_eq!(
            e,
            Expr::And(vec![
                t(Field::Role, "nurse"),
                t(Field::Location, "Location/bong"),
                Expr::Not(Box::new(t(Field::Group, "retired"))),
            ])
        );
        let e = parse("role:a or role:b and not lang:fr").unwrap();
        assert_eq!(
            e,
            Expr::Or(vec![
                t(Field::Role, "a"),
                Expr::And(vec![
                    t(Field::Role, "b"),
                    Expr::Not(Box::new(t(Field::Lang, "fr")))
                ]),
            ])
        );
        let e =
            parse(r#"(role:midwife OR role:"community health worker") AND has:whatsapp"#).unwrap();
        assert_eq!(
            e,
            Expr::And(vec![
                Expr::Or(vec![
                    t(Field::Role, "midwife"),
                    t(Field::Role, "community health worker")
                ]),
                t(Field::Has, "whatsapp"),
            ])
        );
        assert_eq!(parse(" * ").unwrap(), Expr::All);
    }

    #[test]
    fn display_parses_back_to_the_same_expression() {
        for s in [
            "role:nurse AND location:Location/bong AND NOT group:retired",
            r#"(role:midwife OR role:"community \"health\" worker") AND NOT (lang:fr OR lang:pt)"#,
            "NOT NOT *",
            "(role:a AND role:b) OR (role:c AND role:d)",
        ] {
            let e = parse(s).unwrap();
            assert_eq!(parse(&e.to_string()).unwrap(), e, "{s} → {e}");
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases = [
            ("", "empty"),
            ("role:", "needs a value"),
            ("cadre:nurse", "unknown field \"cadre\""),
            ("role:nurse AND", "ends where a term"),
            ("role:nurse role:midwife", "expected AND or OR"),
            ("(role:nurse", "is not closed"),
            ("role:nurse)", "without its `(`"),
            ("nurse", "is not a term"),
            ("role:\"nurse", "unterminated"),
            ("AND role:x", "where a term was expected"),
            (r#"role:"a\nb""#, "escapes"),
        ];
        for (input, want) in cases {
            let e = parse(input).unwrap_err();
            assert!(e.message.contains(want), "{input:?}: {e}");
        }
        let deep = format!("{}role:x{}", "(".repeat(40), ")".repeat(40));
        assert!(parse(&deep).unwrap_err().message.contains("nested"));
        let long = "role:x OR ".repeat(500) + "role:y";
        assert!(parse(&long).unwrap_err().message.contains("bytes"));
    }
}
