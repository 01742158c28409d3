//! Writing rasters as Cloud-Optimized GeoTIFFs (tiled, DEFLATE, overviews), with
//! band names, no-data, and for class maps a colour table and class names.
//!
//! A run writes each chunk of an output as its own small GeoTIFF (under a temporary
//! name, renamed when complete), so a run killed at any moment leaves only whole
//! chunk files behind and a rerun can take them over. When every chunk is there, a
//! VRT mosaic of them is copied into the COG, under a temporary name first; only the
//! final rename gives the output its real name. A wide output (thousands of bands
//! over many chunks, where the VRT's sources alone would take hundreds of MiB) is
//! first copied chunk by chunk and band by band into one band-interleaved GeoTIFF, and
//! an output whose overviews would not fit what the budget leaves the assembly is
//! written without them.

use super::{Grid, Window};
use anyhow::{Context, Result, bail};
use gdal::raster::{Buffer, GdalType, RasterCreationOptions};
use gdal::{Dataset, DriverManager, Metadata};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Class names and colours of a categorical map.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassStyle {
    /// (code, name, `#rrggbb`, or `transparent` for a class drawn as nothing)
    pub classes: Vec<(u16, String, String)>,
}

/// What an output holds, which decides its overview resampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Continuous values (features, probabilities): averaged overviews.
    Continuous,
    /// Classes or masks: overviews by the most frequent value.
    Categorical,
}

