//! The plugin directory: installed components named `name@version.wasm`.

use sitsflow_config::PluginRef;
use sitsflow_sandbox::{Plugin, Runtime};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A folder of installed plugins.
#[derive(Debug, Clone)]
pub struct PluginDir {
    /// The folder's path.
    pub path: PathBuf,
}

impl PluginDir {
    /// The plugin folder at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PluginDir { path: path.into() }
    }

    /// The file an installed plugin lives in.
    pub fn file_of(&self, reference: &PluginRef) -> PathBuf {
        self.path.join(format!("{reference}.wasm"))
    }

    /// Installed plugins as `(name@version, file)`, sorted.
    pub fn installed(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e).with_context(|| format!("listing plugin directory {}", self.path.display())),
        };
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if let Some(stem) = name.strip_suffix(".wasm") {
                if stem.contains('@') && !name.starts_with('.') {
                    found.push((stem.to_string(), path.clone()));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Loads a component and installs it as `name@version.wasm` (atomically), as its
    /// `describe()` names it. Returns the installed plugin. A `name@version` names one
    /// build: an installed file of that name with other bytes is refused unless `force`
    /// (reinstalling the same bytes is a no-op).
    pub fn install(&self, runtime: &Arc<Runtime>, component: &Path, force: bool) -> Result<Arc<Plugin>> {
        let plugin = runtime.load(component)?;
        let reference = plugin.info().reference();
        let target = self.path.join(format!("{reference}.wasm"));
        let bytes = std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
        if let Ok(installed) = std::fs::read(&target) {
            if installed == bytes {
                return runtime.load(&target);
            }
            if !force {
                bail!(
                    "{} already holds {reference} with other bytes (sha256 {} installed, {} in {}): a name@version names one \
                     build, and pipelines locked to the installed one would refuse the new one; bump the plugin's version, \
                     or replace it with `sitsflow plugins install --force` (then `sitsflow plugins lock` each pipeline again)",
                    self.path.display(),
                    &sitsflow_core::hash::sha256_hex(&installed)[..12],
                    &sitsflow_core::hash::sha256_hex(&bytes)[..12],
                    component.display()
                );
            }
            log::warn!("replacing {} with {} (--force)", target.display(), component.display());
        }
        sitsflow_core::fsutil::write_atomic(&target, &bytes).with_context(|| format!("writing {}", target.display()))?;
        runtime.load(&target)
    }

    /// Finds an installed plugin by reference, with a helpful error when absent.
    pub fn find(&self, reference: &PluginRef) -> Result<PathBuf> {
        let file = self.file_of(reference);
        if file.exists() {
            return Ok(file);
        }
        let installed = self.installed()?;
        let same_name: Vec<_> = installed
            .iter()
            .filter(|(r, _)| r.split('@').next() == Some(reference.name.as_str()))
            .map(|(r, _)| r.as_str())
            .collect();
        if !same_name.is_empty() {
            bail!("plugin '{reference}' is not installed in {} (installed versions: {})", self.path.display(), same_name.join(", "));
        }
        if installed.is_empty() {
            bail!("unknown plugin '{reference}': the plugin directory {} has no plugins", self.path.display());
        }
        let names: Vec<_> = installed.iter().map(|(r, _)| r.as_str()).collect();
        bail!("unknown plugin '{reference}' (installed in {}: {})", self.path.display(), names.join(", "))
    }
}

/// The component of `reference` in the first of `dirs` that has it; when none has, the
/// error says what each holds.
pub fn find_in(dirs: &[PluginDir], reference: &PluginRef) -> Result<PathBuf> {
    if let [only] = dirs {
        return only.find(reference);
    }
    if let Some(file) = dirs.iter().map(|d| d.file_of(reference)).find(|f| f.exists()) {
        return Ok(file);
    }
    let mut held = Vec::new();
    for d in dirs {
        let installed = d.installed()?;
        let names: Vec<&str> = installed.iter().map(|(r, _)| r.as_str()).collect();
        held.push(format!("{}: {}", d.path.display(), if names.is_empty() { "none".to_string() } else { names.join(", ") }));
    }
    anyhow::bail!("plugin '{reference}' is in none of the plugin folders ({})", held.join("; "))
}
