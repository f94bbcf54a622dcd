//! SMS text: which encoding a text needs, how it splits into concatenated
//! parts, and what it costs on a channel that bills by segment.
//!
//! GSM-7 (3GPP TS 23.038): 160 septets in a single message, 153 per part
//! once split (the rest is the 6-octet concatenation header); the
//! extension characters `^ { } [ ] ~ | € \` and form feed take two septets
//! (an escape, then the character) and are never split across parts. Any
//! character outside GSM-7 makes the whole message UCS-2: 70 UTF-16 units,
//! then 67 per part; a character outside the BMP takes two units, which
//! stay in one part.
//!
//! Gateways that take text (Kannel, the aggregators' HTTP APIs) split it
//! themselves; [`split`], [`concat_udh`] and [`pack_septets`] are for those
//! that take PDUs, and [`count`] prices a text the way every gateway bills.

/// The GSM 03.38 basic character set, in code order (0x00–0x7F). 0x1B is
/// the escape to the extension table, not a character.
const BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The escape septet that introduces an extension character.
pub const ESCAPE: u8 = 0x1b;

/// The extension table: (character, septet after the escape).
const EXTENDED: [(char, u8); 10] = [
    ('\u{0c}', 0x0a),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2f),
    ('[', 0x3c),
    ('~', 0x3d),
    (']', 0x3e),
    ('|', 0x40),
    ('€', 0x65),
];

/// Septets in a single GSM-7 message, and per part once concatenated.
pub const GSM7_SINGLE: usize = 160;
pub const GSM7_PART: usize = 153;
/// UTF-16 units in a single UCS-2 message, and per part.
pub const UCS2_SINGLE: usize = 70;
pub const UCS2_PART: usize = 67;
/// Most parts one concatenated message can have (an 8-bit count).
pub const MAX_PARTS: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// The GSM 7-bit default alphabet with its extension table.
    Gsm7,
    /// UCS-2 (UTF-16 in practice: phones read surrogate pairs).
    Ucs2,
}

/// How a text goes out as SMS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2) of the whole text.
    pub units: usize,
    /// Parts sent (and billed); an empty text is one.
    pub count: u32,
}

/// The GSM-7 septets of `c`: its code, or the escape and its extension
/// code. None when `c` is not in GSM-7.
pub fn gsm7_code(c: char) -> Option<(u8, Option<u8>)> {
    if c == '\u{1b}' {
        return None;
    }
    if let Some(i) = BASIC.iter().position(|&b| b == c) {
        return Some((i as u8, None));
    }
    EXTENDED
        .iter()
        .find(|(e, _)| *e == c)
        .map(|&(_, code)| (ESCAPE, Some(code)))
}

/// Septets `c` takes in GSM-7 (1, or 2 for an extension character).
fn gsm7_width(c: char) -> Option<usize> {
    gsm7_code(c).map(|(_, ext)| 1 + usize::from(ext.is_some()))
}

