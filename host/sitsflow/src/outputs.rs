//! A run's outputs: rasters written chunk by chunk (`ChunkedRaster`) with their pixel
//! type and the scale of their grid, finished into COGs. Shared by the chunk phase
//! (`run`) and the fit nodes (`fit`); `run` calls `fit::run`, and `fit` knows nothing of `run`.

use crate::raster::{ChunkedRaster, ClassStyle, OutputKind, Window};
use anyhow::Result;
use std::path::{Path, PathBuf};

pub use sitsflow_core::PixelType;

/// One output of the run (a stage's, or the aligned reference).
pub struct Output {
    /// The chunk files and the COG they are finished into.
    pub raster: ChunkedRaster,
    pixel: PixelType,
    /// Output pixels per series pixel along each axis (a stage's footprint scale).
    pub scale: usize,
}

impl Output {
    /// An output named `name` on `grid`: chunk files under `partial_dir/<name>/`, its COG `run_dir/<name>.tif`.
    pub fn new(partial_dir: &Path, run_dir: &Path, name: &str, grid: &crate::raster::Grid, pixel: PixelType, style: Option<ClassStyle>) -> Output {
        let (kind, nodata) = match pixel {
            PixelType::U8 => (OutputKind::Categorical, Some(255.0)),
            PixelType::U16 | PixelType::U32 => (OutputKind::Categorical, Some(0.0)),
            PixelType::F32 => (OutputKind::Continuous, Some(f64::NAN)),
        };
        let raster = ChunkedRaster::new(&partial_dir.join(name), &run_dir.join(format!("{name}.tif")), grid, kind, nodata, style);
        Output { raster, pixel, scale: 1 }
    }

    /// A vector reference's feature ids (`u32`, nodata [`crate::raster::NO_FEATURE`]:
    /// FID 0 is a feature of shapefiles).
    pub fn feature_ids(partial_dir: &Path, run_dir: &Path, name: &str, grid: &crate::raster::Grid) -> Output {
        let raster = ChunkedRaster::new(
            &partial_dir.join(name),
            &run_dir.join(format!("{name}.tif")),
            grid,
            OutputKind::Categorical,
            Some(crate::raster::NO_FEATURE as f64),
            None,
        );
        Output { raster, pixel: PixelType::U32, scale: 1 }
    }

    /// An output on the grid `scale` times finer than `grid` (the series'), whose chunks
    /// are given by their windows on the series' grid.
    pub fn on_scaled_grid(partial_dir: &Path, run_dir: &Path, name: &str, grid: &crate::raster::Grid, scale: usize, pixel: PixelType, style: Option<ClassStyle>) -> Output {
        Output { scale, ..Output::new(partial_dir, run_dir, name, &grid.scaled(scale), pixel, style) }
    }

    /// Mosaics the chunks (windows on the series' grid) into the output's COG and returns its path.
    pub fn finish(&mut self, chunks: &[(usize, Window)]) -> Result<PathBuf> {
        let scaled: Vec<(usize, Window)>;
        let chunks = if self.scale == 1 {
            chunks
        } else {
            scaled = chunks.iter().map(|(i, w)| (*i, w.scaled(self.scale))).collect();
            &scaled
        };
        let path = match self.pixel {
            PixelType::U8 => self.raster.finish::<u8>(chunks),
            PixelType::U16 => self.raster.finish::<u16>(chunks),
            PixelType::U32 => self.raster.finish::<u32>(chunks),
            PixelType::F32 => self.raster.finish::<f32>(chunks),
        }?;
        crate::fail_point!("run::assembled");
        Ok(path)
    }

    /// Assembles the output unless a run with the same key already did (its COG is in
    /// the staging folder: it got its name there only when complete).
    pub fn finish_or_reuse(&mut self, chunks: &[(usize, Window)]) -> Result<PathBuf> {
        let target = self.raster.target().to_path_buf();
        if target.exists() {
            log::debug!("{} was assembled by an interrupted run", target.display());
            return Ok(target);
        }
        self.finish(chunks)
    }
}
