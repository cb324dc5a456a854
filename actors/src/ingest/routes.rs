//! Routing rules applied at ingest (`[[routes]]`, config/src/route.rs): each reading gets the
//! sinks of the first rule it matches, as a [`Route`]. Pure, apart from the table that lets a
//! configuration change swap the rules for readings accepted after it.

use crate::wal::{Record, Route, Source};
use edge_gateway_config::{glob_match, RouteConfig};
use std::sync::{Arc, RwLock};

struct Rule {
    devices: String,
    source: Option<Source>,
    schema: Option<u32>,
    mask: u64,
}

/// Validated rules (config validation has checked names and sources).
#[derive(Default)]
pub struct Routes {
    rules: Vec<Rule>,
}

/// No rule matched: what the refusal says.
#[derive(Debug, PartialEq, Eq)]
pub struct NoRoute;

impl Routes {
    pub fn new(rules: &[RouteConfig], sinks: &[String]) -> Routes {
        let rules = rules
            .iter()
            .map(|r| Rule {
                devices: r.devices.clone(),
                source: match r.source.as_deref() {
                    Some("http") => Some(Source::Http),
                    Some("mqtt") => Some(Source::Mqtt),
                    _ => None,
                },
                schema: r.schema,
                mask: r
                    .sinks
                    .iter()
                    .filter_map(|n| sinks.iter().position(|s| s == n))
                    .filter(|&i| i < 64)
                    .fold(0u64, |m, i| m | (1 << i)),
            })
            .collect();
        Routes { rules }
    }

    /// The sinks of the first rule `r` matches; every sink without rules.
    pub fn route(&self, r: &Record) -> Result<Route, NoRoute> {
        if self.rules.is_empty() {
            return Ok(Route(None));
        }
        self.rules
            .iter()
            .find(|rule| {
                rule.source.is_none_or(|s| s == r.source)
                    && rule.schema.is_none_or(|s| s == r.schema)
                    && glob_match(&rule.devices, &r.device_id)
            })
            .map(|rule| Route(Some(rule.mask)))
            .ok_or(NoRoute)
    }
}

/// The rules in force, shared by every ingest edge.
#[derive(Clone, Default)]
pub struct RouteTable(Arc<RwLock<Arc<Routes>>>);

impl RouteTable {
    pub fn new(routes: Routes) -> RouteTable {
        RouteTable(Arc::new(RwLock::new(Arc::new(routes))))
    }

    pub fn current(&self) -> Arc<Routes> {
        self.0.read().expect("route table lock").clone()
    }

    /// Readings prepared from now on follow `routes`.
    pub fn set(&self, routes: Routes) {
        *self.0.write().expect("route table lock") = Arc::new(routes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        devices: &str,
        source: Option<&str>,
        schema: Option<u32>,
        sinks: &[&str],
    ) -> RouteConfig {
        RouteConfig {
            devices: devices.into(),
            source: source.map(String::from),
            schema,
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_first_matching_rule_routes() {
        let sinks: Vec<String> = ["api", "archive", "cloud"].map(String::from).to_vec();
        let routes = Routes::new(
            &[
                rule("line-1-*", Some("mqtt"), None, &["cloud"]),
                rule("line-1-*", None, Some(2), &["api", "archive"]),
                rule("lab-?", None, None, &["archive"]),
            ],
            &sinks,
        );
        let mut r = crate::wal::tests::rec("k", 1);
        let mut at = |device: &str, source: Source, schema: u32| {
            r.device_id = device.into();
            r.source = source;
            r.schema = schema;
            routes.route(&r)
        };
        let mask = |v: Result<Route, NoRoute>| v.map(|r| r.0);
        assert_eq!(mask(at("line-1-press", Source::Mqtt, 1)), Ok(Some(0b100)));
        assert_eq!(mask(at("line-1-press", Source::Http, 2)), Ok(Some(0b011)));
        assert_eq!(mask(at("lab-7", Source::Http, 1)), Ok(Some(0b010)));
        assert_eq!(mask(at("line-1-press", Source::Http, 1)), Err(NoRoute));
        assert_eq!(mask(at("lab-77", Source::Http, 1)), Err(NoRoute));
        let all = Routes::new(&[], &sinks);
        assert_eq!(all.route(&r).map(|r| r.0), Ok(None), "no rules: every sink");
    }
}
