//! `mhero plugin new <kind> <name> --lang rust|python|js`: a plugin folder
//! that builds and passes `mhero plugin test` unchanged: source, manifest,
//! one golden fixture, a build script, a README.
//!
//! A Rust plugin carries a copy of this broker's SDK (`mhero-sdk/`, with
//! its WIT), so it builds anywhere with a Rust toolchain and crates.io.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Connector,
    Classifier,
    FhirMapper,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Connector => "connector",
            Kind::Classifier => "classifier",
            Kind::FhirMapper => "fhir-mapper",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

#[derive(clap::Args)]
pub struct NewArgs {
    kind: Kind,
    /// Lower-case letters, digits and '-', starting with a letter.
    name: String,
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Where the plugin folder is made.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// The SDK's files, as this broker was built with them.
const SDK_FILES: &[(&str, &str)] = &[
    ("src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
    (
        "src/classifier.rs",
        include_str!("../../../sdk/src/classifier.rs"),
    ),
    (
        "src/connector.rs",
        include_str!("../../../sdk/src/connector.rs"),
    ),
    ("src/fhir.rs", include_str!("../../../sdk/src/fhir.rs")),
    (
        "src/fhir_json.rs",
        include_str!("../../../sdk/src/fhir_json.rs"),
    ),
    ("src/host.rs", include_str!("../../../sdk/src/host.rs")),
    ("src/sms.rs", include_str!("../../../sdk/src/sms.rs")),
    (
        "src/signature.rs",
        include_str!("../../../sdk/src/signature.rs"),
    ),
    ("src/panic.rs", include_str!("../../../sdk/src/panic.rs")),
    (
        "src/testing.rs",
        include_str!("../../../sdk/src/testing.rs"),
    ),
    ("wit/types.wit", include_str!("../../../sdk/wit/types.wit")),
    (
        "wit/connector.wit",
        include_str!("../../../sdk/wit/connector.wit"),
    ),
    (
        "wit/classifier.wit",
        include_str!("../../../sdk/wit/classifier.wit"),
    ),
    ("wit/fhir.wit", include_str!("../../../sdk/wit/fhir.wit")),
];

const RUST_SOURCE: [(Kind, &str); 3] = [
    (
        Kind::Classifier,
        include_str!("../templates/rust/classifier.rs"),
    ),
    (
        Kind::Connector,
        include_str!("../templates/rust/connector.rs"),
    ),
    (
        Kind::FhirMapper,
        include_str!("../templates/rust/fhir-mapper.rs"),
    ),
];

const FIXTURES: [(Kind, &str); 3] = [
    (
        Kind::Classifier,
        include_str!("../templates/rust/classifier.fixture.json"),
    ),
    (
        Kind::Connector,
        include_str!("../templates/rust/connector.fixture.json"),
    ),
    (
        Kind::FhirMapper,
        include_str!("../templates/rust/fhir-mapper.fixture.json"),
    ),
];

fn pick<T: Copy>(table: &[(Kind, T)], kind: Kind) -> T {
    table
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| *v)
        .expect("a template per kind")
}

fn fill(template: &str, name: &str, summary: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{summary}}", summary)
        .replace("{{crate}}", &name.replace('-', "_"))
}

fn write(root: &Path, rel: &str, text: &str) -> Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: &NewArgs) -> Result<()> {
    let name = args.name.as_str();
    let valid = name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        bail!(
            "{name:?}: a plugin name is lower-case letters, digits and '-', starting with a letter, at most 40 characters"
        );
    }
    let root = args.dir.join(name);
    if root.exists() {
        bail!(
            "{} exists already; choose another name or folder",
            root.display()
        );
    }
    match args.lang {
        Lang::Rust => rust(&root, args.kind, name)?,
        Lang::Python | Lang::Js => interpreted(&root, args.kind, name, args.lang)?,
    }
    let build = match args.lang {
        Lang::Rust | Lang::Python => "sh build.sh",
        Lang::Js => "npm ci && node build.mjs",
    };
    println!(
        "made {}: build it with `{build}` there, then `mhero plugin test {name}.wasm --fixture tests/fixtures/`",
        root.display()
    );
    Ok(())
}

fn manifest(kind: Kind, name: &str, summary: &str, limits: &str) -> String {
    let capabilities = match kind {
        Kind::Connector => "allowed_hosts = [\"config:base_url\"]\n",
        _ => "allowed_hosts = []\n",
    };
    let config = match kind {
        Kind::Connector => {
            "\n[config]\nbase_url = \"https://gateway.example\"\ntoken = \"\"\n\n[config_schema]\nbase_url = { type = \"string\", required = true }\ntoken = { type = \"string\", required = true }\n"
        }
        _ => "",
    };
    format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\nkind = \"{}\"\nsummary = \"{summary}\"\ncomponent = \"{name}.wasm\"\n\n[capabilities]\n{capabilities}\n[limits]\n{limits}{config}",
        kind.as_str()
    )
}

