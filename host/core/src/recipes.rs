//! The training recipes of `models/` (PyTorch, exported to ONNX) that the host drives:
//! the one list that `config` (what `recipe = "…"` may name), the plan (which stage kind
//! a recipe makes), the executor (which driver trains and maps it) and the CLI (what
//! `sitsflow train --arch` takes) all read. A new recipe is one entry here, its host
//! module in `sitsflow` and its Python module in `models/`.

/// How a recipe is trained and run, which decides the stage kind it makes and the driver
/// that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipeShape {
    /// A per-pixel temporal classifier trained on a samples CSV (`N × T × B`): a labeller.
    Pixel,
    /// A segmentation network trained on a patch dataset and mapped tile by tile: a labeller.
    Segmentation,
    /// A self-supervised encoder trained on a stream of augmented views: a pretrainer.
    Pretraining,
    /// A super-resolution network over a window of dates, trained on dated annotations on a
    /// finer grid: a super-resolver.
    SuperResolution,
}

/// A recipe of `models/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// Its name, as `recipe = "…"` and `sitsflow train --arch` spell it.
    pub name: &'static str,
    /// How it is trained and run.
    pub shape: RecipeShape,
    /// Whether `sitsflow train --arch <name>` trains it outside a pipeline.
    pub standalone: bool,
}

/// Every recipe, by name.
pub const RECIPES: &[Recipe] = &[
    Recipe { name: "asunet", shape: RecipeShape::SuperResolution, standalone: true },
    Recipe { name: "fg-unet", shape: RecipeShape::Segmentation, standalone: true },
    Recipe { name: "lstm", shape: RecipeShape::Pixel, standalone: true },
    Recipe { name: "ltae", shape: RecipeShape::Pixel, standalone: true },
    Recipe { name: "simclr", shape: RecipeShape::Pretraining, standalone: false },
    Recipe { name: "tempcnn", shape: RecipeShape::Pixel, standalone: true },
];

/// The recipe called `name`.
pub fn recipe(name: &str) -> Option<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name)
}

/// The recipes' names, comma-separated, for messages.
pub fn names() -> String {
    RECIPES.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sorted() {
        let names: Vec<_> = RECIPES.iter().map(|r| r.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert_eq!(recipe("fg-unet").map(|r| r.shape), Some(RecipeShape::Segmentation));
        assert!(recipe("resnet").is_none());
    }
}