/// The encoding `text` needs: GSM-7 when every character is in it.
pub fn encoding(text: &str) -> Encoding {
    if text.chars().all(|c| gsm7_width(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// Width of `c` in `encoding`'s units.
fn width(encoding: Encoding, c: char) -> usize {
    match encoding {
        Encoding::Gsm7 => gsm7_width(c).unwrap_or(1),
        Encoding::Ucs2 => c.len_utf16(),
    }
}

fn limits(encoding: Encoding) -> (usize, usize) {
    match encoding {
        Encoding::Gsm7 => (GSM7_SINGLE, GSM7_PART),
        Encoding::Ucs2 => (UCS2_SINGLE, UCS2_PART),
    }
}

/// Calls `part(start, end)` for each part's byte range of `text`, filled
/// greedily without splitting a character (an escape pair or a surrogate
/// pair stays whole).
fn parts(text: &str, encoding: Encoding, mut part: impl FnMut(usize, usize)) -> usize {
    let (single, multi) = limits(encoding);
    let units: usize = text.chars().map(|c| width(encoding, c)).sum();
    if units <= single {
        part(0, text.len());
        return units;
    }
    let (mut start, mut used) = (0, 0);
    for (i, c) in text.char_indices() {
        let w = width(encoding, c);
        if used + w > multi {
            part(start, i);
            start = i;
            used = 0;
        }
        used += w;
    }
    part(start, text.len());
    units
}

/// Counts the segments of `text`. An empty text is one segment.
pub fn count(text: &str) -> Segments {
    let encoding = encoding(text);
    let mut count = 0u32;
    let units = parts(text, encoding, |_, _| count += 1);
    Segments {
        encoding,
        units,
        count,
    }
}

/// Splits `text` into the parts of a concatenated message (one part when
/// it fits a single message).
pub fn split(text: &str) -> (Encoding, Vec<&str>) {
    let encoding = encoding(text);
    let mut out = Vec::new();
    parts(text, encoding, |a, b| out.push(&text[a..b]));
    (encoding, out)
}

/// The concatenation user data header (3GPP TS 23.040 §9.2.3.24.1, 8-bit
/// reference): `05 00 03 <reference> <total> <sequence>`, sequence from 1.
pub fn concat_udh(reference: u8, total: u8, sequence: u8) -> [u8; 6] {
    [0x05, 0x00, 0x03, reference, total, sequence]
}

/// The GSM-7 septets of `text`, extension characters as escape pairs.
/// None when a character is not in GSM-7.
pub fn gsm7_septets(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let (code, ext) = gsm7_code(c)?;
        out.push(code);
        out.extend(ext);
    }
    Some(out)
}

/// Packs septets into octets, least significant bits first (TS 23.038
/// §6.1.2.1.1), after `fill_bits` zero bits: the padding that puts the
/// first septet on a septet boundary after a user data header (1 bit after
/// the 6-octet concatenation header).
pub fn pack_septets(septets: &[u8], fill_bits: u32) -> Vec<u8> {
    let total_bits = fill_bits as usize + septets.len() * 7;
    let mut out = vec![0u8; total_bits.div_ceil(8)];
    let mut bit = fill_bits as usize;
    for &s in septets {
        let v = u16::from(s & 0x7f) << (bit % 8);
        out[bit / 8] |= v as u8;
        if v > 0xff {
            out[bit / 8 + 1] |= (v >> 8) as u8;
        }
        bit += 7;
    }
    out
}

/// Unpacks `count` septets from `octets` after `fill_bits`.
pub fn unpack_septets(octets: &[u8], fill_bits: u32, count: usize) -> Vec<u8> {
    (0..count)
        .map(|i| {
            let bit = fill_bits as usize + i * 7;
            let lo = u16::from(octets.get(bit / 8).copied().unwrap_or(0));
            let hi = u16::from(octets.get(bit / 8 + 1).copied().unwrap_or(0));
            (((hi << 8 | lo) >> (bit % 8)) & 0x7f) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_limits() {
        assert_eq!(
            count(""),
            Segments {
                encoding: Encoding::Gsm7,
                units: 0,
                count: 1
            }
        );
        assert_eq!(count(&"a".repeat(160)).count, 1);
        assert_eq!(count(&"a".repeat(161)).count, 2);
        assert_eq!(count(&"a".repeat(306)).count, 2);
        assert_eq!(count(&"a".repeat(307)).count, 3);
        assert_eq!(count("Réunion à 14h, très bien").encoding, Encoding::Gsm7);
        // Lowercase ç is not in GSM-7 (only Ç is): the message goes UCS-2.
        assert_eq!(count("ça va").encoding, Encoding::Ucs2);
    }

    #[test]
    fn extension_characters_count_double() {
        let s = count(&format!("{}€", "a".repeat(158)));
        assert_eq!((s.units, s.count), (160, 1));
        let s = count(&format!("{}[", "a".repeat(159)));
        assert_eq!((s.units, s.count), (161, 2));
    }

    #[test]
    fn an_escape_pair_is_never_split_across_parts() {
        // 152 septets, then `€` (2): the first part cannot take it whole.
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(100));
        let (encoding, parts) = split(&text);
        assert_eq!(encoding, Encoding::Gsm7);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "a".repeat(152));
        assert!(parts[1].starts_with('€'));
        assert_eq!(count(&text).count, 2);
        // 306 septets would be 2 parts by arithmetic; the pair pushes a
        // third.
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(152));
        assert_eq!(count(&text).units, 306);
        assert_eq!(count(&text).count, 3);
    }

    #[test]
    fn ucs2_limits() {
        let s = count("Habari, chanjo ya surua inaanza Jumatatu ✓");
        assert_eq!(s.encoding, Encoding::Ucs2);
        assert_eq!(count(&"ç".repeat(70)).count, 1);
        assert_eq!(count(&"ç".repeat(71)).count, 2);
        assert_eq!(count(&"ç".repeat(134)).count, 2);
        assert_eq!(count(&"ç".repeat(135)).count, 3);
        // Outside the BMP: two UTF-16 units, kept in one part.
        assert_eq!(count(&"😷".repeat(35)).units, 70);
        assert_eq!(count(&"😷".repeat(36)).count, 2);
        let masks = "😷".repeat(36);
        let (_, parts) = split(&masks);
        assert_eq!(parts[0].chars().count(), 33); // 66 units: 67 would split a pair
        assert_eq!(parts.concat(), masks);
    }

    #[test]
    fn parts_put_back_together_are_the_text() {
        let text = "Ebola: isolate suspected cases, call 4455. ".repeat(20);
        let (_, parts) = split(&text);
        assert_eq!(parts.len(), count(&text).count as usize);
        assert!(
            parts
                .iter()
                .all(|p| gsm7_septets(p).unwrap().len() <= GSM7_PART)
        );
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn septet_codes_follow_the_default_alphabet() {
        assert_eq!(gsm7_code('@'), Some((0x00, None)));
        assert_eq!(gsm7_code('A'), Some((0x41, None)));
        assert_eq!(gsm7_code('à'), Some((0x7f, None)));
        assert_eq!(gsm7_code('€'), Some((0x1b, Some(0x65))));
        assert_eq!(gsm7_code('\u{1b}'), None);
        assert_eq!(gsm7_code('ç'), None);
        assert_eq!(gsm7_septets("a{b").unwrap(), vec![0x61, 0x1b, 0x28, 0x62]);
    }

    #[test]
    fn packing_matches_the_published_vectors() {
        // 3GPP TS 23.038's worked example, as every PDU reference shows it.
        let packed = pack_septets(&gsm7_septets("hellohello").unwrap(), 0);
        assert_eq!(
            packed,
            [0xe8, 0x32, 0x9b, 0xfd, 0x46, 0x97, 0xd9, 0xec, 0x37]
        );
        // Eight septets fill seven octets exactly.
        assert_eq!(
            pack_septets(&gsm7_septets("12345678").unwrap(), 0),
            [0x31, 0xd9, 0x8c, 0x56, 0xb3, 0xdd, 0x70]
        );
        // After the concatenation header: one fill bit.
        let udh = concat_udh(0x42, 3, 1);
        assert_eq!(udh, [0x05, 0x00, 0x03, 0x42, 0x03, 0x01]);
        let packed = pack_septets(&gsm7_septets("hi").unwrap(), 1);
        assert_eq!(packed, [0xd0, 0x69]);
        assert_eq!(unpack_septets(&packed, 1, 2), gsm7_septets("hi").unwrap());
    }

    #[test]
    fn unpacking_inverts_packing() {
        let text = "Stock report due Friday {AMOX} [ORS] 100€ ~ ^|\\".repeat(3);
        let septets = gsm7_septets(&text).unwrap();
        for fill in 0..7 {
            let packed = pack_septets(&septets, fill);
            assert_eq!(unpack_septets(&packed, fill, septets.len()), septets);
        }
    }
}
