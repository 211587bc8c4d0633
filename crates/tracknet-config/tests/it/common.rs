//! Config test helpers: the seed configs composed, and the issues of a rejected config.

use std::path::PathBuf;

use tracknet_config::{ConfigError, ConfigIssue, RunConfig};

/// The repository's `configs/` folder.
pub fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// Composes a seed model file with the seed data and training files.
pub fn composed(model_file: &str, overrides: &[&str]) -> Result<RunConfig, ConfigError> {
    let c = configs();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    RunConfig::load_composed(
        &c.join("model").join(model_file),
        &c.join("data/tracknet.yaml"),
        &c.join("training/default.yaml"),
        &overrides,
    )
}

/// The issues of an expected `Invalid` error.
pub fn issues(r: Result<RunConfig, ConfigError>) -> Vec<ConfigIssue> {
    match r {
        Ok(_) => panic!("expected the config to be rejected"),
        Err(ConfigError::Invalid(v)) => v,
        Err(e) => panic!("expected ConfigError::Invalid, got {e:?}"),
    }
}

/// The issue at exactly `path`, or a panic listing what there was.
pub fn issue_at<'a>(issues: &'a [ConfigIssue], path: &str) -> &'a ConfigIssue {
    issues.iter().find(|i| i.path == path).unwrap_or_else(|| {
        let all: Vec<String> = issues.iter().map(ToString::to_string).collect();
        panic!("no issue at `{path}`; issues:\n{}", all.join("\n"))
    })
}
