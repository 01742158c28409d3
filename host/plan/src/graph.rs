//! The plan compiled into a graph of nodes over raster references, the shape a run
//! executes (`run`) and records (`manifest.json` → `graph`).
//!
//! - a **map** node runs the chunk stages (cloud masks, features) over the chunk grid,
//!   each chunk through every stage in order, and writes *intermediate* rasters: chunk
//!   files in `.partial/<name>/`, journaled per shard;
//! - an **assemble** node turns one intermediate raster into its *declared* output, a
//!   COG staged under its final name;
//! - a **fit** node runs one whole-scene stage (clusterer, sampler, labeller, decoder)
//!   on the declared rasters before it and writes its own declared rasters;
//! - the **report** node evaluates the declared maps, writes the report and publishes.
//!
//! Every raster carries its grid (a stage of footprint scale 4 writes on the grid 4×
//! finer than the series') and pixel type. The graph is compiled once the series is
//! open (per-year outputs need its years); `run` checks that each fit node wrote the
//! rasters the graph names for it, so the graph cannot drift from what runs.

use sitsflow_sandbox::StageKind;
use sitsflow_core::PixelType;
use crate::{Plan, Role, Training};
use sitsflow_raster::Grid;
use serde_json::{Value, json};

/// Index of a raster in `Graph::rasters`.
pub type RasterId = usize;
/// Index of a node in `Graph::nodes`.
pub type NodeId = usize;

/// Whether a raster is a working file or one of the run's published outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Chunk files in `.partial/`, read only by the node that assembles them.
    Intermediate,
    /// A COG published as `<run>/<name>.tif`.
    Declared,
}

/// The pixel type of a raster, as far as the plan knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pixels {
    /// A pixel type the plan fixes.
    Known(PixelType),
    /// A decoder's from→to codes: u16 when `from × base + to` fits, else u32 (decided
    /// by the class codes the decoder reads).
    FromToCoding,
}

/// One raster of the run.
#[derive(Debug, Clone)]
pub struct RasterRef {
    /// The raster's name, which its files are named after.
    pub name: String,
    /// The grid it is written on: the series' grid, scaled by `scale`.
    pub grid: Grid,
    /// Pixels of this raster per series pixel along each axis.
    pub scale: usize,
    /// Its pixel type.
    pub pixels: Pixels,
    /// Whether it is a working file or a published output.
    pub lifetime: Lifetime,
    /// The node that writes it.
    pub producer: NodeId,
}

/// What a fit node reads and writes, per kind: the drivers (`sitsflow::fit`) take every
/// raster name from here, so the graph is the one source of the run's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FitIo {
    /// Fitted on a sample of `features` (None: its input is per-year and it names no
    /// year, which the driver refuses), then assigns every pixel into `map`.
    Cluster {
        /// The features raster it is fitted on and assigns.
        features: Option<RasterId>,
        /// The cluster map it writes.
        map: RasterId,
    },
    /// Chooses among candidate pixels (those `layers[0]` = `reference` labels, when the
    /// pipeline has one) with their `features` and the class `layers` written so far.
    Sample {
        /// The candidates' features raster.
        features: Option<RasterId>,
        /// The class rasters offered to it: the reference (when there is one), then earlier fit nodes' maps.
        layers: Vec<RasterId>,
        /// The raster of the chosen labels it writes.
        map: RasterId,
    },
    /// Trains (or loads a model) and predicts each of `maps`; `oracle` is the reference
    /// an active learner asks for labels.
    Label {
        /// The maps it predicts, one per features raster.
        maps: Vec<LabelMaps>,
        /// The reference an active learner asks for labels.
        oracle: Option<RasterId>,
    },
    /// Decodes yearly `posteriors` into yearly `maps`, the change count and from → to.
    Decode {
        /// The yearly posteriors it reads.
        posteriors: Vec<RasterId>,
        /// The yearly maps it writes.
        maps: Vec<RasterId>,
        /// The count of changes across the years.
        changes: RasterId,
        /// The from → to codes.
        fromto: RasterId,
    },
    /// Trains an encoder on views of patches of `features` (one raster per year it
    /// pools), then writes the `embeddings` of each of `sources` (every features raster
    /// of its input), one raster each.
    Pretrain {
        /// The features rasters it trains on, one per year it pools.
        features: Vec<RasterId>,
        /// The features rasters it embeds.
        sources: Vec<RasterId>,
        /// The embeddings it writes, one per source.
        embeddings: Vec<RasterId>,
    },
    /// Trains on dated annotations, then maps every date of `features` on the finer
    /// grid: each date's own labels (`dates`, a band per date), the Markov chain's
    /// consistent sequence (`markov`) and its count of changes (`changes`).
    /// `annotations`: an earlier stage's yearly maps with their dates (none when the
    /// annotations are files the plan lists).
    SuperResolve {
        /// The features raster whose dates it maps.
        features: Option<RasterId>,
        /// An earlier stage's yearly maps, each with its date.
        annotations: Vec<(String, RasterId)>,
        /// Each date's own labels, a band per date.
        dates: RasterId,
        /// The Markov chain's consistent sequence.
        markov: RasterId,
        /// The count of changes in the consistent sequence.
        changes: RasterId,
    },
}

