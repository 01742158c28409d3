//! Rectangles of pixels and the chunking of a scene into them.

/// A rectangle of pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// The first row.
    pub row: usize,
    /// The first column.
    pub col: usize,
    /// Height in pixels.
    pub rows: usize,
    /// Width in pixels.
    pub cols: usize,
}

impl Window {
    /// Its pixel count.
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// This window grown by `halo` pixels on every side, clipped to `width × height`.
    pub fn with_halo(&self, halo: usize, width: usize, height: usize) -> Window {
        let row = self.row.saturating_sub(halo);
        let col = self.col.saturating_sub(halo);
        let row_end = (self.row + self.rows + halo).min(height);
        let col_end = (self.col + self.cols + halo).min(width);
        Window { row, col, rows: row_end - row, cols: col_end - col }
    }

    /// The same window on a grid `factor` times finer.
    pub fn scaled(&self, factor: usize) -> Window {
        Window { row: self.row * factor, col: self.col * factor, rows: self.rows * factor, cols: self.cols * factor }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rows {}..{}, cols {}..{}", self.row, self.row + self.rows, self.col, self.col + self.cols)
    }
}

/// Splits a `width × height` raster into chunks of at most `size × size`, row-major.
pub fn chunk_grid(width: usize, height: usize, size: usize) -> Vec<Window> {
    let mut chunks = Vec::new();
    for row in (0..height).step_by(size) {
        for col in (0..width).step_by(size) {
            chunks.push(Window { row, col, rows: size.min(height - row), cols: size.min(width - col) });
        }
    }
    chunks
}
