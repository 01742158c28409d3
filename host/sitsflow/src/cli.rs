//! The command line: parses arguments, calls the library, maps failures to exit
//! codes that scripts can rely on.

use sitsflow::config::{ConfigError, Lockfile, PluginRef};
use sitsflow::plan::Plan;
use sitsflow::plugins::PluginDir;
use sitsflow::runtime::{Plugin, Runtime, RuntimeOptions};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Exit codes.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The run failed (a stage, an input, an output).
    pub const FAILED: u8 = 1;
    /// Bad command-line usage (clap's own code; listed for the table, never returned here).
    #[allow(dead_code)]
    pub const USAGE: u8 = 2;
    /// The pipeline file is invalid; the message gives file:line:column.
    pub const INVALID_CONFIG: u8 = 3;
    /// Plugins differ from the lockfile.
    pub const LOCK_MISMATCH: u8 = 4;
    /// A cached compiled component failed its integrity check (the cache, not the
    /// pipeline, is at fault).
    pub const CACHE_REFUSED: u8 = 5;
}

/// `--missing`: what a missing value in a samples CSV is (the flag's spelling of
/// [`sitsflow::samples::Missing`]; clap stays in this crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MissingArg {
    /// An error naming the file, line and column.
    Error,
    /// NaN, handed to the labeller.
    Keep,
}

impl From<MissingArg> for sitsflow::samples::Missing {
    fn from(m: MissingArg) -> Self {
        match m {
            MissingArg::Error => sitsflow::samples::Missing::Error,
            MissingArg::Keep => sitsflow::samples::Missing::Keep,
        }
    }
}

