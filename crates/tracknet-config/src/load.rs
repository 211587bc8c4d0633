//! File reading, composition, overrides, and the collecting deserializer.
//!
//! Pipeline: every file becomes a `serde_json::Value` tree; section files are placed under
//! `model` / `data` / `training`; overrides are applied to that tree; `BitsAndBytesConfig`
//! names are mapped (`mode: hf`); the tree is deserialized with `serde_ignored` (every unknown
//! key) and `serde_path_to_error` (the path of a type error). A type error removes the
//! offending key and deserialization is retried, so every type error is reported, not only the
//! first. The typed result is then validated.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::enums::one_of;
use crate::error::{ConfigError, ConfigIssue};
use crate::{RunConfig, validate};

/// The three sections of a combined file.
pub(crate) const SECTIONS: [&str; 3] = ["model", "data", "training"];

/// `BitsAndBytesConfig` key → this project's key, accepted in `model.quantization` with
/// `mode: hf`.
pub const HF_QUANT_ALIASES: [(&str, &str); 5] = [
    ("load_in_4bit", "enabled"),
    ("bnb_4bit_quant_type", "quant_type"),
    ("bnb_4bit_compute_dtype", "compute_dtype"),
    ("bnb_4bit_use_double_quant", "use_double_quant"),
    ("llm_int8_skip_modules", "skip_modules"),
];

/// Keys accepted at a path besides the canonical ones (serde aliases and hf-mode names).
fn alias_keys(parent: &str) -> &'static [&'static str] {
    match parent {
        "model.quantization" => &[
            "load_in_4bit",
            "bnb_4bit_quant_type",
            "bnb_4bit_compute_dtype",
            "bnb_4bit_use_double_quant",
            "llm_int8_skip_modules",
        ],
        "training.loss" => &["alpha", "beta"],
        _ => &[],
    }
}

/// The key tree of a full config: `RunConfig::default()` serialized, with optional sections
/// (`data.synthetic`) filled in so their keys are known too.
pub(crate) fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut full = RunConfig::default();
        full.data.synthetic = Some(Default::default());
        serde_json::to_value(&full).expect("RunConfig serializes to JSON")
    })
}

fn schema_at(path: &[String]) -> Option<&'static Value> {
    let mut node = schema();
    for seg in path {
        node = node.as_object()?.get(seg)?;
    }
    Some(node)
}

// ---------------------------------------------------------------------------------------------
// Files

enum Format {
    Yaml,
    Toml,
}

fn format_of(path: &Path) -> Result<Format, ConfigError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("yaml" | "yml") => Ok(Format::Yaml),
        Some("toml") => Ok(Format::Toml),
        _ => Err(ConfigError::Parse {
            file: path.display().to_string(),
            message: "unsupported file extension; expected .yaml, .yml or .toml".into(),
        }),
    }
}

/// Reads a YAML or TOML file (by extension) into a JSON tree. An empty file is an empty
/// mapping.
pub(crate) fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let format = format_of(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let label = path.display().to_string();
    match format {
        Format::Yaml => parse_yaml(&text, &label),
        Format::Toml => parse_toml(&text, &label),
    }
}

/// Parses YAML text (merge keys `<<:` applied) into a JSON tree.
pub(crate) fn parse_yaml(text: &str, label: &str) -> Result<Value, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        file: label.to_owned(),
        message,
    };
    let mut y: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    y.apply_merge().map_err(|e| parse_err(e.to_string()))?;
    let v = serde_json::to_value(&y).map_err(|e| parse_err(e.to_string()))?;
    Ok(if v.is_null() {
        Value::Object(Map::new())
    } else {
        v
    })
}

/// Parses TOML text into a JSON tree.
pub(crate) fn parse_toml(text: &str, label: &str) -> Result<Value, ConfigError> {
    let t: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: label.to_owned(),
        message: e.to_string(),
    })?;
    serde_json::to_value(&t).map_err(|e| ConfigError::Parse {
        file: label.to_owned(),
        message: e.to_string(),
    })
}

/// A section file's body: the file itself, or, when its only key is the section name
/// (`model: {...}` in a model file), that key's mapping.
pub(crate) fn section_body(value: Value, section: &str) -> Value {
    match value {
        Value::Object(mut m) if m.len() == 1 && m.get(section).is_some_and(Value::is_object) => {
            m.remove(section).expect("checked above")
        }
        v => v,
    }
}

/// Recursively merges `overlay` into `base`: mappings merge key by key, anything else replaces.
pub(crate) fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

// ---------------------------------------------------------------------------------------------
// Overrides

