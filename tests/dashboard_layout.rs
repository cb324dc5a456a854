//! The pictures of the Grafana dashboards' layout in `docs/images/` are drawn from the
//! dashboards' JSON by this file (Grafana cannot be installed here, so there is no
//! screenshot): each panel where its `gridPos` puts it, with its title, kind and metrics.
//! The test fails when a picture no longer matches its dashboard; regenerate with
//! `EDGE_GATEWAY_UPDATE_LAYOUT=1 cargo test --test dashboard_layout`. Each picture must also
//! render (librsvg's `rsvg-convert`, installed by `.ci/test`).

use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

/// Pixels per grid unit: Grafana's grid is 24 columns wide; a row unit is ~30 px.
const COL: f64 = 40.0;
const ROW: f64 = 30.0;
const TOP: f64 = 50.0;

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The metric names a panel's queries read (`edge_gateway_…`), in order, without repeats.
fn metrics(panel: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in panel["targets"].as_array().into_iter().flatten() {
        let expr = t["expr"].as_str().unwrap_or("");
        for (i, _) in expr.match_indices("edge_gateway_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = name
                .trim_end_matches("_bucket")
                .trim_start_matches("edge_gateway_")
                .to_string();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

fn render(d: &Value) -> String {
    let panels = d["panels"].as_array().expect("panels");
    let rows = panels
        .iter()
        .map(|p| p["gridPos"]["y"].as_f64().unwrap() + p["gridPos"]["h"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let (w, h) = (24.0 * COL + 20.0, TOP + rows * ROW + 30.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect width="{w}" height="{h}" fill="#111217"/>"##
    );
    let _ = write!(
        s,
        r##"<text x="10" y="30" font-size="18" fill="#d8d9da">{} — layout drawn from its JSON (not a screenshot)</text>"##,
        escape(d["title"].as_str().unwrap_or(""))
    );
    for p in panels {
        let g = &p["gridPos"];
        let f = |k: &str| g[k].as_f64().unwrap();
        let (x, y) = (10.0 + f("x") * COL, TOP + f("y") * ROW);
        let (pw, ph) = (f("w") * COL - 6.0, f("h") * ROW - 6.0);
        let _ = write!(
            s,
            r##"<rect x="{x}" y="{y}" width="{pw}" height="{ph}" rx="3" fill="#181b1f" stroke="#2c3235"/>"##
        );
        // Cut to the panel's width (about 7 px a character at 13 px), as Grafana does.
        let title = p["title"].as_str().unwrap_or("");
        let room = ((pw - 16.0) / 7.0) as usize;
        let title = if title.chars().count() > room {
            format!(
                "{}…",
                title
                    .chars()
                    .take(room.saturating_sub(1))
                    .collect::<String>()
            )
        } else {
            title.to_string()
        };
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="13" fill="#d8d9da">{}</text>"##,
            x + 8.0,
            y + 20.0,
            escape(&title)
        );
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="11" fill="#8e8e8e">{}</text>"##,
            x + 8.0,
            y + 38.0,
            escape(p["type"].as_str().unwrap_or(""))
        );
        // As many metric names as fit, one per line.
        let fit = ((ph - 56.0) / 15.0).max(0.0) as usize;
        for (i, m) in metrics(p).iter().take(fit).enumerate() {
            let _ = write!(
                s,
                r##"<text x="{}" y="{}" font-size="11" font-family="monospace" fill="#73bf69">{}</text>"##,
                x + 8.0,
                y + 58.0 + 15.0 * i as f64,
                escape(m)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[test]
fn the_layout_pictures_match_the_dashboards_and_render() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("EDGE_GATEWAY_UPDATE_LAYOUT").is_some();
    let mut names: Vec<_> = std::fs::read_dir(root.join("deploy/grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    let out_dir = tempfile::tempdir().unwrap();
    for json in names {
        let stem = json.file_stem().unwrap().to_string_lossy().to_string();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let svg = render(&d);
        let picture = root.join(format!("docs/images/dashboard-{stem}.svg"));
        if update {
            std::fs::write(&picture, &svg).unwrap();
        }
        let committed = std::fs::read_to_string(&picture).unwrap_or_default();
        assert!(
            committed == svg,
            "{} is not drawn from {} as it is now: run EDGE_GATEWAY_UPDATE_LAYOUT=1 cargo test --test dashboard_layout",
            picture.display(),
            json.display()
        );
        let png = out_dir.path().join(format!("{stem}.png"));
        let r = std::process::Command::new("rsvg-convert")
            .arg("-o")
            .arg(&png)
            .arg(&picture)
            .output()
            .expect("rsvg-convert (Debian's librsvg2-bin; .ci/test installs it)");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
}
