//! A classifier that misbehaves on demand, to test the host's limits.

use mhero_sdk::classifier::{
    Classification, Classifier, ClassifierInfo, ClassifyContext, PluginError, PluginInfo,
    PluginKind,
};

pub struct Misbehave;

impl Classifier for Misbehave {
    fn describe() -> ClassifierInfo {
        ClassifierInfo {
            plugin: PluginInfo {
                name: "hostile-misbehave".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Classifier,
                summary: "test fixture".into(),
            },
            languages: Vec::new(),
        }
    }

    fn classify(text: String, _context: ClassifyContext) -> Result<Classification, PluginError> {
        let label = match text.as_str() {
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xa5; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("hostile plugin panicked on purpose"),
            "big" => "x".repeat(8 << 20),
            "longerror" => return Err(PluginError::Permanent("why ".repeat(100_000))),
            "fs" => std::fs::read_to_string("/etc/hostname")
                .map_err(|e| PluginError::Permanent(format!("no file access: {e}")))?,
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                "slept".to_string()
            }
            "print" => {
                for i in 0..1000 {
                    println!("hostile plugin printing line {i}");
                    eprintln!("hostile plugin complaining {i}");
                }
                "printed".to_string()
            }
            _ => "ok".to_string(),
        };
        Ok(Classification {
            label,
            confidence: 1.0,
            fields: Vec::new(),
            language: None,
        })
    }
}

mhero_sdk::export_classifier!(Misbehave);
