//! The `edge-gateway` command line. All behaviour lives in the library.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use edge_gateway::config::{self, Config, LoadOptions};
use std::path::PathBuf;

mod dlqcli;
mod memory;
mod progress;
mod walcli;

#[derive(Parser)]
#[command(
    name = "edge-gateway",
    version,
    about = "IoT edge gateway: durable telemetry from devices to the cloud"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run(ConfigArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The write-ahead log: stats, verify, backup, find a reading, renamed sinks.
    Wal {
        #[command(subcommand)]
        cmd: walcli::WalCmd,
    },
    /// Re-enqueue records for one sink from JSON Lines — a `dlq export`, or what a sink
    /// received (a file sink's output) — keeping their idempotency keys; at most `--rate` a
    /// second; the gateway stopped or running.
    Replay(walcli::ReplayArgs),
    /// Dead letters at scale: list (paged), export (JSON Lines), requeue, purge — filtered by
    /// device, reason and time; the gateway stopped or running.
    Dlq {
        #[command(subcommand)]
        cmd: dlqcli::DlqCmd,
    },
    /// Dead letters: purge what will never be delivered (the gateway must be stopped; a
    /// running one takes `DELETE /admin/dead-letters/{sink}`).
    DeadLetters {
        #[command(subcommand)]
        cmd: DeadLettersCmd,
    },
    /// Token tools.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Reports the gateway wrote itself (read from the data directory; running or stopped).
    Report {
        #[command(subcommand)]
        cmd: ReportCmd,
    },
    /// Print version and git commit.
    Version,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration and print the effective result (secrets redacted).
    Check(ConfigArgs),
}