/// One map a labeller predicts, from one features raster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMaps {
    /// The year of per-year features (None: features without years).
    pub year: Option<i32>,
    /// The features raster it predicts from.
    pub features: RasterId,
    /// The class map it writes.
    pub map: RasterId,
    /// The winning class's probability, per pixel.
    pub confidence: RasterId,
    /// Kept for a decoder that reads this labeller.
    pub proba: Option<RasterId>,
}

impl FitIo {
    /// The rasters the node reads.
    pub fn reads(&self) -> Vec<RasterId> {
        match self {
            FitIo::Cluster { features, .. } => features.iter().copied().collect(),
            FitIo::Sample { features, layers, .. } => features.iter().chain(layers).copied().collect(),
            FitIo::Label { maps, oracle } => maps.iter().map(|m| m.features).chain(*oracle).collect(),
            FitIo::Decode { posteriors, .. } => posteriors.clone(),
            FitIo::Pretrain { features, sources, .. } => features.iter().chain(sources).copied().collect(),
            FitIo::SuperResolve { features, annotations, .. } => features.iter().copied().chain(annotations.iter().map(|a| a.1)).collect(),
        }
    }

    /// The rasters the node writes.
    pub fn writes(&self) -> Vec<RasterId> {
        match self {
            FitIo::Cluster { map, .. } | FitIo::Sample { map, .. } => vec![*map],
            FitIo::Label { maps, .. } => maps.iter().flat_map(|m| [m.map, m.confidence].into_iter().chain(m.proba)).collect(),
            FitIo::Decode { maps, changes, fromto, .. } => maps.iter().copied().chain([*changes, *fromto]).collect(),
            FitIo::Pretrain { embeddings, .. } => embeddings.clone(),
            FitIo::SuperResolve { dates, markov, changes, .. } => vec![*dates, *markov, *changes],
        }
    }

    /// The class rasters it writes, offered as layers to the samplers after it.
    fn class_layers(&self) -> Vec<RasterId> {
        match self {
            FitIo::Cluster { map, .. } | FitIo::Sample { map, .. } => vec![*map],
            FitIo::Label { maps, .. } => maps.iter().map(|m| m.map).collect(),
            FitIo::Decode { maps, .. } => maps.clone(),
            // On a finer grid: not a layer of the scene's samplers.
            FitIo::Pretrain { .. } | FitIo::SuperResolve { .. } => Vec::new(),
        }
    }
}

/// A step of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// The chunk stages (indices into `plan.stages`) over the chunk grid, and the
    /// reference aligned chunk by chunk when the pipeline has one.
    Map {
        /// The chunk stages, as indices into `plan.stages`, in the order they run.
        stages: Vec<usize>,
        /// The intermediate rasters it writes.
        writes: Vec<RasterId>,
    },
    /// An intermediate raster into its declared COG.
    Assemble {
        /// The intermediate raster.
        reads: RasterId,
        /// The declared raster it becomes.
        writes: RasterId,
    },
    /// One whole-scene stage; `query` is the sampler an active learner calls inside
    /// its loop (not a node of its own); `after` are nodes it needs besides rasters (a
    /// labeller needs its sampler's selection).
    Fit {
        /// The stage, as an index into `plan.stages`.
        stage: usize,
        /// An active learner's query sampler, as an index into `plan.stages`.
        query: Option<usize>,
        /// The rasters it reads and writes.
        io: FitIo,
        /// Nodes it runs after besides those that write its rasters.
        after: Vec<NodeId>,
    },
    /// Evaluations, report, manifest, publish.
    Report {
        /// Every declared raster of the run.
        reads: Vec<RasterId>,
    },
}

