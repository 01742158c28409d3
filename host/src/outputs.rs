//! A run's outputs: rasters written chunk by chunk (`ChunkedRaster`) with their pixel
//! type and the scale of their grid, finished into COGs. Shared by the chunk phase
//! (`run`) and the scene stages (`scene`), which otherwise do not know each other.

use crate::raster::{ChunkedRaster, ClassStyle, OutputKind, Window};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The value type of an output's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelType {
    U8,
    U16,
    U32,
    F32,
}

/// One output of the run (a stage's, or the aligned reference).
pub struct Output {
    pub raster: ChunkedRaster,
    pixel: PixelType,
    /// Output pixels per series pixel along each axis (a stage's footprint scale).
    pub scale: usize,
}

impl Output {
    pub fn new(partial_dir: &Path, run_dir: &Path, name: &str, grid: &crate::raster::Grid, pixel: PixelType, style: Option<ClassStyle>) -> Output {
        let (kind, nodata) = match pixel {
            PixelType::U8 => (OutputKind::Categorical, Some(255.0)),
            PixelType::U16 | PixelType::U32 => (OutputKind::Categorical, Some(0.0)),
            PixelType::F32 => (OutputKind::Continuous, Some(f64::NAN)),
        };
        let raster = ChunkedRaster::new(&partial_dir.join(name), &run_dir.join(format!("{name}.tif")), grid, kind, nodata, style);
        Output { raster, pixel, scale: 1 }
    }

    /// An output on the grid `scale` times finer than `grid` (the series'), whose chunks
    /// are given by their windows on the series' grid.
    pub fn on_scaled_grid(partial_dir: &Path, run_dir: &Path, name: &str, grid: &crate::raster::Grid, scale: usize, pixel: PixelType, style: Option<ClassStyle>) -> Output {
        Output { scale, ..Output::new(partial_dir, run_dir, name, &grid.scaled(scale), pixel, style) }
    }

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