fn rgb(hex: &str) -> Option<(i16, i16, i16)> {
    let h = hex.strip_prefix('#')?;
    if h.len() != 6 {
        return None;
    }
    let v = u32::from_str_radix(h, 16).ok()?;
    Some((((v >> 16) & 0xff) as i16, ((v >> 8) & 0xff) as i16, (v & 0xff) as i16))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn cog_options(kind: OutputKind, block: usize, overviews: bool) -> RasterCreationOptions {
    let resampling = match kind {
        OutputKind::Continuous => "AVERAGE",
        OutputKind::Categorical => "MODE",
    };
    let mut options = vec![
        "COMPRESS=DEFLATE".to_string(),
        "PREDICTOR=YES".to_string(),
        format!("BLOCKSIZE={block}"),
        "BIGTIFF=IF_SAFER".to_string(),
        format!("OVERVIEW_RESAMPLING={resampling}"),
        format!("NUM_THREADS={}", super::cog_threads()),
    ];
    if !overviews {
        options.push("OVERVIEWS=NONE".to_string());
    }
    RasterCreationOptions::from_iter(options)
}

/// About what GDAL 3.6 takes to build a COG's overviews, in MiB: for every band a
/// buffer of the source's width × 256 rows read and one written, and about 256 KiB of
/// its own (measured: 4000 bands of 64 × 64 px took 780 MiB, 360 bands of 512 × 512 px
/// 500 MiB, over what the same copies took without overviews).
pub fn overview_memory_mib(bands: usize, width: usize, height: usize, bytes: usize) -> usize {
    let per_band = width * height.min(256) * bytes * 2 + (256 << 10);
    (bands * per_band).div_ceil(1 << 20)
}

/// The most sources (bands × chunks) a VRT mosaic takes; a wider output is copied into
/// one GeoTIFF instead (a VRT holds several KiB per source: 64,000 took 270 MiB).
const MAX_VRT_SOURCES: usize = 20_000;

/// The most bytes one COG block holds (all its bands: GDAL 3.6's COG driver interleaves
/// pixels), so a wide output is written in smaller blocks rather than in blocks of
/// hundreds of MiB each (one per compression thread).
const COG_BLOCK_BYTES: usize = 16 << 20;

/// The COG block side for `bands` bands of `bytes` each: 256 px, halved while a block of
/// all bands would pass [`COG_BLOCK_BYTES`] (16 px at least). It depends only on the
/// output's bands and type, never on the run's budget or workers, so outputs stay the
/// same bytes whatever the machine.
pub fn cog_block_side(bands: usize, bytes: usize) -> usize {
    let mut side = 256;
    while side > 16 && side * side * bands.max(1) * bytes.max(1) > COG_BLOCK_BYTES {
        side /= 2;
    }
    side
}

/// Closes a dataset written at `path` and fails when GDAL reported an error while
/// closing: a compressed GeoTIFF writes its last blocks on close, which on a full disk
/// fails without any return value, leaving a truncated file that must never be renamed
/// into place.
fn close_checked(ds: Dataset, path: &Path) -> Result<()> {
    // SAFETY: GDAL's error state is per thread; reset, close, read it back.
    unsafe { gdal_sys::CPLErrorReset() };
    drop(ds);
    let failed = unsafe { gdal_sys::CPLGetLastErrorType() } >= gdal_sys::CPLErr::CE_Failure;
    if failed {
        let msg = unsafe { std::ffi::CStr::from_ptr(gdal_sys::CPLGetLastErrorMsg()) }.to_string_lossy().into_owned();
        bail!("closing {}: {msg}", path.display());
    }
    Ok(())
}

/// Copies `source` into a COG at `target` via a temporary name (moving a PAM
/// sidecar, which holds class names, along with it).
fn copy_to_cog(source: &Dataset, target: &Path, kind: OutputKind) -> Result<PathBuf> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = sitsflow_core::fsutil::temp_path(target);
    let driver = DriverManager::get_driver_by_name("COG")?;
    let bytes = match source.rasterband(1).map(|b| b.band_type()) {
        Ok(t) => t.bytes() as usize,
        Err(_) => 4,
    };
    let bands = source.raster_count();
    let block = cog_block_side(bands, bytes);
    let (width, height) = source.raster_size();
    let share = super::assembly_memory_mib();
    let needed = overview_memory_mib(bands, width, height, bytes);
    let overviews = share == 0 || needed <= share;
    if !overviews {
        log::warn!(
            "writing {} without overviews: building them for its {bands} bands would take about {needed} MiB, over the \
             {share} MiB the memory budget leaves the assembly",
            target.display()
        );
    }
    // GDAL 3.6's option list says COG blocks "should be >= 128" but writes smaller ones
    // as asked (a wide output needs them): skip that validation's warning for our own options.
    let small_block = block < 128;
    if small_block {
        gdal::config::set_thread_local_config_option("GDAL_VALIDATE_CREATION_OPTIONS", "NO")?;
    }
    let copy = source
        .create_copy(&driver, &tmp, &cog_options(kind, block, overviews))
        .with_context(|| format!("writing the COG {}", tmp.display()));
    if small_block {
        gdal::config::clear_thread_local_config_option("GDAL_VALIDATE_CREATION_OPTIONS")?;
    }
    let copy = sitsflow_core::fsutil::with_space_hint(copy, &tmp);
    if copy.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let closed = sitsflow_core::fsutil::with_space_hint(close_checked(copy?, &tmp), &tmp);
    if closed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    closed?;
    sitsflow_core::fail_point!("raster::cog_copied");
    let aux = PathBuf::from(format!("{}.aux.xml", tmp.display()));
    if aux.exists() {
        std::fs::rename(&aux, format!("{}.aux.xml", target.display()))?;
    }
    std::fs::rename(&tmp, target).with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
    Ok(target.to_path_buf())
}

