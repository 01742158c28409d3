//! Segmentation networks on the host (seed 004's FG-UNet): the patch dataset a
//! `recipe = "fg-unet"` labeller trains on, the polygons its split is drawn by, and
//! tiled inference of the exported network over a whole scene.
//!
//! **Tiles.** The scene is cut into cores of `tile − 2·overlap` px; each core is
//! predicted from a `tile`-px input that adds `overlap` px of context on every side
//! (reflected outside the scene, as chunks are), and only the core is kept (centre
//! crop). A scene smaller than one tile uses one tile of its own size plus the overlaps.
//! Tile origins are multiples of the network's pooling factor, so every tile pools the
//! same pixels together as a whole-scene prediction would. `models/sitsflow_models/
//! segmentation.py` (`predict_scene`) implements the same tiles, so the metrics the
//! recipe reports describe what the host maps.
//!
//! **Fusion** (seed 003): a network whose sidecar has `input.vhr` also takes, per tile,
//! a very-high-resolution image ([`Vhr`], read with GDAL on the scene's grid made `s`
//! times finer) under the same tile: each scene pixel's `s × s` block, mirrored by whole
//! scene pixels outside the scene — as the recipe's `_vhr_window` cuts it.

use sitsflow_infer::Model;
use sitsflow_raster::{FeatureRaster, Grid, Window};
use anyhow::{Context as _, Result, anyhow, bail};
use rand::Rng;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The seed's tile and overlap: 512 × 512 px tiles overlapping by 16 px.
pub const DEFAULT_TILE: usize = 512;
/// Overlap of the seed's tiles, in pixels.
pub const DEFAULT_OVERLAP: usize = 16;
/// The patch dataset contract `models/sitsflow_models/patches.py` reads.
pub const DATASET_CONTRACT: &str = "sitsflow-patches/1";

/// How a scene is cut into tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Side of a tile, in pixels.
    pub tile: usize,
    /// Pixels of context around a tile's core, on every side.
    pub overlap: usize,
    /// Tile sides and origins are multiples of this (2^depth of the network's poolings).
    pub multiple: usize,
}

impl Tiling {
    /// Checks that `tile` exceeds twice the overlap and both are multiples of `multiple` (at least 1).
    pub fn new(tile: usize, overlap: usize, multiple: usize) -> Result<Tiling> {
        let multiple = multiple.max(1);
        if tile <= 2 * overlap {
            bail!("tile {tile} px must be larger than twice the overlap ({overlap} px)");
        }
        if !tile.is_multiple_of(multiple) || !overlap.is_multiple_of(multiple) {
            bail!(
                "tile {tile} and overlap {overlap} must be multiples of {multiple} (the network's pooling factor)"
            );
        }
        Ok(Tiling {
            tile,
            overlap,
            multiple,
        })
    }

    /// The tile side used on a `width × height` scene: `tile`, or the scene plus its
    /// overlaps rounded up to the pooling factor when that is smaller.
    pub fn side(&self, width: usize, height: usize) -> usize {
        let need = (width.max(height) + 2 * self.overlap).div_ceil(self.multiple) * self.multiple;
        self.tile.min(need)
    }

    /// The cores, row-major: together they cover the scene once.
    pub fn cores(&self, width: usize, height: usize) -> Vec<Window> {
        let core = self.side(width, height) - 2 * self.overlap;
        let mut out = Vec::new();
        for row in (0..height).step_by(core) {
            for col in (0..width).step_by(core) {
                out.push(Window {
                    row,
                    col,
                    rows: core.min(height - row),
                    cols: core.min(width - col),
                });
            }
        }
        out
    }
}

/// Index `i` mirrored into `0..n` without repeating the edge pixel (`…, 2, 1, 0, 1, 2, …`),
/// as chunks are padded (`run::pad_reflect`) and as the recipe pads its patches.
pub fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let i = i.rem_euclid(period);
    (if i < n as isize { i } else { period - i }) as usize
}

/// A very-high-resolution image on the scene's grid made `scale` times finer.
pub struct Vhr {
    /// The image, read on the finer grid.
    pub raster: FeatureRaster,
    /// Image pixels per scene pixel along each axis (a power of two).
    pub scale: usize,
}

