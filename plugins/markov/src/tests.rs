use super::*;

fn params(json: &str) -> Params {
    Markov::parse_params(json).unwrap()
}

/// A series of `steps × samples` rows, given step by step.
fn series(classes: &[u16], steps: usize, rows: &[&[f32]]) -> PosteriorSeries {
    assert_eq!(rows.len() % steps, 0);
    PosteriorSeries {
        steps,
        samples: rows.len() / steps,
        classes: classes.to_vec(),
        data: rows.iter().flat_map(|r| r.iter().copied()).collect(),
    }
}

fn decode(s: &PosteriorSeries, json: &str) -> Result<Decoded, StageError> {
    Markov::decode(s.clone(), params(json))
}

/// SplitMix64, for reproducible random cases.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A random distribution over `n` classes, some entries exactly 0.
    fn distribution(&mut self, n: usize) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n).map(|_| if self.next() < 0.15 { 0.0 } else { self.next() + 0.01 }).collect();
        if v.iter().all(|&x| x == 0.0) {
            v[0] = 1.0;
        }
        let s: f64 = v.iter().sum();
        v.iter().map(|x| x / s).collect()
    }
}

#[test]
fn one_year_flicker_is_removed_and_a_persistent_change_kept() {
    // Classes A = 1, B = 2; stay = 0.9, uniform prior (so both emission modes agree).
    // Flicker: A 0.95, B 0.8, A 0.95. Path scores (× π = 0.5):
    //   AAA = .95·.9·.2·.9·.95 = 0.146205    ABA = .95·.1·.8·.1·.95 = 0.00722
    //   ABB = .95·.1·.8·.9·.05 = 0.00342     BBA = .05·.9·.8·.1·.95 = 0.00342
    // and the rest below 0.002: AAA wins, the middle year's B is overruled.
    let flicker = series(&[1, 2], 3, &[&[0.95, 0.05], &[0.2, 0.8], &[0.95, 0.05]]);
    let d = decode(&flicker, r#"{"transition": {"stay": 0.9}}"#).unwrap();
    assert_eq!(d.labels, vec![1, 1, 1]);
    // Persistent change: A 0.95, B 0.8, B 0.9.
    //   ABB = .95·.1·.8·.9·.9 = 0.06156     BBB = .05·.9·.8·.9·.9 = 0.02916
    //   AAA = .95·.9·.2·.9·.1 = 0.01539     AAB = .95·.9·.2·.1·.9 = 0.01539
    // ABB wins: the change is kept, at the year the classifier saw it.
    let change = series(&[1, 2], 3, &[&[0.95, 0.05], &[0.2, 0.8], &[0.1, 0.9]]);
    let d = decode(&change, r#"{"transition": {"stay": 0.9}}"#).unwrap();
    assert_eq!(d.labels, vec![1, 2, 2]);
    // With stay = 0.5 two classes are independent from year to year: the per-year argmax.
    let d = decode(&flicker, r#"{"transition": {"stay": 0.5}}"#).unwrap();
    assert_eq!(d.labels, vec![1, 2, 1]);
}

#[test]
fn a_missing_year_is_filled_from_its_neighbours() {
    // A 0.9 / NaN / A 0.9, stay 0.9. The middle year's smoothed posterior by hand:
    // P(A) ∝ (Σ_s e1(s)A(s,A))·(Σ_s A(A,s)e3(s)) = (.9·.9 + .1·.1)² = 0.82² = 0.6724,
    // P(B) ∝ (.9·.1 + .1·.9)² = 0.18² = 0.0324, so P(A) = 0.6724 / 0.7048.
    let s = series(&[1, 2], 3, &[&[0.9, 0.1], &[f32::NAN, f32::NAN], &[0.9, 0.1]]);
    let d = decode(&s, r#"{"transition": {"stay": 0.9}}"#).unwrap();
    assert_eq!(d.labels, vec![1, 1, 1]);
    let expect = 0.6724 / 0.7048;
    assert!((d.posteriors[2] as f64 - expect).abs() < 1e-6, "{:?}", d.posteriors);
    assert!((d.posteriors[3] as f64 - (1.0 - expect)).abs() < 1e-6, "{:?}", d.posteriors);
}

#[test]
fn scaled_likelihood_counts_the_prior_once() {
    // One year, posterior (0.3, 0.7), prior (0.9, 0.1).
    // likelihood: π·p = (0.27, 0.07) → class 1; scaled: π·p/π = p → class 2.
    let s = series(&[1, 2], 1, &[&[0.3, 0.7]]);
    let common = r#""transition": {"stay": 0.9}, "prior": {"weights": {"1": 0.9, "2": 0.1}}"#;
    let d = decode(&s, &format!(r#"{{{common}, "posteriors_as": "likelihood"}}"#)).unwrap();
    assert_eq!(d.labels, vec![1]);
    assert!((d.posteriors[0] - 0.27 / 0.34).abs() < 1e-6, "{:?}", d.posteriors);
    let d = decode(&s, &format!("{{{common}}}")).unwrap();
    assert_eq!(d.labels, vec![2]);
    assert!((d.posteriors[1] - 0.7).abs() < 1e-6, "{:?}", d.posteriors);
}

/// Exact decoding by enumerating every class sequence in plain probability space, straight
/// from the definitions: the best path and the marginals of each sample.
fn enumerate(
    s: &PosteriorSeries,
    a: &[f64],
    prior: &[f64],
    floor: f64,
    scaled: bool,
) -> (Vec<Vec<usize>>, Vec<f64>) {
    let (t_n, c) = (s.steps, s.classes.len());
    let mut paths = Vec::new();
    let mut marginals = vec![0.0; s.data.len()];
    for n in 0..s.samples {
        let emission = |t: usize, k: usize| {
            let row = &s.data[(t * s.samples + n) * c..][..c];
            if row[0].is_nan() {
                return 1.0;
            }
            let sum: f64 = row.iter().map(|&p| p as f64).sum();
            (row[k] as f64 / sum).max(floor) / if scaled { prior[k] } else { 1.0 }
        };
        let (mut best, mut best_score, mut total) = (Vec::new(), -1.0, 0.0);
        let mut mass = vec![0.0; t_n * c];
        for code in 0..c.pow(t_n as u32) {
            let seq: Vec<usize> = (0..t_n).map(|t| code / c.pow(t as u32) % c).collect();
            let mut score = prior[seq[0]] * emission(0, seq[0]);
            for t in 1..t_n {
                score *= a[seq[t - 1] * c + seq[t]] * emission(t, seq[t]);
            }
            total += score;
            for t in 0..t_n {
                mass[t * c + seq[t]] += score;
            }
            if score > best_score {
                best_score = score;
                best = seq;
            }
        }
        for t in 0..t_n {
            for k in 0..c {
                marginals[(t * s.samples + n) * c + k] = mass[t * c + k] / total;
            }
        }
        paths.push(best);
    }
    (paths, marginals)
}

#[test]
fn viterbi_and_smoothed_posteriors_equal_enumeration_over_all_paths() {
    let mut rng = Rng(11);
    let (classes, steps, samples) = ([10u16, 20, 30], 4, 6);
    let c = classes.len();
    let a: Vec<f64> = (0..c).flat_map(|_| rng.distribution(c)).collect();
    let prior = rng.distribution(c).iter().map(|p| p + 0.05).collect::<Vec<_>>();
    let prior_sum: f64 = prior.iter().sum();
    let prior: Vec<f64> = prior.iter().map(|p| p / prior_sum).collect();
    let mut data = Vec::new();
    for t in 0..steps {
        for n in 0..samples {
            if t == 2 && n == 1 {
                data.extend([f32::NAN; 3]);
            } else {
                data.extend(rng.distribution(c).iter().map(|&p| p as f32));
            }
        }
    }
    let s = PosteriorSeries { steps, samples, classes: classes.to_vec(), data };
    let matrix: Vec<Vec<f64>> = a.chunks(c).map(<[f64]>::to_vec).collect();
    for (mode, scaled) in [("likelihood", false), ("scaled-likelihood", true)] {
        let json = serde_json::json!({
            "transition": { "matrix": matrix, "classes": classes },
            "prior": { "weights": { "10": prior[0], "20": prior[1], "30": prior[2] } },
            "posteriors_as": mode,
            "floor": 1e-3,
        });
        let d = decode(&s, &json.to_string()).unwrap();
        let (paths, marginals) = enumerate(&s, &a, &prior, 1e-3, scaled);
        for (n, path) in paths.iter().enumerate() {
            let got: Vec<u16> = (0..steps).map(|t| d.labels[t * samples + n]).collect();
            let want: Vec<u16> = path.iter().map(|&k| classes[k]).collect();
            assert_eq!(got, want, "{mode}, sample {n}");
        }
        for (k, (&g, &m)) in d.posteriors.iter().zip(&marginals).enumerate() {
            assert!((g as f64 - m).abs() < 1e-6, "{mode}: posterior {k}: {g} vs {m}");
        }
        for row in d.posteriors.chunks(c) {
            assert!((row.iter().map(|&p| p as f64).sum::<f64>() - 1.0).abs() < 1e-6, "{row:?}");
        }
    }
}

#[test]
fn a_matrix_in_another_class_order_is_reordered_to_the_series() {
    // Series [11, 21, 31]; the matrix is given in the order [31, 11, 21]. Its row for 11 is
    // [→31 0.3, →11 0.7, →21 0.0]: 11 never becomes 21. Year 1 is surely 11, year 2 is
    // 21 or 31 alike: 11→11 scores .7·.02 = .014, 11→21 scores 0, 11→31 scores .3·.49 = .147.
    let s = series(&[11, 21, 31], 2, &[&[0.98, 0.01, 0.01], &[0.02, 0.49, 0.49]]);
    let given = r#"{"transition": {"classes": [31, 11, 21],
        "matrix": [[0.8, 0.1, 0.1], [0.3, 0.7, 0.0], [0.1, 0.1, 0.8]]}}"#;
    let d = decode(&s, given).unwrap();
    assert_eq!(d.labels, vec![11, 31]);
    // The same matrix written in the series' order decodes identically.
    let series_order = r#"{"transition": {"classes": [11, 21, 31],
        "matrix": [[0.7, 0.0, 0.3], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]}}"#;
    assert_eq!(decode(&s, series_order).unwrap(), d);
}

#[test]
fn bad_transition_parameters_are_named() {
    let s = series(&[1, 2], 1, &[&[0.5, 0.5]]);
    let err = decode(&s, r#"{"transition": {"matrix": [[0.9, 0.0], [0.5, 0.5]], "classes": [1, 2]}}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("row of class 1 sums to 0.9")), "{err}");
    let err = decode(&s, r#"{"transition": {"matrix": [[1, 0], [0, 1]], "classes": [1, 7]}}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("names class 7")), "{err}");
    let err = decode(&s, r#"{"transition": {"stay": 0.9, "to": {"8": 1}}}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("transition.to names class 8")), "{err}");
    let err = decode(&s, r#"{"transition": {"estimate": {"counts": [[1]], "classes": [9]}}}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("names class 9")), "{err}");
    let err = decode(&s, r#"{"transition": {"stay": 1.5}}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("stay = 1.5")), "{err}");
    let err = decode(&s, r#"{"transition": {"stay": 0.9}, "floor": 0}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("floor = 0")), "{err}");
    let err = decode(&s, r#"{"transition": {"stay": 0.9}, "prior": {"weights": {"1": 1, "2": 0}}}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("class 2 is 0")), "{err}");
    // ...which is allowed when nothing divides by it.
    let d = decode(&s, r#"{"transition": {"stay": 0.9}, "prior": {"weights": {"1": 1, "2": 0}}, "posteriors_as": "likelihood"}"#)
        .unwrap();
    assert_eq!(d.labels, vec![1]);
}

#[test]
fn parameter_forms_parse_strictly() {
    let p = params(r#"{"transition": {"stay": 0.8, "to": {"21": 2, "31": 1}}, "prior": "first-step"}"#);
    assert!(matches!(&p.transition, Transition::Stay(c) if c.to.as_ref().unwrap()[&21] == 2.0));
    assert!(matches!(p.prior, Prior::FirstStep));
    let p = params(r#"{"transition": {"estimate": {"counts": [[3, 1], [0, 4]], "classes": [1, 2]}}}"#);
    assert!(matches!(&p.transition, Transition::Estimate(e) if e.estimate.strength == 10.0 && e.estimate.stay_prior == 0.9));
    let err = Markov::parse_params(r#"{"transition": {"stay": 0.9, "sty": 1}}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("stay form") && m.contains("unknown field `sty`")), "{err}");
    let err = Markov::parse_params(r#"{"transition": {"stay": 0.9, "matrix": [[1]], "classes": [1]}}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("unknown field `stay`")), "{err}");
    let err = Markov::parse_params(r#"{"transition": {"keep": 0.9}}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("transition must be")), "{err}");
    let err = Markov::parse_params(r#"{"transition": {"stay": 0.9}, "smooth": false}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("unknown field `smooth`")), "{err}");
    let err = Markov::parse_params(r#"{"transition": {"stay": 0.9}, "prior": "flat"}"#).unwrap_err();
    assert!(matches!(&err, StageError::InvalidParams(m) if m.contains("unknown variant `flat`")), "{err}");
    // The schema the host validates against names every form.
    let schema = Markov::params_schema();
    for key in ["stay", "matrix", "estimate", "stay_prior", "first-step", "scaled-likelihood"] {
        assert!(schema.contains(key), "{key} missing from {schema}");
    }
}

#[test]
fn bad_posteriors_name_the_sample_and_step() {
    let p = r#"{"transition": {"stay": 0.9}}"#;
    let err = decode(&series(&[1, 2], 1, &[&[0.5, 0.5], &[0.2, 0.3]]), p).unwrap_err();
    assert_eq!(err, StageError::InvalidInput("posteriors of sample 1 at step 0 sum to 0.500000, not 1 (±0.001)".into()));
    let err = decode(&series(&[1, 2], 1, &[&[0.5, f32::NAN]]), p).unwrap_err();
    assert!(matches!(&err, StageError::InvalidInput(m) if m.contains("class 2 for sample 0 at step 0 is NaN")), "{err}");
    let err = decode(&series(&[1, 2], 1, &[&[1.5, -0.5]]), p).unwrap_err();
    assert!(matches!(&err, StageError::InvalidInput(m) if m.contains("class 2 for sample 0 at step 0 is -0.5")), "{err}");
    let err = decode(&series(&[1, 2], 1, &[&[f32::INFINITY, 0.0]]), p).unwrap_err();
    assert!(matches!(&err, StageError::InvalidInput(m) if m.contains("is inf")), "{err}");
    let mut short = series(&[1, 2], 2, &[&[0.5, 0.5], &[0.5, 0.5]]);
    short.data.pop();
    let err = Markov::decode(short, params(p)).unwrap_err();
    assert!(matches!(&err, StageError::InvalidInput(m) if m.contains("expected 2 steps × 1 samples × 2 classes")), "{err}");
    let err = decode(&series(&[1, 1], 1, &[&[0.5, 0.5]]), p).unwrap_err();
    assert!(matches!(&err, StageError::InvalidInput(m) if m.contains("class 1 is listed twice")), "{err}");
}

#[test]
fn rows_off_by_rounding_are_renormalised() {
    let exact = series(&[1, 2], 3, &[&[0.6, 0.4], &[0.45, 0.55], &[0.7, 0.3]]);
    // Every row scaled by 1.0008: within the 1e-3 tolerance.
    let mut off = exact.clone();
    off.data.iter_mut().for_each(|p| *p *= 1.0008);
    let p = r#"{"transition": {"stay": 0.8}}"#;
    let (a, b) = (decode(&exact, p).unwrap(), decode(&off, p).unwrap());
    assert_eq!(a.labels, b.labels);
    for (x, y) in a.posteriors.iter().zip(&b.posteriors) {
        assert!((x - y).abs() < 1e-6);
    }
}

#[test]
fn first_step_prior_is_the_mean_first_posterior() {
    // Mean first-step posterior over the samples with data: (0.7, 0.3). Likelihood mode,
    // one step: posterior ∝ π·p. Sample 0: (.7·.4, .3·.6) = (.28, .18) → 1; sample 1: → 1.
    let s = series(&[1, 2], 1, &[&[0.4, 0.6], &[1.0, 0.0], &[f32::NAN, f32::NAN]]);
    let d = decode(&s, r#"{"transition": {"stay": 0.9}, "prior": "first-step", "posteriors_as": "likelihood"}"#).unwrap();
    assert_eq!(d.labels, vec![1, 1, 1]);
    assert!((d.posteriors[0] as f64 - 0.28 / 0.46).abs() < 1e-5, "{:?}", d.posteriors);
    // A sample with no data at all takes the prior.
    assert!((d.posteriors[4] as f64 - 0.7).abs() < 1e-5, "{:?}", d.posteriors);
}

#[test]
fn long_series_do_not_underflow() {
    // 3000 years in blocks of 500 alternating between classes 2 and 4, each year's evidence
    // strong (0.97) but misleading every 10th year (never at a block edge, where it would
    // tie). In plain probability space the path scores would reach ~1e-3000; in log space
    // every step's posteriors are exact.
    let (steps, c) = (3000, 4);
    let truth = |t: usize| if (t / 500).is_multiple_of(2) { 1 } else { 3 };
    let mut data = Vec::new();
    for t in 0..steps {
        let k = if t % 10 == 5 { (truth(t) + 1) % c } else { truth(t) };
        let mut row = [0.01f32; 4];
        row[k] = 0.97;
        data.extend(row);
    }
    let s = PosteriorSeries { steps, samples: 1, classes: vec![1, 2, 3, 4], data };
    let d = decode(&s, r#"{"transition": {"stay": 0.99}}"#).unwrap();
    let want: Vec<u16> = (0..steps).map(|t| truth(t) as u16 + 1).collect();
    let wrong: Vec<usize> = (0..steps).filter(|&t| d.labels[t] != want[t]).collect();
    assert!(wrong.is_empty(), "labels differ from the blocks at steps {wrong:?}");
    for (t, row) in d.posteriors.chunks(c).enumerate() {
        let sum: f32 = row.iter().sum();
        assert!(row.iter().all(|p| p.is_finite()) && (sum - 1.0).abs() < 1e-5, "step {t}: {row:?}");
        assert_eq!(row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0, truth(t), "step {t}");
    }
}

#[test]
fn deterministic_and_independent_of_how_samples_are_chunked() {
    let mut rng = Rng(3);
    let (classes, steps, samples) = ([5u16, 6, 7, 8], 5, 42);
    let c = classes.len();
    let data: Vec<f32> = (0..steps * samples).flat_map(|_| rng.distribution(c)).map(|p| p as f32).collect();
    let whole = PosteriorSeries { steps, samples, classes: classes.to_vec(), data };
    let p = r#"{"transition": {"estimate": {"counts": [[50, 3, 1, 0], [2, 40, 0, 5], [0, 1, 30, 2], [4, 0, 0, 20]],
        "classes": [5, 6, 7, 8]}}, "prior": {"weights": {"5": 4, "6": 3, "7": 2, "8": 1}}}"#;
    let a = decode(&whole, p).unwrap();
    assert_eq!(a, decode(&whole, p).unwrap());
    // The second half of the samples on their own: 21 of them, so every pixel sits in
    // another lane than before, and the last block is partial.
    let half = samples / 2;
    let mut data = Vec::new();
    for t in 0..steps {
        data.extend_from_slice(&whole.data[(t * samples + half) * c..(t + 1) * samples * c]);
    }
    let part = PosteriorSeries { steps, samples: samples - half, classes: classes.to_vec(), data };
    let b = decode(&part, p).unwrap();
    for t in 0..steps {
        assert_eq!(b.labels[t * half..(t + 1) * half], a.labels[t * samples + half..(t + 1) * samples]);
        assert_eq!(
            b.posteriors[t * half * c..(t + 1) * half * c],
            a.posteriors[(t * samples + half) * c..(t + 1) * samples * c]
        );
    }
    // Labels only: the same labels, no posteriors.
    let only = decode(&whole, &p.replacen('{', r#"{"smoothed": false, "#, 1)).unwrap();
    assert_eq!(only.labels, a.labels);
    assert!(only.posteriors.is_empty());
}

#[test]
fn empty_series_decode_to_nothing() {
    let p = r#"{"transition": {"stay": 0.9}, "prior": "first-step"}"#;
    for (steps, samples) in [(0, 5), (3, 0)] {
        let s = PosteriorSeries { steps, samples, classes: vec![1, 2], data: Vec::new() };
        assert_eq!(decode(&s, p).unwrap(), Decoded { labels: Vec::new(), posteriors: Vec::new() });
    }
}

/// Throughput on a scene-sized chunk: `cargo test --release -p markov -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_scene_chunk() {
    let mut rng = Rng(5);
    let (steps, samples, c) = (6, 256 * 256, 10);
    let data: Vec<f32> = (0..steps * samples).flat_map(|_| rng.distribution(c)).map(|p| p as f32).collect();
    let s = PosteriorSeries { steps, samples, classes: (1..=c as u16).collect(), data };
    for smoothed in [false, true] {
        let p = format!(r#"{{"transition": {{"stay": 0.9}}, "smoothed": {smoothed}}}"#);
        // Best of five: the machine is shared, and the fastest run is the least disturbed.
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let d = decode(&s, &p).unwrap();
            best = best.min(started.elapsed().as_secs_f64());
            assert_eq!(d.labels.len(), steps * samples);
        }
        println!(
            "smoothed={smoothed}: {samples} px × {steps} steps × {c} classes in {best:.3} s = {:.2} Mpx/s, {:.2} µs/px",
            samples as f64 / best / 1e6,
            best / samples as f64 * 1e6
        );
    }
}
