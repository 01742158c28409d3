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

use crate::bindings::types::StageKind;
use crate::outputs::PixelType;
use crate::plan::{Plan, Role, Training};
use crate::raster::Grid;
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
    Known(PixelType),
    /// A decoder's from→to codes: u16 when `from × base + to` fits, else u32 (decided
    /// by the class codes the decoder reads).
    FromToCoding,
}

/// One raster of the run.
#[derive(Debug, Clone)]
pub struct RasterRef {
    pub name: String,
    pub grid: Grid,
    /// Pixels of this raster per series pixel along each axis.
    pub scale: usize,
    pub pixels: Pixels,
    pub lifetime: Lifetime,
    pub producer: NodeId,
}

/// A step of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// The chunk stages (indices into `plan.stages`) over the chunk grid, and the
    /// reference aligned chunk by chunk when the pipeline has one.
    Map { stages: Vec<usize>, writes: Vec<RasterId> },
    /// An intermediate raster into its declared COG.
    Assemble { reads: RasterId, writes: RasterId },
    /// One whole-scene stage; `query` is the sampler an active learner calls inside
    /// its loop (not a node of its own); `after` are nodes it needs besides rasters (a
    /// labeller needs its sampler's selection).
    Fit { stage: usize, query: Option<usize>, reads: Vec<RasterId>, writes: Vec<RasterId>, after: Vec<NodeId> },
    /// Evaluations, report, manifest, publish.
    Report { reads: Vec<RasterId> },
}

/// The compiled plan.
#[derive(Debug, Clone)]
pub struct Graph {
    pub rasters: Vec<RasterRef>,
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
        let mut class_layers: Vec<RasterId> = g.declared("reference").into_iter().collect();
        for (s, stage) in plan.stages.iter().enumerate() {
            if stage.is_chunk_stage() || queries.contains(&stage.id.as_str()) {
                continue;
            }
            let node = g.nodes.len();
            let id = stage.id.as_str();
            // The features a stage reads: of its year, or of every year.
            let features: Vec<RasterId> = match stage.role.input() {
                Some(input) if per_year_input(input.as_str()) => match stage.role.year() {
                    Some(y) => g.declared(&format!("{input}_{y}")).into_iter().collect(),
                    None if stage.kind() == StageKind::Labeller => {
                        years.iter().filter_map(|y| g.declared(&format!("{input}_{y}"))).collect()
                    }
                    None => Vec::new(),
                },
                Some(input) => g.declared(input.as_str()).into_iter().collect(),
                None => Vec::new(),
            };
            let mut reads = features;
            let mut after = Vec::new();
            let mut names: Vec<(String, Pixels)> = Vec::new();
            let mut query = None;
            match &stage.role {
                Role::Clusterer { .. } => names.push((id.to_string(), Pixels::Known(PixelType::U16))),
                Role::Sampler { .. } => {
                    reads.extend(class_layers.iter().copied());
                    names.push((id.to_string(), Pixels::Known(PixelType::U16)));
                }
                Role::Labeller { input, training, .. } => {
                    let sampler = match training {
                        Training::Samples(samples) => Some(samples),
                        Training::ActiveLearning { samples, learning } => {
                            query = plan.stages.iter().position(|q| q.id == learning.query);
                            reads.extend(g.declared("reference"));
                            Some(samples)
                        }
                        Training::Stored(_) => None,
                    };
                    if let Some(sampler) = sampler {
                        after.extend(g.fit_node_of(plan, sampler.as_str()));
                    }
                    let decoded = plan.stages.iter().any(|d| matches!(&d.role, Role::Decoder { input } if *input == stage.id));
                    // Trained on one year or on all, it predicts every year of per-year features.
                    let maps: Vec<String> = if per_year_input(input.as_str()) {
                        years.iter().map(|y| format!("{id}_{y}")).collect()
                    } else {
                        vec![id.to_string()]
                    };
                    for map in maps {
                        names.push((map.clone(), Pixels::Known(PixelType::U16)));
                        names.push((format!("{map}_confidence"), Pixels::Known(PixelType::F32)));
                        if decoded {
                            names.push((format!("{map}_proba"), Pixels::Known(PixelType::F32)));
                        }
                    }
                }
                Role::Decoder { input } => {
                    let from_labeller = plan.stages.iter().any(|l| &l.id == input && l.kind() == StageKind::Labeller);
                    reads = years
                        .iter()
                        .filter_map(|y| g.declared(&if from_labeller { format!("{input}_{y}_proba") } else { format!("{input}_{y}") }))
                        .collect();
                    for y in years {
                        names.push((format!("{id}_{y}"), Pixels::Known(PixelType::U16)));
                    }
                    names.push((format!("{id}_changes"), Pixels::Known(PixelType::U16)));
                    names.push((format!("{id}_fromto"), Pixels::FromToCoding));
                }
                Role::CloudMask { .. } | Role::Features { .. } => unreachable!("chunk stages are in the map node"),
            }
            let writes: Vec<RasterId> = names.into_iter().map(|(n, p)| add(&mut g, n, 1, p, Lifetime::Declared, node)).collect();
            // Class rasters become layers for the samplers after this stage.
            if matches!(stage.role, Role::Labeller { .. } | Role::Decoder { .. } | Role::Clusterer { .. } | Role::Sampler { .. }) {
                class_layers.extend(writes.iter().copied().filter(|&r| {
                    let n = &g.rasters[r].name;
                    !n.ends_with("_confidence") && !n.ends_with("_proba") && !n.ends_with("_changes") && !n.ends_with("_fromto")
                }));
            }
            g.nodes.push(Node::Fit { stage: s, query, reads, writes, after });
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
                Node::Fit { reads, after, .. } => (reads.clone(), after),
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
                Node::Fit { stage, query, reads, writes, after } => json!({
                    "node": "fit",
                    "stage": plan.stages[*stage].id.to_string(),
                    "kind": plan.stages[*stage].kind_name(),
                    "query": query.map(|q| plan.stages[q].id.to_string()),
                    "reads": reads,
                    "writes": writes,
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
                Node::Fit { stage, reads, writes, .. } => {
                    format!("fit {} ({}) [{}] → {}", plan.stages[*stage].id, plan.stages[*stage].kind_name(), names(reads), names(writes))
                }
                Node::Report { reads } => format!("report over {} rasters", reads.len()),
            };
            out.push_str(&format!("{n:>3}  {line}\n"));
        }
        out
    }
}