#[derive(Parser, Debug)]
#[command(name = "sitsflow", version, about = "Sentinel-2 time series to consistent land-cover maps")]
pub struct Cli {
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline.
    Run {
        pipeline: PathBuf,
        /// Write the run here instead of the pipeline's [output] dir.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Compute only shard i of N of the chunks (`0/4` … `3/4`), beside the other
        /// shards in the same run directory; `sitsflow assemble` then finishes the run.
        #[arg(long, value_name = "I/N", value_parser = sitsflow::run::RunMode::parse_shard)]
        shard: Option<sitsflow::run::RunMode>,
        /// Hold at most this much memory instead of the pipeline's `memory_budget_mib`
        /// (the chunk grid, and so the run key, follow the budget).
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(64..))]
        memory_budget_mib: Option<u32>,
    },
    /// Write the samples CSV (label, id, group, lon, lat, BAND@DATE…) of the pipeline's
    /// labelled pixels: the points or polygon pixels of its [reference], with the
    /// features its mask and features stages compute there, as a run would. Then
    /// `sitsflow train --samples` it, or give it to a labeller as `samples = "…csv"`.
    Extract {
        pipeline: PathBuf,
        /// The CSV to write (replaced whole when it exists).
        #[arg(long)]
        out: PathBuf,
        /// The features stage whose features are the columns (default: the last).
        #[arg(long)]
        features: Option<String>,
        /// For a per-year features stage: the year (default: the series' only one).
        #[arg(long)]
        year: Option<i32>,
    },
    /// Finish a sharded run once every shard is done: assemble the outputs, run the
    /// scene stages, write the report and publish (refused while chunks are missing).
    Assemble {
        pipeline: PathBuf,
        /// The run directory, when the shards were given --output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Write what an existing engine runs to run a pipeline as N shards and an assembly:
    /// a Slurm job array and a dependent assembly job (sbatch), or a Kubernetes Indexed
    /// Job and an assembly Job; each with a submit.sh. The run directory, the pipeline
    /// and its inputs must be on storage every node sees, at the same paths.
    Plan {
        pipeline: PathBuf,
        /// Shards of the chunk phase (`sitsflow run --shard i/N`).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100000))]
        shards: u32,
        #[arg(long, value_enum)]
        engine: sitsflow::scaleout::Engine,
        /// Folder for the engine's files (scripts or manifests, submit.sh, logs/).
        #[arg(long)]
        out: PathBuf,
        /// The run directory, instead of the pipeline's [output] dir.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Cores per shard (and for the assembly); each process runs that many workers.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
        cpus_per_shard: u32,
        /// The sitsflow binary as the nodes see it (default: this binary for Slurm,
        /// `sitsflow` on the image's PATH for Kubernetes).
        #[arg(long)]
        sitsflow: Option<String>,
        /// Slurm: partition, account and time limit of the jobs.
        #[arg(long)]
        partition: Option<String>,
        #[arg(long)]
        account: Option<String>,
        #[arg(long, value_name = "TIME")]
        time: Option<String>,
        /// Kubernetes: the container image with sitsflow.
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        /// Kubernetes: the PersistentVolumeClaim with the pipeline, its inputs and the run.
        #[arg(long)]
        claim: Option<String>,
        /// Kubernetes: where every pod mounts the claim (the paths must be under it).
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Kubernetes: retries of one shard before it counts as failed (backoffLimitPerIndex).
        #[arg(long, default_value_t = 2)]
        retries: u32,
    },
    /// Run a pipeline N times and record wall and CPU time, peak memory and throughput
    /// per stage (JSON); or compare two records.
    Bench {
        #[arg(required_unless_present = "compare")]
        pipeline: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where to write the record.
        #[arg(long, default_value = "bench.json")]
        out: PathBuf,
        /// Print the ratios of two records (b / a) instead of running.
        #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "pipeline")]
        compare: Vec<PathBuf>,
        /// Run once per budget (`256,512,1024`) and report each run's peak resident
        /// memory against its budget; exits 1 when one is over.
        #[arg(long, value_name = "MIB,…", value_delimiter = ',', conflicts_with = "compare")]
        memory_budgets: Vec<u32>,
    },
    /// Check a pipeline (syntax, plugins, parameters, lockfile) and print its plan.
    Validate {
        pipeline: PathBuf,
    },
    /// Manage plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Assess a map against a reference raster (OA, kappa, per-class accuracies, F1,
    /// IoU; area-adjusted estimates for stratified samples), or the year-to-year
    /// agreement of a series of maps.
    Eval {
        /// The map to assess (class codes; pixels holding --map-nodata are skipped).
        #[arg(long, required_unless_present_any = ["series", "model"])]
        map: Option<PathBuf>,
        /// Or a labeller model (`model.model` from `sitsflow train --arch <plugin>`, or a
        /// run's `models/<stage>.model`) assessed on --samples.
        #[arg(long, requires = "samples", conflicts_with_all = ["map", "series"])]
        model: Option<PathBuf>,
        /// Labelled samples (CSV: label, BAND@DATE columns matched to the model's by name).
        #[arg(long, requires = "model")]
        samples: Option<PathBuf>,
        /// Missing values in --samples: an error naming the cell, or kept as NaN.
        #[arg(long, value_enum, default_value_t = MissingArg::Error)]
        missing: MissingArg,
        /// Where labeller plugins are installed (for --model).
        #[arg(long, env = "SITSFLOW_PLUGIN_DIR", default_value = "plugins/dist")]
        plugins: PathBuf,
        /// The reference: a raster in any CRS (aligned onto the map's grid by mode).
        #[arg(long, requires = "map", conflicts_with = "points")]
        reference: Option<PathBuf>,
        /// Or reference points: a CSV with columns x, y (in the map's CRS) and class.
        #[arg(long, requires = "map")]
        points: Option<PathBuf>,
        /// The map's no-data code (default 0): pixels (or points) where the map holds it
        /// are skipped and counted; `none` counts every value (an unmapped pixel is
        /// then an error of the map, e.g. a cloud mask whose "clear" is 0).
        #[arg(long, default_value = "0", value_parser = parse_map_nodata)]
        map_nodata: MapNodata,
        /// Translate reference codes with this nomenclature (e.g. CORINE to the map's classes).
        #[arg(long)]
        nomenclature: Option<PathBuf>,
        /// The reference is a sample stratified by map class: add area-adjusted accuracy
        /// and class areas with 95 % intervals (Olofsson et al. 2014).
        #[arg(long)]
        stratified: bool,
        /// Maps of consecutive years: report the agreement per class between each pair.
        #[arg(long, num_args = 2.., conflicts_with = "map")]
        series: Vec<PathBuf>,
        /// Also write everything as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Generate the demo data set (a small multi-year Sentinel-2-like series).
    DemoData {
        dir: PathBuf,
        /// Side of the scene in pixels.
        #[arg(long, default_value_t = 512)]
        size: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Seed 004's case: towns as urban fabric (roofs, gardens, streets; only the
        /// context says "Artificial"), two villages, and sparse labels in sparse/<year>.tif.
        #[arg(long)]
        urban_fabric: bool,
        /// Write reflectance as UInt16 digital numbers with L2A's offset (scale and offset
        /// in the band metadata), as Sentinel-2 L2A COGs carry it, instead of Float32.
        #[arg(long)]
        dn: bool,
        /// Seed 003's fusion: a very-high-resolution image per year, vhr/<year>.tif (2.5 m,
        /// blue, green, red, near infrared as UInt16 reflectance × 10 000), each 10 m
        /// block its pixel's class that year, with the texture a finer grid shows.
        #[arg(long)]
        vhr: bool,
        /// Seed 000: dry conifer crowns in the last year, and a 2.5 m forest annotation
        /// per year (forest/<year>.tif: coniferous, broadleaf, clear-cut, grass and herbs
        /// in clear-cut areas, dry trees; listed with their dates in forest/annotations.csv).
        #[arg(long)]
        forest_change: bool,
    },
    /// Print what this machine offers sitsflow: GDAL and its drivers, ONNX Runtime and its
    /// execution providers (CUDA found or why not), the wasm32-wasip2 target for
    /// building plugins, the plugin directory and the component cache.
    Doctor {
        /// Print it as JSON instead.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "SITSFLOW_PLUGIN_DIR", default_value = "plugins/dist")]
        dir: PathBuf,
    },
    /// Train a temporal classifier (TempCNN or LSTM, PyTorch in models/) on labelled
    /// samples, or FG-UNet on a patch dataset, and export it to ONNX with its metadata
    /// and metrics.
    Train {
        /// Training samples (CSV: label, optional id/group, BAND@DATE columns): tempcnn, lstm.
        #[arg(long, required_unless_present = "patches", conflicts_with = "patches")]
        samples: Option<PathBuf>,
        /// A patch dataset folder (sitsflow-patches/1: image.npy, labels.npy, groups.npy,
        /// dataset.json; a run writes its own in .partial/patches/): fg-unet; with
        /// fine.npy (dated annotations on a finer grid): asunet.
        #[arg(long)]
        patches: Option<PathBuf>,
        /// Train with this many processes per node under torchrun (DDP: gloo on CPU, NCCL on CUDA).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        nproc_per_node: u32,
        /// Train on this many nodes of the Slurm allocation it runs in (srun torchrun, c10d).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
        nodes: u32,
        /// Test samples: metrics are computed on them (else on a validation split).
        #[arg(long)]
        test: Option<PathBuf>,
        /// Class codes, names and colours (code,name,color).
        #[arg(long)]
        classes: Option<PathBuf>,
        /// A recipe (`tempcnn`, `lstm`: PyTorch; `fg-unet`, `asunet` on --patches) or a labeller
        /// plugin (`random-forest`, `name@version` or a .wasm), trained in the sandbox.
        #[arg(long, default_value = "tempcnn")]
        arch: String,
        /// A labeller plugin's parameters as JSON (checked against its schema).
        #[arg(long, value_name = "JSON", default_value = "{}")]
        params: String,
        /// A labeller plugin: k-fold cross-validation, grouped by the `group` column when
        /// there is one (whole parcels per fold), else stratified by class; seeded.
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=100))]
        folds: Option<u32>,
        /// Missing values (empty cells, `nan`) in the samples: an error naming the cell,
        /// or kept as NaN for the labeller.
        #[arg(long, value_enum, default_value_t = MissingArg::Error)]
        missing: MissingArg,
        /// Where labeller plugins are installed.
        #[arg(long, env = "SITSFLOW_PLUGIN_DIR", default_value = "plugins/dist")]
        plugins: PathBuf,
        /// Output folder: model.onnx, model.json, metrics.json.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        epochs: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PluginsCommand {
    /// List installed plugins.
    List {
        #[arg(long, env = "SITSFLOW_PLUGIN_DIR", default_value = "plugins/dist")]
        dir: PathBuf,
    },
    /// Show a plugin's name, version, kind, hash and parameter schema.
    Inspect {
        /// `name@version` of an installed plugin, or a path to a `.wasm` component.
        plugin: String,
        #[arg(long, env = "SITSFLOW_PLUGIN_DIR", default_value = "plugins/dist")]
        dir: PathBuf,
    },
    /// Install components into the plugin directory as `name@version.wasm`.
    Install {
        #[arg(required = true)]
        components: Vec<PathBuf>,
        #[arg(long, env = "SITSFLOW_PLUGIN_DIR", default_value = "plugins/dist")]
        dir: PathBuf,
        /// Replace an installed name@version whose bytes differ (refused otherwise).
        #[arg(long)]
        force: bool,
    },
    /// Write a plugin crate to start from: a working stage of KIND (features, cloud-mask,
    /// labeller, decoder) built the way the shipped plugins are, outside any workspace.
    New {
        /// The stage kind: features, cloud-mask, labeller or decoder.
        kind: String,
        /// The plugin's name (lower case, digits, '-'): the crate and its folder.
        name: String,
        /// The folder to write the crate in (it writes DIR/NAME/).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The SDK as a path (a sitsflow checkout's plugins/sdk, or an unpacked release).
        #[arg(long, conflicts_with = "sdk_git", required_unless_present = "sdk_git")]
        sdk: Option<PathBuf>,
        /// Or the git repository holding sitsflow (cargo finds the SDK in it).
        #[arg(long)]
        sdk_git: Option<String>,
    },
    /// Run a built component (a features or cloud-mask stage) on a series folder, without
    /// a pipeline, and write what it returns as a GeoTIFF: an author's test of the Wasm
    /// build itself.
    Run {
        /// The component (`.wasm`) or `name@version` installed in --dir.
        plugin: String,
        /// Parameters as JSON, checked against the component's schema.
        #[arg(long, default_value = "{}")]
        params: String,
        /// A series folder (`YYYY-MM-DD.tif`, band names in the descriptions).
        #[arg(long)]
        input: PathBuf,
        /// Only this window of it: `row,col,rows,cols` (default: the whole scene).
        #[arg(long, value_parser = parse_window)]
        window: Option<sitsflow::raster::Window>,
        /// The GeoTIFF to write (Float32: one band per feature, or per date for a mask).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, env = "SITSFLOW_PLUGIN_DIR", default_value = "plugins/dist")]
        dir: PathBuf,
    },
    /// Check a pipeline's plugins against its lockfile.
    Verify {
        pipeline: PathBuf,
    },
    /// Pin a pipeline's plugins as they are now (writes the lockfile).
    Lock {
        pipeline: PathBuf,
    },
}

