use super::*;

fn load_str(toml: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("egcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(format!("{:x}.toml", toml.len() * 7919 + overrides.len()));
    std::fs::write(&f, toml).unwrap();
    load(&LoadOptions {
        file: Some(f),
        env: vec![],
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
    })
}

#[test]
fn defaults_are_valid_and_need_no_file() {
    let c = load(&LoadOptions::default()).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.sinks.len(), 1);
    assert_eq!(c.sinks[0].kind(), "file");
}

#[test]
fn every_unknown_key_and_problem_reported_at_once() {
    let err = load_str(
        "bogus = 1\n[http]\nlisten_typo = 2\n[delivery]\nbatch_size = 0\n[[sinks]]\nname = \"a\"\ntype = \"http\"\n",
        &[],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("bogus: unknown key"), "{text}");
    assert!(text.contains("http.listen_typo: unknown key"), "{text}");
    assert!(text.contains("delivery.batch_size: must be > 0"), "{text}");
    assert!(text.contains("sinks[0].url: required"), "{text}");
}

#[test]
fn a_sink_takes_only_its_kinds_keys_and_each_problem_names_it() {
    let err = load_str(
        "[[sinks]]\nname = \"up\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nack = \"json\"\n\
         max_batch_bytes = 5\n\
         [[sinks]]\nname = \"arch\"\ntype = \"s3\"\nbucket = \"B\"\nmultipart_bytes = 1\nurl = \"x\"\n",
        &[],
    )
    .unwrap_err();
    let text = err.to_string();
    for want in [
        "sinks[0].ack: unknown key for a mqtt sink (it takes: type, name, url",
        "sinks[0].max_batch_bytes: unknown key for a mqtt sink",
        "sinks[1].url: unknown key for a s3 sink",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let err = load_str(
        "[[sinks]]\nname = \"arch\"\ntype = \"s3\"\nbucket = \"B\"\nmultipart_bytes = 1\n",
        &[],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("sinks[0].bucket: 3-63"), "{text}");
    assert!(
        text.contains("sinks[0].multipart_bytes: must be >= 5242880"),
        "{text}"
    );
}

#[test]
fn layers_apply_in_order_env_then_cli() {
    let env = env_overrides(
        vec![
            (
                "EDGE_GATEWAY__HTTP__LISTEN".to_string(),
                "127.0.0.1:9000".to_string(),
            ),
            (
                "EDGE_GATEWAY__WAL__MAX_RECORDS".to_string(),
                "5".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ]
        .into_iter(),
    );
    let c = load(&LoadOptions {
        file: None,
        env,
        overrides: vec!["wal.max_records=7".into()],
    })
    .unwrap();
    assert_eq!(c.http.listen.port(), 9000);
    assert_eq!(c.wal.max_records, 7);
}

#[test]
fn sinks_can_be_set_by_index() {
    let c = load(&LoadOptions {
        file: None,
        env: vec![],
        overrides: vec![
            "sinks.0.name=api".into(),
            "sinks.0.type=http".into(),
            "sinks.0.url=http://127.0.0.1:1/x".into(),
        ],
    })
    .unwrap();
    assert_eq!(c.sinks.len(), 1);
    assert_eq!(c.sinks[0].kind(), "http");
}

#[test]
fn bad_device_hash_is_refused() {
    let err = load_str("[auth.devices]\nsensor-1 = \"plaintext\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("auth.devices.sensor-1"), "{err}");
}

#[test]
fn every_shipped_example_parses() {
    // Cargo sets the variable when it runs the test too: read it then, so a test binary
    // reused from another checkout of the same sources (a shared target dir) reads this one.
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let dir = std::path::Path::new(&root).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&LoadOptions {
                file: Some(path.clone()),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected shipped examples in {}", dir.display());
}

#[test]
fn mqtt_settings_are_checked_together() {
    let mut c = Config::default();
    c.mqtt.enabled = true;
    c.mqtt.broker = "tcp://x".into();
    c.mqtt.subscriptions[0].filter = "devices/#".into();
    c.mqtt.tls = Some(MqttTlsConfig {
        client_cert_file: Some("c.pem".into()),
        ..Default::default()
    });
    c.sinks.push(SinkConfig::Mqtt(MqttSinkConfig {
        name: "up".into(),
        url: "tcp://x".into(),
        topic: Some("a/+/b".into()),
        timeout_ms: 1000,
        client_id: None,
        max_in_flight: None,
        protocol: None,
        username: Some("u".into()),
        password_file: None,
        topic_prefix: None,
        ca_file: None,
        client_cert_file: None,
        client_key_file: None,
        allow_insecure: false,
        max_packet_bytes: None,
        presence: false,
    }));
    let paths: Vec<String> = crate::validate::validate(&c)
        .into_iter()
        .map(|p| p.path)
        .collect();
    for want in [
        "mqtt.broker",
        "mqtt.subscriptions[0].filter",
        "mqtt.tls.client_cert_file",
        "mqtt.tls",
        "sinks[1].url",
        "sinks[1].topic",
        "sinks[1].username",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
}

#[test]
fn an_s3_sink_refuses_keys_over_cleartext_and_takes_its_defaults() {
    let s3 = "[[sinks]]\nname = \"arch\"\ntype = \"s3\"\nbucket = \"telemetry\"\n\
              endpoint = \"http://minio.lan:9000\"\naccess_key_id_file = \"/k\"\n\
              secret_access_key_file = \"/s\"\n";
    let err = load_str(s3, &[]).unwrap_err().to_string();
    assert!(
        err.contains("sinks[0].endpoint: sends credentials in cleartext over http://"),
        "{err}"
    );
    let c = load_str(&format!("{s3}allow_insecure = true\n"), &[]).unwrap();
    let SinkConfig::S3(s) = &c.sinks[0] else {
        panic!("{:?}", c.sinks[0])
    };
    assert_eq!(
        (s.max_batch_records, s.max_batch_bytes, s.max_batch_age_ms),
        (10_000, 8 << 20, 60_000)
    );
    assert_eq!(s.compression, S3Compression::Gzip);
}
