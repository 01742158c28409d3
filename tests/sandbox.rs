//! The sandbox, driven through real components: deadlines, memory caps, denied
//! capabilities, and traps that fail one chunk without harming the others.

use crate::common;

use sitsflow::runtime::data::Cube;
use sitsflow::runtime::{CallContext, Interruption, Limits, StageCallError, StagePool};
use std::time::{Duration, Instant};

fn cube(rows: u32, cols: u32, fill: impl Fn(usize) -> f32) -> Cube {
    let dates = vec!["2020-01-01".to_string(), "2020-02-01".to_string()];
    let bands = vec!["B04".to_string(), "B08".to_string()];
    let n = (dates.len() * bands.len()) * (rows * cols) as usize;
    Cube { dates, bands, rows, cols, data: (0..n).map(fill).collect(), valid: Vec::new() }
}

fn context(chunk: usize) -> CallContext {
    CallContext { stage: "test".into(), chunk: format!("chunk {chunk}") }
}

fn pool(package: &str, limits: Limits) -> StagePool {
    let plugin = common::runtime().load(&common::component(package)).expect("loading the component");
    StagePool::new(plugin, limits)
}

#[test]
fn endless_loop_is_interrupted_at_its_deadline() {
    let pool = pool("fixture-spin", Limits { deadline_ms: 200, ..Limits::default() });
    let started = Instant::now();
    let err = pool.with(|i| i.features(&context(0), &cube(4, 4, |_| 0.5), "{}")).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, StageCallError::Deadline { deadline_ms: 200 }), "got {err:?}");
    assert_eq!(err.to_string(), "interrupted after its deadline of 200 ms");
    // The loop never ends by itself: returning at all proves the interruption. The bound
    // only catches a deadline not enforced, with room for a loaded machine (the epoch
    // ticks every 10 ms): it is no speed claim, so CI's load cannot fail it.
    assert!(took < Duration::from_secs(60), "interrupted only after {took:?}");
}