fn rust(root: &Path, kind: Kind, name: &str) -> Result<()> {
    let summary = format!("{name} ({}, Rust)", kind.as_str());
    let crate_name = name.replace('-', "_");
    let extra_deps = match kind {
        Kind::FhirMapper => {
            "serde_json = \"1\"\n\n[dev-dependencies]\nmhero-sdk = { path = \"mhero-sdk\", features = [\"fhir-mapper\", \"fixtures\"] }\n"
        }
        // Their golden fixtures also run natively with `cargo test`.
        Kind::Classifier => {
            "\n[dev-dependencies]\nmhero-sdk = { path = \"mhero-sdk\", features = [\"classifier\", \"fixtures\"] }\n"
        }
        Kind::Connector => {
            "\n[dev-dependencies]\nmhero-sdk = { path = \"mhero-sdk\", features = [\"connector\", \"fixtures\"] }\n"
        }
    };
    write(
        root,
        "Cargo.toml",
        &format!(
            "[package]\nname = \"mhero-plugin-{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\nmhero-sdk = {{ path = \"mhero-sdk\", features = [\"{}\"] }}\n{extra_deps}\n[profile.release]\nopt-level = \"s\"\nstrip = true\n\n# A project of its own, wherever the folder is.\n[workspace]\n",
            kind.as_str()
        ),
    )?;
    write(
        root,
        "src/lib.rs",
        &fill(pick(&RUST_SOURCE, kind), name, &summary),
    )?;
    let limits = match kind {
        Kind::Connector => "timeout_ms = 100\nmemory_mb = 32\n",
        Kind::Classifier => "timeout_ms = 50\nmemory_mb = 32\n",
        Kind::FhirMapper => "timeout_ms = 2000\nmemory_mb = 128\n",
    };
    write(root, "plugin.toml", &manifest(kind, name, &summary, limits))?;
    write(
        root,
        &format!("tests/fixtures/{}.json", kind.as_str()),
        pick(&FIXTURES, kind),
    )?;
    write(
        root,
        "build.sh",
        &format!(
            "#!/usr/bin/env sh\n# Builds {name}.wasm, a WebAssembly component, next to plugin.toml.\nset -eu\ncd \"$(dirname \"$0\")\"\nif command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then\n  rustup target add wasm32-wasip2\nfi\n# Its own target folder (or MHERO_PLUGIN_TARGET_DIR), never one another build holds.\ntarget=\"${{MHERO_PLUGIN_TARGET_DIR:-target}}\"\ncargo build --release --target wasm32-wasip2 --target-dir \"$target\"\ncp \"$target/wasm32-wasip2/release/mhero_plugin_{crate_name}.wasm\" {name}.wasm\necho \"built {name}.wasm\"\n"
        ),
    )?;
    write(root, ".gitignore", "target/\n*.wasm\n")?;
    let sdk_manifest = format!(
        "[package]\nname = \"mhero-sdk\"\nversion = \"{}\"\nedition = \"2024\"\ndescription = \"The mHero plugin SDK, as the broker that made this folder was built with it.\"\npublish = false\n\n[features]\nconnector = [\"dep:hmac\", \"dep:sha2\"]\n# A connector that sends files (`build-send-media`).\nmedia = [\"connector\"]\n# A connector that asks its gateway for statuses (`build-status-query`).\nstatus-poll = [\"connector\"]\nfhir-mapper = [\"dep:serde_json\"]\nclassifier = []\nfixtures = [\"dep:serde\", \"dep:serde_json\", \"dep:toml\"]\n\n[dependencies]\nwit-bindgen = {{ version = \"0.63\", default-features = false, features = [\"macros\", \"realloc\", \"std\"] }}\nserde = {{ version = \"1\", features = [\"derive\"], optional = true }}\nserde_json = {{ version = \"1\", optional = true }}\ntoml = {{ version = \"1\", optional = true }}\nhmac = {{ version = \"0.12\", optional = true }}\nsha2 = {{ version = \"0.10\", default-features = false, optional = true }}\n",
        env!("CARGO_PKG_VERSION")
    );
    write(root, "mhero-sdk/Cargo.toml", &sdk_manifest)?;
    for (rel, text) in SDK_FILES {
        write(root, &format!("mhero-sdk/{rel}"), text)?;
    }
    write(
        root,
        "README.md",
        &format!(
            "# {name}\n\nA {} plugin for the mHero broker, in Rust.\n\n```sh\nsh build.sh                                        # → {name}.wasm\nmhero plugin test {name}.wasm --fixture tests/fixtures/\ncargo test                                         # the logic, natively\n```\n\n`src/lib.rs` is the plugin, `plugin.toml` its manifest (limits, settings,\nallowed hosts), `tests/fixtures/` its golden fixtures (one call each).\n`mhero-sdk/` is a copy of the SDK and its WIT contract as this broker has\nthem; the plugin author's guide is the SDK's README in the broker's\nrepository. To load it, put this folder under the broker's `plugins.dir`.\n",
            kind.as_str()
        ),
    )?;
    Ok(())
}

