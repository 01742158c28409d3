use kmeans::KMeans;
use sitsflow_sdk::prelude::*;
use sitsflow_sdk::serde_json;
use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let params = std::env::args().nth(2).unwrap();
    let d: usize = std::env::args().nth(3).map_or(10, |s| s.parse().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    let data: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let fm = FeatureMatrix { samples: data.len() / d, names: (0..d).map(|j| format!("f{j}")).collect(), data };
    for _ in 0..3 {
        let x = fm.clone();
        let t = Instant::now();
        let f = KMeans::fit(x, KMeans::parse_params(&params).unwrap()).unwrap();
        let r: serde_json::Value = serde_json::from_str(&f.report).unwrap();
        println!("{:.3}s iterations {} inertia {}", t.elapsed().as_secs_f64(), r["iterations"], r["inertia"]);
    }
}
