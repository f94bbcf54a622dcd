use mhero_sdk::classifier::AnswerType;
use mhero_sdk::testing::MockHost;

use super::*;

fn ctx() -> ClassifyContext {
    ClassifyContext {
        expected: AnswerType::FreeText,
        choices: Vec::new(),
        language_hint: Some("fr".into()),
    }
}

fn classify(text: &str) -> Classification {
    StockReport::classify(text.into(), ctx()).unwrap()
}

/// The fields of a reply as (name, value) pairs.
fn fields(c: &Classification) -> Vec<(&str, &str)> {
    c.fields
        .iter()
        .map(|f| (f.name.as_str(), f.value.as_str()))
        .collect()
}

/// Label, confidence and fields of a reply.
fn read(text: &str) -> (String, f32, Vec<(String, String)>) {
    let c = classify(text);
    assert_eq!(c.language, None, "{text}");
    let f = fields(&c)
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    (c.label, c.confidence, f)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn stock_reports_in_every_separator_style() {
    let want = pairs(&[("AMOX", "120"), ("ORS", "40")]);
    for text in [
        "STOCK AMOX 120 ORS 40",
        "stock amox=120, ors:40",
        "Stock: Amoxicillin 120; SRO 40.",
        "STOCK AMOX,120,ORS,40",
        "stock amox120 ors40",
        "  STOCK\nAMOX = 120\nORS : 40  ",
    ] {
        assert_eq!(read(text), ("stock".into(), 0.95, want.clone()), "{text}");
    }
}

#[test]
fn case_reports_in_four_languages() {
    assert_eq!(
        read("CASE MEASLES 3"),
        ("case".into(), 0.95, pairs(&[("MEASLES", "3")]))
    );
    assert_eq!(
        read("CASES MEASLES 3 CHOLERA 1"),
        (
            "case".into(),
            0.95,
            pairs(&[("MEASLES", "3"), ("CHOLERA", "1")])
        )
    );
    assert_eq!(
        read("Cas rougeole 2 paludisme 14 diarrhée 5"),
        (
            "case".into(),
            0.95,
            pairs(&[("MEASLES", "2"), ("MALARIA", "14"), ("AWD", "5")])
        )
    );
    assert_eq!(
        read("caso sarampo 1 cólera 0"),
        (
            "case".into(),
            0.95,
            pairs(&[("MEASLES", "1"), ("CHOLERA", "0")])
        )
    );
    assert_eq!(
        read("CASES surua 4 kipindupindu 2"),
        (
            "case".into(),
            0.95,
            pairs(&[("MEASLES", "4"), ("CHOLERA", "2")])
        )
    );
}

#[test]
fn items_belong_to_their_report_kind() {
    // Measles is a case, not a stock item.
    let (label, confidence, f) = read("STOCK MEASLES 3");
    assert_eq!((label.as_str(), confidence), ("stock", 0.3));
    assert_eq!(f, pairs(&[("unknown-item", "MEASLES")]));
}

#[test]
fn thousands_separators_are_one_number() {
    assert_eq!(
        read("STOCK PARA 1,200 ZINC 0"),
        (
            "stock".into(),
            0.95,
            pairs(&[("PARA", "1200"), ("ZINC", "0")])
        )
    );
}

#[test]
fn not_a_report_is_unknown() {
    for text in [
        "",
        "   ",
        "yes",
        "AMOX 120 STOCK",
        "we have no stock of AMOX",
        "STOCKS AMOX 1",
        "120",
    ] {
        let c = classify(text);
        assert_eq!(
            (c.label.as_str(), c.confidence, c.fields.len(), c.language),
            ("unknown", 0.0, 0, None),
            "{text}"
        );
    }
}

#[test]
fn a_keyword_without_items() {
    assert_eq!(
        read("STOCK"),
        ("stock".into(), 0.3, pairs(&[("error", "no items")]))
    );
    assert_eq!(
        read("stock is finished"),
        (
            "stock".into(),
            0.3,
            pairs(&[
                ("error", "is: no quantity"),
                ("error", "finished: no quantity")
            ])
        )
    );
}

#[test]
fn bad_quantities_are_errors() {
    for (text, why) in [
        ("STOCK AMOX -5 ORS 40", "AMOX: -5 is negative"),
        ("STOCK AMOX 2.5 ORS 40", "AMOX: 2.5 is not a whole number"),
        ("STOCK AMOX 2,5 ORS 40", "AMOX: 2,5 is not a whole number"),
        (
            "STOCK AMOX 20000000 ORS 40",
            "AMOX: 20000000 is over 10000000",
        ),
        (
            "STOCK AMOX 99999999999999999999999 ORS 40",
            "AMOX: 99999999999999999999999 is over 10000000",
        ),
        ("STOCK AMOX 12x ORS 40", "AMOX: 12x is not a quantity"),
    ] {
        assert_eq!(
            read(text),
            ("stock".into(), 0.6, pairs(&[("ORS", "40"), ("error", why)])),
            "{text}"
        );
    }
    assert_eq!(
        read("STOCK AMOX 10000000").2,
        pairs(&[("AMOX", "10000000")])
    );
}

#[test]
fn words_and_quantities_out_of_pairs_are_errors() {
    assert_eq!(
        read("STOCK AMOX ORS 40"),
        (
            "stock".into(),
            0.6,
            pairs(&[("ORS", "40"), ("error", "AMOX: no quantity")])
        )
    );
    assert_eq!(
        read("STOCK AMOX 120 40"),
        (
            "stock".into(),
            0.6,
            pairs(&[("AMOX", "120"), ("error", "40: quantity without an item")])
        )
    );
    assert_eq!(
        read("STOCK AMOX 120 ORS"),
        (
            "stock".into(),
            0.6,
            pairs(&[("AMOX", "120"), ("error", "ORS: no quantity")])
        )
    );
}

#[test]
fn unknown_items_are_named() {
    assert_eq!(
        read("STOCK AMOX 120 Vitamin 30 ORS 40"),
        (
            "stock".into(),
            0.6,
            pairs(&[("AMOX", "120"), ("ORS", "40"), ("unknown-item", "Vitamin")])
        )
    );
    assert_eq!(
        read("STOCK BCG 10"),
        ("stock".into(), 0.3, pairs(&[("unknown-item", "BCG")]))
    );
}

#[test]
fn a_repeated_item_keeps_its_last_value() {
    assert_eq!(
        read("STOCK AMOX 120 ORS 40 amoxicillin 130"),
        (
            "stock".into(),
            0.95,
            pairs(&[
                ("AMOX", "130"),
                ("ORS", "40"),
                ("warning", "AMOX repeated: kept the last value, 130")
            ])
        )
    );
}

#[test]
fn custom_reports_and_catalogue() {
    let _host = MockHost::new()
        .config("reports", r#"{"RUPTURE": "stock", "VACCIN": "vaccine"}"#)
        .config(
            "catalogue",
            r#"{"stock": {"ORS": ["SRO"]}, "vaccine": {"OPV": ["polio", "vpo"], "PENTA": ["penta 3", "dtc hepb hib"]}}"#,
        )
        .install();
    assert_eq!(
        read("rupture sro 0"),
        ("stock".into(), 0.95, pairs(&[("ORS", "0")]))
    );
    // Multi-word aliases; the code itself is an alias.
    assert_eq!(
        read("VACCIN Polio 200 DTC HepB Hib 50 penta 3 10 opv 1"),
        (
            "vaccine".into(),
            0.95,
            pairs(&[
                ("OPV", "1"),
                ("PENTA", "10"),
                ("warning", "PENTA repeated: kept the last value, 10"),
                ("warning", "OPV repeated: kept the last value, 1")
            ])
        )
    );
    // The default keywords are replaced.
    assert_eq!(classify("STOCK ORS 1").label, "unknown");
}

#[test]
fn bad_settings_are_invalid_input() {
    for (reports, catalogue, needle) in [
        (
            "[1]",
            DEFAULT_CATALOGUE,
            "setting `reports` must be a table",
        ),
        (r#"{"STOCK": 1}"#, DEFAULT_CATALOGUE, "reports.STOCK"),
        (r#"{"STOCK NOW": "stock"}"#, DEFAULT_CATALOGUE, "one word"),
        (
            r#"{"STOCK": "stok"}"#,
            DEFAULT_CATALOGUE,
            "kind `stok`, which has no catalogue entry",
        ),
        (DEFAULT_REPORTS, "{", "setting `catalogue` is not a table"),
        (
            r#"{"STOCK": "stock"}"#,
            r#"{"stock": ["AMOX"]}"#,
            "catalogue.stock must be a table",
        ),
        (
            r#"{"STOCK": "stock"}"#,
            r#"{"stock": {"AMOX": "AMOX"}}"#,
            "catalogue.stock.AMOX must be a list",
        ),
        (
            r#"{"STOCK": "stock"}"#,
            r#"{"stock": {"AMOX": [1]}}"#,
            "non-text",
        ),
        (
            r#"{"STOCK": "stock"}"#,
            r#"{"stock": {"AMOX": ["12"]}}"#,
            "has no letter",
        ),
        (
            r#"{"STOCK": "stock"}"#,
            r#"{"stock": {"Error": ["E"]}}"#,
            "reserved",
        ),
        (
            r#"{"STOCK": "stock"}"#,
            r#"{"stock": {"AMOX": ["A"], "ACT": ["a"]}}"#,
            "alias `a` names both",
        ),
    ] {
        let _host = MockHost::new()
            .config("reports", reports)
            .config("catalogue", catalogue)
            .install();
        let err = StockReport::classify("STOCK AMOX 1".into(), ctx()).unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidInput(m) if m.contains(needle)),
            "{reports} {catalogue}: {err:?}"
        );
    }
}

#[test]
fn oversized_replies_are_refused() {
    let err = StockReport::classify(format!("STOCK {}", "AMOX 1 ".repeat(700)), ctx()).unwrap_err();
    assert!(matches!(err, PluginError::InvalidInput(m) if m.contains("over 4096")));
}

#[test]
fn long_reports_within_the_cap_are_read() {
    let text = format!("STOCK {}", "AMOX 1 ".repeat(580));
    assert!(text.len() <= MAX_TEXT);
    let c = classify(&text);
    assert_eq!(c.fields[0], field("AMOX", "1"));
    assert_eq!(c.fields.len(), 580);
}

#[test]
fn describe_names_the_plugin() {
    let info = StockReport::describe();
    assert_eq!(info.plugin.name, "stock-report");
    assert_eq!(info.plugin.kind, PluginKind::Classifier);
}

#[test]
fn the_manifest_defaults_are_the_built_in_ones() {
    let manifest: toml::Table = toml::from_str(include_str!("../plugin.toml")).unwrap();
    assert_eq!(manifest["name"].as_str(), Some("stock-report"));
    let config = &manifest["config"];
    let from_manifest = Config::parse(
        &serde_json::to_string(&config["reports"]).unwrap(),
        &serde_json::to_string(&config["catalogue"]).unwrap(),
    )
    .unwrap();
    let built_in = Config::parse(DEFAULT_REPORTS, DEFAULT_CATALOGUE).unwrap();
    let sorted = |mut c: Config| {
        c.reports.sort();
        c.catalogue.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, items) in &mut c.catalogue {
            items.sort_by(|a, b| a.code.cmp(&b.code));
        }
        c
    };
    assert_eq!(sorted(from_manifest), sorted(built_in));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component: the manifest's settings overridden by the fixture's.
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran = mhero_sdk::testing::classifier_fixtures::<StockReport>(
        include_str!("../plugin.toml"),
        &dir,
    );
    assert_eq!(ran, 8);
}

#[test]
fn odd_input_never_panics() {
    let parts = [
        "STOCK",
        "cas",
        "amox",
        "-",
        "−",
        "+",
        ".",
        ",",
        "=",
        ":",
        "1,2,3",
        ".5",
        "+7",
        "é",
        "İ",
        "’",
        "ors40",
        "99999999999999999999999",
        "\u{0}",
        "👍",
        " ",
    ];
    for a in parts {
        for b in parts {
            for c in parts {
                for text in [format!("{a}{b}{c}"), format!("STOCK {a} {b}{c}")] {
                    let got = StockReport::classify(text.clone(), ctx());
                    assert!(got.is_ok(), "{text:?}: {got:?}");
                }
            }
        }
    }
}

#[test]
fn the_example_settings_are_valid() {
    let example: toml::Table =
        toml::from_str(include_str!("../stock-report.example.toml")).unwrap();
    let settings = &example["plugins"]["config"]["stock-report"];
    let config = Config::parse(
        &serde_json::to_string(&settings["reports"]).unwrap(),
        &serde_json::to_string(&settings["catalogue"]).unwrap(),
    )
    .unwrap();
    let c = read_report("Rupture seringues 200, polio 40", &config).unwrap();
    assert_eq!(
        fields(&c),
        vec![("SERINGUE", "200"), ("VPO", "40")],
        "{c:?}"
    );
}
