//! The lockfile: sha256 pins of the plugins a pipeline uses.
//!
//! ```toml
//! # Written by `sitsflow plugins lock`; `sitsflow run` refuses plugins that differ.
//! version = 1
//!
//! [[plugin]]
//! stage = "ndvi"
//! plugin = "normalized-difference@0.1.0"
//! sha256 = "9f2c…"
//! ```

use super::source::{ConfigError, Source};
use serde::{Deserialize, Serialize};
use std::path::Path;

const LOCK_VERSION: u32 = 1;

/// The lockfile: the sha256 pins of a pipeline's plugins, one per stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// The lockfile format version (1).
    pub version: u32,
    /// The pinned plugins, as `[[plugin]]` tables.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<LockEntry>,
}

/// One pinned plugin, per stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// The stage id that uses it.
    pub stage: String,
    /// `name@version` as `describe()` reports it.
    pub plugin: String,
    /// Hex sha256 of the component file.
    pub sha256: String,
}

impl Lockfile {
    /// A lockfile of the current version pinning these plugins.
    pub fn new(plugins: Vec<LockEntry>) -> Self {
        Lockfile { version: LOCK_VERSION, plugins }
    }

    /// Reads a lockfile; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Lockfile>, ConfigError> {
        if !path.exists() {
            return Ok(None);
        }
        let source = Source::read(path)?;
        let lock: Lockfile =
            toml::from_str(&source.text).map_err(|e| source.error(e.span(), e.message().trim_end().to_string()))?;
        if lock.version != LOCK_VERSION {
            return Err(source.error(None, format!("unsupported lockfile version {} (expected {LOCK_VERSION})", lock.version)));
        }
        Ok(Some(lock))
    }

    /// The TOML text of this lockfile.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a lockfile always serialises");
        format!("# Written by `sitsflow plugins lock`; `sitsflow run` refuses plugins that differ.\n{body}")
    }

    /// The pin of the plugin a stage uses, if any.
    pub fn entry(&self, stage: &str) -> Option<&LockEntry> {
        self.plugins.iter().find(|e| e.stage == stage)
    }
}
