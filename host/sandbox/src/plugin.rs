//! A loaded plugin: its compiled component, pre-linked for fast instantiation,
//! its kind (which stage interface it exports) and what `describe()` said.

use super::engine::{Interruption, Runtime};
use super::instance::{CallContext, Instance, Limits, StageCallError, StageKind, StageState, kind_name};
use crate::bindings::stages::{
    augmenter, cloud_mask, cloud_mask_inputs, clusterer, decoder, features, features_inputs, labeller, sampler,
    sampler_inputs,
};
use crate::bindings::since_v0_1::stages as v01;
use sitsflow_core::ids::{valid_plugin_name, valid_version};
use sitsflow_infer::ModelSet;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::{Component, InstancePre};

/// What a plugin says of itself, checked.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// Plugin name, e.g. `normalized-difference`.
    pub name: String,
    /// Plugin version, `MAJOR.MINOR.PATCH`.
    pub version: String,
    /// The stage kind, from the interface it exports.
    pub kind: StageKind,
    /// One line for `sitsflow plugins list`.
    pub summary: String,
    /// The JSON Schema of its parameters.
    pub params_schema: serde_json::Value,
}

impl PluginInfo {
    /// The kind's name as written in WIT (`cloud-mask`, …).
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }

    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The stage interface a plugin exports: of the current contract (0.2), or of 0.1.x
/// (`…V01`, through `bindings::since_v0_1`).
pub(crate) enum KindIndices {
    CloudMask(cloud_mask::GuestIndices),
    Features(features::GuestIndices),
    Clusterer(clusterer::GuestIndices),
    Labeller(labeller::GuestIndices),
    Sampler(sampler::GuestIndices),
    Decoder(decoder::GuestIndices),
    Augmenter(augmenter::GuestIndices),
    CloudMaskV01(v01::cloud_mask::GuestIndices),
    FeaturesV01(v01::features::GuestIndices),
    ClustererV01(v01::clusterer::GuestIndices),
    LabellerV01(v01::labeller::GuestIndices),
    SamplerV01(v01::sampler::GuestIndices),
    DecoderV01(v01::decoder::GuestIndices),
}

impl KindIndices {
    fn kind(&self) -> StageKind {
        match self {
            KindIndices::CloudMask(_) | KindIndices::CloudMaskV01(_) => StageKind::CloudMask,
            KindIndices::Features(_) | KindIndices::FeaturesV01(_) => StageKind::Features,
            KindIndices::Clusterer(_) | KindIndices::ClustererV01(_) => StageKind::Clusterer,
            KindIndices::Labeller(_) | KindIndices::LabellerV01(_) => StageKind::Labeller,
            KindIndices::Sampler(_) | KindIndices::SamplerV01(_) => StageKind::Sampler,
            KindIndices::Decoder(_) | KindIndices::DecoderV01(_) => StageKind::Decoder,
            KindIndices::Augmenter(_) => StageKind::Augmenter,
        }
    }

    /// The WIT package the plugin was built against (the newest of its minor version).
    fn package(&self) -> &'static str {
        match self {
            KindIndices::CloudMask(_)
            | KindIndices::Features(_)
            | KindIndices::Clusterer(_)
            | KindIndices::Labeller(_)
            | KindIndices::Sampler(_)
            | KindIndices::Decoder(_)
            | KindIndices::Augmenter(_) => crate::bindings::WIT_PACKAGE,
            _ => crate::bindings::since_v0_1::WIT_PACKAGE,
        }
    }
}

/// The optional `<kind>-inputs` export (since WIT 0.1.1), when the plugin has it.
pub(crate) enum InputIndices {
    None,
    CloudMask(cloud_mask_inputs::GuestIndices),
    Features(features_inputs::GuestIndices),
    Sampler(sampler_inputs::GuestIndices),
    CloudMaskV01(v01::cloud_mask_inputs::GuestIndices),
    FeaturesV01(v01::features_inputs::GuestIndices),
    SamplerV01(v01::sampler_inputs::GuestIndices),
}