/// The compiled plan.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Every raster of the run, indexed by `RasterId`.
    pub rasters: Vec<RasterRef>,
    /// The nodes, in the order the run executes them, indexed by `NodeId`.
    pub nodes: Vec<Node>,
}

impl Graph {
    /// Compiles `plan` for a series on `grid` spanning `years`.
    pub fn compile(plan: &Plan, grid: &Grid, years: &[i32]) -> Graph {
        let mut g = Graph { rasters: Vec::new(), nodes: Vec::new() };
        let add = |g: &mut Graph, name: String, scale: usize, pixels: Pixels, lifetime: Lifetime, producer: NodeId| {
            g.rasters.push(RasterRef { name, grid: grid.scaled(scale), scale, pixels, lifetime, producer });
            g.rasters.len() - 1
        };

        // The map node and one assemble node per raster it writes.
        let map: NodeId = 0;
        let mut stages = Vec::new();
        let mut chunk_rasters = Vec::new();
        for (s, stage) in plan.stages.iter().enumerate() {
            let Some(footprint) = stage.role.footprint() else { continue };
            stages.push(s);
            let pixel = if matches!(stage.role, Role::CloudMask { .. }) { PixelType::U8 } else { PixelType::F32 };
            let names: Vec<String> = if stage.role.per_year() {
                years.iter().map(|y| format!("{}_{y}", stage.id)).collect()
            } else {
                vec![stage.id.to_string()]
            };
            for name in names {
                chunk_rasters.push(add(&mut g, name, footprint.scale, Pixels::Known(pixel), Lifetime::Intermediate, map));
            }
        }
        if plan.reference.is_some() {
            chunk_rasters.push(add(&mut g, "reference".into(), 1, Pixels::Known(PixelType::U16), Lifetime::Intermediate, map));
        }
        g.nodes.push(Node::Map { stages, writes: chunk_rasters.clone() });
        for r in chunk_rasters {
            let node = g.nodes.len();
            let (name, scale, pixels) = (g.rasters[r].name.clone(), g.rasters[r].scale, g.rasters[r].pixels);
            let declared = add(&mut g, name, scale, pixels, Lifetime::Declared, node);
            g.nodes.push(Node::Assemble { reads: r, writes: declared });
        }

        // Fit nodes, in pipeline order; a labeller's query sampler runs inside it.
        let queries = plan.query_samplers();
        let per_year_input = |input: &str| plan.stages.iter().any(|s| s.id.as_str() == input && s.role.per_year());
        let reference = g.declared("reference");
        // Class rasters offered to samplers: the reference, then each fit node's maps.
        let mut class_layers: Vec<RasterId> = reference.into_iter().collect();
        let u16_map = Pixels::Known(PixelType::U16);
        for (s, stage) in plan.stages.iter().enumerate() {
            // An augmenter runs inside the pretraining node that names it.
            if stage.is_chunk_stage() || queries.contains(&stage.id.as_str()) || matches!(stage.role, Role::Augmenter) {
                continue;
            }
            let node = g.nodes.len();
            let id = stage.id.as_str();
            // The features raster a clusterer or sampler reads: its input's, or that
            // input's raster of the stage's year (None for per-year features without one).
            let one_features = |g: &Graph| match stage.role.input() {
                Some(input) if per_year_input(input.as_str()) => stage.role.year().and_then(|y| g.declared(&format!("{input}_{y}"))),
                Some(input) => g.declared(input.as_str()),
                None => None,
            };
            let mut after = Vec::new();
            let mut query = None;
            let declare = |g: &mut Graph, name: String, pixels: Pixels| add(g, name, 1, pixels, Lifetime::Declared, node);
            let io = match &stage.role {
                Role::Clusterer { .. } => FitIo::Cluster { features: one_features(&g), map: declare(&mut g, id.to_string(), u16_map) },
                Role::Sampler { .. } => FitIo::Sample {
                    features: one_features(&g),
                    layers: class_layers.clone(),
                    map: declare(&mut g, id.to_string(), u16_map),
                },
                Role::Labeller { input, training, pretrained, .. } => {
                    if let Some(encoder) = pretrained {
                        after.extend(g.fit_node_of(plan, encoder.as_str()));
                    }
                    let mut oracle = None;
                    let sampler = match training {
                        Training::Samples(samples) => Some(samples),
                        Training::ActiveLearning { samples, learning } => {
                            query = plan.stages.iter().position(|q| q.id == learning.query);
                            oracle = reference;
                            Some(samples)
                        }
                        Training::Stored(_) | Training::Csv(_) => None,
                    };
                    if let Some(sampler) = sampler {
                        after.extend(g.fit_node_of(plan, sampler.as_str()));
                    }
                    let decoded = plan.stages.iter().any(|d| matches!(&d.role, Role::Decoder { input } if *input == stage.id));
                    // Trained on one year or on all, it predicts every year of per-year features.
                    let sources: Vec<(Option<i32>, String, String)> = if per_year_input(input.as_str()) {
                        years.iter().map(|y| (Some(*y), format!("{input}_{y}"), format!("{id}_{y}"))).collect()
                    } else {
                        vec![(None, input.to_string(), id.to_string())]
                    };
                    let mut maps = Vec::new();
                    for (year, features, map) in sources {
                        let Some(features) = g.declared(&features) else { continue };
                        maps.push(LabelMaps {
                            year,
                            features,
                            map: declare(&mut g, map.clone(), u16_map),
                            confidence: declare(&mut g, format!("{map}_confidence"), Pixels::Known(PixelType::F32)),
                            proba: decoded.then(|| declare(&mut g, format!("{map}_proba"), Pixels::Known(PixelType::F32))),
                        });
                    }
                    FitIo::Label { maps, oracle }
                }
                Role::Decoder { input } => {
                    let from_labeller = plan.stages.iter().any(|l| &l.id == input && l.kind() == StageKind::Labeller);
                    let posteriors = years
                        .iter()
                        .filter_map(|y| g.declared(&if from_labeller { format!("{input}_{y}_proba") } else { format!("{input}_{y}") }))
                        .collect();
                    let maps = years.iter().map(|y| declare(&mut g, format!("{id}_{y}"), u16_map)).collect();
                    let changes = declare(&mut g, format!("{id}_changes"), u16_map);
                    let fromto = declare(&mut g, format!("{id}_fromto"), Pixels::FromToCoding);
                    FitIo::Decode { posteriors, maps, changes, fromto }
                }
                Role::CloudMask { .. } | Role::Features { .. } => unreachable!("chunk stages are in the map node"),
                Role::Augmenter => unreachable!("augmenters are skipped above"),
                Role::Pretrainer { input, year, per_year, .. } => {
                    let names: Vec<String> = match year {
                        Some(y) => vec![format!("{input}_{y}")],
                        None if *per_year => years.iter().map(|y| format!("{input}_{y}")).collect(),
                        None => vec![input.to_string()],
                    };
                    let features = names.iter().filter_map(|n| g.declared(n)).collect();
                    // Embeddings of every features raster of the input, named like it.
                    let mut sources = Vec::new();
                    let mut embeddings = Vec::new();
                    let pairs: Vec<(String, String)> = if *per_year {
                        years.iter().map(|y| (format!("{input}_{y}"), format!("{id}_{y}"))).collect()
                    } else {
                        vec![(input.to_string(), id.to_string())]
                    };
                    for (source, name) in pairs {
                        let Some(source) = g.declared(&source) else { continue };
                        sources.push(source);
                        embeddings.push(declare(&mut g, name, Pixels::Known(PixelType::F32)));
                    }
                    FitIo::Pretrain { features, sources, embeddings }
                }
                Role::SuperResolver { input, scale, annotations: sources } => {
                    let on_fine = |g: &mut Graph, name: String| add(g, name, *scale, u16_map, Lifetime::Declared, node);
                    // An earlier stage's yearly maps, each dated 1 July of its year.
                    let annotations = match sources {
                        crate::Annotations::Maps(maps) => {
                            years.iter().filter_map(|y| g.declared(&format!("{maps}_{y}")).map(|r| (format!("{y}-07-01"), r))).collect()
                        }
                        crate::Annotations::Files(_) => Vec::new(),
                    };
                    FitIo::SuperResolve {
                        annotations,
                        features: g.declared(input.as_str()),
                        dates: on_fine(&mut g, format!("{id}_dates")),
                        markov: on_fine(&mut g, format!("{id}_markov")),
                        changes: on_fine(&mut g, format!("{id}_changes")),
                    }
                }
            };
            class_layers.extend(io.class_layers());
            g.nodes.push(Node::Fit { stage: s, query, io, after });
        }
        let declared = (0..g.rasters.len()).filter(|&r| g.rasters[r].lifetime == Lifetime::Declared).collect();
        g.nodes.push(Node::Report { reads: declared });
        g
    }

