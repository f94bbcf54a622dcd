use mhero_sdk::testing::MockHost;

use super::*;

fn ctx(expected: AnswerType, choices: &[&str]) -> ClassifyContext {
    ClassifyContext {
        expected,
        choices: choices.iter().map(|c| c.to_string()).collect(),
        language_hint: None,
    }
}

fn classify(text: &str, expected: AnswerType, choices: &[&str]) -> Classification {
    Keywords::classify(text.into(), ctx(expected, choices)).unwrap()
}

#[test]
fn yes_and_no_in_four_languages() {
    for (text, label, lang) in [
        ("Yes", "yes", Some("en")),
        ("oui merci", "yes", Some("fr")),
        ("Sim", "yes", Some("pt")),
        ("NDIYO", "yes", Some("sw")),
        ("no", "no", None),
        ("Non.", "no", Some("fr")),
        ("Não", "no", Some("pt")),
        ("nao", "no", Some("pt")),
        ("hapana asante", "no", Some("sw")),
    ] {
        let c = classify(text, AnswerType::YesNo, &[]);
        assert_eq!(c.label, label, "{text}");
        assert_eq!(c.language.as_deref(), lang, "{text}");
        assert!(c.confidence >= 0.8, "{text}");
    }
    let c = classify("maybe tomorrow", AnswerType::YesNo, &[]);
    assert_eq!((c.label.as_str(), c.confidence), ("unknown", 0.0));
}

#[test]
fn numbers_in_digits_and_words() {
    let value = |text: &str| {
        let c = classify(text, AnswerType::Number, &[]);
        (
            c.label,
            c.fields.first().map(|f| f.value.clone()),
            c.language,
        )
    };
    assert_eq!(value("12"), ("number".into(), Some("12".into()), None));
    assert_eq!(
        value("we have 1,200 doses"),
        ("number".into(), Some("1200".into()), None)
    );
    assert_eq!(value("3,5"), ("number".into(), Some("3.5".into()), None));
    assert_eq!(
        value("twelve"),
        ("number".into(), Some("12".into()), Some("en".into()))
    );
    assert_eq!(
        value("kumi na mbili"),
        ("number".into(), Some("12".into()), Some("sw".into()))
    );
    assert_eq!(
        value("três"),
        ("number".into(), Some("3".into()), Some("pt".into()))
    );
    assert_eq!(value("none left").0, "unknown");
}

#[test]
fn numbered_and_lettered_choices() {
    let choices = ["yes", "no", "not sure"];
    let pick = |text: &str| {
        let c = classify(text, AnswerType::Choice, &choices);
        (c.label, c.fields.first().map(|f| f.value.clone()))
    };
    assert_eq!(pick("1"), ("yes".into(), Some("1".into())));
    assert_eq!(pick("2 - no"), ("no".into(), Some("2".into())));
    assert_eq!(pick("option C"), ("not sure".into(), Some("3".into())));
    assert_eq!(pick("b)"), ("no".into(), Some("2".into())));
    assert_eq!(pick("(3)"), ("not sure".into(), Some("3".into())));
    assert_eq!(pick("Not Sure"), ("not sure".into(), Some("3".into())));
    assert_eq!(pick("4").0, "unknown");
    assert_eq!(pick("option").0, "unknown");
}

#[test]
fn configured_keywords_label_free_text() {
    let _host = MockHost::new()
        .config(
            "keywords",
            r#"{"stockout": ["stock out", "rupture", "imeisha"], "fever": ["fièvre"]}"#,
        )
        .install();
    let c = classify("We have a STOCK OUT of ORS", AnswerType::FreeText, &[]);
    assert_eq!(c.label, "stockout");
    assert_eq!(c.fields, vec![field("keyword", "stock out")]);
    assert_eq!(
        classify("rupture de stock", AnswerType::FreeText, &[]).label,
        "stockout"
    );
    assert_eq!(
        classify("beaucoup de fievre", AnswerType::FreeText, &[]).label,
        "fever"
    );
    assert_eq!(
        classify("stockouts everywhere", AnswerType::FreeText, &[]).label,
        "unknown",
        "whole words only"
    );
    assert_eq!(classify("yes", AnswerType::FreeText, &[]).label, "yes");
}

#[test]
fn bad_keyword_settings_are_invalid_input() {
    let _host = MockHost::new()
        .config("keywords", r#"{"x": "not a list"}"#)
        .install();
    let err = Keywords::classify("x".into(), ctx(AnswerType::FreeText, &[])).unwrap_err();
    assert!(matches!(err, PluginError::InvalidInput(m) if m.contains("keywords.x")));
}

#[test]
fn oversized_replies_are_refused() {
    let err = Keywords::classify("a".repeat(5000), ctx(AnswerType::FreeText, &[])).unwrap_err();
    assert!(matches!(err, PluginError::InvalidInput(_)));
}

#[test]
fn the_language_hint_is_kept_when_the_text_does_not_tell() {
    let mut context = ctx(AnswerType::YesNo, &[]);
    context.language_hint = Some("sw".into());
    let c = Keywords::classify("ok".into(), context).unwrap();
    assert_eq!(
        (c.label.as_str(), c.language.as_deref()),
        ("yes", Some("sw"))
    );
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component: the manifest's settings overridden by the fixture's.
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran =
        mhero_sdk::testing::classifier_fixtures::<Keywords>(include_str!("../plugin.toml"), &dir);
    assert_eq!(ran, 8);
}