/// A plugin in an interpreted language: the SDK's example of that
/// language and kind (`sdk/examples`, built and tested in CI), renamed,
/// with the WIT beside it.
struct Example {
    /// The example's plugin name, replaced by the new one everywhere.
    name: &'static str,
    /// Its npm package name, when it has one.
    package: Option<&'static str>,
    files: &'static [(&'static str, &'static str)],
}

macro_rules! example_files {
    ($dir:literal: $($file:literal),* $(,)?) => {
        &[$(($file, include_str!(concat!("../../../sdk/examples/", $dir, "/", $file)))),*]
    };
}

const PYTHON_CLASSIFIER: Example = Example {
    name: "py-keywords",
    package: None,
    files: example_files!("python-classifier": "app.py", "build.sh", "plugin.toml", ".gitignore", "tests/fixtures/yes-no-english.json"),
};

const JS_CLASSIFIER: Example = Example {
    name: "js-keywords",
    package: Some("mhero-example-js-classifier"),
    files: example_files!("js-classifier": "classifier.js", "build.mjs", "package.json", "package-lock.json", "plugin.toml", ".gitignore", "tests/fixtures/yes-no-english.json"),
};

const JS_CONNECTOR: Example = Example {
    name: "json-gateway",
    package: Some("mhero-example-js-connector"),
    files: example_files!("js-connector": "connector.js", "build.mjs", "package.json", "package-lock.json", "plugin.toml", ".gitignore", "tests/fixtures/parse-accepted.json"),
};

const PYTHON_CONNECTOR: Example = Example {
    name: "py-gateway",
    package: None,
    files: example_files!("python-connector": "app.py", "build.sh", "plugin.toml", ".gitignore", "tests/fixtures/describe.json"),
};

const PYTHON_FHIR_MAPPER: Example = Example {
    name: "py-practitioner",
    package: None,
    files: example_files!("python-fhir-mapper": "app.py", "build.sh", "plugin.toml", ".gitignore", "tests/fixtures/searchset.json"),
};

const JS_FHIR_MAPPER: Example = Example {
    name: "js-practitioner",
    package: Some("mhero-example-js-fhir-mapper"),
    files: example_files!("js-fhir-mapper": "mapper.js", "build.mjs", "package.json", "package-lock.json", "plugin.toml", ".gitignore", "tests/fixtures/searchset.json"),
};

fn interpreted(root: &Path, kind: Kind, name: &str, lang: Lang) -> Result<()> {
    let example = match (lang, kind) {
        (Lang::Python, Kind::Classifier) => PYTHON_CLASSIFIER,
        (Lang::Python, Kind::Connector) => PYTHON_CONNECTOR,
        (Lang::Python, Kind::FhirMapper) => PYTHON_FHIR_MAPPER,
        (Lang::Js, Kind::Classifier) => JS_CLASSIFIER,
        (Lang::Js, Kind::Connector) => JS_CONNECTOR,
        (Lang::Js, Kind::FhirMapper) => JS_FHIR_MAPPER,
        (Lang::Rust, _) => unreachable!("Rust plugins are made by `rust`"),
    };
    for (rel, text) in example.files {
        let mut text = text.replace(example.name, name).replace("../../wit", "wit");
        if let Some(package) = example.package {
            text = text.replace(package, &format!("mhero-plugin-{name}"));
        }
        write(root, rel, &text)?;
    }
    for (rel, text) in SDK_FILES.iter().filter(|(r, _)| r.starts_with("wit/")) {
        write(root, rel, text)?;
    }
    let build = match lang {
        Lang::Python => "sh build.sh",
        _ => "npm ci && node build.mjs",
    };
    write(
        root,
        "README.md",
        &format!(
            "# {name}\n\nA {} plugin for the mHero broker, in {lang:?}, made from the SDK's example.\n\n```sh\n{build}                 # → {name}.wasm, from the package registry\nmhero plugin test {name}.wasm --fixture tests/fixtures/\n```\n\n`wit/` is the contract as this broker has it; `plugin.toml` the manifest\n(limits, settings, allowed hosts); `tests/fixtures/` one golden fixture\n(one call). To load it, put this folder under the broker's `plugins.dir`.\n",
            kind.as_str()
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every SDK source and WIT file is in the copy a Rust plugin gets.
    #[test]
    fn the_sdk_copy_has_every_sdk_file() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk");
        for dir in ["src", "wit"] {
            for entry in std::fs::read_dir(sdk.join(dir)).unwrap() {
                let rel = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
                assert!(
                    SDK_FILES.iter().any(|(r, _)| *r == rel),
                    "sdk/{rel} is missing from scaffold::SDK_FILES"
                );
            }
        }
    }
}