impl Vhr {
    /// Opens `path` on `grid` made `scale` times finer — by default the image's own
    /// resolution ratio to the grid's —; the scale must be a power of two (the fusion
    /// network pools its way down to the scene's grid).
    pub fn open(path: &Path, grid: &Grid, scale: Option<usize>) -> Result<Vhr> {
        let scale = match scale {
            Some(s) => s,
            None => {
                let own = sitsflow_raster::grid_of(path)?;
                let (Some(g), Some(v)) = (grid.geo_transform, own.geo_transform) else {
                    bail!("{}: no georeferencing (it or the scene's), so its scale cannot be told: set `vhr_scale`", path.display());
                };
                let ratio = g[1].abs() / v[1].abs();
                let s = ratio.round().max(1.0) as usize;
                if (ratio - s as f64).abs() > 0.01 * ratio {
                    bail!(
                        "{}: its {} m pixels are not a whole fraction of the scene's {} m; set `vhr_scale` (a power of two) to warp it",
                        path.display(),
                        v[1].abs(),
                        g[1].abs()
                    );
                }
                s
            }
        };
        if !scale.is_power_of_two() {
            bail!("{}: a VHR scale of {scale} (the ratio of its pixels to the scene's) is not a power of two; set `vhr_scale` (e.g. 4) to warp it", path.display());
        }
        let raster = FeatureRaster::open_on(path, &grid.scaled(scale))?;
        Ok(Vhr { raster, scale })
    }
}

/// The rows (or columns) of a tile: the core's and `overlap` px on each side, mirrored
/// into `0..n`.
fn tile_indices(start: usize, side: usize, overlap: usize, n: usize) -> Vec<usize> {
    (0..side).map(|i| reflect(start as isize - overlap as isize + i as isize, n)).collect()
}

/// One tile's input, `bands.len() × side × side` channel-major: the core and `overlap`
/// px around it, reflected where they leave the scene.
pub fn tile_input(
    raster: &FeatureRaster,
    bands: &[usize],
    width: usize,
    height: usize,
    core: &Window,
    tiling: &Tiling,
) -> Result<Vec<f32>> {
    tile_of(raster, bands, width, height, core, tiling, 1)
}

/// The VHR input under one tile, `bands.len() × side·s × side·s`: each tile pixel's
/// `s × s` block of `vhr`, mirrored by whole scene pixels where the tile leaves the scene.
pub fn vhr_tile_input(
    vhr: &Vhr,
    bands: &[usize],
    width: usize,
    height: usize,
    core: &Window,
    tiling: &Tiling,
) -> Result<Vec<f32>> {
    tile_of(&vhr.raster, bands, width, height, core, tiling, vhr.scale)
}

/// A tile's rows and columns on the scene (core and overlap, mirrored), each read as a
/// `scale × scale` block of `raster`: what [`tile_input`] and [`vhr_tile_input`] share.
fn tile_of(raster: &FeatureRaster, bands: &[usize], width: usize, height: usize, core: &Window, tiling: &Tiling, scale: usize) -> Result<Vec<f32>> {
    let side = tiling.side(width, height);
    let rows = tile_indices(core.row, side, tiling.overlap, height);
    let cols = tile_indices(core.col, side, tiling.overlap, width);
    gather(raster, bands, &rows, &cols, scale)
}

/// `bands` of `raster` at the scene rows × columns given, each a `scale × scale` block
/// of the raster (on the scene's grid made `scale` times finer), channel-major: one read
/// of the window that spans them, then gathered.
fn gather(raster: &FeatureRaster, bands: &[usize], rows: &[usize], cols: &[usize], scale: usize) -> Result<Vec<f32>> {
    let (r0, r1) = (
        *rows.iter().min().expect("side > 0"),
        *rows.iter().max().expect("side > 0"),
    );
    let (c0, c1) = (
        *cols.iter().min().expect("side > 0"),
        *cols.iter().max().expect("side > 0"),
    );
    let window = Window {
        row: r0,
        col: c0,
        rows: r1 - r0 + 1,
        cols: c1 - c0 + 1,
    }
    .scaled(scale);
    let planes = raster.read_planes(window, bands)?;
    let n = window.pixels();
    let mut out = Vec::with_capacity(bands.len() * rows.len() * cols.len() * scale * scale);
    for plane in planes.chunks_exact(n) {
        for &r in rows {
            for i in 0..scale {
                let line = &plane[((r - r0) * scale + i) * window.cols..((r - r0) * scale + i + 1) * window.cols];
                for &c in cols {
                    out.extend_from_slice(&line[(c - c0) * scale..(c - c0 + 1) * scale]);
                }
            }
        }
    }
    Ok(out)
}

