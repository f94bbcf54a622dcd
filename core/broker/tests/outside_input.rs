//! Every parser that takes input from outside the broker, fed arbitrary
//! and near-valid input: it answers (a value or an error), never panics.
//! 100,000 cases each in CI (`CI=true`), 10,000 elsewhere;
//! `MHERO_FUZZ_CASES` sets it.

use std::collections::BTreeMap;
use std::path::Path;

use mhero_broker::Config;
use mhero_broker::dispatch::{CampaignSpec, ChannelLimits, Recipient, normalize, validate_spec};
use mhero_broker::plugin::bindings::classifier_types::{AnswerType, ClassifyContext};
use mhero_broker::plugin::bindings::{Header, HttpRequest};
use mhero_broker::plugin::{HostOptions, Manifest, PluginHost, PluginMetrics};
use proptest::prelude::*;
use serde_json::Value;

fn cases() -> u32 {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    std::env::var("MHERO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if ci { 100_000 } else { 10_000 })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Failures are shrunk and reported, not saved into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// JSON values of any shape, with keys and strings often taken from the
/// vocabulary the parsers look for.
fn json() -> impl Strategy<Value = Value> {
    let word = prop_oneof![
        Just("id".to_string()),
        Just("to".to_string()),
        Just("status".to_string()),
        Just("message_id".to_string()),
        Just("receipts".to_string()),
        Just("inbound".to_string()),
        Just("from".to_string()),
        Just("text".to_string()),
        Just("delivered".to_string()),
        Just("name".to_string()),
        Just("body".to_string()),
        Just("default".to_string()),
        Just("channels".to_string()),
        Just("audience".to_string()),
        Just("lane".to_string()),
        Just("+231770123456".to_string()),
        Just("resourceType".to_string()),
        Just("Practitioner".to_string()),
        Just("PractitionerRole".to_string()),
        Just("Location".to_string()),
        Just("Group".to_string()),
        Just("telecom".to_string()),
        Just("value".to_string()),
        Just("system".to_string()),
        Just("phone".to_string()),
        Just("reference".to_string()),
        Just("partOf".to_string()),
        Just("member".to_string()),
        Just("entity".to_string()),
        Just("practitioner".to_string()),
        Just("Practitioner/1".to_string()),
        ".{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| { serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number) }),
        word.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(word.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn host() -> PluginHost {
    let host = PluginHost::new(HostOptions::default(), PluginMetrics::default()).unwrap();
    host.load_builtins().unwrap();
    host
}

thread_local!(static HOST: PluginHost = host());
thread_local!(static DIRECTORY: mhero_broker::directory::Directory =
    mhero_broker::directory::Directory::open(std::sync::Arc::new(
        mhero_broker::store::MemoryEngine::new(),
    ))
    .unwrap());

proptest! {
    #![proptest_config(config())]

    /// Webhook bodies reach the connector's parser signed (so they get past
    /// the signature check) or not.
    #[test]
    fn sandbox_webhooks_of_any_body_are_answered(
        body in prop_oneof![
            json().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..256),
        ],
        signed in any::<bool>(),
    ) {
        let signature = if signed {
            mhero_broker::signature::sign("sandbox-secret", &body)
        } else {
            "sha256=00".into()
        };
        let request = HttpRequest {
            method: "POST".into(),
            url: "/webhooks/sms".into(),
            headers: vec![Header {
                name: "x-sandbox-signature".into(),
                value: signature,
            }],
            body,
        };
        HOST.with(|h| {
            let _ = h.get("sandbox").unwrap().handle_webhook(&request);
        });
    }

    /// Replies health workers send, classified.
    #[test]
    fn any_reply_text_is_classified_or_refused(text in ".{0,300}") {
        let context = ClassifyContext {
            expected: AnswerType::YesNo,
            choices: Vec::new(),
            language_hint: None,
        };
        HOST.with(|h| {
            let _ = h.get("keywords").unwrap().classify(&text, &context);
        });
    }

    /// Configuration files: text of any kind, and near-valid TOML.
    #[test]
    fn any_config_text_is_accepted_or_refused_with_a_reason(text in prop_oneof![
        ".{0,200}",
        "(\\[(store|plugins|dispatch|channels\\.[a-z]{1,5})\\]\n)?([a-z_]{1,16} = (\"[a-z0-9:/.]{0,10}\"|-?[0-9]{1,20}|true|[0-9]\\.[0-9]+|\\[\\]|\\{\\})\n){0,6}",
    ]) {
        if let Err(e) = Config::from_toml(&text, Path::new("fuzz.toml")) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Plugin manifests from a plugin folder.
    #[test]
    fn any_manifest_text_is_accepted_or_refused(text in prop_oneof![
        ".{0,200}",
        "name = \"[a-z-]{0,8}\"\nversion = \"[0-9.]{0,6}\"\nkind = \"(connector|classifier|fhir-mapper|x)\"\nsummary = \".{0,8}\"\ncomponent = \"[a-z.]{0,8}\"\n(\\[limits\\]\n[a-z_]{1,12} = [0-9]{1,20}\n)?",
    ]) {
        let _ = Manifest::parse(&text);
    }

    /// Phone numbers as integrators send them.
    #[test]
    fn any_recipient_list_is_normalised_or_rejected_per_entry(
        phones in prop::collection::vec(prop_oneof!["\\+?[0-9 ()\\-.]{0,24}", ".{0,24}"], 0..8),
        country in "[A-Z]{2}|.{0,3}",
    ) {
        let list: Vec<Recipient> = phones
            .into_iter()
            .map(|p| Recipient {
                phone: Some(p),
                addresses: BTreeMap::new(),
                not_on: Vec::new(),
                language: None,
            })
            .collect();
        let (ok, rejected) = normalize(&list, &country);
        prop_assert_eq!(ok.len() + rejected.len(), list.len());
    }

    /// Campaign specs as JSON.
    #[test]
    fn any_campaign_json_is_validated_or_refused(value in json()) {
        if let Ok(spec) = serde_json::from_value::<CampaignSpec>(value) {
            let channels = [
                ChannelLimits { name: "sms", max_text_chars: Some(1600), media: false },
                ChannelLimits { name: "whatsapp", max_text_chars: None, media: true },
            ];
            let _ = validate_spec(&spec, &channels);
        }
    }

    /// Audience selectors as operators and integrators write them: any
    /// text, and near-valid ones. What parses prints back to itself.
    #[test]
    fn any_selector_parses_or_is_refused_with_a_place(text in prop_oneof![
        ".{0,120}",
        "(\\(|\\)| |NOT |AND |OR |and |\\*|(role|location|group|lang|has|facility|org|x):([a-z/]{0,8}|\"[a-z \\\\\"]{0,6}\"?)){0,16}",
    ]) {
        match mhero_broker::directory::selector::parse(&text) {
            Ok(expr) => {
                let again = mhero_broker::directory::selector::parse(&expr.to_string());
                prop_assert_eq!(again.as_ref(), Ok(&expr), "{}", expr);
            }
            Err(e) => prop_assert!(e.at <= text.len() && !e.message.is_empty()),
        }
    }

    /// FHIR documents of any shape, through the iHRIS mapper into the
    /// directory: imported with per-entry problems, or refused whole.
    #[test]
    fn any_fhir_document_is_imported_or_refused(value in json(), bundle in any::<bool>()) {
        let doc = if bundle {
            serde_json::json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": value}]})
        } else {
            value
        };
        HOST.with(|h| {
            let mapper = h.get("ihris-practitioner").unwrap();
            DIRECTORY.with(|d| {
                let _ = mhero_broker::directory::sync::import_document(d, &mapper, "fuzz", "LR", &doc.to_string());
            });
        });
    }
}
