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

#[cfg(test)]
mod tests {
    /// `tests/fixtures/*.json`, run natively as `mhero plugin test` runs
    /// them on the built component.
    #[test]
    fn golden_fixtures_pass_natively() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let ran = mhero_sdk::testing::classifier_fixtures::<super::Plugin>(
            include_str!("../plugin.toml"),
            &dir,
        );
        assert!(ran > 0, "no fixtures in {}", dir.display());
    }
}