/// The class probabilities of one tile's core, class-major (`classes.len()` planes of
/// `core.pixels()` values).
pub struct TileProbabilities {
    /// The tile's number, in the order of `Tiling::cores`.
    pub index: usize,
    /// The core's window on the scene.
    pub core: Window,
    /// The values, class-major.
    pub data: Vec<f32>,
}

/// What the network takes and gives, from its sidecar.
pub struct Network<'a> {
    /// The exported network.
    pub model: &'a Model,
    /// For each input channel, its band in the features raster.
    pub bands: Vec<usize>,
    /// The class codes of the output's channels (empty for an encoder).
    pub classes: Vec<u16>,
    /// The output's channels when they are not classes (an encoder's embeddings).
    pub channels: Vec<String>,
    /// How the scene is cut into tiles.
    pub tiling: Tiling,
    /// Bytes of working memory per tile pixel (input, output and the network's largest
    /// activations), for batching within the budget.
    pub bytes_per_pixel: usize,
    /// A fusion network's VHR input, as its sidecar describes it.
    pub vhr: Option<sitsflow_infer::VhrMetadata>,
}

impl<'a> Network<'a> {
    /// Matches a segmentation model to a features raster (and a fusion network to its
    /// VHR image): every channel it was trained on must be there (by name). `tiling`
    /// overrides the sidecar's tile and overlap.
    pub fn new(
        model: &'a Model,
        raster: &FeatureRaster,
        vhr: Option<&Vhr>,
        tile: Option<usize>,
        overlap: Option<usize>,
    ) -> Result<Network<'a>> {
        let meta = model
            .metadata()
            .ok_or_else(|| anyhow!("{}: no model.json beside it", model.path().display()))?;
        if meta.input.layout.as_deref() != Some("N×C×H×W") || meta.input.channels.is_empty() {
            bail!(
                "{}: not a segmentation network (input layout {:?}, expected N×C×H×W with channels)",
                model.path().display(),
                meta.input.layout
            );
        }
        let bands = meta
            .input
            .channels
            .iter()
            .map(|c| {
                raster.names.iter().position(|n| n == c).ok_or_else(|| {
                    anyhow!(
                        "{} has no band '{c}', which {} was trained on",
                        raster.path.display(),
                        model.path().display()
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let sidecar_tiling = meta.tiling.clone().unwrap_or_default();
        let tile = tile
            .or(sidecar_tiling["tile"].as_u64().map(|t| t as usize))
            .unwrap_or(DEFAULT_TILE);
        let overlap = overlap
            .or(sidecar_tiling["overlap"].as_u64().map(|o| o as usize))
            .unwrap_or(DEFAULT_OVERLAP);
        let multiple = meta.input.multiple.unwrap_or(1);
        let tiling = Tiling::new(tile, overlap, multiple)
            .with_context(|| format!("tiling {}", model.path().display()))?;
        let classes: Vec<u16> = meta.output.classes.iter().map(|c| c.code).collect();
        let channels = meta.output.channels.clone();
        if classes.is_empty() == channels.is_empty() {
            bail!("{}: the sidecar's output lists {} classes and {} channels; a segmentation network gives classes, an encoder channels", model.path().display(), classes.len(), channels.len());
        }
        let hp = meta.hyperparameters.clone().unwrap_or_default();
        let width = hp["width"].as_u64().unwrap_or(32) as usize;
        let pixel_width = hp["pixel_width"].as_u64().unwrap_or(64) as usize;
        // Working memory per tile pixel on the CPU: the input and its normalised copy, the
        // first level's and the pixel path's activations, the output, and ONNX Runtime's
        // arena, which grows by powers of two. Calibrated on `cargo bench --bench segment`
        // (120 channels, default widths: 512 px tiles peaked 1.44 GiB above the start,
        // 256 px tiles 0.49 GiB, GDAL's cache included); this gives 5.8 KB a pixel there.
        let mut bytes_per_pixel = 4 * (4 * bands.len() + 10 * (width + pixel_width) + 2 * (classes.len() + channels.len()));
        let vhr = match (&meta.input.vhr, vhr) {
            (None, None) => None,
            (Some(wanted), Some(image)) => {
                vhr_bands(model, wanted, image)?;
                // Per scene pixel: s² VHR pixels, their input and normalised copy and the
                // VHR encoder's first-level activations (the largest).
                let vhr_width = hp["vhr_width"].as_u64().unwrap_or(16) as usize;
                bytes_per_pixel += 4 * image.scale * image.scale * (2 * wanted.channels.len() + 6 * vhr_width);
                Some(wanted.clone())
            }
            (Some(_), None) => bail!(
                "{} fuses the series with a VHR image (its input '{}'): give the stage `vhr = \"…\"`",
                model.path().display(),
                meta.input.vhr.as_ref().map_or("", |v| v.name.as_str())
            ),
            (None, Some(image)) => bail!(
                "{} takes no VHR image, yet the stage gives one ({}): a stored series-only network maps without `vhr`",
                model.path().display(),
                image.raster.path.display()
            ),
        };
        Ok(Network {
            model,
            bands,
            classes,
            channels,
            tiling,
            bytes_per_pixel,
            vhr,
        })
    }

    /// Planes per output pixel: classes, or an encoder's channels.
    pub fn outputs(&self) -> usize {
        self.classes.len().max(self.channels.len())
    }

    /// Tiles per batch and the tile side within `budget_bytes`: the seed's 512 px tile
    /// when one fits, else the largest side that does (saying so).
    pub fn fit_budget(&mut self, width: usize, height: usize, budget_bytes: usize) -> usize {
        let per_tile = |side: usize| side * side * self.bytes_per_pixel;
        while per_tile(self.tiling.side(width, height)) > budget_bytes
            && self.tiling.tile > 2 * self.tiling.overlap + self.tiling.multiple
        {
            let smaller = (self.tiling.tile / 2)
                .max(2 * self.tiling.overlap + self.tiling.multiple)
                .div_ceil(self.tiling.multiple)
                * self.tiling.multiple;
            log::info!(
                "a {} px tile needs {} MiB, over the {} MiB budget: using {smaller} px tiles",
                self.tiling.tile,
                per_tile(self.tiling.side(width, height)) >> 20,
                budget_bytes >> 20
            );
            self.tiling.tile = smaller;
        }
        // On CPU one tile at a time: ONNX Runtime already spreads a tile over the cores,
        // and its arena grows by powers of two, so a batch's peak overshoots its sum.
        if self.model.provider() == sitsflow_infer::Provider::Cpu {
            return 1;
        }
        (budget_bytes / per_tile(self.tiling.side(width, height)).max(1)).max(1)
    }

    /// Predicts the scene of `raster` (with a fusion network's VHR image `vhr` of the
    /// same year) tile by tile, `batch` tiles per ONNX Runtime run, handing each core's
    /// probabilities to `sink` in tile order.
    #[allow(clippy::too_many_arguments)]
    pub fn predict(
        &self,
        raster: &FeatureRaster,
        vhr: Option<&Vhr>,
        width: usize,
        height: usize,
        batch: usize,
        mut sink: impl FnMut(TileProbabilities) -> Result<()>,
    ) -> Result<()> {
        let side = self.tiling.side(width, height);
        let cores = self.tiling.cores(width, height);
        let (c, k) = (self.bands.len(), self.outputs());
        let fusion = match (&self.vhr, vhr) {
            (Some(wanted), Some(image)) => Some((wanted, image, vhr_bands(self.model, wanted, image)?)),
            (Some(wanted), None) => bail!("{} fuses a VHR image (input '{}'), and none was given", self.model.path().display(), wanted.name),
            (None, _) => None,
        };
        for (b, group) in cores.chunks(batch.max(1)).enumerate() {
            let mut input = Vec::with_capacity(group.len() * c * side * side);
            for core in group {
                input.extend(tile_input(
                    raster,
                    &self.bands,
                    width,
                    height,
                    core,
                    &self.tiling,
                )?);
            }
            let (out, shape) = match &fusion {
                None => self
                    .model
                    .run_batched(&input, &[c, side, side], usize::MAX)
                    .map_err(|e| anyhow!("{e}"))?,
                Some((wanted, image, vhr_bands)) => {
                    let name = &wanted.name;
                    let mut vhr = Vec::with_capacity(group.len() * vhr_bands.len() * side * side * image.scale * image.scale);
                    for core in group {
                        vhr.extend(vhr_tile_input(image, vhr_bands, width, height, core, &self.tiling)?);
                    }
                    let fine = side * image.scale;
                    let input_name = self.model.metadata().map(|m| m.input.name.clone()).unwrap_or_default();
                    let outputs = self
                        .model
                        .run(vec![
                            (input_name, vec![group.len(), c, side, side], input),
                            (name.clone(), vec![group.len(), vhr_bands.len(), fine, fine], vhr),
                        ])
                        .map_err(|e| anyhow!("{e}"))?;
                    let (_, shape, data) = outputs.into_iter().next().ok_or_else(|| anyhow!("{}: no output", self.model.path().display()))?;
                    (data, shape)
                }
            };
            if shape != [group.len(), k, side, side] {
                bail!(
                    "{}: returned shape {shape:?} for {} tiles of {c} × {side} × {side}, expected {k} output planes",
                    self.model.path().display(),
                    group.len()
                );
            }
            for (j, core) in group.iter().enumerate() {
                let tile = &out[j * k * side * side..(j + 1) * k * side * side];
                let mut data = Vec::with_capacity(k * core.pixels());
                for plane in tile.chunks_exact(side * side) {
                    for r in 0..core.rows {
                        let start = (self.tiling.overlap + r) * side + self.tiling.overlap;
                        data.extend_from_slice(&plane[start..start + core.cols]);
                    }
                }
                sink(TileProbabilities {
                    index: b * batch.max(1) + j,
                    core: *core,
                    data,
                })?;
            }
        }
        Ok(())
    }
}

/// The band of `image` for each VHR channel `wanted` names, after checking its scale.
fn vhr_bands(model: &Model, wanted: &sitsflow_infer::VhrMetadata, image: &Vhr) -> Result<Vec<usize>> {
    if wanted.scale != image.scale {
        bail!(
            "{} was trained on a VHR image {} times finer than the scene; {} is read {} times finer (set `vhr_scale = {}`)",
            model.path().display(),
            wanted.scale,
            image.raster.path.display(),
            image.scale,
            wanted.scale
        );
    }
    wanted
        .channels
        .iter()
        .map(|c| {
            image.raster.names.iter().position(|n| n == c).ok_or_else(|| {
                anyhow!(
                    "{} has no band '{c}', which {} was trained on (it has {})",
                    image.raster.path.display(),
                    model.path().display(),
                    image.raster.names.join(", ")
                )
            })
        })
        .collect()
}

/// Polygons of a sparse selection: 4-connected pixels of one class, numbered from 1 in
/// the order of their first pixel. `pixels` are row-major indices on a `width`-wide grid.
pub fn polygons(pixels: &[u64], labels: &[u16], width: usize) -> Vec<u32> {
    let index: HashMap<u64, usize> = pixels.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    let mut parent: Vec<usize> = (0..pixels.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, &p) in pixels.iter().enumerate() {
        let col = p % width as u64;
        let neighbours = [(col > 0).then(|| p - 1), p.checked_sub(width as u64)];
        for q in neighbours.into_iter().flatten() {
            if let Some(&j) = index.get(&q) {
                if labels[j] == labels[i] {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
    }
    let mut ids: BTreeMap<usize, u32> = BTreeMap::new();
    let mut order: Vec<(u64, usize)> = pixels.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    order.sort_unstable();
    let mut out = vec![0u32; pixels.len()];
    for (_, i) in order {
        let root = find(&mut parent, i);
        let next = ids.len() as u32 + 1;
        out[i] = *ids.entry(root).or_insert(next);
    }
    out
}

/// The test polygons: per class (a polygon's class is its pixels' class), `share` of its
/// polygons drawn at random, at least one where a class has two or more, never all.
pub fn test_polygons(
    groups: &[u32],
    labels: &[u16],
    share: f64,
    rng: &mut impl Rng,
) -> std::collections::BTreeSet<u32> {
    let mut by_class: BTreeMap<u16, std::collections::BTreeSet<u32>> = BTreeMap::new();
    for (&g, &l) in groups.iter().zip(labels) {
        by_class.entry(l).or_default().insert(g);
    }
    let mut test = std::collections::BTreeSet::new();
    if share <= 0.0 {
        return test;
    }
    for ids in by_class.values() {
        let mut ids: Vec<u32> = ids.iter().copied().collect();
        if ids.len() < 2 {
            continue;
        }
        let k = ((share * ids.len() as f64).round() as usize).clamp(1, ids.len() - 1);
        // A partial Fisher–Yates shuffle: the first k are the draw.
        for i in 0..k {
            let j = rng.random_range(i..ids.len());
            ids.swap(i, j);
        }
        test.extend(&ids[..k]);
    }
    test
}

/// A sparse training set on the scene's grid, for [`write_dataset`].
pub struct SparseLabels<'a> {
    /// The selected pixels' indices, row-major over the grid.
    pub pixels: &'a [u64],
    /// Each pixel's class code.
    pub labels: &'a [u16],
    /// Each pixel's split group (its block or polygon), from 1.
    pub groups: &'a [u32],
    /// The groups held out for testing.
    pub test_groups: &'a std::collections::BTreeSet<u32>,
    /// Class code → name.
    pub classes: &'a [(u16, String)],
    /// How the split was drawn, recorded in `dataset.json`.
    pub split_rule: String,
}

/// Writes a patch dataset (`sitsflow-patches/1`, see `models/sitsflow_models/patches.py`)
/// into `dir`: the whole features raster as `image.npy` `[C, H, W]` (written window by
/// window into a file `ndarray-npy` laid out, so the cube is never whole in memory), a
/// fusion's VHR image as `vhr.npy` `[V, H·s, W·s]` the same way, `labels.npy`,
/// `groups.npy`, and `dataset.json` last (its presence means the folder is complete).
#[allow(clippy::too_many_arguments)]
pub fn write_dataset(
    dir: &Path,
    features: &Path,
    vhr: Option<&Vhr>,
    windows: &[Window],
    width: usize,
    height: usize,
    set: &SparseLabels,
) -> Result<()> {
    use ndarray_npy::WriteNpyExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join("dataset.json"));
    let _ = std::fs::remove_file(dir.join("vhr.npy"));
    let raster = FeatureRaster::open(features)?;
    // Checked before the cube is written: the recipe reads dates × bands channels.
    let (bands, dates) = crate::network::grid_axes(&features.display().to_string(), &raster.names)?;
    write_cube(&dir.join("image.npy"), &raster, windows, width, height, 1)?;
    if let Some(vhr) = vhr {
        write_cube(&dir.join("vhr.npy"), &vhr.raster, windows, width, height, vhr.scale)?;
    }
    let mut labels = ndarray::Array2::<u16>::zeros((height, width));
    let mut groups = ndarray::Array2::<u32>::zeros((height, width));
    for ((&p, &l), &g) in set.pixels.iter().zip(set.labels).zip(set.groups) {
        let (r, q) = ((p / width as u64) as usize, (p % width as u64) as usize);
        labels[[r, q]] = l;
        groups[[r, q]] = g;
    }
    let write_npy = |name: &str,
                     write: &dyn Fn(
        std::io::BufWriter<std::fs::File>,
    ) -> Result<(), ndarray_npy::WriteNpyError>|
     -> Result<()> {
        let path = dir.join(name);
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        write(std::io::BufWriter::new(f)).map_err(|e| anyhow!("{}: {e}", path.display()))
    };
    write_npy("labels.npy", &|f| labels.write_npy(f))?;
    write_npy("groups.npy", &|f| groups.write_npy(f))?;
    let all_groups: std::collections::BTreeSet<u32> = set.groups.iter().copied().collect();
    let mut codes: Vec<u16> = set.labels.to_vec();
    codes.sort_unstable();
    codes.dedup();
    let classes: Vec<_> = codes
        .iter()
        .map(|&code| {
            let name = set
                .classes
                .iter()
                .find(|(c, _)| *c == code)
                .map_or_else(|| format!("class {code}"), |(_, n)| n.clone());
            json!({ "code": code, "name": name })
        })
        .collect();
    let meta = json!({
        "contract": DATASET_CONTRACT,
        "channels": raster.names,
        "bands": bands,
        "dates": dates,
        "classes": classes,
        "split": {
            "train": all_groups.difference(set.test_groups).collect::<Vec<_>>(),
            "test": set.test_groups.iter().collect::<Vec<_>>(),
        },
        "split_rule": set.split_rule,
        "source": features.display().to_string(),
        "vhr": vhr.map(|v| json!({
            "channels": v.raster.names,
            "scale": v.scale,
            "source": v.raster.path.display().to_string(),
        })),
    });
    let path = dir.join("dataset.json");
    sitsflow_core::fsutil::write_atomic(&path, serde_json::to_string_pretty(&meta)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes a super-resolution dataset (seed 000; `sitsflow-patches/1` with `fine.npy`):
/// every band of the dated `features` raster as `image.npy`, the annotations
/// (`(date, codes on the grid `scale` times finer)`) as `fine.npy` `[A, H·s, W·s]`, empty
/// sparse labels, and `dataset.json` last.
#[allow(clippy::too_many_arguments)]
pub fn write_sr_dataset(
    dir: &Path,
    features: &Path,
    windows: &[Window],
    width: usize,
    height: usize,
    annotations: &[(String, Vec<u16>)],
    scale: usize,
    classes: &[(u16, String)],
) -> Result<()> {
    use ndarray_npy::WriteNpyExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join("dataset.json"));
    let raster = FeatureRaster::open(features)?;
    let (bands, dates) = crate::network::grid_axes(&features.display().to_string(), &raster.names)?;
    if let Some(d) = dates.iter().find(|d| sitsflow_raster::parse_date(d).is_none()) {
        bail!("{}: its features are named by date index ('{d}'), not by date; a super-resolution stage needs the dates (a features stage without per_year)", features.display());
    }
    write_cube(&dir.join("image.npy"), &raster, windows, width, height, 1)?;
    let (fw, fh) = (width * scale, height * scale);
    let mut fine = ndarray::Array3::<u16>::zeros((annotations.len(), fh, fw));
    for (a, (_, codes)) in annotations.iter().enumerate() {
        if codes.len() != fw * fh {
            bail!("annotation {a}: {} px, expected {fw} × {fh}", codes.len());
        }
        fine.index_axis_mut(ndarray::Axis(0), a).as_slice_mut().expect("standard layout").copy_from_slice(codes);
    }
    let write_npy = |name: &str, write: &dyn Fn(std::io::BufWriter<std::fs::File>) -> Result<(), ndarray_npy::WriteNpyError>| -> Result<()> {
        let path = dir.join(name);
        let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        write(std::io::BufWriter::new(f)).map_err(|e| anyhow!("{}: {e}", path.display()))
    };
    write_npy("fine.npy", &|f| fine.write_npy(f))?;
    write_npy("labels.npy", &|f| ndarray::Array2::<u16>::zeros((height, width)).write_npy(f))?;
    write_npy("groups.npy", &|f| ndarray::Array2::<u32>::zeros((height, width)).write_npy(f))?;
    let mut codes: Vec<u16> = fine.iter().copied().filter(|&c| c != 0).collect();
    codes.sort_unstable();
    codes.dedup();
    let classes: Vec<_> = codes
        .iter()
        .map(|&code| {
            let name = classes.iter().find(|(c, _)| *c == code).map_or_else(|| format!("class {code}"), |(_, n)| n.clone());
            json!({ "code": code, "name": name })
        })
        .collect();
    let meta = json!({
        "contract": DATASET_CONTRACT,
        "channels": raster.names,
        "bands": bands,
        "dates": dates,
        "classes": classes,
        "split": null,
        "split_rule": null,
        "source": features.display().to_string(),
        "vhr": null,
        "fine": { "scale": scale, "dates": annotations.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>() },
    });
    let path = dir.join("dataset.json");
    sitsflow_core::fsutil::write_atomic(&path, serde_json::to_string_pretty(&meta)?.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Every band of `raster` as an `.npy` `[C, H·scale, W·scale]` at `path`, read window by
/// window (`windows` on the scene's grid, each `scale` times larger on the raster's) into
/// a file `ndarray-npy` laid out, so the cube is never whole in memory.
fn write_cube(path: &Path, raster: &FeatureRaster, windows: &[Window], width: usize, height: usize, scale: usize) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let c = raster.names.len();
    let (w, h) = (width * scale, height * scale);
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    ndarray_npy::write_zeroed_npy::<f32, _>(&file, (c, h, w)).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let data_start = file.metadata()?.len() - (c * h * w * 4) as u64;
    let all: Vec<usize> = (0..c).collect();
    for window in windows {
        let window = window.scaled(scale);
        let planes = raster.read_planes(window, &all)?;
        let mut bytes = Vec::with_capacity(window.cols * 4);
        for (k, plane) in planes.chunks_exact(window.pixels()).enumerate() {
            for r in 0..window.rows {
                bytes.clear();
                for v in &plane[r * window.cols..(r + 1) * window.cols] {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                let at = data_start + (((k * h + window.row + r) * w + window.col) * 4) as u64;
                file.write_all_at(&bytes, at).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    file.sync_all().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn reflection_mirrors_without_repeating_the_edge() {
        let got: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect(-40, 1), 0);
        assert_eq!(reflect(-9, 3), 1);
    }

    #[test]
    fn cores_cover_the_scene_once_and_small_scenes_get_a_small_tile() {
        let t = Tiling::new(512, 16, 4).unwrap();
        for (w, h) in [(64, 64), (1000, 700), (480, 481), (2048, 2048)] {
            let mut count = vec![0u8; w * h];
            for core in t.cores(w, h) {
                assert_eq!(core.row % 4, 0);
                assert_eq!(core.col % 4, 0);
                for r in core.row..core.row + core.rows {
                    for c in core.col..core.col + core.cols {
                        count[r * w + c] += 1;
                    }
                }
            }
            assert!(count.iter().all(|&n| n == 1), "{w} × {h}");
        }
        assert_eq!(t.side(64, 64), 96);
        assert_eq!(t.side(2048, 10), 512);
        assert!(Tiling::new(32, 16, 4).is_err());
        assert!(Tiling::new(510, 16, 4).is_err());
    }

    #[test]
    fn polygons_are_connected_pixels_of_one_class() {
        // 0 1 . 3     classes: a a . b
        // 4 . . 7              a . . b
        // 8 9 . .              c c . .
        let pixels = [0, 1, 3, 4, 7, 8, 9];
        let labels = [1, 1, 2, 1, 2, 3, 3];
        let g = polygons(&pixels, &labels, 4);
        assert_eq!(g, [1, 1, 2, 1, 2, 3, 3]);
        // The same class touching diagonally only is two polygons.
        let g = polygons(&[0, 5], &[1, 1], 4);
        assert_eq!(g, [1, 2]);
    }

    #[test]
    fn a_third_of_each_class_polygons_is_tested_and_never_all() {
        let groups: Vec<u32> = (1..=30).collect();
        let labels: Vec<u16> = (0..30)
            .map(|i| if i < 27 { 1 + (i % 3) as u16 } else { 4 })
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let test = test_polygons(&groups, &labels, 0.34, &mut rng);
        for class in 1..=3u16 {
            let n = groups
                .iter()
                .zip(&labels)
                .filter(|(g, l)| **l == class && test.contains(g))
                .count();
            assert_eq!(n, 3, "class {class}: 34 % of 9 polygons");
        }
        let class4 = groups
            .iter()
            .zip(&labels)
            .filter(|(g, l)| **l == 4 && test.contains(g))
            .count();
        assert_eq!(class4, 1);
        let same = test_polygons(
            &groups,
            &labels,
            0.34,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
        );
        assert_eq!(test, same, "seeded");
        assert!(
            test_polygons(&[1], &[1], 0.34, &mut rng).is_empty(),
            "a single polygon trains"
        );
    }
}
