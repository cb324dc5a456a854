//! What cannot run here, checked statically (issue 13): the compose stack's files exist and
//! its gateway config is valid with the flags it passes; the systemd unit verifies and is
//! hardened; the dashboards' provisioning points where compose mounts them.

mod common;

use common::{run_ok, BIN};
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_compose_stack_refers_to_files_that_exist_and_a_valid_gateway_config() {
    let dir = root().join("deploy/compose");
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let mut mounts = 0;
    for line in compose.lines() {
        let line = line.trim().trim_start_matches("- ");
        let src = line.split(':').next().unwrap_or("");
        if src.starts_with("./") || src.starts_with("../") {
            assert!(
                dir.join(src).exists(),
                "compose.yaml mounts {src}, which is missing"
            );
            mounts += 1;
        }
    }
    assert!(mounts >= 6, "{mounts} mounts found");
    assert!(compose.contains("context: ../..") && root().join("Dockerfile").exists());
    let data = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(BIN)
            .args(["config", "check", "--config"])
            .arg(dir.join("gateway.toml"))
            .arg("--data-dir")
            .arg(data.path())
            .args([
                "--http-listen",
                "0.0.0.0:8080",
                "--admin-listen",
                "0.0.0.0:8081",
            ])
            .arg("--insecure-listen"),
    );
    // Grafana finds the dashboards where compose mounts them.
    let prov = std::fs::read_to_string(
        root().join("deploy/grafana/provisioning/dashboards/edge-gateway.yaml"),
    )
    .unwrap();
    assert!(prov.contains("/var/lib/grafana/dashboards/edge-gateway"));
    assert!(compose.contains("/var/lib/grafana/dashboards/edge-gateway"));
}

/// The value after `key:` (or `key =`) on the first line of `text` that starts with it.
fn value_of<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(key))
        .map(|v| {
            v.trim_start_matches([':', '=', ' '])
                .trim()
                .trim_matches('"')
        })
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn the_compose_stacks_traces_reach_tempo_and_grafana_reads_them() {
    let dir = root().join("deploy/compose");
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    let tempo = std::fs::read_to_string(dir.join("tempo.yaml")).unwrap();
    let gateway = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    let source =
        std::fs::read_to_string(root().join("deploy/grafana/provisioning/datasources/tempo.yaml"))
            .unwrap();
    assert!(compose.contains("\n  tempo:\n"), "no tempo service");
    assert!(compose.contains("./tempo.yaml:/etc/tempo.yaml"));
    // The gateway exports to the port Tempo's OTLP/HTTP receiver listens on, by service name.
    let receiver_port = value_of(&tempo, "endpoint").rsplit(':').next().unwrap();
    assert_eq!(
        value_of(&gateway, "endpoint"),
        format!("http://tempo:{receiver_port}/v1/traces")
    );
    // Grafana queries the port Tempo's API listens on.
    let api_port = value_of(&tempo, "http_listen_port");
    assert_eq!(value_of(&source, "url"), format!("http://tempo:{api_port}"));
    assert_eq!(value_of(&source, "type"), "tempo");
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/edge-gateway.service")).unwrap();
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=always",
        "LimitNOFILE=",
        "StateDirectory=edge-gateway",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(line), "{line} missing");
    }
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not installed: the unit's syntax is not verified here");
        return;
    };
    assert!(v.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge-gateway.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/edge-gateway", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}
