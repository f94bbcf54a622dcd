//! {{name}}: a reply classifier. `classify` reads a health worker's reply
//! and says what it means; the broker calls it on a pooled instance (keep
//! no state between calls).

use mhero_sdk::classifier::{
    Classification, Classifier, ClassifierInfo, ClassifyContext, PluginError, PluginInfo,
    PluginKind,
};

pub struct Plugin;

impl Classifier for Plugin {
    fn describe() -> ClassifierInfo {
        ClassifierInfo {
            plugin: PluginInfo {
                name: "{{name}}".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Classifier,
                summary: "{{summary}}".into(),
            },
            languages: vec!["en".into()],
        }
    }

    fn classify(text: String, _context: ClassifyContext) -> Result<Classification, PluginError> {
        let label = match text.trim().to_lowercase().as_str() {
            "yes" | "y" => "yes",
            "no" | "n" => "no",
            _ => "unknown",
        };
        Ok(Classification {
            label: label.into(),
            confidence: if label == "unknown" { 0.0 } else { 1.0 },
            fields: Vec::new(),
            language: None,
        })
    }
}

mhero_sdk::export_classifier!(Plugin);