/// Splits and parses one `dotted.key=value` override. The value is read as YAML (`1e-4`,
/// `true`, `[a, b]`, `{r: 8}`, empty or `null` for null).
pub fn parse_override(text: &str) -> Result<(Vec<String>, Value), ConfigIssue> {
    let Some((key, raw)) = text.split_once('=') else {
        return Err(ConfigIssue::new(
            text,
            "expected an override of the form `section.key=value`",
        ));
    };
    let key = key.trim();
    let segs: Vec<String> = key.split('.').map(|s| s.trim().to_owned()).collect();
    if segs.iter().any(String::is_empty) {
        return Err(ConfigIssue::new(
            text,
            "expected a dotted key path such as `training.optimizer.lr` before `=`",
        ));
    }
    let y: serde_yaml::Value = serde_yaml::from_str(raw).map_err(|e| {
        ConfigIssue::new(
            key,
            format!("cannot parse override value `{raw}` as YAML: {e}"),
        )
    })?;
    let v = serde_json::to_value(&y)
        .map_err(|e| ConfigIssue::new(key, format!("cannot use override value `{raw}`: {e}")))?;
    Ok((segs, v))
}

/// Checks that an override path names a key of the schema.
fn check_override_path(segs: &[String]) -> Result<(), ConfigIssue> {
    let full = segs.join(".");
    let mut node = schema();
    for (i, seg) in segs.iter().enumerate() {
        let parent = segs[..i].join(".");
        match node {
            Value::Object(m) => match m.get(seg) {
                Some(n) => node = n,
                None if alias_keys(&parent).contains(&seg.as_str()) && i + 1 == segs.len() => {
                    return Ok(());
                }
                None => return Err(unknown_key_issue(&full, &segs[..i], seg)),
            },
            _ => {
                return Err(ConfigIssue::new(
                    full.clone(),
                    format!("`{parent}` is a value, not a section, so `{full}` cannot be set"),
                ));
            }
        }
    }
    Ok(())
}

/// The other spelling of a key that has two (`quant_type` / `bnb_4bit_quant_type`,
/// `focal_alpha` / `alpha`), if `parent.key` is such a key.
fn other_spelling(parent: &str, key: &str) -> Option<&'static str> {
    let pairs: &[(&'static str, &'static str)] = match parent {
        "model.quantization" => &HF_QUANT_ALIASES,
        "training.loss" => &[("alpha", "focal_alpha"), ("beta", "focal_beta")],
        _ => return None,
    };
    pairs.iter().find_map(|&(a, b)| {
        if a == key {
            Some(b)
        } else if b == key {
            Some(a)
        } else {
            None
        }
    })
}

/// An override of one spelling replaces a file value given under the other spelling.
fn remove_other_spelling(tree: &mut Value, segs: &[String]) {
    let Some((key, parent)) = segs.split_last() else {
        return;
    };
    let Some(other) = other_spelling(&parent.join("."), key) else {
        return;
    };
    let mut node = Some(tree);
    for seg in parent {
        node = node.and_then(|n| n.get_mut(seg.as_str()));
    }
    if let Some(Value::Object(m)) = node {
        m.remove(other);
    }
}

