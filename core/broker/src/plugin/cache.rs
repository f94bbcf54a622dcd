//! Compiled components cached on disk, keyed by the component's content
//! hash, the wasmtime version and the engine's compilation settings, so a
//! restart does not recompile.
//!
//! A cache entry is native code that wasmtime maps and runs without
//! checking it, so nothing is loaded on the strength of its name: every
//! entry carries a MAC (keyed BLAKE3) over its name and bytes under a key the
//! broker keeps in its store, and an entry whose MAC does not verify —
//! tampered, truncated, written by another store's broker — is deleted and
//! the component compiled again. The folder is created private (0700) and
//! entries are written under unpredictable temporary names, opened
//! exclusively (never through a symlink), then renamed into place.

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are cached, and the key their MACs use.
#[derive(Clone)]
pub struct ComponentCache {
    pub dir: PathBuf,
    key: [u8; 32],
}

impl ComponentCache {
    /// `key`: a secret of this broker's (see `Store::secret`), never
    /// written to the cache folder.
    pub fn new(dir: impl Into<PathBuf>, key: [u8; 32]) -> Self {
        Self {
            dir: dir.into(),
            key,
        }
    }

    /// The MAC of an entry: over its file name (which names the
    /// component's content, wasmtime version and settings) and its code,
    /// so one verified entry copied over another does not verify.
    fn mac(&self, name: &str, code: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(code);
        h.finalize()
    }
}

impl std::fmt::Debug for ComponentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("ComponentCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Bytes of the MAC at the head of every entry.
const MAC_LEN: usize = 32;
/// Largest entry read back; a compiled component of the largest accepted
/// plugin is well under it.
const MAX_ENTRY_BYTES: u64 = 512 << 20;

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

/// Loads `bytes` as a component, from the cache when a verified entry is
/// there. A cache that cannot be read or written is only a lost
/// optimisation: logged, never an error.
pub fn load(
    engine: &Engine,
    cache: Option<&ComponentCache>,
    bytes: &[u8],
) -> wasmtime::Result<(Component, Source)> {
    let Some(cache) = cache else {
        return Ok((Component::new(engine, bytes)?, Source::Compiled));
    };
    let path = entry(engine, &cache.dir, bytes);
    match read_verified(cache, &path) {
        Ok(Some(code)) => {
            // SAFETY: `code` is exactly what `Component::serialize` of this
            // engine configuration produced in this broker (its MAC, under
            // a key only the store holds, verified above); the entry's name
            // covers the wasmtime version and settings, and wasmtime checks
            // its header again.
            match unsafe { Component::deserialize(engine, &code) } {
                Ok(component) => return Ok((component, Source::Cached)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Cached component unusable; recompiling.");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(None) => {}
        Err(Unverified::Io(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "Cannot read the cached component; recompiling.");
        }
        Err(Unverified::Mac) => {
            tracing::warn!(path = %path.display(), "Cached component does not verify (altered, truncated or not written by this broker); deleted and recompiled.");
            let _ = std::fs::remove_file(&path);
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(cache, &path, &component) {
        tracing::warn!(path = %path.display(), error = %e, "Cannot cache the compiled component.");
    }
    Ok((component, Source::Compiled))
}

enum Unverified {
    Io(std::io::Error),
    Mac,
}

/// The entry's code when its MAC verifies; `None` when there is no entry.
fn read_verified(cache: &ComponentCache, path: &Path) -> Result<Option<Vec<u8>>, Unverified> {
    let mut file = match open_no_follow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Unverified::Io(e)),
    };
    let size = file.metadata().map_err(Unverified::Io)?.len();
    if !file.metadata().map_err(Unverified::Io)?.is_file() || size > MAX_ENTRY_BYTES {
        return Err(Unverified::Mac);
    }
    let mut raw = Vec::with_capacity(size as usize);
    file.read_to_end(&mut raw).map_err(Unverified::Io)?;
    if raw.len() < MAC_LEN {
        return Err(Unverified::Mac);
    }
    let code = raw.split_off(MAC_LEN);
    let stored = <[u8; MAC_LEN]>::try_from(raw.as_slice()).map_err(|_| Unverified::Mac)?;
    // `blake3::Hash` compares in constant time.
    if cache.mac(&entry_name(path), &code) != blake3::Hash::from(stored) {
        return Err(Unverified::Mac);
    }
    Ok(Some(code))
}

fn entry_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// Creates the folder private to this user, or tightens one that others
/// could write to.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir() {
            return Err(std::io::Error::other(
                "the cache folder is a symlink or not a folder",
            ));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

fn store(cache: &ComponentCache, path: &Path, component: &Component) -> std::io::Result<()> {
    private_dir(&cache.dir)?;
    let code = component.serialize().map_err(std::io::Error::other)?;
    let name = entry_name(path);
    let mac = cache.mac(&name, &code);
    let mut suffix = [0u8; 12];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut suffix)
        .map_err(std::io::Error::other)?;
    let unpredictable = crate::store::hex(&suffix);
    let tmp = cache.dir.join(format!(".{name}.{unpredictable}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    // A new file only: never an existing one, never through a symlink.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(mac.as_bytes())?;
        file.write_all(&code)?;
        file.sync_all()?;
        // `rename` replaces whatever is at `path` (a symlink included)
        // without following it.
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
