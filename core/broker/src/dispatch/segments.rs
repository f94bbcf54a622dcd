//! SMS segments: what a text costs on a channel that bills by segment.
//!
//! GSM-7 (3GPP TS 23.038): 160 septets in a single message, 153 per part
//! once split (the rest is the concatenation header); the extension
//! characters `^ { } [ ] ~ | € \` and form feed take two septets. Any
//! character outside GSM-7 makes the whole message UCS-2: 70 characters,
//! then 67 per part (UTF-16 units; characters outside the BMP take two).

/// The GSM 03.38 basic character set.
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table: two septets each.
const EXTENDED: &str = "^{}[]~|€\\\u{0c}";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// How a text goes out as SMS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub units: usize,
    pub count: u32,
}

fn gsm_septets(c: char) -> Option<usize> {
    if BASIC.contains(c) {
        Some(1)
    } else if EXTENDED.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Counts the segments of `text`. An empty text is one segment.
pub fn count(text: &str) -> Segments {
    let septets: Option<usize> = text.chars().map(gsm_septets).sum();
    match septets {
        Some(units) => Segments {
            encoding: Encoding::Gsm7,
            units,
            count: parts(units, 160, 153),
        },
        None => {
            let units = text.encode_utf16().count();
            Segments {
                encoding: Encoding::Ucs2,
                units,
                count: parts(units, 70, 67),
            }
        }
    }
}

fn parts(units: usize, single: usize, multi: usize) -> u32 {
    if units <= single {
        1
    } else {
        units.div_ceil(multi) as u32
    }
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
    fn ucs2_limits() {
        let s = count("Habari, chanjo ya surua inaanza Jumatatu ✓");
        assert_eq!(s.encoding, Encoding::Ucs2);
        assert_eq!(count(&"ç".repeat(70)).count, 1);
        assert_eq!(count(&"ç".repeat(71)).count, 2);
        assert_eq!(count(&"ç".repeat(134)).count, 2);
        assert_eq!(count(&"ç".repeat(135)).count, 3);
        // Outside the BMP: two UTF-16 units.
        assert_eq!(count(&"😷".repeat(35)).units, 70);
        assert_eq!(count(&"😷".repeat(36)).count, 2);
    }
}
