//! Vector references (parcels, survey points, land-cover polygons) in any format OGR
//! reads, rasterised onto the scene's grid window by window with GDAL's rasteriser (the
//! algorithm of `gdal_rasterize`: a pixel is burnt when its centre lies in a polygon, a
//! point burns the pixel it falls in, a later feature over an earlier one wins, features
//! in FID order). Each pixel gets its feature's class and its FID, which names the
//! parcel for grouped splits.
//!
//! A window is rasterised alone, from the features its outline (transformed into the
//! layer's CRS) selects through the layer's spatial filter, so a tile-sized reference is
//! never held whole; the pixel-centre rule is local, so windows put together equal the
//! whole grid rasterised at once.

use super::{Grid, Window};
use anyhow::{Context, Result, bail};
use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use gdal::vector::{FieldValue, Geometry, LayerAccess, OwnedLayer};
use gdal::{Dataset, DatasetOptions, DriverManager, GdalOpenFlags};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Which layer and field of a vector file hold the reference classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorSpec {
    /// The layer (default: the file's only layer).
    pub layer: Option<String>,
    /// The attribute holding each feature's class: a code (integer) or a class name.
    pub class_field: String,
}

/// "No feature" in a feature-id raster.
pub const NO_FEATURE: u32 = u32::MAX;

/// What a feature's class field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Values {
    /// Source codes, translated like a raster reference's.
    Codes,
    /// Class names, resolved to class codes when the reference opens.
    Names,
}

/// A vector reference opened on a grid.
pub struct VectorReference {
    /// The file.
    pub path: PathBuf,
    layer: OwnedLayer,
    layer_name: String,
    field: usize,
    values: Values,
    /// Class name (lower case) → class code, for name fields.
    names: HashMap<String, u16>,
    /// The class names as the nomenclature gives them, for messages.
    known: Vec<String>,
    spec: VectorSpec,
    grid: Grid,
    /// Grid CRS → layer CRS, and back (None: the same CRS, or one side has none).
    to_layer: Option<CoordTransform>,
    to_grid: Option<CoordTransform>,
}

/// What [`VectorReference::open`] found in the layer, for the log and the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorSummary {
    /// The layer read.
    pub layer: String,
    /// Features with a geometry, by geometry kind (`polygon`, `point`, `line`).
    pub features: BTreeMap<String, u64>,
    /// Features whose class field is empty (left out).
    pub without_class: u64,
}

/// Whether `path` opens as a vector dataset with at least one layer.
pub fn is_vector(path: &Path) -> bool {
    let options = DatasetOptions { open_flags: GdalOpenFlags::GDAL_OF_VECTOR, ..Default::default() };
    Dataset::open_ex(path, options).is_ok_and(|ds| ds.layer_count() > 0)
}

fn gis_order(mut srs: SpatialRef) -> SpatialRef {
    srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
    srs
}

impl VectorReference {
    /// Opens `spec`'s layer of `path` for `grid`, checking the layer and the class field;
    /// class names resolve through `class_names` (name → class code, matched without
    /// regard to case). Reads no feature: see [`VectorReference::survey`].
    pub fn open(path: &Path, spec: &VectorSpec, class_names: &[(String, u16)], grid: &Grid) -> Result<VectorReference> {
        let shown = path.display();
        let options = DatasetOptions { open_flags: GdalOpenFlags::GDAL_OF_VECTOR, ..Default::default() };
        let ds = Dataset::open_ex(path, options).with_context(|| format!("{shown}: cannot open as a vector dataset with GDAL/OGR"))?;
        let names: Vec<String> = ds.layers().map(|l| l.name()).collect();
        let layer_name = match (&spec.layer, names.as_slice()) {
            (Some(l), _) if names.contains(l) => l.clone(),
            (Some(l), _) => bail!("{shown}: no layer '{l}' (its layers: {})", names.join(", ")),
            (None, [only]) => only.clone(),
            (None, []) => bail!("{shown}: has no layer"),
            (None, _) => bail!("{shown}: holds several layers ({}); choose one with `layer = \"…\"`", names.join(", ")),
        };
        let layer = ds.into_layer_by_name(&layer_name)?;
        let fields: Vec<(String, u32)> = layer.defn().fields().map(|f| (f.name(), f.field_type())).collect();
        let Some(field) = fields.iter().position(|(n, _)| *n == spec.class_field) else {
            bail!(
                "{shown}, layer '{layer_name}': no field '{}' (its fields: {})",
                spec.class_field,
                fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            );
        };
        use gdal::vector::OGRFieldType;
        let values = match fields[field].1 {
            OGRFieldType::OFTInteger | OGRFieldType::OFTInteger64 => Values::Codes,
            OGRFieldType::OFTString => Values::Names,
            OGRFieldType::OFTReal => Values::Codes,
            other => bail!(
                "{shown}, layer '{layer_name}': field '{}' is of type {}, neither class codes (integers) nor class names (text)",
                spec.class_field,
                gdal::vector::field_type_to_name(other)
            ),
        };
        let lookup: HashMap<String, u16> = class_names.iter().map(|(n, c)| (n.trim().to_lowercase(), *c)).collect();
        let srs = layer.spatial_ref();
        let grid_srs = (!grid.projection.is_empty()).then(|| SpatialRef::from_wkt(&grid.projection)).transpose()?;
        let (to_layer, to_grid) = match (&grid_srs, &srs) {
            (Some(g), Some(l)) if g != l => {
                let (g, l) = (gis_order(g.clone()), gis_order(l.clone()));
                (Some(CoordTransform::new(&g, &l)?), Some(CoordTransform::new(&l, &g)?))
            }
            _ => (None, None),
        };

        Ok(VectorReference {
            path: path.to_path_buf(),
            layer,
            layer_name,
            field,
            values,
            names: lookup,
            known: class_names.iter().map(|(n, _)| n.clone()).collect(),
            spec: spec.clone(),
            grid: grid.clone(),
            to_layer,
            to_grid,
        })
    }

