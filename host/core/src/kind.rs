//! The one list of stage kinds the host knows: what the plan resolves a stage to, what
//! the graph and the executors dispatch on, and what the sandbox checks a plugin exports
//! (it converts WIT's own `stage-kind` into this).

/// A stage kind's name as written in WIT and in messages (`cloud-mask`, …).
pub fn kind_name(kind: StageKind) -> &'static str {
    match kind {
        StageKind::CloudMask => "cloud-mask",
        StageKind::Features => "features",
        StageKind::Clusterer => "clusterer",
        StageKind::Labeller => "labeller",
        StageKind::Sampler => "sampler",
        StageKind::Decoder => "decoder",
        StageKind::Augmenter => "augmenter",
        StageKind::Pretrainer => "pretrainer",
        StageKind::SuperResolver => "super-resolver",
    }
}

/// A stage's kind: which interface its plugin exports — the six of WIT's `stage-kind`,
/// and `augmenter` (WIT 0.2.1), which that enum (part of the types every 0.2 plugin was
/// built against) cannot name — or, for `pretrainer`, that a recipe trains an encoder
/// self-supervised (no plugin is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// Cloud, shadow and snow masking of a chunk (`cloud-mask`).
    CloudMask,
    /// Per-pixel features of a chunk (`features`).
    Features,
    /// Unsupervised clustering: fit on a sample, assign every pixel (`clusterer`).
    Clusterer,
    /// Supervised per-pixel classification: train, then predict (`labeller`).
    Labeller,
    /// Choosing training samples (`sampler`).
    Sampler,
    /// Temporal decoding of a series of class posteriors (`decoder`).
    Decoder,
    /// Two augmented views of each image patch, for self-supervised pretraining (`augmenter`).
    Augmenter,
    /// A recipe that trains an encoder self-supervised (no plugin is one).
    Pretrainer,
    /// A recipe (`asunet`, seed 000) that maps every date on a finer grid.
    SuperResolver,
}
