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
    sinks: Arc<[String]>,
}

/// Validated rules (config validation has checked names and sources), and the sinks a
/// reading goes to when there are none.
#[derive(Default)]
pub struct Routes {
    rules: Vec<Rule>,
    all: Arc<[String]>,
}

/// No rule matched: what the refusal says.
#[derive(Debug, PartialEq, Eq)]
pub struct NoRoute;

impl Routes {
    /// `sinks`: every configured sink, named explicitly so that a reading routed before a
    /// sink is added never reaches it.
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
                sinks: r.sinks.clone().into(),
            })
            .collect();
        Routes {
            rules,
            all: sinks.into(),
        }
    }

    /// The sinks of the first rule `r` matches; every configured sink without rules.
    pub fn route(&self, r: &Record) -> Result<Route, NoRoute> {
        if self.rules.is_empty() {
            return Ok(Route(Some(self.all.clone())));
        }
        self.rules
            .iter()
            .find(|rule| {
                rule.source.is_none_or(|s| s == r.source)
                    && rule.schema.is_none_or(|s| s == r.schema)
                    && glob_match(&rule.devices, &r.device_id)
            })
            .map(|rule| Route(Some(rule.sinks.clone())))
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
        let routes = Routes::new(
            &[
                rule("line-1-*", Some("mqtt"), None, &["cloud"]),
                rule("line-1-*", None, Some(2), &["api", "archive"]),
                rule("lab-?", None, None, &["archive"]),
            ],
            &[],
        );
        let mut r = crate::wal::tests::rec("k", 1);
        let mut at = |device: &str, source: Source, schema: u32| {
            r.device_id = device.into();
            r.source = source;
            r.schema = schema;
            routes.route(&r)
        };
        let names = |v: Result<Route, NoRoute>| v.map(|r| r.0.map(|s| s.join(",")));
        let some = |s: &str| Ok(Some(s.to_string()));
        assert_eq!(names(at("line-1-press", Source::Mqtt, 1)), some("cloud"));
        assert_eq!(
            names(at("line-1-press", Source::Http, 2)),
            some("api,archive")
        );
        assert_eq!(names(at("lab-7", Source::Http, 1)), some("archive"));
        assert_eq!(names(at("line-1-press", Source::Http, 1)), Err(NoRoute));
        assert_eq!(names(at("lab-77", Source::Http, 1)), Err(NoRoute));
        let all = Routes::new(&[], &["api".to_string(), "cloud".to_string()]);
        assert_eq!(
            names(all.route(&r)),
            some("api,cloud"),
            "no rules: every sink, by name"
        );
    }
}