/// A loaded plugin: its compiled component, pre-linked for instantiation, its kind and
/// its checked `describe()`.
pub struct Plugin {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) interruption: Interruption,
    pub(crate) pre: InstancePre<StageState>,
    pub(crate) indices: KindIndices,
    pub(crate) inputs: InputIndices,
    path: PathBuf,
    sha256: String,
    info: PluginInfo,
    schema: jsonschema::Validator,
}

impl Plugin {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        interruption: Interruption,
        path: &Path,
        bytes: &[u8],
        component: Component,
    ) -> Result<Arc<Self>> {
        let shown = path.display();
        let pre = runtime.backend(interruption).linker.instantiate_pre(&component).map_err(anyhow::Error::from).with_context(|| {
            format!("plugin {shown} imports something the sandbox does not offer (only WASI without capabilities and sitsflow:stage/host)")
        })?;
        let mut found = Vec::new();
        if let Ok(i) = cloud_mask::GuestIndices::new(&pre) {
            found.push(KindIndices::CloudMask(i));
        }
        if let Ok(i) = features::GuestIndices::new(&pre) {
            found.push(KindIndices::Features(i));
        }
        if let Ok(i) = clusterer::GuestIndices::new(&pre) {
            found.push(KindIndices::Clusterer(i));
        }
        if let Ok(i) = labeller::GuestIndices::new(&pre) {
            found.push(KindIndices::Labeller(i));
        }
        if let Ok(i) = sampler::GuestIndices::new(&pre) {
            found.push(KindIndices::Sampler(i));
        }
        if let Ok(i) = decoder::GuestIndices::new(&pre) {
            found.push(KindIndices::Decoder(i));
        }
        if let Ok(i) = augmenter::GuestIndices::new(&pre) {
            found.push(KindIndices::Augmenter(i));
        }
        if let Ok(i) = v01::cloud_mask::GuestIndices::new(&pre) {
            found.push(KindIndices::CloudMaskV01(i));
        }
        if let Ok(i) = v01::features::GuestIndices::new(&pre) {
            found.push(KindIndices::FeaturesV01(i));
        }
        if let Ok(i) = v01::clusterer::GuestIndices::new(&pre) {
            found.push(KindIndices::ClustererV01(i));
        }
        if let Ok(i) = v01::labeller::GuestIndices::new(&pre) {
            found.push(KindIndices::LabellerV01(i));
        }
        if let Ok(i) = v01::sampler::GuestIndices::new(&pre) {
            found.push(KindIndices::SamplerV01(i));
        }
        if let Ok(i) = v01::decoder::GuestIndices::new(&pre) {
            found.push(KindIndices::DecoderV01(i));
        }
        if found.len() != 1 {
            bail!(
                "plugin {shown} must export exactly one stage interface of {} or {} \
                 (cloud-mask, features, clusterer, labeller, sampler, decoder or, since 0.2.1, augmenter); it exports {}",
                crate::bindings::WIT_PACKAGE,
                crate::bindings::since_v0_1::WIT_PACKAGE,
                found.len()
            );
        }
        let indices = found.pop().expect("one kind");
        // Plugins built against WIT 0.1.0 have no `<kind>-inputs`: they get every input.
        let inputs = match &indices {
            KindIndices::CloudMask(_) => cloud_mask_inputs::GuestIndices::new(&pre).map_or(InputIndices::None, InputIndices::CloudMask),
            KindIndices::Features(_) => features_inputs::GuestIndices::new(&pre).map_or(InputIndices::None, InputIndices::Features),
            KindIndices::Sampler(_) => sampler_inputs::GuestIndices::new(&pre).map_or(InputIndices::None, InputIndices::Sampler),
            KindIndices::CloudMaskV01(_) => {
                v01::cloud_mask_inputs::GuestIndices::new(&pre).map_or(InputIndices::None, InputIndices::CloudMaskV01)
            }
            KindIndices::FeaturesV01(_) => {
                v01::features_inputs::GuestIndices::new(&pre).map_or(InputIndices::None, InputIndices::FeaturesV01)
            }
            KindIndices::SamplerV01(_) => v01::sampler_inputs::GuestIndices::new(&pre).map_or(InputIndices::None, InputIndices::SamplerV01),
            _ => InputIndices::None,
        };
        // Ask it to describe itself, in a throw-away instance with default limits.
        let provisional = Plugin {
            runtime,
            interruption,
            pre,
            indices,
            inputs,
            path: path.to_path_buf(),
            sha256: sitsflow_core::hash::sha256_hex(bytes),
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                kind: StageKind::Features,
                summary: String::new(),
                params_schema: serde_json::Value::Null,
            },
            schema: jsonschema::validator_for(&serde_json::json!({})).expect("empty schema"),
        };
        let context = CallContext { stage: "describe".into(), chunk: "-".into() };
        let raw = provisional
            .instantiate(Limits::default())
            .and_then(|mut i| i.describe(&context))
            .map_err(|e| anyhow::anyhow!("plugin {shown}: describe() {e}"))?;
        let kind = provisional.indices.kind();
        if raw.kind != kind {
            bail!(
                "plugin {shown} exports the {} interface but describe() says it is a {} stage",
                kind_name(kind),
                kind_name(raw.kind)
            );
        }
        if !valid_plugin_name(&raw.name) {
            bail!("plugin {shown}: describe() gives the invalid name '{}' (lower-case letters, digits, '-')", raw.name);
        }
        if !valid_version(&raw.version) {
            bail!("plugin {shown}: describe() gives the invalid version '{}' (MAJOR.MINOR.PATCH)", raw.version);
        }
        let params_schema: serde_json::Value = serde_json::from_str(&raw.params_schema)
            .with_context(|| format!("plugin {shown}: its parameter schema is not JSON"))?;
        let schema = jsonschema::validator_for(&params_schema)
            .map_err(|e| anyhow::anyhow!("plugin {shown}: its parameter schema is not a valid JSON Schema: {e}"))?;
        Ok(Arc::new(Plugin {
            info: PluginInfo { name: raw.name, version: raw.version, kind, summary: raw.summary, params_schema },
            schema,
            ..provisional
        }))
    }

    /// What the plugin says of itself, checked.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The WIT package it was built against (`sitsflow:stage@0.2.0`, or `@0.1.1` for
    /// any 0.1.x plugin).
    pub fn wit_package(&self) -> &'static str {
        self.indices.package()
    }

    /// Whether its calls have deadlines ([`Interruption::Deadline`]) or not.
    pub fn interruption(&self) -> Interruption {
        self.interruption
    }

    /// The component file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex sha256 of the component file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// A fresh instance with these limits and no models.
    pub fn instantiate(&self, limits: Limits) -> Result<Instance, StageCallError> {
        Instance::new(self, limits, ModelSet::empty(), None)
    }

    /// A fresh instance with these limits that may call these models through `infer`.
    pub fn instantiate_with_models(&self, limits: Limits, models: Arc<ModelSet>) -> Result<Instance, StageCallError> {
        Instance::new(self, limits, models, None)
    }

    /// Checks parameters against the plugin's schema: `Err` lists each violation
    /// with its JSON pointer (e.g. `/a`).
    ///
    /// A whole float where the schema asks an integer (`k = 12.0`) passes JSON Schema,
    /// which counts 12.0 as an integer, and then fails in the stage's own parser, after
    /// the chain before it has run: it is refused here. Each such value is found by
    /// validating the parameters with it made fractional: the schema then objects to an
    /// integer expected at its place.
    pub fn check_params(&self, params: &serde_json::Value) -> Result<(), Vec<(String, String)>> {
        let mut errors: Vec<_> = self
            .schema
            .iter_errors(params)
            .map(|e| {
                let at = e.instance_path().to_string();
                let mut message = sitsflow_core::fsutil::cut_text(&e.to_string(), 300).into_owned();
                // A misspelt key: name the closest one the schema has there.
                if let Some(hint) = closest_key(&self.info.params_schema, &at, &message) {
                    message.push_str(&hint);
                }
                (at, message)
            })
            .collect();
        if errors.is_empty() {
            for (pointer, value) in whole_floats(params, String::new()) {
                let mut probe = params.clone();
                if let Some(slot) = probe.pointer_mut(&pointer) {
                    *slot = serde_json::json!(value + 0.5);
                }
                // The objection may come at the value or above it (an optional table is an
                // `anyOf` that fails as a whole).
                let wants_integer = self.schema.iter_errors(&probe).any(|e| {
                    let at = e.instance_path().to_string();
                    pointer == at || pointer.starts_with(&format!("{at}/")) || at.is_empty()
                });
                if wants_integer {
                    errors.push((pointer, format!("{value:?} is written as a float where an integer is expected: write {}", value as i64)));
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// The JSON pointers and values of the numbers in `value` that are floats with no
/// fractional part (`12.0`), where an integer may have been meant.
fn whole_floats(value: &serde_json::Value, at: String) -> Vec<(String, f64)> {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => n.as_f64().filter(|f| f.fract() == 0.0 && f.is_finite()).map(|f| vec![(at, f)]).unwrap_or_default(),
        serde_json::Value::Array(items) => items.iter().enumerate().flat_map(|(i, v)| whole_floats(v, format!("{at}/{i}"))).collect(),
        serde_json::Value::Object(map) => {
            map.iter().flat_map(|(k, v)| whole_floats(v, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")))).collect()
        }
        _ => Vec::new(),
    }
}

/// `; did you mean 'threshold'?` for an `Additional properties … ('treshold' was
/// unexpected)` error at `pointer`, when a key the schema allows there is close to it.
fn closest_key(schema: &serde_json::Value, pointer: &str, message: &str) -> Option<String> {
    let unexpected = message.split('\'').nth(1).filter(|_| message.contains("was unexpected"))?;
    let object = schema_at(schema, schema, pointer)?;
    let keys: Vec<&String> = object.get("properties")?.as_object()?.keys().collect();
    let (best, distance) = keys.iter().map(|k| (*k, edit_distance(&unexpected.to_lowercase(), &k.to_lowercase()))).min_by_key(|(_, d)| *d)?;
    (distance <= 2.max(unexpected.len() / 4)).then(|| format!("; did you mean '{best}'?"))
}

/// The sub-schema describing the value at `pointer` (`/gapfill`), following `$ref`s into
/// `$defs` and the non-null branch of an `anyOf`/`oneOf` (an optional table).
fn schema_at<'a>(root: &'a serde_json::Value, node: &'a serde_json::Value, pointer: &str) -> Option<&'a serde_json::Value> {
    let mut node = resolve(root, node);
    for segment in pointer.split('/').skip(1) {
        node = resolve(root, node.get("properties")?.get(segment)?);
    }
    Some(node)
}

fn resolve<'a>(root: &'a serde_json::Value, mut node: &'a serde_json::Value) -> &'a serde_json::Value {
    for _ in 0..16 {
        if let Some(r) = node.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix('#')) {
            match root.pointer(r) {
                Some(target) => node = target,
                None => return node,
            }
        } else if let Some(branch) = ["anyOf", "oneOf"].iter().find_map(|k| node.get(*k)?.as_array()?.iter().find(|b| b.get("type").and_then(|t| t.as_str()) != Some("null"))) {
            node = branch;
        } else {
            break;
        }
    }
    node
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod suggestion_tests {
    use super::*;

    #[test]
    fn a_misspelt_key_is_matched_to_the_closest_one_there_is() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": { "threshold": {"type": "number"}, "gapfill": {"anyOf": [{"$ref": "#/$defs/Gapfill"}, {"type": "null"}]} },
            "$defs": { "Gapfill": { "type": "object", "properties": { "step_days": {"type": "integer"} } } }
        });
        let msg = |k: &str| format!("Additional properties are not allowed ('{k}' was unexpected)");
        assert_eq!(closest_key(&schema, "", &msg("treshold")).as_deref(), Some("; did you mean 'threshold'?"));
        assert_eq!(closest_key(&schema, "/gapfill", &msg("step")).as_deref(), None, "too far from step_days");
        assert_eq!(closest_key(&schema, "/gapfill", &msg("stepdays")).as_deref(), Some("; did you mean 'step_days'?"));
        assert_eq!(closest_key(&schema, "", &msg("colour")), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
