//! Compiled components cached on disk, keyed by the component's sha256 and the
//! engine's compatibility hash (wasmtime version, target, compiler settings).

use anyhow::{Context, Result};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl ComponentCache {
    pub(crate) fn new(dir: Option<PathBuf>, engine: &Engine) -> Self {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ComponentCache { dir: dir.map(|d| d.join("components")), engine_key: format!("{:016x}", h.finish()) }
    }

    pub(crate) fn component(&self, engine: &Engine, bytes: &[u8]) -> Result<Component> {
        let Some(dir) = &self.dir else {
            return Ok(Component::new(engine, bytes)?);
        };
        let key = format!("{}-{}.cwasm", crate::hash::sha256_hex(bytes), self.engine_key);
        let path = dir.join(&key);
        if path.exists() {
            // SAFETY: the file was produced by `Engine::precompile_component` of an
            // engine with the same compatibility hash (it is in the key), and is
            // written under a temporary name then renamed, so it is never partial.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => log::warn!("ignoring unusable cached component {}: {e:#}", path.display()),
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        let component = unsafe { Component::deserialize(engine, &compiled) }?;
        // A cache that cannot be written is a slower run, not a failed one.
        if let Err(e) = crate::fsutil::write_atomic(&path, &compiled)
            .with_context(|| format!("writing {}", path.display()))
        {
            log::warn!("component cache disabled for this component: {e:#}");
        }
        Ok(component)
    }
}
