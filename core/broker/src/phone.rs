//! Phone numbers to E.164. Every number the broker takes in (a campaign's
//! recipients, a channel address written as a number, the directory's
//! imports) goes through [`e164`], so one number is always stored and
//! compared in one form.
//!
//! Most numbers arrive already in E.164 (`+231770000001`: integrators'
//! systems and the directory's own exports write them so). Those are
//! checked against their country's patterns directly, without the general
//! parser (which reads any notation: spaces, dashes, `tel:` URIs, trunk
//! and international prefixes, and costs several times as much). Where the
//! parser could read such a number otherwise (its national part starts
//! with something its country strips as a national prefix), or the direct
//! check does not find it valid, the parser decides.
//!
//! A number written with its country code (`+…`, or after the default
//! region's international prefix, `00…`) names its country, so the
//! default region plays no part in reading it. The parser would
//! otherwise strip the default region's national prefix from another
//! country's number: in Liberia (prefix 0), `+225 07 01 02 03 04` (Côte
//! d'Ivoire, whose numbers begin with 0) became `+225 701 020 304`, not a
//! valid number, and was refused.

use phonenumber::country::{Id, Source};
use phonenumber::metadata::{DATABASE, Descriptor};
use phonenumber::{Metadata, Mode};

/// `raw` in E.164, or why it is not a valid phone number. A number
/// without its country code (neither `+` nor `region`'s international
/// prefix) is read as a national number of `region`.
pub fn e164(raw: &str, region: Option<Id>) -> Result<String, String> {
    if let Some(number) = canonical(raw) {
        return Ok(number);
    }
    let read = if international(raw) {
        phonenumber::parse(None, raw)
    } else {
        match phonenumber::parse(region, raw) {
            // Dialled with the region's international prefix: read as
            // written with `+`, as above.
            Ok(n) if n.code().source() == Source::Idd => after_idd(raw, region)
                .and_then(|plus| phonenumber::parse(None, plus).ok())
                .map_or(Ok(n), Ok),
            other => other,
        }
    };
    match read {
        Ok(n) if phonenumber::is_valid(&n) => Ok(n.format().mode(Mode::E164).to_string()),
        Ok(_) => Err(format!(
            "{raw:?} is not a valid phone number for its country"
        )),
        Err(e) => Err(format!("{raw:?} is not a phone number: {e}")),
    }
}

/// Longest national significant number, and shortest (as the parser has
/// them).
const MAX_NSN: usize = 17;
const MIN_NSN: usize = 3;

/// Whether `raw` is written with its country code: `+` first (after a
/// `tel:` scheme, if any).
fn international(raw: &str) -> bool {
    let s = raw.trim_start();
    let s = match s.get(..4) {
        Some(scheme) if scheme.eq_ignore_ascii_case("tel:") => &s[4..],
        _ => s,
    };
    s.trim_start().starts_with('+')
}

/// `raw` written with `+` in place of `region`'s international prefix
/// (`00231 77…` → `+23177…`), when it is written in digits and the usual
/// separators only.
fn after_idd(raw: &str, region: Option<Id>) -> Option<String> {
    let idd = DATABASE.by_id(region?.as_ref())?.international_prefix()?;
    let mut digits = String::with_capacity(raw.len());
    for c in raw.trim().chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            _ => return None,
        }
    }
    let m = idd.find(&digits)?;
    (m.start() == 0 && m.end() < digits.len()).then(|| format!("+{}", &digits[m.end()..]))
}

/// `raw` itself when it is E.164 (`+`, then digits only), valid, and the
/// parser would read it as it is written; `None` leaves it to the parser.
fn canonical(raw: &str) -> Option<String> {
    let digits = raw.strip_prefix('+')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    // Country codes are a prefix code: one of 1 to 3 digits names one.
    let (code, national, rules) = (1..=3usize).filter(|&n| n < digits.len()).find_map(|n| {
        let code: u16 = digits[..n].parse().ok()?;
        DATABASE
            .by_code(&code)
            .map(|metas| (code, &digits[n..], metas))
    })?;
    if !(MIN_NSN..=MAX_NSN).contains(&national.len()) || national.starts_with('0') {
        return None;
    }
    // The parser strips a national prefix with the rules of the number's
    // country: any of its regions' rules that could apply here sends the
    // number to the parser.
    if rules.iter().any(|m| strips(m, national)) {
        return None;
    }
    let meta = source(code, national)?;
    valid(meta, national).then(|| raw.to_string())
}

/// Whether the parser could take a national prefix off `national` under
/// `meta`'s rules.
fn strips(meta: &Metadata, national: &str) -> bool {
    meta.national_prefix()
        .is_some_and(|p| !p.is_empty() && national.starts_with(p))
        || meta
            .national_prefix_for_parsing()
            .is_some_and(|re| re.find(national).is_some_and(|m| m.start() == 0))
}