/// `--window row,col,rows,cols`.
fn parse_window(text: &str) -> Result<sitsflow::raster::Window, String> {
    let parts: Vec<usize> = text.split(',').map(|p| p.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| format!("'{text}' is not row,col,rows,cols"))?;
    match parts.as_slice() {
        [row, col, rows, cols] => Ok(sitsflow::raster::Window { row: *row, col: *col, rows: *rows, cols: *cols }),
        _ => Err(format!("'{text}' is not row,col,rows,cols")),
    }
}

/// `--map-nodata`: a code, or `none`.
#[derive(Debug, Clone, Copy)]
pub struct MapNodata(Option<u16>);

fn parse_map_nodata(text: &str) -> Result<MapNodata, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(MapNodata(None));
    }
    text.parse::<u16>().map(|c| MapNodata(Some(c))).map_err(|_| format!("'{text}' is not a class code (0…65535) or `none`"))
}

/// Failures, by the exit code they map to.
enum Failure {
    Config(ConfigError),
    Lock(anyhow::Error),
    Cache(anyhow::Error),
    Other(anyhow::Error),
}

impl From<sitsflow::plan::PlanError> for Failure {
    fn from(e: sitsflow::plan::PlanError) -> Self {
        match e {
            sitsflow::plan::PlanError::Config(e) => Failure::Config(e),
            sitsflow::plan::PlanError::Cache(e) => Failure::Cache(e),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .format_timestamp(None)
        .parse_env("SITSFLOW_LOG")
        .init();
    sitsflow::raster::route_gdal_messages();
    sitsflow::faults::setup();
    match dispatch(&cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(Failure::Config(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(exit::INVALID_CONFIG)
        }
        Err(Failure::Lock(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::LOCK_MISMATCH)
        }
        Err(Failure::Cache(e)) => {
            eprintln!("error: the component cache: {e:#}");
            ExitCode::from(exit::CACHE_REFUSED)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

fn runtime() -> Result<Arc<Runtime>> {
    Runtime::new(RuntimeOptions::from_env())
}

fn dispatch(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Run { pipeline, output, .. } | Command::Assemble { pipeline, output } => {
            let budget = match &cli.command {
                Command::Run { memory_budget_mib, .. } => *memory_budget_mib,
                _ => None,
            };
            let mode = match &cli.command {
                Command::Run { shard: Some(shard), .. } => *shard,
                Command::Assemble { .. } => sitsflow::run::RunMode::Assemble,
                _ => sitsflow::run::RunMode::Whole,
            };
            let runtime = runtime()?;
            let mut plan = Plan::load(pipeline, &runtime)?;
            if let Some(dir) = output {
                plan.output_dir = dir.clone();
            }
            if let Some(budget) = budget {
                plan.memory_budget_mib = budget;
            }
            plan.verify_lock().map_err(Failure::Lock)?;
            let options = sitsflow::run::RunOptions { progress: !cli.quiet, mode };
            let summary = sitsflow::run::run(&plan, &options)?;
            log::info!(
                "done in {:.1} s: {} chunks, outputs in {}",
                summary.seconds,
                summary.chunks,
                summary.run_dir.display()
            );
            for output in &summary.outputs {
                println!("{}", output.display());
            }
            Ok(())
        }
        Command::Extract { pipeline, out, features, year } => {
            let runtime = runtime()?;
            let plan = Plan::load(pipeline, &runtime)?;
            plan.verify_lock().map_err(Failure::Lock)?;
            let options = sitsflow::extract::ExtractOptions { features: features.clone(), year: *year };
            let summary = sitsflow::extract::extract(&plan, &options, out)?;
            let classes: Vec<String> = summary.per_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
            log::info!(
                "{} samples × {} features ({} of {} chunks computed): {}",
                summary.per_class.values().sum::<u64>(),
                summary.features,
                summary.chunks_read,
                summary.chunks,
                classes.join(", ")
            );
            println!("{}", summary.path.display());
            Ok(())
        }
        Command::Validate { pipeline } => {
            let runtime = runtime()?;
            let plan = Plan::load(pipeline, &runtime)?;
            print!("{}", plan.render());
            plan.verify_lock().map_err(Failure::Lock)?;
            // What the run would find wrong with its input (a band missing from a date, a
            // date off the grid or without a CRS) is found here, without reading pixels.
            let series = plan.input.open().with_context(|| format!("{}: checking the input", pipeline.display()))?;
            println!(
                "input: {} dates × {} bands ({}), on a {} × {} px grid",
                series.scenes.len(),
                series.bands.len(),
                series.bands.join(", "),
                series.grid.width,
                series.grid.height
            );
            if let Some(r) = &plan.reference {
                let (_, summary) = sitsflow::run::open_reference(r, &series.grid, true).with_context(|| format!("{}: checking the reference", pipeline.display()))?;
                if let Some(s) = summary {
                    let kinds: Vec<String> = s.features.iter().map(|(k, n)| format!("{n} {k}{}", if *n == 1 { "" } else { "s" })).collect();
                    println!("reference: {} in layer '{}'", kinds.join(", "), s.layer);
                }
            }
            let years: Vec<i32> = sitsflow::raster::years_of(&series.dates()).into_iter().map(|(y, _)| y).collect();
            sitsflow::graph::Graph::compile(&plan, &series.grid, &years)
                .check_evaluations(&plan, &years)
                .map_err(|e| anyhow::anyhow!("{}: {e}", pipeline.display()))?;
            println!("ok: {} is valid and its plugins match {}", pipeline.display(), plan.lockfile.display());
            Ok(())
        }
        Command::Plan {
            pipeline,
            shards,
            engine,
            out,
            output,
            cpus_per_shard,
            sitsflow,
            partition,
            account,
            time,
            image,
            namespace,
            claim,
            mount,
            retries,
        } => {
            let runtime = runtime()?;
            let mut plan = Plan::load(pipeline, &runtime)?;
            if let Some(dir) = output {
                plan.output_dir = dir.clone();
            }
            plan.verify_lock().map_err(Failure::Lock)?;
            // Every shard must read the same items: a STAC API search is frozen now.
            if matches!(plan.input.source, sitsflow::plan::InputSource::StacApi(_)) {
                plan.input.open_frozen(&plan.output_dir)?;
            }
            let request = sitsflow::scaleout::Request {
                engine: *engine,
                shards: *shards as usize,
                out: out.clone(),
                sitsflow: sitsflow.clone(),
                cpus: *cpus_per_shard,
                partition: partition.clone(),
                account: account.clone(),
                time: time.clone(),
                image: image.clone(),
                namespace: namespace.clone(),
                claim: claim.clone(),
                mount: mount.clone(),
                retries: *retries,
            };
            let written = sitsflow::scaleout::write(&plan, &request)?;
            for file in &written.files {
                println!("{}", file.display());
            }
            log::info!("{}", written.next);
            Ok(())
        }
        Command::Plugins(command) => plugins(command, cli.quiet),
        Command::Bench { pipeline, runs, out, compare, memory_budgets } => {
            if let [a, b] = compare.as_slice() {
                print!("{}", sitsflow::bench::compare(a, b)?);
            } else if !memory_budgets.is_empty() {
                let pipeline = pipeline.as_ref().expect("clap requires a pipeline without --compare");
                let (table, within) = sitsflow::bench::bench_memory(pipeline, memory_budgets, out)?;
                print!("{table}");
                println!("wrote {}", out.display());
                if !within {
                    return Err(anyhow::anyhow!("a run held more than its memory budget (see the table)").into());
                }
            } else {
                let pipeline = pipeline.as_ref().expect("clap requires a pipeline without --compare");
                let record = sitsflow::bench::bench(pipeline, *runs, out, None)?;
                println!(
                    "{} runs: median wall {:.2} s, CPU {:.2} s, peak {:.0} MiB, {:.2} Mpx/s; wrote {}",
                    runs,
                    record["median"]["wall_s"].as_f64().unwrap_or(f64::NAN),
                    record["median"]["cpu_s"].as_f64().unwrap_or(f64::NAN),
                    record["median"]["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                    record["median"]["mpx_per_s"].as_f64().unwrap_or(f64::NAN),
                    out.display()
                );
            }
            Ok(())
        }
        Command::Eval { model: Some(model), samples: Some(samples), missing, plugins, json, .. } => {
            let runtime = runtime()?;
            let metrics = sitsflow::learn::evaluate(&runtime, plugins, model, samples, (*missing).into())?;
            print!("{}", sitsflow::learn::render_metrics(&metrics));
            if let Some(path) = json {
                sitsflow::fsutil::write_atomic(path, serde_json::to_string_pretty(&metrics).map_err(anyhow::Error::from)?.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Eval { map, reference, points, nomenclature, stratified, series, json, map_nodata, .. } => {
            let report = if !series.is_empty() {
                let pairs = sitsflow::eval::series_agreement(series)?;
                print!("{}", sitsflow::eval::render_agreement(&pairs));
                serde_json::to_value(&pairs).map_err(anyhow::Error::from)?
            } else {
                let lookup = nomenclature.as_deref().map(sitsflow::config::Nomenclature::load).transpose()?.map(|n| n.lookup());
                let evaluation = match (map, reference, points) {
                    (Some(map), Some(reference), _) => {
                        sitsflow::eval::evaluate_map_with(map, reference, lookup.as_ref(), *stratified, map_nodata.0)?
                    }
                    (Some(map), None, Some(points)) => {
                        sitsflow::eval::evaluate_points_with(map, points, lookup.as_ref(), *stratified, map_nodata.0)?
                    }
                    _ => return Err(anyhow::anyhow!("eval needs --map with --reference or --points, or --series").into()),
                };
                print!("{}", sitsflow::eval::render_evaluation(&evaluation));
                serde_json::to_value(&evaluation).map_err(anyhow::Error::from)?
            };
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?;
                sitsflow::fsutil::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Doctor { json, dir } => {
            doctor(*json, dir);
            Ok(())
        }
        Command::Train { arch, samples: Some(samples), test, classes, out, seed, params, folds, missing, plugins, nproc_per_node, nodes, .. }
            if !sitsflow::train::is_standalone_recipe(arch) =>
        {
            if *nproc_per_node != 1 || *nodes != 1 {
                return Err(anyhow::anyhow!("--nproc-per-node and --nodes are for the PyTorch recipes; a labeller plugin trains in one sandbox").into());
            }
            let runtime = runtime()?;
            let plugin = sitsflow::learn::find_labeller(&runtime, plugins, arch)?;
            let params: serde_json::Value =
                serde_json::from_str(params).map_err(|e| anyhow::anyhow!("--params is not JSON: {e}"))?;
            let request = sitsflow::learn::TrainRequest {
                samples,
                test: test.as_deref(),
                classes: classes.as_deref(),
                folds: folds.map(|k| k as usize),
                params,
                seed: *seed,
                missing: (*missing).into(),
                out,
                memory_mib: 2048,
            };
            let summary = sitsflow::learn::train(plugin, &request)?;
            for line in &summary.lines {
                log::info!("{line}");
            }
            if let Some(test) = summary.metrics.get("test") {
                print!("{}", sitsflow::learn::render_metrics(test));
            }
            if let Some(cv) = summary.metrics.get("cross_validation") {
                println!("{}", sitsflow::learn::render_cross_validation(cv));
            }
            println!("{} (sidecar model.json, metrics.json)", summary.model.display());
            Ok(())
        }
        Command::Train { patches: None, samples: None, arch, .. } if !sitsflow::train::is_standalone_recipe(arch) => {
            Err(anyhow::anyhow!("--arch {arch} trains on --samples CSV").into())
        }
        Command::Train { samples, patches, nproc_per_node, nodes, test, classes, arch, out, seed, epochs, folds, missing, params, .. } => {
            if !sitsflow::train::is_standalone_recipe(arch) {
                return Err(anyhow::anyhow!("--arch {arch}: a labeller plugin trains on --samples, not --patches").into());
            }
            if params.trim() != "{}" {
                return Err(anyhow::anyhow!("--params is for labeller plugins; --arch {arch} is a recipe of models/ (see `python -m sitsflow_models train --help`)").into());
            }
            if folds.is_some() {
                return Err(anyhow::anyhow!(
                    "--folds is for labeller plugins; --arch {arch} holds out its own validation split (give --test for test metrics)"
                )
                .into());
            }
            let workspace = sitsflow::train::locate_models()?;
            let data = match (samples, patches) {
                (Some(s), None) => sitsflow::train::TrainData::Samples(s.clone()),
                (None, Some(p)) => sitsflow::train::TrainData::Patches(p.clone()),
                _ => unreachable!("clap requires exactly one of --samples and --patches"),
            };
            let request = sitsflow::train::TrainRequest {
                data,
                distributed: sitsflow::train::Distributed { nodes: *nodes, nproc_per_node: *nproc_per_node },
                test: test.clone(),
                classes: classes.clone(),
                arch: arch.clone(),
                out: out.clone(),
                seed: *seed,
                epochs: *epochs,
                extra: match (samples, missing) {
                    (Some(_), MissingArg::Keep) => vec!["--missing".into(), "keep".into()],
                    _ => Vec::new(),
                },
            };
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} epoch {pos}/{len} [{bar:40}] {elapsed_precise} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            if log::max_level() < log::LevelFilter::Info {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let trained = sitsflow::train::train(&request, &sitsflow::train::python_path(&workspace), |epoch, epochs, event| {
                bar.set_length(epochs);
                bar.set_position(epoch);
                if let Some(loss) = event["val_loss"].as_f64() {
                    bar.set_message(format!("val loss {loss:.4}"));
                }
            });
            bar.finish_and_clear();
            let trained = trained?;
            let m = &trained.metrics;
            if let Some(rows) = m["per_date"].as_array() {
                // A super-resolution recipe: accuracy per annotation date.
                println!("{}:", trained.model.display());
                for r in rows {
                    let shown = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
                    println!(
                        "  {} (HR {}): accuracy {}, with the Markov chain {} on {}",
                        r["vhr_date"].as_str().unwrap_or(""),
                        r["hr_date"].as_str().unwrap_or("-"),
                        shown(&r["accuracy"]),
                        shown(&r["accuracy_markov"]),
                        r["role"].as_str().unwrap_or("")
                    );
                }
                return Ok(());
            }
            println!(
                "{}: OA {:.4}, kappa {:.4} on {}",
                trained.model.display(),
                m["overall_accuracy"].as_f64().unwrap_or(f64::NAN),
                m["kappa"].as_f64().unwrap_or(f64::NAN),
                m["evaluated_on"].as_str().unwrap_or("held-out samples")
            );
            Ok(())
        }
        Command::DemoData { dir, size, seed, urban_fabric, dn, vhr, forest_change } => {
            let options = sitsflow::demo::DemoOptions {
                size: *size,
                seed: *seed,
                urban_fabric: *urban_fabric,
                dn: *dn,
                vhr: *vhr,
                forest_change: *forest_change,
                ..Default::default()
            };
            sitsflow::demo::generate(dir, &options).with_context(|| format!("generating demo data in {}", dir.display()))?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}

/// `sitsflow doctor`: each check reports what it found; none of them fails the command.
fn doctor(as_json: bool, plugin_dir: &Path) {
    let drivers = sitsflow::raster::gdal_drivers();
    let wasm_target = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2"));
    let plugins: Vec<String> = match PluginDir::new(plugin_dir).installed() {
        Ok(list) => list.iter().map(|(name, _)| name.to_string()).collect(),
        Err(_) => Vec::new(),
    };
    let cache = RuntimeOptions::from_env().cache_dir;
    let onnx = sitsflow::inference::doctor();
    // `sitsflow train` and recipe labellers (`recipe = "lstm"`) need Python with torch.
    let training = match sitsflow::train::find_workspace() {
        None => Err("models/ not found above the working directory (set SITSFLOW_MODELS_DIR)".to_string()),
        Some(w) => sitsflow::train::check_environment(&sitsflow::train::python_path(&w)).map_err(|e| format!("{e:#}")),
    };
    if as_json {
        let value = serde_json::json!({
            "sitsflow": env!("CARGO_PKG_VERSION"),
            "gdal": { "version": sitsflow::raster::gdal_version(), "drivers": drivers.iter().map(|(d, ok)| (d.to_string(), serde_json::json!(ok))).collect::<serde_json::Map<_, _>>(), "registered": sitsflow::raster::gdal_driver_count() },
            "onnxruntime": onnx,
            "wasm32_wasip2_target": wasm_target,
            "training": match &training {
                Ok(torch) => serde_json::json!({ "torch": torch }),
                Err(why) => serde_json::json!({ "unavailable": why }),
            },
            "plugin_dir": { "path": plugin_dir.display().to_string(), "plugins": plugins },
            "component_cache": cache.as_ref().map(|c| c.display().to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&value).expect("JSON"));
        return;
    }
    println!("sitsflow {}", env!("CARGO_PKG_VERSION"));
    println!("GDAL       {} ({} drivers registered)", sitsflow::raster::gdal_version(), sitsflow::raster::gdal_driver_count());
    for (driver, ok) in &drivers {
        println!("  {driver:<12} {}", if *ok { "yes" } else { "MISSING" });
    }
    print!("{onnx}");
    println!(
        "wasm32-wasip2 target: {}",
        match wasm_target {
            Some(true) => "installed (plugins can be built)".to_string(),
            Some(false) => "not installed: `rustup target add wasm32-wasip2` (scripts/setup.sh does it)".to_string(),
            None => "unknown (rustup not found; only needed to build plugins)".to_string(),
        }
    );
    match &training {
        Ok(torch) => println!("training   torch {torch} (sitsflow train, recipe labellers)"),
        Err(why) => println!("training   unavailable: {why}"),
    }
    println!(
        "plugins    {}: {}",
        plugin_dir.display(),
        if plugins.is_empty() { "none installed (scripts/build-plugins.sh installs the shipped ones)".to_string() } else { plugins.join(", ") }
    );
    println!("cache      {}", cache.map_or("none".to_string(), |c| c.display().to_string()));
}

/// `quiet`: the commands that change something (install, lock) or check it (verify) say
/// nothing on success; listing and inspecting print what was asked for.
fn plugins(command: &PluginsCommand, quiet: bool) -> Result<(), Failure> {
    match command {
        PluginsCommand::List { dir } => {
            let runtime = runtime()?;
            let installed = PluginDir::new(dir).installed()?;
            if installed.is_empty() {
                println!("no plugins in {}", dir.display());
            }
            for (_, path) in installed {
                match runtime.load(&path) {
                    Ok(p) => {
                        let i = p.info();
                        println!("{:<36} {:<10} {}", i.reference(), i.kind_name(), i.summary);
                    }
                    Err(e) => println!("{:<36} UNUSABLE   {e:#}", path.display()),
                }
            }
            Ok(())
        }
        PluginsCommand::Inspect { plugin, dir } => {
            let runtime = runtime()?;
            let path = if plugin.ends_with(".wasm") || Path::new(plugin).exists() {
                PathBuf::from(plugin)
            } else {
                let reference = PluginRef::try_from(plugin.clone()).map_err(anyhow::Error::msg)?;
                PluginDir::new(dir).find(&reference)?
            };
            let plugin = runtime.load(&path)?;
            print!("{}", inspect(&plugin));
            Ok(())
        }
        PluginsCommand::Install { components, dir, force } => {
            let runtime = runtime()?;
            let target = PluginDir::new(dir);
            for component in components {
                let plugin = target.install(&runtime, component, *force)?;
                if quiet {
                    continue;
                }
                println!("installed {} ({}) in {}", plugin.info().reference(), plugin.info().kind_name(), dir.display());
            }
            Ok(())
        }
        PluginsCommand::New { kind, name, dir, sdk, sdk_git } => {
            let source = match (sdk, sdk_git) {
                (Some(path), _) => sitsflow::template::SdkSource::Path(path.clone()),
                (None, Some(url)) => sitsflow::template::SdkSource::Git(url.clone()),
                (None, None) => unreachable!("clap requires one of --sdk and --sdk-git"),
            };
            let root = sitsflow::template::new_plugin(kind, name, dir, &source)?;
            if !quiet {
                println!("wrote {}: cargo test, then cargo build --profile plugin --target wasm32-wasip2 (see its README.md)", root.display());
            }
            Ok(())
        }
        PluginsCommand::Run { plugin, params, input, window, out, dir } => {
            let runtime = runtime()?;
            let path = if plugin.ends_with(".wasm") || Path::new(plugin).is_file() {
                PathBuf::from(plugin)
            } else {
                let reference = sitsflow::config::PluginRef::try_from(plugin.clone()).map_err(anyhow::Error::msg)?;
                PluginDir::new(dir).find(&reference)?
            };
            let summary = sitsflow::harness::run_component(&runtime, &path, params, input, *window, out)?;
            log::info!(
                "{} on {} ({} × {} px): {} band{} in {:.3} s",
                summary.plugin,
                summary.window,
                summary.window.cols,
                summary.window.rows,
                summary.bands.len(),
                if summary.bands.len() == 1 { "" } else { "s" },
                summary.seconds
            );
            println!("{}", summary.out.display());
            Ok(())
        }
        PluginsCommand::Verify { pipeline } => {
            let runtime = runtime()?;
            let plan = Plan::load(pipeline, &runtime)?;
            plan.verify_lock().map_err(Failure::Lock)?;
            if !quiet {
                println!("ok: {} plugins match {}", plan.stages.len(), plan.lockfile.display());
            }
            Ok(())
        }
        PluginsCommand::Lock { pipeline } => {
            let runtime = runtime()?;
            let plan = Plan::load(pipeline, &runtime)?;
            let lock = Lockfile::new(plan.lock_entries());
            sitsflow::fsutil::write_atomic(&plan.lockfile, lock.to_toml().as_bytes())
                .with_context(|| format!("writing {}", plan.lockfile.display()))?;
            if quiet {
                return Ok(());
            }
            for entry in &lock.plugins {
                println!("{:<12} {:<36} {}", entry.stage, entry.plugin, entry.sha256);
            }
            println!("wrote {}", plan.lockfile.display());
            Ok(())
        }
    }
}

/// What `plugins inspect` prints; for a chunk stage, its footprint with default
/// parameters (`{}`), the halo a pipeline gets for it unless its parameters change it.
pub fn inspect(plugin: &Plugin) -> String {
    let info = plugin.info();
    let footprint = match info.kind {
        sitsflow::runtime::StageKind::CloudMask | sitsflow::runtime::StageKind::Features => {
            let context = sitsflow::runtime::CallContext { stage: "inspect".into(), chunk: "-".into() };
            match plugin.instantiate(sitsflow::runtime::Limits::default()).and_then(|mut i| i.footprint(&context, "{}")) {
                Ok(f) => format!("footprint tile {} px, halo {} px, scale {} (with default parameters)\n", f.tile, f.halo, f.scale),
                Err(e) => format!("footprint depends on parameters it needs (with {{}} it {e})\n"),
            }
        }
        _ => String::new(),
    };
    format!(
        "name     {}\nversion  {}\nkind     {}\nwit      {}\nsummary  {}\nfile     {}\nsha256   {}\n{footprint}parameters (JSON Schema):\n{}\n",
        info.name,
        info.version,
        info.kind_name(),
        plugin.wit_package(),
        info.summary,
        plugin.path().display(),
        plugin.sha256(),
        serde_json::to_string_pretty(&info.params_schema).expect("JSON serialises")
    )
}
