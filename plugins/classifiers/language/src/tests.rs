use mhero_sdk::classifier::AnswerType;
use mhero_sdk::testing::MockHost;

use super::*;

fn ctx() -> ClassifyContext {
    ClassifyContext {
        expected: AnswerType::FreeText,
        choices: Vec::new(),
        language_hint: None,
    }
}

fn classify(text: &str) -> Classification {
    Language::classify(text.into(), ctx()).unwrap()
}

/// (label, language, confidence) of a reply.
fn verdict(text: &str) -> (String, Option<String>, f32) {
    let c = classify(text);
    (c.label, c.language, c.confidence)
}

fn assert_language(text: &str, lang: &str) -> f32 {
    let c = classify(text);
    assert_eq!(c.label, "language", "{text}");
    assert_eq!(c.language.as_deref(), Some(lang), "{text}");
    assert_eq!(
        c.fields,
        vec![Field {
            name: "language".into(),
            value: lang.into()
        }],
        "{text}"
    );
    assert!(c.confidence > 0.0 && c.confidence <= 0.95, "{text}");
    c.confidence
}

fn assert_unknown(text: &str) {
    let c = classify(text);
    assert_eq!(
        (c.label.as_str(), c.confidence, c.language, c.fields.len()),
        ("unknown", 0.0, None, 0),
        "{text}"
    );
}

#[test]
fn each_language_is_recognised() {
    for (text, lang) in [
        ("Hello, we received the vaccines, thank you", "en"),
        ("Bonjour, nous avons reçu les vaccins, merci", "fr"),
        ("Olá, não temos vacinas, obrigado", "pt"),
        ("Habari, leo hatuna dawa, asante sana", "sw"),
    ] {
        let c = assert_language(text, lang);
        assert!(c >= 0.7, "{text}: {c}");
    }
}

#[test]
fn short_replies() {
    assert_eq!(assert_language("oui merci", "fr"), 0.67);
    assert_eq!(assert_language("Sim", "pt"), 0.5);
    assert_eq!(assert_language("ndiyo", "sw"), 0.5);
    assert_eq!(assert_language("yes", "en"), 0.5);
}

#[test]
fn a_single_weak_word_gives_low_confidence() {
    for (text, lang) in [("merci", "fr"), ("asante", "sw"), ("thanks", "en")] {
        let c = assert_language(text, lang);
        assert!(c <= 0.6, "{text}: {c}");
    }
    // An accent alone is weaker still.
    let c = assert_language("pão", "pt");
    assert!(c < 0.5, "{c}");
}

#[test]
fn more_evidence_gives_more_confidence() {
    let one = assert_language("merci", "fr");
    let two = assert_language("oui, merci", "fr");
    let many = assert_language(
        "Bonjour, nous avons reçu les vaccins et les seringues, merci beaucoup",
        "fr",
    );
    assert!(one < two && two < many, "{one} {two} {many}");
    assert!(many <= 0.95);
}

#[test]
fn matching_ignores_case_and_accents() {
    assert_language("NAO OBRIGADO", "pt");
    assert_language("Não, obrigado", "pt");
    assert_language("BONJOUR", "fr");
    assert_language("TRÈS BIEN", "fr");
}

#[test]
fn accents_hint_at_a_language() {
    // Words in no list: only their accents tell.
    assert_eq!(verdict("vacinação").1.as_deref(), Some("pt"));
    assert_eq!(verdict("fièvre").1.as_deref(), Some("fr"));
    // A Portuguese word outweighs a French-looking accent.
    assert_eq!(verdict("médico, obrigado").1.as_deref(), Some("pt"));
}

#[test]
fn elisions_and_contractions() {
    assert_language("c'est d'accord", "fr");
    assert_language("l’équipe", "fr");
    assert_language("don't", "en");
    assert_language("it's ok", "en");
}

#[test]
fn no_evidence_is_unknown() {
    assert_unknown("");
    assert_unknown("   ");
    assert_unknown("ok");
    assert_unknown("STOCK AMOX 120 ORS 40");
    assert_unknown("12");
    assert_unknown("👍");
}

