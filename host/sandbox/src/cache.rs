//! Compiled components cached on disk, keyed by the component's sha256 and the
//! engine's compatibility hash (wasmtime version, target, compiler settings).
//!
//! A cached component is native code that wasmtime maps and runs outside the sandbox's
//! checks (`Component::deserialize` is `unsafe` for that reason), so the cache is not
//! trusted for what it holds: each entry carries an HMAC-SHA256, keyed by a secret of
//! this machine (`<cache>/key`, 32 random bytes, created 0600), over the engine key, the
//! sha256 of the source component and the compiled bytes. An entry is deserialized only
//! from the bytes whose MAC was checked; a swapped file fails the check and is refused,
//! naming it. A cache folder (or key) that others may write to is not used at all.

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

type HmacSha256 = Hmac<Sha256>;

pub(crate) struct ComponentCache {
    /// `<cache>/components` and the machine's key, when the cache is usable.
    store: Option<(PathBuf, [u8; 32])>,
    engine_key: String,
}

/// Why a cache folder is not used: it, or its key, may be written by others.
fn unsafe_to_use(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Some(format!("{} belongs to uid {}, not to this user ({uid})", path.display(), meta.uid()));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Some(format!("{} is writable by others (mode {:o})", path.display(), meta.permissions().mode() & 0o777));
    }
    None
}

/// The machine's cache key: read, or created 0600 (exclusively, so two processes
/// starting together agree on one).
fn machine_key(dir: &Path) -> Result<[u8; 32]> {
    let path = dir.join("key");
    let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
    match created {
        Ok(mut file) => {
            use rand::RngCore;
            use std::io::Write;
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            file.write_all(&key).and_then(|_| file.sync_all()).with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Some(why) = unsafe_to_use(&path) {
                bail!("{why}");
            }
            if std::fs::metadata(&path)?.permissions().mode() & 0o077 != 0 {
                bail!("{} may be read by others (it must be 0600)", path.display());
            }
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            // A key being written by another process right now is 0 to 31 bytes long.
            bytes.try_into().map_err(|b: Vec<u8>| anyhow::anyhow!("{} holds {} bytes, not a 32-byte key", path.display(), b.len()))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// A cached compiled component that fails its integrity check (swapped, tampered with, or
/// compiled on another machine): never run. Callers tell it apart from a bad plugin or
/// pipeline (`sitsflow` exits with its own code).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CacheRefused(pub String);

impl ComponentCache {
    pub(crate) fn new(dir: Option<PathBuf>, engine: &Engine) -> Self {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        let store = dir.and_then(|dir| {
            let open = || -> Result<(PathBuf, [u8; 32])> {
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                if let Some(why) = unsafe_to_use(&dir) {
                    bail!("{why}");
                }
                let components = dir.join("components");
                std::fs::create_dir_all(&components).with_context(|| format!("creating {}", components.display()))?;
                if let Some(why) = unsafe_to_use(&components) {
                    bail!("{why}");
                }
                Ok((components, machine_key(&dir)?))
            };
            open().map_err(|e| log::warn!("not using the component cache (compiling in memory): {e:#}")).ok()
        });
        ComponentCache { store, engine_key }
    }

    fn mac(key: &[u8; 32], name: &str, compiled: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(name.as_bytes());
        mac.update(&(compiled.len() as u64).to_le_bytes());
        mac.update(compiled);
        mac
    }

    pub(crate) fn component(&self, engine: &Engine, bytes: &[u8]) -> Result<Component> {
        let Some((dir, key)) = &self.store else {
            return Ok(Component::new(engine, bytes)?);
        };
        // The name holds the source's sha256 and the engine key, so the MAC over it binds
        // the compiled bytes to both.
        let name = format!("{}-{}.cwasm", sitsflow_core::hash::sha256_hex(bytes), self.engine_key);
        let path = dir.join(&name);
        let mac_path = dir.join(format!("{name}.hmac"));
        if let (Ok(compiled), Ok(tag)) = (std::fs::read(&path), std::fs::read_to_string(&mac_path)) {
            let tag = hex::decode(tag.trim()).unwrap_or_default();
            if Self::mac(key, &name, &compiled).verify_slice(&tag).is_err() {
                return Err(CacheRefused(format!(
                    "the cached component {} does not carry this machine's signature ({}): it was not compiled here from the \
                     pinned plugin and is refused; delete it (or the cache folder) to recompile",
                    path.display(),
                    mac_path.display()
                ))
                .into());
            }
            // SAFETY: these bytes are what `Engine::precompile_component` of an engine with
            // the same compatibility hash wrote (the name and the MAC, keyed by this
            // machine's secret, say so), read once and checked before use.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(c) => return Ok(c),
                Err(e) => log::warn!("ignoring unusable cached component {}: {e:#}", path.display()),
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        // SAFETY: compiled just now by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled) }?;
        let tag = hex::encode(Self::mac(key, &name, &compiled).finalize().into_bytes());
        // A cache that cannot be written is a slower run, not a failed one. The MAC goes
        // last: an entry without one is recompiled, never loaded.
        let _ = std::fs::remove_file(&mac_path);
        if let Err(e) = sitsflow_core::fsutil::write_atomic(&path, &compiled)
            .and_then(|_| sitsflow_core::fsutil::write_atomic(&mac_path, tag.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))
        {
            log::warn!("component cache disabled for this component: {e:#}");
        }
        Ok(component)
    }
}