    /// Reads every feature's attributes once: what the layer holds, and that every class
    /// resolves (an unknown name or a value that is no class code is an error listing
    /// them). Once, where the reference is first opened: each window's read checks only
    /// the features it burns.
    pub fn survey(&mut self) -> Result<VectorSummary> {
        let (shown, layer_name, field) = (self.path.display().to_string(), self.layer_name.clone(), self.field);
        let (spec, lookup, layer) = (&self.spec, &self.names, &mut self.layer);
        let mut summary = VectorSummary { layer: layer_name.clone(), features: BTreeMap::new(), without_class: 0 };
        let mut unknown: BTreeMap<String, u64> = BTreeMap::new();
        let mut bad_codes: BTreeMap<String, u64> = BTreeMap::new();
        for feature in layer.features() {
            let Some(geometry) = feature.geometry() else { continue };
            if geometry.is_empty() {
                continue;
            }
            let kind = match gdal::vector::geometry_type_flatten(geometry.geometry_type()) {
                gdal::vector::OGRwkbGeometryType::wkbPoint | gdal::vector::OGRwkbGeometryType::wkbMultiPoint => "point",
                gdal::vector::OGRwkbGeometryType::wkbLineString | gdal::vector::OGRwkbGeometryType::wkbMultiLineString => "line",
                _ => "polygon",
            };
            *summary.features.entry(kind.to_string()).or_default() += 1;
            match feature.field(field)? {
                None => summary.without_class += 1,
                Some(FieldValue::StringValue(name)) => {
                    if name.trim().is_empty() {
                        summary.without_class += 1;
                    } else if !lookup.contains_key(&name.trim().to_lowercase()) {
                        *unknown.entry(name).or_default() += 1;
                    }
                }
                Some(FieldValue::IntegerValue(v)) if v >= 0 => {}
                Some(FieldValue::Integer64Value(v)) if (0..=u32::MAX as i64).contains(&v) => {}
                Some(FieldValue::RealValue(v)) if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 => {}
                Some(other) => *bad_codes.entry(format!("{other:?}")).or_default() += 1,
            }
        }
        if summary.features.is_empty() {
            bail!("{shown}, layer '{layer_name}': no feature with a geometry");
        }
        if !unknown.is_empty() {
            let list: Vec<String> = unknown.iter().take(10).map(|(n, c)| format!("{n:?} ({c})")).collect();
            let known = &self.known;
            bail!(
                "{shown}, layer '{layer_name}', field '{}': {} name{} not in the nomenclature: {}{}; its classes: {}",
                spec.class_field,
                unknown.len(),
                if unknown.len() == 1 { " is" } else { "s are" },
                list.join(", "),
                if unknown.len() > 10 { ", …" } else { "" },
                if known.is_empty() { "none (give the reference a nomenclature or classes.csv)".to_string() } else { known.join(", ") }
            );
        }
        if !bad_codes.is_empty() {
            let list: Vec<String> = bad_codes.iter().take(5).map(|(v, c)| format!("{v} ({c})")).collect();
            bail!("{shown}, layer '{layer_name}', field '{}': values that are not class codes (whole numbers ≥ 0): {}", spec.class_field, list.join(", "));
        }
        layer.reset_feature_reading();
        Ok(summary)
    }