#[derive(Subcommand)]
enum DeadLettersCmd {
    /// Delete a sink's dead letters (oldest first), counted and logged.
    Purge {
        /// The sink whose dead letters go.
        #[arg(long)]
        sink: String,
        /// Only this reason class: expired, max_attempts, corrupt, invalid, rejected.
        #[arg(long)]
        reason: Option<String>,
        /// Only those dead for longer than this (e.g. `7d`, `12h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// At most this many.
        #[arg(long, default_value_t = 1_000_000)]
        limit: usize,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum ReportCmd {
    /// Each period a sink was unreachable or paused: when, why, the backlog, the drain.
    Outages {
        /// Only those overlapping the last this long (e.g. `24h`, `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
        /// Also draw them into this SVG file: each outage's backlog, the ingest and delivery
        /// rates, the outage shaded and the drain marked.
        #[arg(long, value_name = "FILE")]
        svg: Option<std::path::PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print the `sha256:` hash of a token, for `auth.devices` in the config. Without
    /// TOKEN it is read from standard input (keeps it out of shell history).
    Hash { token: Option<String> },
}

#[derive(Args, Clone)]
pub(crate) struct ConfigArgs {
    /// TOML config file. Without it the embedded defaults apply.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `http.listen`.
    #[arg(long)]
    http_listen: Option<String>,
    /// Overrides `admin.listen`.
    #[arg(long)]
    admin_listen: Option<String>,
    /// Any setting: `--set section.key=value` (repeatable; highest priority).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Accept cleartext listeners on non-loopback addresses (`insecure_listen = true`).
    #[arg(long)]
    insecure_listen: bool,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        Ok(config::load(&self.options())?)
    }

    /// Where the configuration comes from (the control plane checks changes against it).
    fn options(&self) -> LoadOptions {
        let mut overrides = Vec::new();
        if let Some(d) = &self.data_dir {
            overrides.push(format!("data_dir=\"{}\"", d.display()));
        }
        if let Some(a) = &self.http_listen {
            overrides.push(format!("http.listen=\"{a}\""));
        }
        if let Some(a) = &self.admin_listen {
            overrides.push(format!("admin.listen=\"{a}\""));
        }
        if self.insecure_listen {
            overrides.push("insecure_listen=true".into());
        }
        overrides.extend(self.set.iter().cloned());
        LoadOptions {
            file: self.config.clone(),
            env: config::env_overrides(std::env::vars()),
            overrides,
        }
    }
}

/// For the commands that change the WAL: their warnings on stderr, as text.
pub(crate) fn init_cli_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .try_init();
}

/// JSON (or text) logs on stdout at `log.level` (`RUST_LOG` wins); the returned function
/// changes the level while the gateway runs (`config.apply` of `log.level`).
fn init_logging(cfg: &Config) -> edge_gateway_supervisors::reconfigure::SetLogLevel {
    use tracing_subscriber::{
        fmt, layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter,
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if cfg.log.json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stdout),
            )
            .init();
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stdout))
            .init();
    }
    std::sync::Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> anyhow::Result<()> {
    memory::cap_arenas();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Version => {
            println!(
                "edge-gateway {} ({})",
                edge_gateway::VERSION,
                edge_gateway::GIT_COMMIT
            );
            Ok(())
        }
        Cmd::Token {
            cmd: TokenCmd::Hash { token },
        } => {
            let token = match token {
                Some(t) => t,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the token from standard input")?;
                    line.trim().to_string()
                }
            };
            anyhow::ensure!(!token.is_empty(), "empty token");
            let hash: String = edge_gateway::token_hash(&token)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            println!("sha256:{hash}");
            Ok(())
        }
        Cmd::Config {
            cmd: ConfigCmd::Check(a),
        } => {
            let cfg = a.load()?;
            println!(
                "{}",
                toml::to_string_pretty(&cfg.redacted()).context("rendering config")?
            );
            eprintln!("config OK");
            Ok(())
        }
        Cmd::DeadLetters {
            cmd:
                DeadLettersCmd::Purge {
                    sink,
                    reason,
                    older_than,
                    limit,
                    config: a,
                },
        } => {
            let cfg = a.load()?;
            anyhow::ensure!(
                cfg.sinks.iter().any(|s| s.name() == sink),
                "no sink named {sink:?} in the configuration"
            );
            let reason = match reason
                .as_deref()
                .map(|r| (r, edge_gateway::DeadClass::parse(r)))
            {
                None => None,
                Some((_, Some(class))) => Some(class),
                Some((r, None)) => {
                    let classes = edge_gateway::DeadClass::ALL.map(edge_gateway::DeadClass::as_str);
                    anyhow::bail!("--reason {r:?} must be one of {classes:?}")
                }
            };
            let filter = edge_gateway::DeadFilter {
                reason,
                older_than_ms: older_than.map(|d| d.as_millis() as u64),
                ..Default::default()
            };
            let n = edge_gateway::purge_dead_letters(&cfg, &sink, filter, limit).with_context(
                || {
                    format!(
                        "purging dead letters in {} (is the gateway running? then use \
                     DELETE /admin/dead-letters/{sink})",
                        cfg.data_dir.join("wal.redb").display()
                    )
                },
            )?;
            println!("{}", serde_json::json!({"sink": sink, "purged": n}));
            Ok(())
        }
        Cmd::Report {
            cmd:
                ReportCmd::Outages {
                    since,
                    json,
                    svg,
                    config: a,
                },
        } => {
            let cfg = a.load()?;
            let since_ms = since.map_or(0, |d| {
                std::time::SystemTime::now()
                    .checked_sub(d)
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64)
            });
            let reports =
                edge_gateway::outage_reports(&cfg.data_dir, since_ms).with_context(|| {
                    format!("reading {}", cfg.data_dir.join("outages.jsonl").display())
                })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                print!("{}", edge_gateway::outage_table(&reports));
            }
            if let Some(path) = svg {
                let chart = edge_gateway_actors::outages::chart::render(&reports);
                std::fs::write(&path, chart)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!(
                    "chart of {} outage(s) written to {}",
                    reports
                        .len()
                        .min(edge_gateway_actors::outages::chart::MAX_OUTAGES),
                    path.display()
                );
            }
            Ok(())
        }
        Cmd::Wal { cmd } => walcli::wal(cmd),
        Cmd::Dlq { cmd } => dlqcli::dlq(cmd),
        Cmd::Replay(a) => walcli::replay(a),
        Cmd::Run(a) => {
            let cfg = a.load()?;
            let set_log_level = init_logging(&cfg);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.spawn(memory::trim_periodically());
            rt.block_on(edge_gateway::run(
                cfg,
                a.options(),
                Some(set_log_level),
                shutdown_signal(),
            ))?;
            Ok(())
        }
    }
}