#[test]
fn ties_are_unknown() {
    // `de` is French and Portuguese, `no` English and Portuguese.
    assert_unknown("de");
    assert_unknown("no");
    // One French word, one Swahili word.
    assert_unknown("merci asante");
}

#[test]
fn the_context_is_ignored() {
    let context = ClassifyContext {
        expected: AnswerType::Choice,
        choices: vec!["oui".into(), "non".into()],
        language_hint: Some("sw".into()),
    };
    let c = Language::classify("ok".into(), context.clone()).unwrap();
    assert_eq!((c.label.as_str(), c.language), ("unknown", None));
    let c = Language::classify("obrigado".into(), context).unwrap();
    assert_eq!(c.language.as_deref(), Some("pt"));
}

#[test]
fn only_configured_languages_are_answered() {
    let _host = MockHost::new()
        .config("languages", r#"["fr", "PT"]"#)
        .install();
    assert_unknown("thank you very much");
    assert_unknown("asante sana");
    assert_language("merci", "fr");
    // `de` is no longer shared with an excluded language… but still with pt.
    assert_unknown("de");
    // `no` is Portuguese alone among the candidates.
    assert_language("no", "pt");
}

#[test]
fn a_single_configured_language() {
    let _host = MockHost::new().config("languages", r#"["sw"]"#).install();
    assert_language("na", "sw");
    assert_unknown("bonjour");
}

#[test]
fn bad_language_settings_are_invalid_input() {
    for (raw, needle) in [
        (r#"["en", "de", "xx"]"#, "de, xx"),
        (r#"[]"#, "at least one"),
        (r#""en""#, "must be a list"),
        (r#"["en", 3]"#, "non-text"),
        ("en, fr", "not a list"),
    ] {
        let _host = MockHost::new().config("languages", raw).install();
        let err = Language::classify("hello".into(), ctx()).unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidInput(m) if m.contains(needle)),
            "{raw}: {err:?}"
        );
    }
}

#[test]
fn oversized_replies_are_refused() {
    let err = Language::classify("a".repeat(MAX_TEXT + 1), ctx()).unwrap_err();
    assert!(matches!(err, PluginError::InvalidInput(m) if m.contains("4097")));
    assert!(Language::classify("a ".repeat(MAX_TEXT / 2), ctx()).is_ok());
}

#[test]
fn describe_names_the_plugin_and_its_languages() {
    let info = Language::describe();
    assert_eq!(info.plugin.name, "language");
    assert_eq!(info.plugin.kind, PluginKind::Classifier);
    assert_eq!(info.languages, vec!["en", "fr", "pt", "sw"]);
}

#[test]
fn the_manifest_defaults_are_the_built_in_ones() {
    let manifest: toml::Table = toml::from_str(include_str!("../plugin.toml")).unwrap();
    let languages = serde_json::to_string(&manifest["config"]["languages"]).unwrap();
    assert_eq!(parse_languages(&languages).unwrap(), SUPPORTED);
    assert_eq!(manifest["name"].as_str(), Some("language"));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component: the manifest's settings overridden by the fixture's.
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran =
        mhero_sdk::testing::classifier_fixtures::<Language>(include_str!("../plugin.toml"), &dir);
    assert_eq!(ran, 8);
}

#[test]
fn odd_input_never_panics() {
    let parts = [
        "l'", "'", "’", "don't", "c’", "é", "ç", "İ", "ß", "de", "na", "👍", "\u{0}", "-", " ",
        "12", "ÉTÉ",
    ];
    for a in parts {
        for b in parts {
            for c in parts {
                let text = format!("{a}{b}{c}");
                let got = Language::classify(text.clone(), ctx());
                assert!(got.is_ok(), "{text:?}: {got:?}");
            }
        }
    }
}

#[test]
fn the_example_settings_are_valid() {
    let example: toml::Table = toml::from_str(include_str!("../language.example.toml")).unwrap();
    let languages =
        serde_json::to_string(&example["plugins"]["config"]["language"]["languages"]).unwrap();
    assert_eq!(parse_languages(&languages).unwrap(), ["fr", "pt"]);
}
