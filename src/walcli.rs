//! The `wal` and `dlq` subcommands: the operator's tools on the WAL (issue 14), each working
//! with the gateway stopped (on the file) and, where it makes sense, running (through its
//! admin API).

use crate::{init_cli_logging, ConfigArgs};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// How to reach a running gateway's admin API.
#[derive(Args, Clone, Default)]
pub(crate) struct AdminArgs {
    /// The admin token, for a running gateway (default: `EDGE_GATEWAY_ADMIN_TOKEN`, then the
    /// generated `data/admin.token`).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The CA of the admin listener's certificate, when it has TLS.
    #[arg(long)]
    admin_ca_file: Option<PathBuf>,
}

impl AdminArgs {
    pub(crate) fn access(&self) -> edge_gateway::online::AdminAccess {
        edge_gateway::online::AdminAccess {
            token_file: self.admin_token_file.clone(),
            ca_file: self.admin_ca_file.clone(),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum WalCmd {
    /// Counts by state and sink, and the sinks the WAL holds records for that the
    /// configuration lacks (`orphaned`). Works while the gateway is stopped.
    Stats(ConfigArgs),
    /// A sink was renamed: carry its pending records and dead letters over to the new name
    /// (which must be in the configuration). Gateway stopped; counted and audited.
    MoveSink {
        /// The old name (no longer in the configuration).
        from: String,
        /// The new name (in the configuration).
        to: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Check the WAL file: redb's page checks and every invariant between its tables (reference
    /// counts, rows naming missing records, records that do not decode, counters). Gateway
    /// stopped. Exit status 1 when anything is wrong.
    Verify {
        /// The report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Where is my reading? The record a WAL seq, correlation id or idempotency key names, and
    /// its state at each sink (pending with attempts, dead with the reason, settled). From the
    /// file when the gateway is stopped, else through its admin API. Exit 1 when not found.
    Show {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// A consistent copy of the WAL in DEST (a new file): from the file when the gateway is
    /// stopped, else through its admin API beside its commits. Restore: copy it to
    /// `data/wal.redb` with the gateway stopped.
    Backup {
        dest: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Give the file's free space back to the filesystem (the gateway does it by itself after
    /// a backlog drains; this is for a stopped gateway). Crash-safe: each step commits whole.
    Compact {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Make a damaged WAL consistent (after `wal verify` found problems): records that do not
    /// decode and rows naming missing records go to a quarantine file (never dropped
    /// silently); reference counts and counters are recomputed. Gateway stopped; audited.
    Repair {
        /// Where what cannot be kept goes (JSON Lines, appended; default
        /// `data/quarantine.jsonl`).
        #[arg(long)]
        quarantine: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// A sink was removed for good: delete its pending records and dead letters. Gateway
    /// stopped; counted and audited.
    DropSink {
        sink: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

pub(crate) fn wal(cmd: WalCmd) -> anyhow::Result<()> {
    match cmd {
        WalCmd::Stats(a) => {
            let cfg = a.load()?;
            let stats = edge_gateway::wal_tools::stats(&cfg)
                .with_context(|| format!("reading {}", cfg.data_dir.join("wal.redb").display()))?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(())
        }
        WalCmd::MoveSink { from, to, config } => {
            let cfg = config.load()?;
            init_cli_logging();
            let c = edge_gateway::wal_tools::move_sink(&cfg, &from, &to)?;
            println!(
                "{}",
                serde_json::json!({"from": from, "to": to, "moved": c.moved, "moved_dead": c.moved_dead})
            );
            Ok(())
        }
        WalCmd::Verify { json, config } => {
            let cfg = config.load()?;
            let mut bar = crate::progress::Progress::new("rows verified");
            let r = edge_gateway::wal_tools::verify(&cfg, &mut |n, total| bar.set_of(n, total))?;
            bar.finish(r.pending_rows + r.dead_rows + 2 * r.records);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", edge_gateway::wal_tools::verify_text(&r));
            }
            if !r.ok() {
                std::process::exit(1);
            }
            Ok(())
        }
        WalCmd::Show { id, admin, config } => {
            let cfg = config.load()?;
            let access = admin.access();
            match edge_gateway::wal_tools::show(&cfg, &id, &access)? {
                Some(v) => println!("{}", serde_json::to_string_pretty(&v)?),
                None => {
                    eprintln!(
                        "{id:?} is not in the WAL: no record has it as WAL seq, correlation id or \
                         idempotency key (every sink settled it — delivered or purged — or it \
                         never came)"
                    );
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        WalCmd::Backup {
            dest,
            admin,
            config,
        } => {
            let cfg = config.load()?;
            let access = admin.access();
            let mut bar = crate::progress::Progress::new("rows copied");
            let mut copied = 0;
            let (r, via) = edge_gateway::wal_tools::backup(&cfg, &dest, &access, &mut |n, t| {
                copied = n;
                bar.set_of(n, t)
            })?;
            bar.finish(copied);
            println!("{}", serde_json::json!({"backup": r, "via": via}));
            Ok(())
        }
        WalCmd::Compact { config } => {
            let cfg = config.load()?;
            // One call into redb, which reports nothing while it runs: a spinner and the time.
            let bar = crate::progress::Progress::new("compacting");
            let c = edge_gateway::wal_tools::compact(&cfg)?;
            bar.finish_plain();
            println!(
                "{}",
                serde_json::json!({"before_bytes": c.before, "after_bytes": c.after, "millis": c.millis})
            );
            Ok(())
        }
        WalCmd::Repair { quarantine, config } => {
            let cfg = config.load()?;
            init_cli_logging();
            let r = edge_gateway::wal_tools::repair(&cfg, quarantine.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        WalCmd::DropSink { sink, config } => {
            let cfg = config.load()?;
            init_cli_logging();
            let c = edge_gateway::wal_tools::drop_sink(&cfg, &sink)?;
            println!(
                "{}",
                serde_json::json!({"sink": sink, "dropped": c.dropped})
            );
            Ok(())
        }
    }
}

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// JSON Lines of records (`-` for stdin). Without it, `--from`/`--to` replay acked
    /// records the WAL's history still keeps (`wal.history_secs`).
    file: Option<PathBuf>,
    /// The sink they are re-enqueued for.
    #[arg(long)]
    sink: String,
    /// At most this many records a second (default: as fast as the WAL commits).
    #[arg(long)]
    rate: Option<f64>,
    /// Kept records received at or after this (RFC 3339, or ms since the epoch).
    #[arg(long, conflicts_with = "file")]
    from: Option<String>,
    /// Kept records received before this (default: now).
    #[arg(long, conflicts_with = "file")]
    to: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    config: ConfigArgs,
}

pub(crate) fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    let cfg = a.config.load()?;
    init_cli_logging();
    let started = std::time::Instant::now();
    // From the history: exported first (read-only, or through the running gateway) into a
    // file beside the WAL, replayed from it, then removed.
    let mut staged = None;
    let input: Box<dyn std::io::BufRead> = match (&a.file, &a.from) {
        (Some(f), _) if f.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        (Some(f), _) => Box::new(std::io::BufReader::new(
            std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
        )),
        (None, None) => anyhow::bail!(
            "give a FILE to replay, or --from (and --to) to replay acked records the WAL's \
             history keeps"
        ),
        (None, Some(from)) => {
            let from = edge_gateway::replay::parse_time(from).map_err(anyhow::Error::msg)?;
            let to = match &a.to {
                Some(t) => edge_gateway::replay::parse_time(t).map_err(anyhow::Error::msg)?,
                None => u64::MAX,
            };
            let path = cfg
                .data_dir
                .join(format!("replay-history.{}.jsonl", std::process::id()));
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            let mut bar = crate::progress::Progress::new("kept records read");
            let n = edge_gateway::replay::export_history(
                &cfg,
                &a.admin.access(),
                from,
                to,
                &mut out,
                &mut |n| bar.set(n),
            );
            drop(out);
            let n = n.inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            })?;
            bar.finish(n);
            staged = Some(path.clone());
            Box::new(std::io::BufReader::new(std::fs::File::open(&path)?))
        }
    };
    let source = match (&a.file, &a.from) {
        (Some(f), _) => f.display().to_string(),
        _ => format!(
            "history from {} to {}",
            a.from.as_deref().unwrap_or(""),
            a.to.as_deref().unwrap_or("now")
        ),
    };
    let mut bar = crate::progress::Progress::new("records replayed");
    let mut progress = |n: u64| bar.set(n);
    let r = edge_gateway::replay::replay(
        &cfg,
        &a.admin.access(),
        input,
        &a.sink,
        a.rate,
        &mut progress,
    );
    if let Some(p) = staged {
        let _ = std::fs::remove_file(p);
    }
    let r = match r {
        Ok(r) => r,
        Err(e) => anyhow::bail!("{e} (records before the failing chunk were replayed)"),
    };
    bar.finish(r.replayed);
    tracing::warn!(sink = %a.sink, replayed = r.replayed, skipped = r.skipped, source = %source, "records replayed from the command line");
    edge_gateway::wal_tools::audit(
        &cfg.data_dir,
        "replay",
        serde_json::json!({
            "sink": a.sink,
            "source": source,
            "replayed": r.replayed,
            "skipped": r.skipped,
        }),
    )?;
    println!(
        "{}",
        serde_json::json!({"sink": a.sink, "replayed": r.replayed, "skipped": r.skipped,
            "skipped_lines": r.skipped_lines, "secs": started.elapsed().as_secs_f64()})
    );
    Ok(())
}
