//! Merging the layers into one TOML tree and deserialising it once.

use crate::model::Config;
use crate::validate::{validate, ConfigError, ConfigProblem};
use std::path::PathBuf;
use toml::{Table, Value};

/// Where the layers above the defaults come from.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    pub file: Option<PathBuf>,
    /// `(dotted.path, value)` pairs from the environment, lowest priority first.
    pub env: Vec<(String, String)>,
    /// `dotted.path=value` overrides from the command line, applied last.
    pub overrides: Vec<String>,
}

/// Reads `EDGE_GATEWAY__SECTION__KEY` variables into dotted paths (`section.key`), after
/// the standard `OTEL_*` ones (`traces::otel_env_overrides`).
pub fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let vars: Vec<_> = vars.collect();
    // The standard OpenTelemetry variables first, so `EDGE_GATEWAY__TRACING__*` wins.
    let otel = crate::traces::otel_env_overrides(&vars);
    let mut out: Vec<_> = vars
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("EDGE_GATEWAY__")?;
            let path = rest
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            Some((path, v))
        })
        .collect();
    out.sort();
    otel.into_iter().chain(out).collect()
}

/// A value as TOML if it parses as one (`8080`, `true`, `[1,2]`, `"x"`), else as a plain string.
fn parse_scalar(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        Err(_) => Value::String(raw.into()),
    }
}

/// Sets `path` (dots separate keys, numbers index arrays) in `root` to `raw`.
pub fn apply_override(root: &mut Table, path: &str, raw: &str) -> Result<(), ConfigProblem> {
    let parts: Vec<&str> = path.split('.').collect();
    let bad = |m: &str| ConfigProblem {
        path: path.into(),
        message: m.into(),
    };
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key in path"));
    }
    let mut tree = Value::Table(std::mem::take(root));
    let result = set_in(&mut tree, &parts, raw).map_err(bad);
    if let Value::Table(t) = tree {
        *root = t;
    }
    result
}

fn set_in(node: &mut Value, parts: &[&str], raw: &str) -> Result<(), &'static str> {
    let (head, rest) = parts.split_first().ok_or("empty path")?;
    let wants_array = rest.first().is_some_and(|p| p.parse::<usize>().is_ok());
    let child: &mut Value = match node {
        Value::Table(t) => {
            if rest.is_empty() {
                t.insert((*head).into(), parse_scalar(raw));
                return Ok(());
            }
            t.entry(head.to_string()).or_insert_with(|| {
                if wants_array {
                    Value::Array(vec![])
                } else {
                    Value::Table(Table::new())
                }
            })
        }
        Value::Array(a) => {
            let idx: usize = head.parse().map_err(|_| "expected an array index")?;
            if idx > a.len() {
                return Err("array index skips elements");
            }
            if idx == a.len() {
                a.push(Value::Table(Table::new()));
            }
            if rest.is_empty() {
                a[idx] = parse_scalar(raw);
                return Ok(());
            }
            &mut a[idx]
        }
        _ => return Err("path goes through a value that is not a table"),
    };
    set_in(child, rest, raw)
}

/// Loads the configuration through every layer — the file, the control plane's applied
/// changes in the data directory (`applied.rs`), the environment, the flags — and validates it.
pub fn load(opts: &LoadOptions) -> Result<Config, ConfigError> {
    // The applied changes live in the data directory, which any layer may set.
    let data_dir = load_with(opts, Some(&Table::new()))
        .map(|c| c.data_dir)
        .unwrap_or_else(|_| Config::default().data_dir);
    let applied = crate::applied::read_applied(&data_dir)?;
    load_with(opts, Some(&applied))
}

/// [`load`] with these applied changes (`None`: none).
pub fn load_with(opts: &LoadOptions, applied: Option<&Table>) -> Result<Config, ConfigError> {
    let mut root = Table::new();
    if let Some(path) = &opts.file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        root = text.parse::<Table>().map_err(|e| ConfigError::Syntax {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    if let Some(a) = applied {
        crate::applied::merge(&mut root, a);
    }
    let mut problems = Vec::new();
    let cli = opts.overrides.iter().map(|o| match o.split_once('=') {
        Some((k, v)) => (k.trim().to_string(), v.to_string()),
        None => (o.clone(), String::new()),
    });
    for (path, raw) in opts.env.iter().cloned().chain(cli) {
        if let Err(p) = apply_override(&mut root, &path, &raw) {
            problems.push(p);
        }
    }
    from_table(root, problems)
}

fn from_table(mut root: Table, mut problems: Vec<ConfigProblem>) -> Result<Config, ConfigError> {
    // Sinks are a tagged enum, which serde_ignored cannot look into: they are read one by
    // one (`crate::sink::validate::parse_sinks`), so each problem names its sink.
    let sinks = root.remove("sinks");
    let mut unknown = Vec::new();
    let de = Value::Table(root);
    let parsed: Result<Config, _> = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()));
    for p in unknown {
        problems.push(ConfigProblem {
            path: p,
            message: "unknown key".into(),
        });
    }
    let sinks = sinks.map(crate::sink::validate::parse_sinks);
    match parsed {
        Ok(mut cfg) => {
            let mut sinks_broken = false;
            if let Some(sinks) = sinks {
                match sinks {
                    Ok(s) => cfg.sinks = s,
                    Err(p) => {
                        sinks_broken = true;
                        problems.extend(p);
                    }
                }
            }
            // Semantic checks of sinks that could not be read would only repeat them.
            problems.extend(
                validate(&cfg)
                    .into_iter()
                    .filter(|p| !(sinks_broken && p.path.starts_with("sinks"))),
            );
            if problems.is_empty() {
                Ok(cfg)
            } else {
                Err(ConfigError::Invalid(problems))
            }
        }
        Err(e) => {
            if let Some(Err(p)) = sinks {
                problems.extend(p);
            }
            problems.push(ConfigProblem {
                path: "(type)".into(),
                message: e.to_string(),
            });
            Err(ConfigError::Invalid(problems))
        }
    }
}
