//! PEFT's module-targeting rules.

use regex::Regex;

use crate::config::TargetSpec;
use crate::error::LoraError;

/// Projection names auto-detection adapts: attention and MLP projections of both naming
/// schemes in use (DINOv3 / transformers 5: `q_proj … gate_proj`, `fc1/fc2`; older ViT:
/// `query/key/value/dense`). Norms, embeddings and the head are never among them.
pub const AUTO_TARGETS: [&str; 13] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "up_proj",
    "down_proj",
    "gate_proj",
    "fc1",
    "fc2",
    "query",
    "key",
    "value",
    "dense",
];

/// PEFT's list rule: the path equals the name or ends with `.` + name.
pub fn list_match(path: &str, name: &str) -> bool {
    path == name
        || path
            .strip_suffix(name)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// PEFT's `modules_to_save` rule: a parameter `param_path` belongs to a saved module when its
/// module path, or one of its parents, ends with `name` (a plain string suffix, as PEFT's
/// `key.endswith(target_key)`).
pub fn saved_module_match(param_path: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let module = param_path.rsplit_once('.').map_or("", |(m, _)| m);
    let mut end = module.len();
    loop {
        if module[..end].ends_with(name) {
            return true;
        }
        match module[..end].rfind('.') {
            Some(i) => end = i,
            None => return false,
        }
    }
}

/// The auto-detected target list for these linear-layer paths.
pub fn auto_targets(paths: &[String]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for p in paths {
        let last = p.rsplit('.').next().unwrap_or(p);
        if AUTO_TARGETS.contains(&last) && !found.iter().any(|f| f == last) {
            found.push(last.to_string());
        }
    }
    found
}

/// The linear-layer paths `spec` selects; an error (as PEFT raises) when none.
pub fn select_targets(paths: &[String], spec: &TargetSpec) -> Result<Vec<String>, LoraError> {
    let selected: Vec<String> = match spec {
        TargetSpec::List(names) => paths
            .iter()
            .filter(|p| names.iter().any(|n| list_match(p, n)))
            .cloned()
            .collect(),
        TargetSpec::Regex(pattern) => {
            let re = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| LoraError::BadRegex {
                pattern: pattern.clone(),
                message: e.to_string(),
            })?;
            paths.iter().filter(|p| re.is_match(p)).cloned().collect()
        }
        TargetSpec::Auto => {
            let names = auto_targets(paths);
            paths
                .iter()
                .filter(|p| names.iter().any(|n| list_match(p, n)))
                .cloned()
                .collect()
        }
    };
    if selected.is_empty() {
        let targets = match spec {
            TargetSpec::List(n) => format!("{n:?}"),
            TargetSpec::Regex(r) => format!("regex `{r}`"),
            TargetSpec::Auto => format!("(auto: {AUTO_TARGETS:?})"),
        };
        let sample: Vec<&str> = paths.iter().take(8).map(String::as_str).collect();
        return Err(LoraError::NoTargetMatched {
            targets,
            count: paths.len(),
            sample: sample.join(", "),
        });
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dinov3_paths() -> Vec<String> {
        let mut v = Vec::new();
        for i in 0..2 {
            for p in [
                "attention.q_proj",
                "attention.k_proj",
                "attention.v_proj",
                "attention.o_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                v.push(format!("model.layer.{i}.{p}"));
            }
        }
        v
    }

    #[test]
    fn list_matching_is_suffix_on_dots() {
        assert!(list_match("model.layer.0.attention.q_proj", "q_proj"));
        assert!(list_match(
            "model.layer.0.attention.q_proj",
            "attention.q_proj"
        ));
        assert!(list_match("q_proj", "q_proj"));
        assert!(!list_match("model.layer.0.attention.q_proj", "proj"));
        assert!(!list_match("model.layer.0.attention.xq_proj", "q_proj"));
        let sel = select_targets(
            &dinov3_paths(),
            &TargetSpec::List(vec!["q_proj".into(), "mlp.up_proj".into()]),
        )
        .unwrap();
        assert_eq!(
            sel,
            vec![
                "model.layer.0.attention.q_proj",
                "model.layer.0.mlp.up_proj",
                "model.layer.1.attention.q_proj",
                "model.layer.1.mlp.up_proj"
            ]
        );
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let paths = dinov3_paths();
        let sel = select_targets(
            &paths,
            &TargetSpec::Regex(r"model\.layer\.1\.attention\.(q|v)_proj".into()),
        )
        .unwrap();
        assert_eq!(
            sel,
            vec![
                "model.layer.1.attention.q_proj",
                "model.layer.1.attention.v_proj"
            ]
        );
        // A partial match is not a match (fullmatch semantics).
        assert!(select_targets(&paths, &TargetSpec::Regex("q_proj".into())).is_err());
        assert!(matches!(
            select_targets(&paths, &TargetSpec::Regex("(".into())),
            Err(LoraError::BadRegex { .. })
        ));
    }

    #[test]
    fn original_targets_fail_loudly_on_dinov3() {
        let spec = TargetSpec::List(vec![
            "query".into(),
            "key".into(),
            "value".into(),
            "dense".into(),
        ]);
        let err = select_targets(&dinov3_paths(), &spec).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"query\""), "{msg}");
        assert!(msg.contains("model.layer.0.attention.q_proj"), "{msg}");
        assert!(msg.contains("12 linear layers"), "{msg}");
    }

    #[test]
    fn auto_detects_projections_of_both_schemes() {
        assert_eq!(
            select_targets(&dinov3_paths(), &TargetSpec::Auto)
                .unwrap()
                .len(),
            12
        );
        let vit_old = vec![
            "encoder.layer.0.attention.attention.query".to_string(),
            "encoder.layer.0.attention.output.dense".to_string(),
            "encoder.layer.0.intermediate.dense".to_string(),
            "layernorm".to_string(),
        ];
        assert_eq!(
            select_targets(&vit_old, &TargetSpec::Auto).unwrap().len(),
            3
        );
        assert!(select_targets(&["embeddings.patch".to_string()], &TargetSpec::Auto).is_err());
    }
}
