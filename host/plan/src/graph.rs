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

use sitsflow_core::PixelType;
pub use crate::kinds::{FitIo, LabelMaps};
use crate::{Plan, Role, StagePlan};
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

/// The raster of a vector reference's feature ids (FID per pixel, nodata 4294967295).
pub const REFERENCE_IDS: &str = "reference_ids";

/// The compiled plan.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Every raster of the run, indexed by `RasterId`.
    pub rasters: Vec<RasterRef>,
    /// The nodes, in the order the run executes them, indexed by `NodeId`.
    pub nodes: Vec<Node>,
}

/// What a stage kind's `fit_io` (in `kinds/<kind>.rs`) is given to name the rasters
/// its fit node reads and to declare those it writes: the one place where a fit
/// node's raster names are made.
pub(crate) struct FitCx<'a> {
    g: &'a mut Graph,
    grid: &'a Grid,
    /// The plan.
    pub plan: &'a Plan,
    /// The series' years.
    pub years: &'a [i32],
    /// The stage whose node this is.
    pub stage: &'a StagePlan,
    node: NodeId,
    /// The reference's declared raster, when the pipeline has one.
    pub reference: Option<RasterId>,
    /// The class rasters written so far (the reference, then earlier fit nodes' maps).
    pub class_layers: &'a [RasterId],
    /// Nodes it runs after besides those that write its rasters.
    pub after: Vec<NodeId>,
    /// The query sampler that runs inside it (a plan stage index).
    pub query: Option<usize>,
}

impl FitCx<'_> {
    /// The stage's id.
    pub fn id(&self) -> &str {
        self.stage.id.as_str()
    }

    /// Declares a raster it writes on the series' grid.
    pub fn declare(&mut self, name: String, pixels: Pixels) -> RasterId {
        self.declare_scaled(name, 1, pixels)
    }

    /// Declares a raster it writes on the grid `scale` times finer than the series'.
    pub fn declare_scaled(&mut self, name: String, scale: usize, pixels: Pixels) -> RasterId {
        let g = &mut *self.g;
        g.rasters.push(RasterRef { name, grid: self.grid.scaled(scale), scale, pixels, lifetime: Lifetime::Declared, producer: self.node });
        g.rasters.len() - 1
    }

    /// The declared raster of this name (written by an earlier node).
    pub fn declared(&self, name: &str) -> Option<RasterId> {
        self.g.declared(name)
    }

    /// Whether the stage `input` writes one features raster per year.
    pub fn per_year_input(&self, input: &str) -> bool {
        self.plan.stages.iter().any(|s| s.id.as_str() == input && s.role.per_year())
    }

    /// The features raster a clusterer or sampler reads: its input's, or that input's
    /// raster of the stage's year (None for per-year features without one).
    pub fn one_features(&self) -> Option<RasterId> {
        match self.stage.role.input() {
            Some(input) if self.per_year_input(input.as_str()) => {
                self.stage.role.year().and_then(|y| self.declared(&format!("{input}_{y}")))
            }
            Some(input) => self.declared(input.as_str()),
            None => None,
        }
    }

    /// Runs after the fit node of stage `id` (when it has one).
    pub fn run_after(&mut self, id: &str) {
        let node = self.g.fit_node_of(self.plan, id);
        self.after.extend(node);
    }
}

/// A class map's pixels.
pub(crate) const CLASS_MAP: Pixels = Pixels::Known(PixelType::U16);

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
        if let Some(r) = &plan.reference {
            chunk_rasters.push(add(&mut g, "reference".into(), 1, Pixels::Known(PixelType::U16), Lifetime::Intermediate, map));
            // Vectors give each pixel its feature's id: the parcels of grouped splits.
            if r.vector.is_some() {
                chunk_rasters.push(add(&mut g, REFERENCE_IDS.into(), 1, Pixels::Known(PixelType::U32), Lifetime::Intermediate, map));
            }
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
        let reference = g.declared("reference");
        // Class rasters offered to samplers: the reference, then each fit node's maps.
        let mut class_layers: Vec<RasterId> = reference.into_iter().collect();
        for (s, stage) in plan.stages.iter().enumerate() {
            // An augmenter runs inside the pretraining node that names it.
            if stage.is_chunk_stage() || queries.contains(&stage.id.as_str()) || matches!(stage.role, Role::Augmenter) {
                continue;
            }
            let node = g.nodes.len();
            let mut f = FitCx { g: &mut g, grid, plan, years, stage, node, reference, class_layers: &class_layers, after: Vec::new(), query: None };
            let io = stage.role.fit_io(&mut f);
            let (after, query) = (f.after, f.query);
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

    /// Checks that every map `[[evaluate]]` names is a declared raster of this run: an
    /// output written once per year is named with its year (`forest_2019`), or
    /// evaluated every year by `{year}` in `truth`.
    pub fn check_evaluations(&self, plan: &Plan, years: &[i32]) -> Result<(), String> {
        for e in &plan.evaluations {
            let per_year = e.truth.to_string_lossy().contains("{year}");
            let wanted: Vec<String> =
                if per_year { years.iter().map(|y| format!("{}_{y}", e.output)).collect() } else { vec![e.output.clone()] };
            for name in wanted {
                if self.declared(&name).is_some() {
                    continue;
                }
                let yearly: Vec<&str> = self
                    .rasters
                    .iter()
                    .filter(|r| r.lifetime == Lifetime::Declared)
                    .filter_map(|r| r.name.strip_prefix(e.output.as_str()).and_then(|y| y.strip_prefix('_')).map(|y| (r, y)))
                    .filter(|(_, y)| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()))
                    .map(|(r, _)| r.name.as_str())
                    .collect();
                return Err(if !yearly.is_empty() {
                    format!(
                        "[[evaluate]] output = '{}': that stage writes one map per year here ({}); name one of them, \
                         or evaluate each year with `{{year}}` in truth",
                        e.output,
                        yearly.join(", ")
                    )
                } else if per_year && self.declared(&e.output).is_some() {
                    format!(
                        "[[evaluate]] output = '{}': truth names `{{year}}` but '{}' is one map for the whole series, \
                         not one per year; give its truth without `{{year}}`",
                        e.output, e.output
                    )
                } else {
                    let names: Vec<&str> = self.rasters.iter().filter(|r| r.lifetime == Lifetime::Declared).map(|r| r.name.as_str()).collect();
                    format!("[[evaluate]] output = '{}': the run writes no map '{name}' (its outputs: {})", e.output, names.join(", "))
                });
            }
        }
        Ok(())
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