/// A trusted plugin is compiled without epoch checks: no deadline stops it (so a long
/// call finishes where the checked one is cut), while its memory cap still holds.
#[test]
fn a_trusted_stage_has_no_deadline_but_keeps_its_memory_cap() {
    let limits = Limits { deadline_ms: 20, memory_bytes: 64 << 20 };
    let load = |package: &str, interruption| {
        let plugin = common::runtime().load_with(&common::component(package), interruption).expect("loading the component");
        assert_eq!(plugin.interruption(), interruption);
        StagePool::new(plugin, limits)
    };
    let slow = r#"{"work": 300}"#;
    let checked = load("fixture-slow-mean", Interruption::Deadline);
    let err = checked.with(|i| i.features(&context(0), &cube(4, 4, |_| 0.5), slow)).unwrap_err();
    assert!(matches!(err, StageCallError::Deadline { deadline_ms: 20 }), "got {err:?}");
    let trusted = load("fixture-slow-mean", Interruption::Trusted);
    let mean = trusted.with(|i| i.features(&context(0), &cube(4, 4, |_| 0.5), slow)).expect("a trusted call runs to its end");
    assert_eq!(mean.data, vec![0.5; 16]);

    let bomb = load("fixture-alloc-bomb", Interruption::Trusted);
    let err = bomb.with(|i| i.features(&context(0), &cube(4, 4, |_| 0.5), r#"{"mib": 200}"#)).unwrap_err();
    assert!(matches!(err, StageCallError::Memory { cap_mib: 64, .. }), "got {err:?}");
}

#[test]
fn allocation_past_the_cap_is_a_clean_error_and_under_it_works() {
    let limits = Limits { memory_bytes: 64 << 20, ..Limits::default() };
    let pool = pool("fixture-alloc-bomb", limits);
    let err = pool.with(|i| i.features(&context(0), &cube(4, 4, |_| 0.5), r#"{"mib": 200}"#)).unwrap_err();
    match &err {
        StageCallError::Memory { cap_mib, requested_mib } => {
            assert_eq!(*cap_mib, 64);
            assert!(*requested_mib > 64, "requested {requested_mib} MiB");
        }
        other => panic!("expected a memory error, got {other:?}"),
    }
    assert!(err.to_string().contains("past its cap of 64 MiB"), "{err}");
    // The host survives and a fresh instance serves the next call.
    let ok = pool.with(|i| i.features(&context(1), &cube(4, 4, |_| 0.5), r#"{"mib": 8}"#)).unwrap();
    assert_eq!(ok.names, ["touched=8"]);
}

#[test]
fn files_environment_and_arguments_are_denied() {
    let pool = pool("fixture-snoop", Limits::default());
    let secret = common::workspace().join("Cargo.toml");
    let params = format!(r#"{{"path": {:?}}}"#, secret.display().to_string());
    let seen = pool.with(|i| i.features(&context(0), &cube(2, 2, |_| 0.1), &params)).unwrap().names;
    assert!(seen[0].starts_with("read:denied:"), "reading a host file: {}", seen[0]);
    assert!(seen[1].starts_with("list:denied:"), "listing /: {}", seen[1]);
    assert_eq!(seen[2], "env:0", "the environment must be empty");
    assert_eq!(seen[3], "args:0", "there must be no arguments");
    assert!(seen[4].starts_with("cwd:denied") || seen[4] == "cwd:/", "working directory: {}", seen[4]);
    // The host's inference import answers with a typed error, never a trap.
    assert!(seen[5].starts_with("infer:inference unsupported:"), "infer: {}", seen[5]);
}

#[test]
fn a_trap_in_one_chunk_leaves_the_others_correct() {
    let pool = pool("fixture-trap-on-chunk", Limits::default());
    let params = r#"{"trap_value": -7.0}"#;
    let chunks: Vec<Cube> = (0..8)
        .map(|k| cube(8, 8, move |i| if k == 3 && i == 5 { -7.0 } else { (k * 1000 + i) as f32 / 1e4 }))
        .collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let pool = &pool;
                s.spawn(move || pool.with(|i| i.features(&context(k), c, params)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker thread")).collect()
    });
    for (k, (result, chunk)) in results.iter().zip(&chunks).enumerate() {
        if k == 3 {
            let err = result.as_ref().unwrap_err();
            assert!(matches!(err, StageCallError::Trap(_)), "chunk 3: {err:?}");
            assert!(err.to_string().contains("marked chunk"), "the panic message reaches the error: {err}");
            continue;
        }
        let out = result.as_ref().unwrap_or_else(|e| panic!("chunk {k} failed: {e}"));
        let n = 64;
        for p in 0..n {
            let expected = (0..4).map(|layer| chunk.data[layer * n + p]).sum::<f32>() / 4.0;
            assert!((out.data[p] - expected).abs() < 1e-6, "chunk {k} pixel {p}: {} vs {expected}", out.data[p]);
        }
    }
}

#[test]
fn stage_errors_are_returned_not_trapped() {
    let pool = pool("normalized-difference", Limits::default());
    let err = pool.with(|i| i.features(&context(0), &cube(2, 2, |_| 0.1), r#"{"a": "B11", "b": "B04"}"#)).unwrap_err();
    assert_eq!(err.to_string(), "cannot do this: band 'B11' is not in the cube (bands: B04, B08)");
    let err = pool.with(|i| i.features(&context(0), &cube(2, 2, |_| 0.1), r#"{"a": "B08"}"#)).unwrap_err();
    assert!(err.to_string().starts_with("rejected its parameters: missing field `b`"), "{err}");
    // The same instance is still healthy and computes NDVI.
    let ok = pool.with(|i| i.features(&context(0), &cube(1, 1, |i| [0.1, 0.5, 0.2, 0.2][i]), r#"{"a": "B08", "b": "B04"}"#));
    let ok = ok.unwrap();
    assert_eq!(ok.names, ["ND(B08,B04)@2020-01-01", "ND(B08,B04)@2020-02-01"]);
    assert!((ok.data[0] - (0.5 - 0.1) / 0.6).abs() < 1e-6);
    assert!(ok.data[1].abs() < 1e-6);
}

#[test]
fn wasm_and_native_give_identical_results() {
    use sitsflow_sdk::{FeatureStage, Stage};
    let pool = pool("normalized-difference", Limits::default());
    let c = cube(16, 16, |i| ((i * 7919) % 1000) as f32 / 1000.0);
    let params = r#"{"a": "B08", "b": "B04", "name": "NDVI"}"#;
    let wasm = pool.with(|i| i.features(&context(0), &c, params)).unwrap();
    let native_cube = sitsflow_sdk::Cube {
        dates: c.dates.clone(),
        bands: c.bands.clone(),
        rows: 16,
        cols: 16,
        data: c.data.clone(),
        valid: Vec::new(),
    };
    type Nd = normalized_difference::NormalizedDifference;
    let native = Nd::compute(native_cube, Nd::parse_params(params).unwrap()).unwrap();
    assert_eq!(wasm.names, native.names);
    assert_eq!(
        wasm.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        native.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

/// A plugin built against WIT 0.1.0 (no `features-inputs`) still loads in this 0.1.1
/// host, describes itself and runs, handed every band.
#[test]
fn a_plugin_built_against_wit_0_1_0_still_loads_and_gets_every_band() {
    let pool = pool("fixture-compat-0-1-0", Limits::default());
    assert_eq!(pool.plugin().info().name, "fixture-compat");
    let chunk = cube(3, 3, |i| i as f32);
    let out = pool.with(|i| i.features(&context(0), &chunk, "{}")).unwrap();
    assert_eq!(out.names, ["bands"]);
    assert_eq!(out.data, vec![2.0; 9]);
    assert_eq!(pool.with(|i| i.bands_read(&context(0), &chunk, "{}")).unwrap(), None);
}

/// A stage that says which bands it reads gets a cube of just those, in the chunk's
/// order, and computes what it computes on the whole cube; an answer the host cannot
/// use (a band the chunk lacks) hands over every band, so the stage names what is missing.
#[test]
fn only_the_bands_a_stage_reads_are_copied_into_the_sandbox() {
    let pool = pool("normalized-difference", Limits::default());
    let n = 4 * 4;
    let bands = ["B02", "B04", "B08", "SCL"];
    let chunk = Cube {
        dates: vec!["2020-01-01".into(), "2020-02-01".into()],
        bands: bands.iter().map(|b| b.to_string()).collect(),
        rows: 4,
        cols: 4,
        data: (0..2 * bands.len() * n).map(|i| (i % 97) as f32 / 100.0 + 0.01).collect(),
        valid: Vec::new(),
    };
    let params = r#"{"a": "B08", "b": "B04", "name": "NDVI"}"#;
    assert_eq!(pool.with(|i| i.bands_read(&context(0), &chunk, params)).unwrap(), Some(vec![1, 2]));
    let got = pool.with(|i| i.features(&context(0), &chunk, params)).unwrap();
    // The same stage code natively, on the whole cube.
    use sitsflow_sdk::{FeatureStage, Stage};
    let native = normalized_difference::NormalizedDifference::compute(
        common::sdk_cube(&chunk),
        normalized_difference::NormalizedDifference::parse_params(params).unwrap(),
    )
    .unwrap();
    assert_eq!((got.names, got.data), (native.names, native.data));

    let missing = r#"{"a": "B8A", "b": "B04"}"#;
    assert_eq!(pool.with(|i| i.bands_read(&context(0), &chunk, missing)).unwrap(), None);
    let err = pool.with(|i| i.features(&context(0), &chunk, missing)).unwrap_err();
    assert!(err.to_string().contains("(bands: B02, B04, B08, SCL)"), "{err}");
}

/// What a sampler says it does not read is lent out of the input for the call and put
/// back: the selection is the one of the whole input, and the input is whole afterwards.
#[test]
fn a_sampler_is_not_handed_what_it_does_not_read() {
    use sitsflow::runtime::data::{FeatureMatrix, SampleInput};
    let pool = pool("stratified-samples", Limits::default());
    let n = 400u32;
    let mut input = SampleInput {
        features: FeatureMatrix { samples: n, names: vec!["f".into()], data: (0..n).map(|i| i as f32).collect() },
        layers: vec![("reference".into(), (0..n).map(|i| i % 3 + 1).collect())],
        probabilities: None,
        positions: (0..n).map(|i| (i / 20, i % 20)).collect(),
        seed: 5,
    };
    let whole = input.clone();
    for params in [r#"{"per_class": 10}"#, r#"{"per_class": 10, "min_distance_px": 3}"#] {
        let got = pool.with(|i| i.select(&context(0), &mut input, params)).unwrap();
        assert_eq!(
            (&input.features.names, &input.features.data, &input.positions, &input.layers),
            (&whole.features.names, &whole.features.data, &whole.positions, &whole.layers),
            "the input is whole again after the call"
        );
        use sitsflow_sdk::{SamplerStage, Stage};
        let native = stratified_samples::StratifiedSamples::select(
            common::sdk_sample_input(&whole),
            stratified_samples::StratifiedSamples::parse_params(params).unwrap(),
        )
        .unwrap();
        assert_eq!((got.indices, got.labels), (native.indices, native.labels), "{params}");
    }
}

/// reliable-samples' distances run on explicit Wasm SIMD in the sandbox and on plain
/// arrays natively; both add the same values in the same order, so the reports
/// (purity tables, counts) and the selections are the same.
#[test]
fn reliable_samples_select_the_same_pixels_in_the_sandbox_and_natively() {
    use sitsflow::runtime::data::{FeatureMatrix, SampleInput};
    use sitsflow_sdk::{SamplerStage, Stage};
    let pool = pool("reliable-samples", Limits::default());
    let (n, f) = (3000u32, 25usize);
    let mut state = 3u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let clusters: Vec<u32> = (0..n).map(|i| i % 6 + 1).collect();
    // Reference: the cluster's class for most pixels, another for some.
    let reference: Vec<u32> = clusters.iter().map(|&c| if next() < 0.15 { (c + 2) % 4 + 1 } else { c % 4 + 1 }).collect();
    let data: Vec<f32> = (0..n as usize * f).map(|k| (k % f) as f32 * 0.1 + clusters[k / f] as f32 + next()).collect();
    let mut input = SampleInput {
        features: FeatureMatrix { samples: n, names: (0..f).map(|j| format!("f{j}")).collect(), data },
        layers: vec![("reference".into(), reference), ("clusters".into(), clusters)],
        probabilities: None,
        positions: Vec::new(),
        seed: 9,
    };
    let params = r#"{"clusters": "clusters", "purity": 0.6, "per_class": 200, "centroid_quantile": 0.4}"#;
    let got = pool.with(|i| i.select(&context(0), &mut input, params)).unwrap();
    type Rs = reliable_samples::ReliableSamples;
    let native = Rs::select(common::sdk_sample_input(&input), Rs::parse_params(params).unwrap()).unwrap();
    assert!(got.indices.len() > 400, "{} selected", got.indices.len());
    // The report as JSON, not bytes: see kmeans::sandbox_and_native_fits_are_identical.
    let json = |r: &str| serde_json::from_str::<serde_json::Value>(r).unwrap();
    assert_eq!((got.indices, got.labels, json(&got.report)), (native.indices, native.labels, json(&native.report)));
}

/// The `indices` statistics run four pixels side by side, on simd128 vectors in the
/// sandbox and plain arrays natively; both do the same operations per lane, so the
/// features are the same bits (NaN only where NaN). Masked dates, NaN, ±0, ±inf, ties,
/// a pixel masked on every date, and a pixel count that leaves some pixels to the
/// one-pixel path.
#[test]
fn indices_statistics_are_the_same_bits_in_the_sandbox_and_natively() {
    use sitsflow_sdk::{FeatureStage, Stage};
    let pool = pool("indices", Limits::default());
    let (rows, cols, dates) = (9u32, 17u32, 13usize);
    let bands = ["B02", "B03", "B04", "B08", "B11"];
    let n = (rows * cols) as usize;
    let mut state = 11u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    let data: Vec<f32> = (0..dates * bands.len() * n)
        .map(|_| match next() % 20 {
            0 => f32::NAN,
            1 => [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY][next() as usize % 4],
            2 => 0.125,
            _ => (next() % 10_000) as f32 / 10_000.0 - 0.05,
        })
        .collect();
    // Pixel 3 masked on every date, other pixels on about a fifth of them.
    let valid: Vec<u8> = (0..dates * n).map(|k| u8::from(k % n != 3 && next() % 5 != 0)).collect();
    let cube = Cube {
        dates: (0..dates).map(|d| format!("2021-{:02}-{:02}", 1 + d / 2, 1 + 14 * (d % 2))).collect(),
        bands: bands.iter().map(|b| b.to_string()).collect(),
        rows,
        cols,
        data,
        valid,
    };
    let params = r#"{"indices": ["NDVI", "NDWI", "BSI", "EVI"], "bands": ["B11"], "per_date": true,
        "stats": ["mean", "std", "min", "max", "p10", "p25", "p50", "p75", "p90", "count"]}"#;
    let got = pool.with(|i| i.features(&context(0), &cube, params)).unwrap();
    type Ix = indices::Indices;
    let native = Ix::compute(common::sdk_cube(&cube), Ix::parse_params(params).unwrap()).unwrap();
    assert_eq!(got.names, native.names);
    let bits = |v: &[f32]| v.iter().map(|x| if x.is_nan() { None } else { Some(x.to_bits()) }).collect::<Vec<_>>();
    assert_eq!(bits(&got.data), bits(&native.data));
    assert!(got.data.iter().any(|v| v.is_nan()) && got.data.iter().any(|v| v.is_infinite()));
}

/// A cached component is native code run outside the sandbox's checks: a `.cwasm`
/// swapped in the cache (here another plugin's, valid for this engine) must never run.
#[test]
fn a_swapped_cache_file_is_refused_and_never_runs() {
    use sitsflow::runtime::{Runtime, RuntimeOptions};
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let open = || Runtime::new(RuntimeOptions { cache_dir: Some(cache.path().to_path_buf()) }).unwrap();
    let (template, other) = (common::component("normalized-difference"), common::component("scl-mask"));
    let runtime = open();
    assert_eq!(runtime.load(&template).unwrap().info().name, "normalized-difference");
    runtime.load(&other).unwrap();
    drop(runtime);
    let key = cache.path().join("key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the machine's key is 0600");
    let entry = |source: &std::path::Path| {
        let sha = sitsflow::hash::sha256_hex(&std::fs::read(source).unwrap());
        std::fs::read_dir(cache.path().join("components"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&sha) && p.extension().is_some_and(|x| x == "cwasm"))
            .unwrap()
    };
    let (victim, intruder) = (entry(&template), entry(&other));
    std::fs::copy(&intruder, &victim).unwrap();

    // The swapped file fails its MAC: refused, naming the file.
    let err = format!("{:#}", open().load(&template).err().expect("a swapped cache entry is refused"));
    assert!(err.contains(&victim.display().to_string()) && err.contains("signature"), "{err}");

    // Without its MAC it is not trusted either: recompiled from the pinned plugin.
    std::fs::remove_file(victim.with_file_name(format!("{}.hmac", victim.file_name().unwrap().to_string_lossy()))).unwrap();
    assert_eq!(open().load(&template).unwrap().info().name, "normalized-difference", "the plugin's own code, not the intruder's");
    assert_ne!(std::fs::read(&victim).unwrap(), std::fs::read(&intruder).unwrap(), "the entry was rewritten");

    // A cache folder others may write to is not used at all.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(shared.path().to_path_buf()) }).unwrap();
    assert_eq!(runtime.load(&template).unwrap().info().name, "normalized-difference");
    assert!(!shared.path().join("key").exists(), "no key written into a folder others may write to");
    let cached = std::fs::read_dir(shared.path().join("components")).map_or(0, |d| d.count());
    assert_eq!(cached, 0, "nothing cached there");
}

/// Logs and stderr are bounded per call: a plugin chattering on every chunk never traps
/// (stderr used to be a 64 KiB buffer for the instance's whole life), and a panic after a
/// flood still reaches the error, with the tail of what it wrote.
#[test]
fn chatter_is_bounded_per_call_and_never_traps() {
    let pool = pool("fixture-chatter", Limits::default());
    let params = r#"{"lines": 1000, "stderr_bytes": 4096}"#;
    for k in 0..40 {
        let c = cube(8, 8, |i| i as f32);
        pool.with(|i| i.features(&context(k), &c, params)).unwrap_or_else(|e| panic!("chunk {k}: {e}"));
    }
    let c = cube(8, 8, |i| if i == 5 { -7.0 } else { 0.0 });
    let params = r#"{"lines": 0, "stderr_bytes": 200000, "panic_value": -7.0}"#;
    let err = pool.with(|i| i.features(&context(99), &c, params)).unwrap_err().to_string();
    assert!(err.contains("marked chunk after chatter"), "{}", &err[err.len().saturating_sub(300)..]);
    assert!(err.contains("earlier bytes dropped") && err.len() < 70_000, "bounded: {} bytes", err.len());
}

/// Same inputs and seed, same bits, whatever the plugin reads: clocks and randomness are
/// the run's seed, the stage and the chunk, not the machine's, nor the order in which a
/// pooled instance serves the chunks.
#[test]
fn guests_see_seeded_randomness_and_deterministic_clocks() {
    let c = cube(8, 8, |i| i as f32);
    let run = |seed: u64, order: &[usize]| -> Vec<Vec<f32>> {
        let plugin = common::runtime().load(&common::component("fixture-entropy")).unwrap();
        let pool = StagePool::new(plugin, Limits::default()).seeded(seed);
        let mut out = vec![Vec::new(); order.len()];
        for &k in order {
            out[k] = pool.with(|i| i.features(&context(k), &c, "{}")).unwrap().data;
        }
        out
    };
    let first = run(7, &[0, 1, 2, 3]);
    assert_eq!(first, run(7, &[3, 1, 0, 2]), "another run, another order: the same bits");
    assert_ne!(first[0], first[1], "each chunk has its own draws");
    assert_ne!(first, run(8, &[0, 1, 2, 3]), "another seed, other draws");
    let draws: std::collections::BTreeSet<u32> = first[0].chunks(3).map(|p| p[2] as u32).collect();
    assert!(draws.len() > 60, "draws vary within a call: {} distinct of 64", draws.len());
}

/// Sleeping cannot block the host: a sleep is virtual (the guest's clocks jump, the call
/// goes on), and a plugin sleeping for ever is stopped at its deadline like any loop.
#[test]
fn sleeps_are_virtual_and_a_sleeping_loop_meets_its_deadline() {
    let plugin = common::runtime().load(&common::component("fixture-entropy")).unwrap();
    let pool = StagePool::new(plugin, Limits { deadline_ms: 1000, ..Limits::default() });
    let c = cube(4, 4, |i| i as f32);
    let started = Instant::now();
    let out = pool.with(|i| i.features(&context(0), &c, r#"{"sleep_ms": 600000}"#)).expect("a ten-minute sleep returns");
    // A real sleep would take ten minutes; the bound leaves room for any load.
    assert!(started.elapsed() < Duration::from_secs(60), "no real sleep: {:?}", started.elapsed());
    // The first pixel's `elapsed` (µs mod 10⁶, after the sleep): the guest's clock moved on by it.
    assert!(out.data[1] >= 0.0, "{:?}", &out.data[..3]);
    let started = Instant::now();
    let err = pool.with(|i| i.features(&context(1), &c, r#"{"sleep_forever": true}"#)).unwrap_err();
    assert!(matches!(err, StageCallError::Deadline { deadline_ms: 1000 }), "{err}");
    // It sleeps for ever otherwise: returning proves the deadline stopped it.
    assert!(started.elapsed() < Duration::from_secs(60), "stopped at the deadline: {:?}", started.elapsed());
}

/// A stage may hand back as much as its memory cap holds: `indices` with 10 bands on 30
/// dates of a 512 px chunk returns 300 MiB, over wasmtime's default of 128 MiB a host call
/// (which used to trap), under a 2048 MiB cap.
#[test]
fn a_300_mib_result_is_handed_over() {
    let plugin = common::runtime().load(&common::component("indices")).unwrap();
    let pool = StagePool::new(plugin, Limits { memory_bytes: 2048 << 20, ..Limits::default() });
    let bands: Vec<String> = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"].map(String::from).to_vec();
    let dates: Vec<String> = (0..30).map(|d| format!("2020-{:02}-{:02}", d / 3 + 1, 1 + 9 * (d % 3))).collect();
    let (rows, cols) = (512u32, 512u32);
    let n = dates.len() * bands.len() * (rows * cols) as usize;
    let c = Cube { dates, bands: bands.clone(), rows, cols, data: (0..n).map(|i| (i % 1000) as f32 / 1e4).collect(), valid: Vec::new() };
    let params = serde_json::json!({ "bands": bands, "per_date": true }).to_string();
    let out = pool.with(|i| i.features(&context(0), &c, &params)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.names.len(), 300);
    assert_eq!(out.data.len() * 4, 300 << 20, "a 300 MiB result");
}

/// The run's stage instances share what the memory budget leaves them: guests filling
/// their own cap on every worker cannot take the host past the budget. Memory goes back
/// to the account when an instance goes (after its call: every call gets a fresh one).
#[test]
fn instances_together_stay_within_the_run_share_of_memory() {
    use sitsflow::runtime::GuestMemory;
    let shared = GuestMemory::new(96 << 20);
    let plugin = common::runtime().load(&common::component("fixture-alloc-bomb")).unwrap();
    let limits = Limits { memory_bytes: 256 << 20, ..Limits::default() };
    let (a, b) = (StagePool::new(plugin.clone(), limits).sharing(&shared), StagePool::new(plugin, limits).sharing(&shared));
    let c = cube(4, 4, |_| 0.5);
    // Each within its own cap; while the first instance holds its 60 MiB (its call is
    // still open, as on another worker), the second cannot take another 60.
    a.with(|first| {
        first.features(&context(0), &c, r#"{"mib": 60}"#)?;
        let err = b.with(|second| second.features(&context(1), &c, r#"{"mib": 60}"#)).unwrap_err();
        assert!(matches!(err, StageCallError::SharedMemory { shared_mib: 96, .. }), "{err}");
        assert!(err.to_string().contains("memory_budget_mib"), "{err}");
        Ok(())
    })
    .unwrap();
    assert!(shared.peak_bytes() <= 96 << 20, "never past the share: {} bytes", shared.peak_bytes());
    b.with(|i| i.features(&context(2), &c, r#"{"mib": 60}"#)).expect("the first instance's memory went back to the account");
}

/// SimCLR views (seed 003): the same seeds give the same views in the sandbox as the
/// native crate, bit for bit (NaN where NaN), with every augmentation on and missing
/// pixels in the patches; another seed gives other views.
#[test]
fn simclr_views_are_the_same_bits_in_the_sandbox_and_natively() {
    use sitsflow_sdk::{AugmenterStage, Stage};
    let pool = pool("simclr-augment", Limits::default());
    let (rows, cols, dates, bands) = (48u32, 48u32, 8usize, 10usize);
    let n = (rows * cols) as usize;
    let mut state = 5u64;
    let data: Vec<f32> = (0..dates * bands * n)
        .map(|k| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // A cloud gap on date 2, and noisy reflectance elsewhere.
            if k / (bands * n) == 2 && (k % n) % cols as usize > 30 { f32::NAN } else { 0.05 + 0.4 * (state >> 40) as f32 / (1u64 << 24) as f32 }
        })
        .collect();
    let cube = Cube {
        dates: (0..dates).map(|d| format!("2018-{:02}-10", d + 3)).collect(),
        bands: (0..bands).map(|b| format!("B{b:02}")).collect(),
        rows,
        cols,
        data,
        valid: Vec::new(),
    };
    let batch = common::patch_batch(&cube, 12, 40, dates, bands);
    for params in ["{}", r#"{"blur_probability": 1, "erase_probability": 1, "lighting": 0.3, "crop": 0.5}"#] {
        let got = pool.with(|i| i.augment(&context(0), &batch, params)).unwrap();
        type A = simclr_augment::SimclrAugment;
        let native = A::augment(common::sdk_patch_batch(&batch), A::parse_params(params).unwrap()).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() }).collect::<Vec<_>>();
        assert_eq!(bits(&got.first), bits(&native.first), "{params}");
        assert_eq!(bits(&got.second), bits(&native.second), "{params}");
        assert_eq!(got.first.len(), batch.data.len());
        assert_ne!(bits(&got.first), bits(&got.second));
    }
    let mut reseeded = batch.clone();
    reseeded.seeds.iter_mut().for_each(|s| *s += 100);
    let a = pool.with(|i| i.augment(&context(0), &batch, "{}")).unwrap();
    let b = pool.with(|i| i.augment(&context(0), &reseeded, "{}")).unwrap();
    assert_ne!(a.first, b.first);
    // Bad parameters are the stage's error, naming the parameter.
    let e = pool.with(|i| i.augment(&context(0), &batch, r#"{"crop": 1.5}"#)).unwrap_err().to_string();
    assert!(e.contains("crop"), "{e}");
}