/// The colour table and category names of a class style, as VRT band elements.
fn class_xml(style: &ClassStyle) -> Result<String> {
    let max = style.classes.iter().map(|c| c.0).max().unwrap_or(0) as usize;
    let mut colors = vec![(0i16, 0i16, 0i16, 0i16); max + 1];
    let mut names = vec![String::new(); max + 1];
    for (code, name, color) in &style.classes {
        colors[*code as usize] = if color == "transparent" {
            (0, 0, 0, 0)
        } else {
            let (r, g, b) = rgb(color).with_context(|| format!("class {code} '{name}': colour '{color}' is not #rrggbb"))?;
            (r, g, b, 255)
        };
        names[*code as usize] = name.clone();
    }
    let mut xml = String::from("    <ColorInterp>Palette</ColorInterp>\n    <CategoryNames>\n");
    for name in &names {
        let _ = writeln!(xml, "      <Category>{}</Category>", xml_escape(name));
    }
    xml.push_str("    </CategoryNames>\n    <ColorTable>\n");
    for (r, g, b, a) in colors {
        let _ = writeln!(xml, r#"      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>"#);
    }
    xml.push_str("    </ColorTable>\n");
    Ok(xml)
}

/// An in-memory raster on `grid` with named bands.
fn mem_dataset<T: GdalType>(grid: &Grid, band_names: &[String], nodata: Option<f64>) -> Result<Dataset> {
    let driver = DriverManager::get_driver_by_name("MEM")?;
    let mut ds = driver.create_with_band_type::<T, _>("", grid.width, grid.height, band_names.len())?;
    if let Some(gt) = grid.geo_transform {
        ds.set_geo_transform(&gt)?;
    }
    if !grid.projection.is_empty() {
        ds.set_projection(&grid.projection)?;
    }
    for (i, name) in band_names.iter().enumerate() {
        let mut band = ds.rasterband(i + 1)?;
        band.set_description(name)?;
        if let Some(nd) = nodata {
            band.set_no_data_value(Some(nd))?;
        }
    }
    Ok(ds)
}

/// Writes a whole multi-band float raster as a tiled, band-interleaved GeoTIFF (the
/// demo generator's scenes). Band interleaving lets a reader decode one band's tile
/// without the others' (a pixel-interleaved COG decodes all bands of a tile at once).
pub fn write_geotiff_f32(path: &Path, grid: &Grid, band_names: &[String], planes: Vec<Vec<f32>>) -> Result<()> {
    let ds = mem_dataset::<f32>(grid, band_names, None)?;
    for (i, plane) in planes.into_iter().enumerate() {
        ds.rasterband(i + 1)?.write((0, 0), (grid.width, grid.height), &mut Buffer::new((grid.width, grid.height), plane))?;
    }
    write_scene(ds, path, "3")
}

/// Writes a demo scene's in-memory dataset as a tiled, band-interleaved, DEFLATE GeoTIFF
/// with `predictor` (3: floating point, 2: integers).
fn write_scene(ds: Dataset, path: &Path, predictor: &str) -> Result<()> {
    let predictor = format!("PREDICTOR={predictor}");
    let options = RasterCreationOptions::from_iter([
        "TILED=YES",
        "BLOCKXSIZE=256",
        "BLOCKYSIZE=256",
        "INTERLEAVE=BAND",
        "COMPRESS=DEFLATE",
        predictor.as_str(),
        "BIGTIFF=IF_SAFER",
    ]);
    sitsflow_core::fsutil::produce(path, |tmp| {
        close_checked(ds.create_copy(&DriverManager::get_driver_by_name("GTiff")?, tmp, &options)?, tmp)
    })
}

/// Writes reflectance planes as UInt16 digital numbers the way Sentinel-2 L2A products
/// carry them since baseline 04.00 (DN = reflectance × 10000 + 1000, 0 = no data), with
/// the band's scale 1e-4 and offset −0.1 in its metadata so readers get reflectance back;
/// bands named in `codes` (e.g. `SCL`) are written as they are, without scale. Tiled,
/// band-interleaved, DEFLATE with the integer predictor.
/// `metadata`: dataset-level items (e.g. that the image is generated).
pub fn write_geotiff_dn(
    path: &Path,
    grid: &Grid,
    band_names: &[String],
    planes: Vec<Vec<f32>>,
    codes: &[&str],
    metadata: &[(&str, &str)],
) -> Result<()> {
    let mut ds = mem_dataset::<u16>(grid, band_names, Some(0.0))?;
    for (key, value) in metadata {
        gdal::Metadata::set_metadata_item(&mut ds, key, value, "")?;
    }
    for (i, plane) in planes.into_iter().enumerate() {
        let is_code = codes.contains(&band_names[i].as_str());
        let dn: Vec<u16> = plane
            .iter()
            .map(|&v| match (v.is_nan(), is_code) {
                (true, _) => 0,
                (false, true) => v.round().clamp(0.0, 65535.0) as u16,
                (false, false) => (v * 10_000.0 + 1000.0).round().clamp(1.0, 65535.0) as u16,
            })
            .collect();
        let mut band = ds.rasterband(i + 1)?;
        band.write((0, 0), (grid.width, grid.height), &mut Buffer::new((grid.width, grid.height), dn))?;
        if !is_code {
            band.set_scale(1e-4)?;
            band.set_offset(-0.1)?;
        }
    }
    write_scene(ds, path, "2")
}

/// Writes a class map (`u16`, 0 = no data) as a COG with colour table and class names,
/// through the same chunk-file → VRT → COG path as a run's outputs (one chunk).
pub fn write_class_map(path: &Path, grid: &Grid, name: &str, labels: Vec<u16>, style: &ClassStyle) -> Result<()> {
    let window = Window { row: 0, col: 0, rows: grid.height, cols: grid.width };
    // Not temp_path(path) itself: that name is the COG's own temporary file.
    let work = sitsflow_core::fsutil::temp_path(&path.with_extension("chunks"));
    let mut raster = ChunkedRaster::new(&work, path, grid, OutputKind::Categorical, Some(0.0), Some(style.clone()));
    let written = raster.write_chunk(0, window, &[name.to_string()], &labels).and_then(|()| raster.finish::<u16>(&[(0, window)]));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    written.map(|_| ())
}

/// One output of a run, written chunk by chunk into `work/<chunk>.tif` and finished
/// into a COG at `target`.
pub struct ChunkedRaster {
    work: PathBuf,
    target: PathBuf,
    grid: Grid,
    kind: OutputKind,
    nodata: Option<f64>,
    style: Option<ClassStyle>,
    band_names: Option<Vec<String>>,
}

impl ChunkedRaster {
    /// A new output, written as chunk files under `work` and finished into a COG at `target`;
    /// `nodata` marks missing pixels, `style` gives class maps their colours and names.
    pub fn new(work: &Path, target: &Path, grid: &Grid, kind: OutputKind, nodata: Option<f64>, style: Option<ClassStyle>) -> Self {
        ChunkedRaster {
            work: work.to_path_buf(),
            target: target.to_path_buf(),
            grid: grid.clone(),
            kind,
            nodata,
            style,
            band_names: None,
        }
    }

    /// Where the finished COG goes.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Sets the colour table and class names (when they are known only after the chunks).
    pub fn set_style(&mut self, style: ClassStyle) {
        self.style = Some(style);
    }

    fn chunk_file(&self, index: usize) -> PathBuf {
        self.work.join(format!("{index:06}.tif"))
    }

    /// The band names chunks were written with (from this run or a previous one).
    fn known_band_names(&mut self) -> Result<Option<Vec<String>>> {
        if self.band_names.is_none() {
            let existing = match std::fs::read_dir(&self.work) {
                Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.extension().is_some_and(|x| x == "tif")),
                Err(_) => None,
            };
            if let Some(path) = existing {
                let ds = Dataset::open(&path).with_context(|| format!("reopening {}", path.display()))?;
                let names = (1..=ds.raster_count()).map(|i| Ok(ds.rasterband(i)?.description()?)).collect::<Result<Vec<_>>>()?;
                self.band_names = Some(names);
            }
        }
        Ok(self.band_names.clone())
    }

    /// Writes one chunk: `planes` holds `band_names.len()` planes of `window.pixels()`.
    pub fn write_chunk<T: GdalType + Copy>(&mut self, index: usize, window: Window, band_names: &[String], planes: &[T]) -> Result<()> {
        match self.known_band_names()? {
            Some(known) if known != band_names => bail!(
                "{}: chunk {index} has bands [{}], earlier chunks [{}]",
                self.target.display(),
                band_names.join(", "),
                known.join(", ")
            ),
            Some(_) => {}
            None => self.band_names = Some(band_names.to_vec()),
        }
        std::fs::create_dir_all(&self.work)?;
        let path = self.chunk_file(index);
        let tmp = sitsflow_core::fsutil::temp_path(&path);
        let result = (|| -> Result<()> {
            let driver = DriverManager::get_driver_by_name("GTiff")?;
            let options = RasterCreationOptions::from_iter(["COMPRESS=ZSTD", "ZSTD_LEVEL=1", "TILED=YES", "INTERLEAVE=BAND"]);
            let mut ds = driver.create_with_band_type_with_options::<T, _>(&tmp, window.cols, window.rows, band_names.len(), &options)?;
            if let Some(gt) = self.grid.geo_transform {
                let x = gt[0] + window.col as f64 * gt[1] + window.row as f64 * gt[2];
                let y = gt[3] + window.col as f64 * gt[4] + window.row as f64 * gt[5];
                ds.set_geo_transform(&[x, gt[1], gt[2], y, gt[4], gt[5]])?;
            }
            for (b, name) in band_names.iter().enumerate() {
                let mut band = ds.rasterband(b + 1)?;
                band.set_description(name)?;
                let plane = planes[b * window.pixels()..(b + 1) * window.pixels()].to_vec();
                band.write((0, 0), (window.cols, window.rows), &mut Buffer::new((window.cols, window.rows), plane))?;
            }
            ds.flush_cache()?;
            close_checked(ds, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        sitsflow_core::fsutil::with_space_hint(result.with_context(|| format!("writing {}", path.display())), &path)
    }

    /// Mosaics the chunk files (a VRT) into the COG at the target name.
    pub fn finish<T: GdalType + Copy>(&mut self, chunks: &[(usize, Window)]) -> Result<PathBuf> {
        let Some(names) = self.known_band_names()? else {
            bail!("{}: no chunk was written", self.target.display());
        };
        let data_type = gdal::raster::GdalDataType::try_from(T::datatype())
            .map(|t| t.name())
            .unwrap_or_else(|_| "Float32".to_string());
        let mut vrt = String::new();
        let _ = writeln!(vrt, r#"<VRTDataset rasterXSize="{}" rasterYSize="{}">"#, self.grid.width, self.grid.height);
        if !self.grid.projection.is_empty() {
            let _ = writeln!(vrt, "  <SRS>{}</SRS>", xml_escape(&self.grid.projection));
        }
        if let Some(gt) = self.grid.geo_transform {
            let _ = writeln!(vrt, "  <GeoTransform>{}, {}, {}, {}, {}, {}</GeoTransform>", gt[0], gt[1], gt[2], gt[3], gt[4], gt[5]);
        }
        for (b, name) in names.iter().enumerate() {
            let _ = writeln!(vrt, r#"  <VRTRasterBand dataType="{data_type}" band="{}">"#, b + 1);
            let _ = writeln!(vrt, "    <Description>{}</Description>", xml_escape(name));
            if let Some(nd) = self.nodata {
                let _ = writeln!(vrt, "    <NoDataValue>{}</NoDataValue>", if nd.is_nan() { "nan".to_string() } else { nd.to_string() });
            }
            // GDAL builds overviews of one colour-mapped band only: the table and names
            // go on band 1 and describe the classes of every band.
            if let (0, Some(style)) = (b, &self.style) {
                vrt.push_str(&class_xml(style)?);
            }
            for (index, w) in chunks {
                let file = self.chunk_file(*index);
                if !file.exists() {
                    bail!("{}: chunk {index} is missing from {}", self.target.display(), self.work.display());
                }
                let _ = writeln!(
                    vrt,
                    r#"    <SimpleSource><SourceFilename relativeToVRT="0">{}</SourceFilename><SourceBand>{}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{}" ySize="{}"/><DstRect xOff="{}" yOff="{}" xSize="{}" ySize="{}"/></SimpleSource>"#,
                    xml_escape(&file.display().to_string()),
                    b + 1,
                    w.cols,
                    w.rows,
                    w.col,
                    w.row,
                    w.cols,
                    w.rows
                );
            }
            let _ = writeln!(vrt, "  </VRTRasterBand>");
        }
        let _ = writeln!(vrt, "</VRTDataset>");
        let mosaic = if names.len() * chunks.len() > MAX_VRT_SOURCES && self.style.is_none() {
            self.mosaic_tiff::<T>(&names, chunks)?
        } else {
            let vrt_path = self.work.join("mosaic.vrt");
            std::fs::write(&vrt_path, vrt)?;
            Dataset::open(&vrt_path).with_context(|| format!("opening {}", vrt_path.display()))?
        };
        let target = copy_to_cog(&mosaic, &self.target, self.kind)?;
        drop(mosaic);
        let _ = std::fs::remove_dir_all(&self.work);
        Ok(target)
    }

    /// The chunk files copied, one band of one chunk at a time, into one tiled,
    /// band-interleaved GeoTIFF of the whole grid (`mosaic.tif` in the work folder).
    fn mosaic_tiff<T: GdalType + Copy>(&self, names: &[String], chunks: &[(usize, Window)]) -> Result<Dataset> {
        let path = self.work.join("mosaic.tif");
        let driver = DriverManager::get_driver_by_name("GTiff")?;
        let options = RasterCreationOptions::from_iter(["COMPRESS=ZSTD", "ZSTD_LEVEL=1", "TILED=YES", "INTERLEAVE=BAND", "BIGTIFF=IF_SAFER"]);
        let mut ds = driver
            .create_with_band_type_with_options::<T, _>(&path, self.grid.width, self.grid.height, names.len(), &options)
            .with_context(|| format!("creating {}", path.display()))?;
        if let Some(gt) = self.grid.geo_transform {
            ds.set_geo_transform(&gt)?;
        }
        if !self.grid.projection.is_empty() {
            ds.set_projection(&self.grid.projection)?;
        }
        for (b, name) in names.iter().enumerate() {
            let mut band = ds.rasterband(b + 1)?;
            band.set_description(name)?;
            if let Some(nd) = self.nodata {
                band.set_no_data_value(Some(nd))?;
            }
        }
        for (index, w) in chunks {
            let file = self.chunk_file(*index);
            let chunk = Dataset::open(&file).with_context(|| format!("{}: reopening chunk {index} ({})", self.target.display(), file.display()))?;
            for b in 1..=names.len() {
                let mut plane = chunk.rasterband(b)?.read_as::<T>((0, 0), (w.cols, w.rows), (w.cols, w.rows), None)?;
                ds.rasterband(b)?.write((w.col as isize, w.row as isize), (w.cols, w.rows), &mut plane)?;
            }
        }
        let written = sitsflow_core::fsutil::with_space_hint(
            ds.flush_cache().with_context(|| format!("writing {}", path.display())),
            &path,
        );
        written?;
        Ok(ds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_outputs_get_smaller_blocks_and_their_overviews_are_costed() {
        assert_eq!(cog_block_side(15, 4), 256, "the usual outputs keep 256 px blocks");
        assert_eq!(cog_block_side(360, 4), 64);
        assert_eq!(cog_block_side(4000, 4), 32);
        assert_eq!(cog_block_side(100_000, 4), 16, "16 px at least");
        assert!(overview_memory_mib(4000, 64, 64, 4) > 1000);
        assert!(overview_memory_mib(15, 1024, 1024, 4) < 50);
    }
}
