//! Compiled components cached on disk, keyed by the component's content
//! hash, the wasmtime version and the engine's compilation settings, so a
//! restart does not recompile.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The cache file for `bytes` under `dir`.
pub fn entry(engine: &Engine, dir: &Path, bytes: &[u8]) -> PathBuf {
    let mut settings = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    let content = blake3::hash(bytes);
    dir.join(format!(
        "{}-wasmtime{}-{:016x}.cwasm",
        &content.to_hex()[..32],
        wasmtime_version(),
        settings.finish()
    ))
}

fn wasmtime_version() -> &'static str {
    // The crate's own version is the compatibility boundary for serialized
    // code; the settings hash covers the rest.
    "48"
}

/// Whether the component was compiled now or read from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Compiled,
    Cached,
}

/// Loads `bytes` as a component, from the cache when possible. A cache that
/// cannot be read or written is only a lost optimisation: logged, never an
/// error.
pub fn load(
    engine: &Engine,
    dir: Option<&Path>,
    bytes: &[u8],
) -> wasmtime::Result<(Component, Source)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, bytes)?, Source::Compiled));
    };
    let path = entry(engine, dir, bytes);
    if path.is_file() {
        // SAFETY: the file was written by `Component::serialize` of this
        // engine configuration (the key covers version and settings) into a
        // folder only this broker writes; wasmtime still checks its header
        // and rejects a mismatched or truncated file.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok((component, Source::Cached)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Cached component unusable; recompiling.");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(dir, &path, &component) {
        tracing::warn!(path = %path.display(), error = %e, "Cannot cache the compiled component.");
    }
    Ok((component, Source::Compiled))
}

fn store(dir: &Path, path: &Path, component: &Component) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
