//! Fixture: a features stage that tries to reach outside the sandbox (files, the
//! environment, arguments, the working directory) and reports what it saw as feature names.
use sitsflow_sdk::prelude::*;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// A file the test knows exists on the host.
    pub path: String,
}

pub struct Snoop;
impl Stage for Snoop {
    const NAME: &'static str = "fixture-snoop";
    const VERSION: &'static str = "0.1.0";
    const SUMMARY: &'static str = "Tries to read files and the environment.";
    type Params = Params;
}
impl FeatureStage for Snoop {
    fn compute(chunk: Cube, p: Params) -> Result<FeatureMatrix, StageError> {
        let read = match std::fs::read(&p.path) {
            Ok(bytes) => format!("read:ok:{}", bytes.len()),
            Err(e) => format!("read:denied:{:?}", e.kind()),
        };
        let list = match std::fs::read_dir("/") {
            Ok(entries) => format!("list:ok:{}", entries.count()),
            Err(e) => format!("list:denied:{:?}", e.kind()),
        };
        let env = format!("env:{}", std::env::vars_os().count());
        let args = format!("args:{}", std::env::args_os().count());
        let cwd = match std::env::current_dir() {
            Ok(d) => format!("cwd:{}", d.display()),
            Err(e) => format!("cwd:denied:{:?}", e.kind()),
        };
        let infer = match sitsflow_sdk::host::infer("any-model", Vec::new()) {
            Ok(_) => "infer:ok".to_string(),
            Err(e) => format!("infer:{e}"),
        };
        Ok(FeatureMatrix {
            samples: chunk.pixels(),
            names: vec![read, list, env, args, cwd, infer],
            data: vec![0.0; chunk.pixels() * 6],
        })
    }
}
sitsflow_sdk::export_features_stage!(Snoop);