    /// The declared raster of this name.
    pub fn declared(&self, name: &str) -> Option<RasterId> {
        self.rasters.iter().position(|r| r.lifetime == Lifetime::Declared && r.name == name)
    }

    /// The fit node of a stage.
    fn fit_node_of(&self, plan: &Plan, id: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| matches!(n, Node::Fit { stage, .. } if plan.stages[*stage].id.as_str() == id))
    }

    /// Checks every node reads only rasters written by nodes before it: the order the
    /// run executes them in is a topological order.
    pub fn check_order(&self) -> Result<(), String> {
        for (n, node) in self.nodes.iter().enumerate() {
            let (reads, after): (Vec<RasterId>, &[NodeId]) = match node {
                Node::Map { .. } => (Vec::new(), &[]),
                Node::Assemble { reads, .. } => (vec![*reads], &[]),
                Node::Fit { io, after, .. } => (io.reads(), after),
                Node::Report { reads } => (reads.clone(), &[]),
            };
            if let Some(r) = reads.iter().find(|&&r| self.rasters[r].producer >= n) {
                return Err(format!("node {n} reads {} before node {} writes it", self.rasters[*r].name, self.rasters[*r].producer));
            }
            if let Some(a) = after.iter().find(|&&a| a >= n) {
                return Err(format!("node {n} runs before node {a} it needs"));
            }
        }
        Ok(())
    }

    fn pixels_name(p: Pixels) -> &'static str {
        match p {
            Pixels::Known(PixelType::U8) => "u8",
            Pixels::Known(PixelType::U16) => "u16",
            Pixels::Known(PixelType::U32) => "u32",
            Pixels::Known(PixelType::F32) => "f32",
            Pixels::FromToCoding => "u16|u32",
        }
    }

    /// The graph as JSON, for the manifest.
    pub fn to_json(&self, plan: &Plan) -> Value {
        let rasters: Vec<Value> = self
            .rasters
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "width": r.grid.width,
                    "height": r.grid.height,
                    "scale": r.scale,
                    "pixels": Self::pixels_name(r.pixels),
                    "lifetime": match r.lifetime { Lifetime::Intermediate => "intermediate", Lifetime::Declared => "declared" },
                    "producer": r.producer,
                })
            })
            .collect();
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| match n {
                Node::Map { stages, writes } => json!({
                    "node": "map",
                    "stages": stages.iter().map(|&s| plan.stages[s].id.to_string()).collect::<Vec<_>>(),
                    "writes": writes,
                }),
                Node::Assemble { reads, writes } => json!({ "node": "assemble", "reads": [reads], "writes": [writes] }),
                Node::Fit { stage, query, io, after } => json!({
                    "node": "fit",
                    "stage": plan.stages[*stage].id.to_string(),
                    "kind": plan.stages[*stage].kind_name(),
                    "query": query.map(|q| plan.stages[q].id.to_string()),
                    "reads": io.reads(),
                    "writes": io.writes(),
                    "after": after,
                }),
                Node::Report { reads } => json!({ "node": "report", "reads": reads }),
            })
            .collect();
        json!({ "rasters": rasters, "nodes": nodes })
    }

    /// One line per node, for the log and `sitsflow validate`-like output.
    pub fn render(&self, plan: &Plan) -> String {
        let names = |ids: &[RasterId]| ids.iter().map(|&r| self.rasters[r].name.as_str()).collect::<Vec<_>>().join(", ");
        let mut out = String::new();
        for (n, node) in self.nodes.iter().enumerate() {
            let line = match node {
                Node::Map { stages, writes } => format!(
                    "map [{}] → {}",
                    stages.iter().map(|&s| plan.stages[s].id.as_str()).collect::<Vec<_>>().join(", "),
                    names(writes)
                ),
                Node::Assemble { writes, .. } => {
                    let r = &self.rasters[*writes];
                    format!("assemble {}.tif ({} × {} {})", r.name, r.grid.width, r.grid.height, Self::pixels_name(r.pixels))
                }
                Node::Fit { stage, io, .. } => {
                    let (reads, writes) = (io.reads(), io.writes());
                    format!("fit {} ({}) [{}] → {}", plan.stages[*stage].id, plan.stages[*stage].kind_name(), names(&reads), names(&writes))
                }
                Node::Report { reads } => format!("report over {} rasters", reads.len()),
            };
            out.push_str(&format!("{n:>3}  {line}\n"));
        }
        out
    }
}