/// The metadata a number of country code `code` is validated with: the
/// code's one region, or among several the one whose leading digits (or,
/// without any, patterns) it fits. As the parser's validator picks it.
fn source(code: u16, national: &str) -> Option<&'static Metadata> {
    let regions = DATABASE.region(&code)?;
    if let [region] = regions.as_slice() {
        return if *region == "001" {
            DATABASE.by_code(&code)?.into_iter().next()
        } else {
            DATABASE.by_id(*region)
        };
    }
    regions.into_iter().find_map(|region| {
        let meta = DATABASE.by_id(region)?;
        let fits = match meta.leading_digits() {
            Some(pattern) => pattern.find(national).is_some_and(|m| m.start() == 0),
            None => valid(meta, national),
        };
        fits.then_some(meta)
    })
}

/// Whether `national` is a number of some kind in `meta` (the validator's
/// "type is not unknown").
fn valid(meta: &Metadata, national: &str) -> bool {
    meta.descriptors().general().is_match(national)
        && kinds(meta).any(|kind| kind.is_match(national))
}

/// The patterns of each kind of number `meta` has, without the general
/// one: mobile first, then fixed line, as health workers' numbers mostly
/// are (any kind makes a number valid; the order only spares regexes).
fn kinds(meta: &Metadata) -> impl Iterator<Item = &Descriptor> {
    let d = meta.descriptors();
    [
        d.mobile(),
        d.fixed_line(),
        d.premium_rate(),
        d.toll_free(),
        d.shared_cost(),
        d.voip(),
        d.personal_number(),
        d.pager(),
        d.uan(),
        d.voicemail(),
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the general parser alone makes of `raw` (written with its
    /// country code, so without a default region).
    fn parsed(raw: &str) -> Result<String, ()> {
        match phonenumber::parse(None, raw) {
            Ok(n) if phonenumber::is_valid(&n) => Ok(n.format().mode(Mode::E164).to_string()),
            _ => Err(()),
        }
    }

    #[test]
    fn numbers_in_any_notation_become_e164() {
        let lr = "LR".parse().ok();
        for raw in [
            "+231770000001",
            "+231 77 000 0001",
            "0770000001",
            "770000001",
            "tel:+231-77-000-0001",
            "00231770000001",
        ] {
            assert_eq!(e164(raw, lr).as_deref(), Ok("+231770000001"), "{raw}");
        }
        // Another country's number, written with its country code, is
        // read as written, whatever the default region strips at home:
        // Côte d'Ivoire's numbers begin with 0, Liberia's prefix.
        for (raw, number) in [
            ("+225 07 01 02 03 04", "+2250701020304"),
            ("+2250501020304", "+2250501020304"),
            ("tel:+225-07-01-02-03-04", "+2250701020304"),
            ("+39 06 1234 5678", "+390612345678"),
        ] {
            let dialled = format!(
                "00{}",
                raw.trim_start_matches("tel:").trim_start_matches('+')
            );
            for region in [lr, "SL".parse().ok(), "CI".parse().ok()] {
                assert_eq!(
                    e164(&dialled, region).as_deref(),
                    Ok(number),
                    "{dialled} in {region:?}"
                );
            }
            for region in [None, lr, "SL".parse().ok(), "CI".parse().ok()] {
                assert_eq!(
                    e164(raw, region).as_deref(),
                    Ok(number),
                    "{raw} in {region:?}"
                );
            }
        }
        let refused = e164("+2317", lr).unwrap_err();
        assert!(refused.contains("\"+2317\""), "{refused}");
        assert!(
            e164("not a number", lr)
                .unwrap_err()
                .contains("not a phone number")
        );
    }

    /// The direct check agrees with the parser on every number it takes,
    /// for every country code, and no default region changes what a
    /// number written with its country code is: each country's example
    /// numbers of every kind, and variations of them.
    #[test]
    fn the_direct_check_agrees_with_the_parser() {
        let regions: Vec<Option<Id>> = vec![
            None,
            "LR".parse().ok(),
            "SL".parse().ok(),
            "US".parse().ok(),
            "IT".parse().ok(),
            "RU".parse().ok(),
        ];
        let (mut direct, mut valid) = (0usize, 0usize);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for meta in DATABASE.iter() {
            let examples = std::iter::once(meta.descriptors().general())
                .chain(kinds(meta))
                .filter_map(|kind| kind.example());
            for example in examples {
                for variant in 0..6 {
                    let mut national = example.to_string();
                    if variant > 0 {
                        // Change the last digits; the 5th also prefixes a
                        // 0, the 6th drops the first digit.
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let tail = format!("{:04}", seed % 10_000);
                        let keep = national.len().saturating_sub(tail.len().min(variant));
                        national =
                            format!("{}{}", &national[..keep], &tail[..national.len() - keep]);
                        if variant == 4 {
                            national.insert(0, '0');
                        }
                        if variant == 5 && national.len() > 1 {
                            national.remove(0);
                        }
                    }
                    let raw = format!("+{}{national}", meta.country_code());
                    let slow = parsed(&raw);
                    valid += usize::from(slow.is_ok());
                    if let Some(fast) = canonical(&raw) {
                        direct += 1;
                        assert_eq!(Ok(&fast), slow.as_ref(), "{raw}");
                    }
                    for region in &regions {
                        assert_eq!(
                            e164(&raw, *region).ok(),
                            slow.clone().ok(),
                            "{raw} in {region:?}"
                        );
                    }
                }
            }
        }
        // Most valid numbers written in E.164 take the direct way.
        assert!(direct * 10 >= valid * 8, "{direct} of {valid}");
    }
}
