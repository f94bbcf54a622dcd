//! A classifier that tries to phone home: its component imports
//! `wasi:sockets`, which the host links with every use denied, so the
//! connect fails when it is called.

use mhero_sdk::classifier::{
    Classification, Classifier, ClassifierInfo, ClassifyContext, PluginError, PluginInfo,
    PluginKind,
};

pub struct Sockets;

impl Classifier for Sockets {
    fn describe() -> ClassifierInfo {
        ClassifierInfo {
            plugin: PluginInfo {
                name: "hostile-sockets".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Classifier,
                summary: "test fixture".into(),
            },
            languages: Vec::new(),
        }
    }

    fn classify(text: String, _context: ClassifyContext) -> Result<Classification, PluginError> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", 9))
            .map_err(|e| PluginError::Permanent(format!("connect failed: {e}")))?;
        drop(stream);
        Ok(Classification {
            label: text,
            confidence: 1.0,
            fields: Vec::new(),
            language: None,
        })
    }
}

mhero_sdk::export_classifier!(Sockets);
