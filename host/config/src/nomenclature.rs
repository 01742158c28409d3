//! Nomenclatures: how a reference map's codes become the pipeline's classes.
//!
//! ```toml
//! name = "clc-to-seed001"
//! description = "CORINE Land Cover level-3 codes → 10 classes"
//!
//! [[class]]
//! code = 1                      # the class value in outputs (1..=65535; 0 is no data)
//! name = "Artificial"
//! color = "#e6004d"
//! sources = [111, 112, 121]     # reference-map codes that become this class
//! ```

use super::source::{ConfigError, Located, Source};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NomenclatureFile {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(rename = "class")]
    classes: Vec<Located<ClassEntry>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassEntry {
    code: u16,
    name: String,
    color: String,
    #[serde(default)]
    sources: Vec<u32>,
}

/// One target class.
#[derive(Debug, Clone, PartialEq)]
pub struct NomenclatureClass {
    /// The class value in outputs (1..=65535; 0 is no data).
    pub code: u16,
    /// The class name.
    pub name: String,
    /// `#rrggbb`
    pub color: String,
    /// The reference-map codes that become this class.
    pub sources: Vec<u32>,
}

/// A checked nomenclature.
#[derive(Debug, Clone, PartialEq)]
pub struct Nomenclature {
    /// The nomenclature's name.
    pub name: String,
    /// Free-text description, if the file gives one.
    pub description: Option<String>,
    /// The target classes, in file order.
    pub classes: Vec<NomenclatureClass>,
}

impl Nomenclature {
    /// Reads and checks a nomenclature file: class codes non-zero and unique, colours
    /// `#rrggbb`, each source code mapped to at most one class.
    pub fn load(path: &Path) -> Result<Nomenclature, ConfigError> {
        let source = Source::read(path)?;
        let file: NomenclatureFile =
            toml::from_str(&source.text).map_err(|e| source.error(e.span(), e.message().trim_end().to_string()))?;
        let mut classes = Vec::new();
        let mut owner: HashMap<u32, u16> = HashMap::new();
        for entry in &file.classes {
            let span = Some(entry.span());
            let c = entry.get_ref();
            if c.code == 0 {
                return Err(source.error(span, format!("class '{}': code 0 is reserved for no data", c.name)));
            }
            if classes.iter().any(|k: &NomenclatureClass| k.code == c.code) {
                return Err(source.error(span, format!("class code {} appears twice", c.code)));
            }
            let hex = c.color.strip_prefix('#').filter(|h| h.len() == 6 && h.chars().all(|x| x.is_ascii_hexdigit()));
            if hex.is_none() {
                return Err(source.error(span, format!("class '{}': colour '{}' is not #rrggbb", c.name, c.color)));
            }
            for s in &c.sources {
                if let Some(other) = owner.insert(*s, c.code) {
                    return Err(source.error(span, format!("source code {s} is mapped to both class {other} and class {}", c.code)));
                }
            }
            classes.push(NomenclatureClass { code: c.code, name: c.name.clone(), color: c.color.clone(), sources: c.sources.clone() });
        }
        Ok(Nomenclature { name: file.name, description: file.description, classes })
    }

    /// Source code → class code.
    pub fn lookup(&self) -> HashMap<u32, u16> {
        self.classes.iter().flat_map(|c| c.sources.iter().map(move |s| (*s, c.code))).collect()
    }

    /// (code, name, colour) of every class.
    pub fn styles(&self) -> Vec<(u16, String, String)> {
        self.classes.iter().map(|c| (c.code, c.name.clone(), c.color.clone())).collect()
    }

    /// Reads a `classes.csv` (`code,name,color`, the shared data convention) as a
    /// nomenclature that maps each code to itself.
    pub fn from_classes_csv(path: &Path) -> Result<Nomenclature, ConfigError> {
        let source = Source::read(path)?;
        let mut classes = Vec::new();
        for (i, line) in source.text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let at = source.text.lines().take(i).map(|l| l.len() + 1).sum::<usize>();
            let [code, name, color] = fields.as_slice() else {
                return Err(source.error(Some(at..at + line.len()), "expected 3 fields: code,name,color"));
            };
            let code: u16 = code.parse().map_err(|_| source.error(Some(at..at + line.len()), format!("code '{code}' is not a number")))?;
            if code == 0 {
                continue; // 0 = no data by convention
            }
            classes.push(NomenclatureClass { code, name: name.to_string(), color: color.to_string(), sources: vec![code as u32] });
        }
        Ok(Nomenclature { name: path.display().to_string(), description: None, classes })
    }
}