    /// Whether the class field holds names (resolved to class codes) rather than codes.
    pub fn holds_names(&self) -> bool {
        self.values == Values::Names
    }

    /// Rasterises a window: per pixel the class (a source code, or for a name field the
    /// class code; 0 where no feature is) and the feature's FID ([`NO_FEATURE`] where none).
    pub fn read(&mut self, window: Window) -> Result<(Vec<u32>, Vec<u32>)> {
        let shown = || format!("{}, layer '{}', at {window}", self.path.display(), self.layer_name);
        let Some(gt) = self.grid.geo_transform else {
            bail!("{}: the grid has no georeferencing, so vectors cannot be placed on it", shown());
        };
        let wgt = [gt[0] + window.col as f64 * gt[1] + window.row as f64 * gt[2], gt[1], gt[2], gt[3] + window.col as f64 * gt[4] + window.row as f64 * gt[5], gt[4], gt[5]];
        let (x0, x1) = (wgt[0], wgt[0] + wgt[1] * window.cols as f64);
        let (y0, y1) = (wgt[3], wgt[3] + wgt[5] * window.rows as f64);
        let mut bounds = [x0.min(x1), y0.min(y1), x0.max(x1), y0.max(y1)];
        if let Some(t) = &self.to_layer {
            bounds = t.transform_bounds(&bounds, 21).with_context(shown)?;
        }
        // A margin, so that no feature whose part in the window the transformed outline
        // would shave off is missed (the rasteriser decides which pixels it burns).
        let margin = 0.01 * (bounds[2] - bounds[0]).max(bounds[3] - bounds[1]);
        self.layer.set_spatial_filter_rect(bounds[0] - margin, bounds[1] - margin, bounds[2] + margin, bounds[3] + margin);
        let mut found: Vec<(u64, Geometry, u32)> = Vec::new();
        for feature in self.layer.features() {
            let Some(geometry) = feature.geometry() else { continue };
            if geometry.is_empty() {
                continue;
            }
            let class = match feature.field(self.field)? {
                None => continue,
                Some(FieldValue::StringValue(name)) if name.trim().is_empty() => continue,
                Some(FieldValue::StringValue(name)) => match self.names.get(&name.trim().to_lowercase()) {
                    Some(code) => *code as u32,
                    None => bail!("{}: class name {name:?} is not in the nomenclature", shown()),
                },
                Some(FieldValue::IntegerValue(v)) => v as u32,
                Some(FieldValue::Integer64Value(v)) => v as u32,
                Some(FieldValue::RealValue(v)) => v as u32,
                Some(other) => bail!("{}: field '{}' holds {other:?}", shown(), self.spec.class_field),
            };
            let Some(fid) = feature.fid() else { continue };
            let geometry = match &self.to_grid {
                Some(t) => geometry.transform(t).with_context(|| format!("{}: reprojecting feature {fid}", shown()))?,
                None => geometry.clone(),
            };
            found.push((fid, geometry, class));
        }
        self.layer.clear_spatial_filter();
        let mut classes = vec![0u32; window.pixels()];
        let mut ids = vec![NO_FEATURE; window.pixels()];
        if found.is_empty() {
            return Ok((classes, ids));
        }
        // gdal_rasterize burns in the layer's order, later over earlier: FID order here.
        found.sort_by_key(|(fid, _, _)| *fid);
        let driver = DriverManager::get_driver_by_name("MEM")?;
        let mut ds = driver.create_with_band_type::<u32, _>("", window.cols, window.rows, 1)?;
        ds.set_geo_transform(&wgt)?;
        if !self.grid.projection.is_empty() {
            ds.set_projection(&self.grid.projection)?;
        }
        let (geometries, burn): (Vec<Geometry>, Vec<f64>) = found.iter().enumerate().map(|(slot, (_, g, _))| (g.clone(), (slot + 1) as f64)).unzip();
        gdal::raster::rasterize(&mut ds, &[1], &geometries, &burn, None).with_context(shown)?;
        let slots = ds.rasterband(1)?.read_as::<u32>((0, 0), (window.cols, window.rows), (window.cols, window.rows), None)?;
        for ((slot, class), id) in slots.data().iter().zip(&mut classes).zip(&mut ids) {
            if *slot > 0 {
                let (fid, _, code) = &found[*slot as usize - 1];
                *class = *code;
                *id = *fid as u32;
            }
        }
        Ok((classes, ids))
    }
}
