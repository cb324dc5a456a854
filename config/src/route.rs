//! Routing rules (`[[routes]]`, issue 12): which sinks a reading is queued for.
//!
//! A reading is queued for the sinks of the first rule it matches (device id glob, and, when
//! given, its source and schema). No rules: every sink, as before rules existed. Rules and no
//! match: the reading is refused (`no_route`, HTTP 422; over MQTT dead-lettered with that
//! reason) — never accepted and silently delivered nowhere. End the list with a catch-all
//! (`devices = "*"`) to route everything else.

use serde::{Deserialize, Serialize};

/// One rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteConfig {
    /// Device ids this rule takes: `*` any run of characters, `?` any one.
    #[serde(default = "any")]
    pub devices: String,
    /// `http` or `mqtt`; any source when unset.
    #[serde(default)]
    pub source: Option<String>,
    /// The reading's `schema`; any when unset.
    #[serde(default)]
    pub schema: Option<u32>,
    /// Sink names, at least one.
    pub sinks: Vec<String>,
}

fn any() -> String {
    "*".into()
}

/// Whether `s` matches `pattern` (`*`: any run, `?`: any one character). Iterative, linear
/// in practice: a hostile pattern cannot make it backtrack without bound.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// The problems of the rules, as `(path, message)`, given the configured sink names.
pub fn route_problems(routes: &[RouteConfig], sinks: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let mut p = |k: &str, m: String| out.push((format!("routes[{i}].{k}"), m));
        let ok = !r.devices.is_empty()
            && r.devices.len() <= 128
            && r.devices
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:*?".contains(&b));
        if !ok {
            p(
                "devices",
                "1-128 characters of A-Z a-z 0-9 . _ : - and the wildcards * ?".into(),
            );
        }
        if let Some(s) = &r.source {
            if s != "http" && s != "mqtt" {
                p("source", format!("{s:?}: \"http\" or \"mqtt\""));
            }
        }
        if r.sinks.is_empty() {
            p("sinks", "name at least one sink".into());
        }
        for s in &r.sinks {
            if !sinks.contains(s) {
                p(
                    "sinks",
                    format!("no sink named {s:?} (sinks: {})", sinks.join(", ")),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, s, m) in [
            ("*", "anything", true),
            ("line-1-*", "line-1-press", true),
            ("line-1-*", "line-2-press", false),
            ("s-?", "s-1", true),
            ("s-?", "s-12", false),
            ("*-press", "line-1-press", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob_match(p, s), m, "{p} {s}");
        }
        // No exponential backtracking on a hostile pattern.
        let p = "*a".repeat(40);
        assert!(!glob_match(&p, &"a".repeat(39)));
    }

    #[test]
    fn rules_are_checked_against_the_sinks() {
        let sinks = vec!["api".to_string(), "archive".to_string()];
        let r = |devices: &str, source: Option<&str>, s: &[&str]| RouteConfig {
            devices: devices.into(),
            source: source.map(String::from),
            schema: None,
            sinks: s.iter().map(|x| x.to_string()).collect(),
        };
        assert!(route_problems(&[r("*", Some("mqtt"), &["api"])], &sinks).is_empty());
        let got: Vec<String> = route_problems(
            &[r("a/b", Some("coap"), &[]), r("*", None, &["nope"])],
            &sinks,
        )
        .into_iter()
        .map(|p| p.0)
        .collect();
        assert_eq!(
            got,
            [
                "routes[0].devices",
                "routes[0].source",
                "routes[0].sinks",
                "routes[1].sinks"
            ]
        );
    }
}