/// Applies overrides to the composed tree, collecting problems into `issues`.
pub(crate) fn apply_overrides(
    tree: &mut Value,
    overrides: &[String],
    issues: &mut Vec<ConfigIssue>,
) {
    for text in overrides {
        let (segs, value) = match parse_override(text) {
            Ok(x) => x,
            Err(issue) => {
                issues.push(issue);
                continue;
            }
        };
        if let Err(issue) = check_override_path(&segs) {
            issues.push(issue);
            continue;
        }
        remove_other_spelling(tree, &segs);
        let mut node = &mut *tree;
        for seg in &segs[..segs.len() - 1] {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            node = node
                .as_object_mut()
                .expect("made an object above")
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Map::new()));
        }
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let last = segs.last().expect("at least one segment").clone();
        let map = node.as_object_mut().expect("made an object above");
        match (map.get_mut(&last), value) {
            (Some(existing @ Value::Object(_)), v @ Value::Object(_)) => deep_merge(existing, v),
            (_, v) => {
                map.insert(last, v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BitsAndBytesConfig names

fn normalize_dtype(v: Value) -> Value {
    match v {
        Value::String(s) => {
            let bare = s.strip_prefix("torch.").unwrap_or(&s);
            let canon = match bare {
                "bf16" | "bfloat16" => "bfloat16",
                "fp16" | "float16" | "half" => "float16",
                "fp32" | "float32" | "float" => "float32",
                _ => return Value::String(s),
            };
            Value::String(canon.into())
        }
        v => v,
    }
}

/// Maps `BitsAndBytesConfig` key names onto this project's names (`mode: hf`), or reports
/// them (`mode: manual`).
pub(crate) fn normalize_quantization(tree: &mut Value, issues: &mut Vec<ConfigIssue>) {
    let Some(q) = tree
        .get_mut("model")
        .and_then(|m| m.get_mut("quantization"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    // Only an explicit or implied `manual` rejects the hf names; an invalid mode is reported by
    // deserialization, so the names are mapped silently then.
    let manual = match q.get("mode") {
        None => true,
        Some(Value::String(s)) => s == "manual",
        Some(_) => false,
    };
    if !manual && let Some(v) = q.remove("compute_dtype") {
        q.insert("compute_dtype".into(), normalize_dtype(v));
    }
    for (alias, canon) in HF_QUANT_ALIASES {
        let Some(v) = q.remove(alias) else { continue };
        let path = format!("model.quantization.{alias}");
        if manual {
            issues.push(
                ConfigIssue::new(
                    path,
                    format!(
                        "`{alias}` is a BitsAndBytesConfig key, accepted only with \
                         `model.quantization.mode: hf`; set `mode: hf` or use `{canon}`"
                    ),
                )
                .with_suggestion(Some(format!("model.quantization.{canon}"))),
            );
            continue;
        }
        let v = if canon == "compute_dtype" {
            normalize_dtype(v)
        } else {
            v
        };
        match q.get(canon) {
            Some(existing) if *existing != v => issues.push(ConfigIssue::new(
                path,
                format!("conflicts with `{canon}` ({existing} vs {v}); set only one of them"),
            )),
            Some(_) => {}
            None => {
                q.insert(canon.into(), v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Did-you-mean

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[n][m]
}

/// The candidate the user most likely meant by `key`, if any is close enough.
pub(crate) fn closest<'a>(
    key: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    let limit = (key.chars().count() / 3).clamp(1, 3);
    let mut best: Option<(usize, &str)> = None;
    let mut containing: Option<&str> = None;
    for c in candidates {
        let d = edit_distance(&lower, c);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
        if containing.is_none()
            && lower.len() >= 4
            && (c.contains(&lower) || lower.contains(c))
            && c.len() >= 4
        {
            containing = Some(c);
        }
    }
    best.map(|(_, c)| c).or(containing)
}

/// An "unknown key" issue for `key` under `parent`, with a did-you-mean.
fn unknown_key_issue(full: &str, parent: &[String], key: &str) -> ConfigIssue {
    let known: Vec<&str> = schema_at(parent)
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let prefix = |k: &str| {
        if parent.is_empty() {
            k.to_owned()
        } else {
            format!("{}.{k}", parent.join("."))
        }
    };
    let mut suggestion = closest(key, known.iter().copied()).map(prefix);
    let mut message = format!("unknown key `{key}`");
    if parent.is_empty() && suggestion.is_none() {
        // A flat section file loaded as a combined file: point at the section that has the key.
        if let Some(section) = SECTIONS.iter().find(|s| {
            schema_at(&[s.to_string()])
                .and_then(Value::as_object)
                .is_some_and(|m| m.contains_key(key))
        }) {
            suggestion = Some(format!("{section}.{key}"));
            message.push_str(
                "; a combined file needs top-level `model:`, `data:` and `training:` \
                 (flat section files are loaded with `load_composed`)",
            );
        }
    }
    if suggestion.is_none() && !known.is_empty() {
        message.push_str(&format!("; expected {}", one_of(&known)));
    }
    ConfigIssue::new(full, message).with_suggestion(suggestion)
}

// ---------------------------------------------------------------------------------------------
// Deserialization

fn ignored_path(p: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
    use serde_ignored::Path as P;
    match p {
        P::Root => {}
        P::Seq { parent, index } => {
            ignored_path(parent, out);
            if let Some(last) = out.last_mut() {
                last.push_str(&format!("[{index}]"));
            } else {
                out.push(format!("[{index}]"));
            }
        }
        P::Map { parent, key } => {
            ignored_path(parent, out);
            out.push(key.clone());
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent, out)
        }
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

fn error_segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            _ => None,
        })
        .collect()
}

fn segments_to_string(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() { "<root>".into() } else { s }
}

/// Removes the innermost mapping key on `segs` from `tree`; false if there is none.
fn remove_at(tree: &mut Value, segs: &[Seg]) -> bool {
    let Some(last_key) = segs.iter().rposition(|s| matches!(s, Seg::Key(_))) else {
        return false;
    };
    let mut node = tree;
    for seg in &segs[..last_key] {
        node = match (seg, node) {
            (Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(n) => n,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (&segs[last_key], node) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        _ => false,
    }
}

fn nice_expected(exp: &str) -> String {
    match exp {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a non-negative integer".into(),
        "isize" | "i64" | "i32" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        "a string" | "a boolean" | "a sequence" => exp.into(),
        s if s.starts_with("struct ") => format!("a mapping ({})", &s["struct ".len()..]),
        s => s.into(),
    }
}

/// Rewrites serde's `invalid type: X, expected Y` as `expected Y, got X`.
fn rewrite_message(msg: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some((got, exp)) = rest.rsplit_once(", expected ")
        {
            return format!("expected {}, got {got}", nice_expected(exp));
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid length ")
        && let Some((n, exp)) = rest.split_once(", expected ")
    {
        // Every fixed-size array in the schema has 2 entries ([W, H], betas).
        let exp = if exp == "fewer elements in array" {
            "an array of length 2"
        } else {
            exp
        };
        let noun = if n == "1" { "entry" } else { "entries" };
        return format!("expected {exp}, got {n} {noun}");
    }
    if let Some(rest) = msg.strip_prefix("duplicate field ") {
        return format!("{rest} is set twice (under its own name and under an alias)");
    }
    msg.to_owned()
}

/// Turns a (composed, overridden) tree into a validated [`RunConfig`], reporting every problem.
pub(crate) fn build(mut tree: Value, overrides: &[String]) -> Result<RunConfig, ConfigError> {
    let mut issues = Vec::new();
    if !tree.is_object() {
        return Err(ConfigError::Invalid(vec![ConfigIssue::new(
            "<root>",
            "expected a mapping with `model`, `data` and `training` sections",
        )]));
    }
    apply_overrides(&mut tree, overrides, &mut issues);
    normalize_quantization(&mut tree, &mut issues);

    let mut type_errors: Vec<String> = Vec::new();
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    let mut config = None;
    // Each failed attempt removes one key, so this terminates; the bound is a safety net.
    for _ in 0..10_000 {
        let mut ignored: Vec<String> = Vec::new();
        let result = {
            let mut on_ignored = |p: serde_ignored::Path<'_>| {
                let mut segs = Vec::new();
                ignored_path(&p, &mut segs);
                ignored.push(segs.join("."));
            };
            let de = serde_ignored::Deserializer::new(&tree, &mut on_ignored);
            serde_path_to_error::deserialize::<_, RunConfig>(de)
        };
        unknown.extend(ignored);
        match result {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(e) => {
                let segs = error_segments(e.path());
                let path = segments_to_string(&segs);
                issues.push(ConfigIssue::new(
                    path.clone(),
                    rewrite_message(&e.inner().to_string()),
                ));
                type_errors.push(path);
                if !remove_at(&mut tree, &segs) {
                    break;
                }
            }
        }
    }

    for path in &unknown {
        let segs: Vec<String> = path.split('.').map(str::to_owned).collect();
        let (key, parent) = segs.split_last().expect("non-empty path");
        issues.push(unknown_key_issue(path, parent, key));
    }

    let Some(config) = config else {
        return Err(ConfigError::Invalid(issues));
    };
    let covered = |p: &str| {
        type_errors.iter().any(|t| {
            p == t
                || p.strip_prefix(t.as_str())
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
        })
    };
    issues.extend(
        validate::issues(&config)
            .into_iter()
            .filter(|i| !covered(&i.path)),
    );
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(issues))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("lora_alpah", "lora_alpha"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            closest("lora_alpah", ["r", "lora_alpha", "lora_dropout"]),
            Some("lora_alpha")
        );
        assert_eq!(closest("zzz", ["r", "lora_alpha"]), None);
    }

    #[test]
    fn rewrite() {
        assert_eq!(
            rewrite_message("invalid type: string \"abc\", expected usize"),
            "expected a non-negative integer, got string \"abc\""
        );
        assert_eq!(
            rewrite_message("invalid length 3, expected an array of length 2"),
            "expected an array of length 2, got 3 entries"
        );
    }

    #[test]
    fn override_parsing() {
        let (segs, v) = parse_override("training.optimizer.lr=1e-4").unwrap();
        assert_eq!(segs, ["training", "optimizer", "lr"]);
        assert_eq!(v, serde_json::json!(1e-4));
        let (_, v) = parse_override("model.lora.target_modules=[q_proj,v_proj]").unwrap();
        assert_eq!(v, serde_json::json!(["q_proj", "v_proj"]));
        let (_, v) = parse_override("model.pretrained_model_name=").unwrap();
        assert!(v.is_null());
        assert!(parse_override("no_equals").is_err());
        assert!(parse_override("a..b=1").is_err());
    }
}
