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
    fn access(&self) -> edge_gateway::online::AdminAccess {
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
            let r = edge_gateway::wal_tools::verify(&cfg)?;
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
            let (r, via) = edge_gateway::wal_tools::backup(&cfg, &dest, &access)?;
            println!("{}", serde_json::json!({"backup": r, "via": via}));
            Ok(())
        }
        WalCmd::Compact { config } => {
            let cfg = config.load()?;
            let c = edge_gateway::wal_tools::compact(&cfg)?;
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

/// Which dead letters, as flags.
#[derive(Args, Clone, Default)]
pub(crate) struct DlqFilters {
    /// The sink whose dead letters these are.
    #[arg(long)]
    sink: String,
    /// Devices matching this glob (`*`, `?`), e.g. `stm32-*`.
    #[arg(long)]
    device: Option<String>,
    /// One reason class: expired, max_attempts, corrupt, rejected.
    #[arg(long)]
    reason: Option<String>,
    /// Dead since: RFC 3339 (`2026-11-22T18:00:00Z`) or a duration back (`24h`).
    #[arg(long)]
    since: Option<String>,
    /// Dead before: RFC 3339 or a duration back.
    #[arg(long)]
    until: Option<String>,
}

impl DlqFilters {
    fn filters(&self) -> edge_gateway::dlq_tools::Filters {
        edge_gateway::dlq_tools::Filters {
            device: self.device.clone(),
            reason: self.reason.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum DlqCmd {
    /// One page of dead letters (oldest first), and the cursor of the next (`--after`).
    List {
        #[command(flatten)]
        filters: DlqFilters,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The `next` of the previous page.
        #[arg(long)]
        after: Option<u64>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Every match as JSON Lines (reason, attempts, when, the record), streamed: to `--out`
    /// or stdout. Progress on stderr.
    Export {
        #[command(flatten)]
        filters: DlqFilters,
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Back to Enqueued (attempts reset), oldest first: after fixing what refused them.
    Requeue {
        #[command(flatten)]
        filters: DlqFilters,
        #[arg(long, default_value_t = 1_000_000)]
        limit: usize,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Deleted for good, oldest first.
    Purge {
        #[command(flatten)]
        filters: DlqFilters,
        #[arg(long, default_value_t = 1_000_000)]
        limit: usize,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn table(page: &serde_json::Value) -> String {
    let mut out = format!(
        "{:>10}  {:<24}  {:<12}  {:>8}  {:<16}  {}\n",
        "WAL_SEQ", "DEAD_AT (WAL time)", "CLASS", "ATTEMPTS", "DEVICE", "REASON"
    );
    for r in page["dead_letters"].as_array().into_iter().flatten() {
        let at = r["dead_at_ms"].as_u64().map_or("-".into(), |ms| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        });
        out.push_str(&format!(
            "{:>10}  {:<24}  {:<12}  {:>8}  {:<16}  {}\n",
            r["wal_seq"],
            at,
            r["class"].as_str().unwrap_or("-"),
            r["attempts"],
            r["record"]["device_id"].as_str().unwrap_or("-"),
            r["reason"].as_str().unwrap_or("-"),
        ));
    }
    match page["next"].as_u64() {
        Some(n) => out.push_str(&format!("more: --after {n}\n")),
        None => out.push_str("(end)\n"),
    }
    out
}

pub(crate) fn dlq(cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::List {
            filters,
            limit,
            after,
            json,
            admin,
            config,
        } => {
            let cfg = config.load()?;
            let page = edge_gateway::dlq_tools::list(
                &cfg,
                &admin.access(),
                &filters.sink,
                &filters.filters(),
                after,
                limit,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print!("{}", table(&page));
            }
            Ok(())
        }
        DlqCmd::Export {
            filters,
            out,
            admin,
            config,
        } => {
            let cfg = config.load()?;
            // Written beside the destination and renamed when complete: an export stopped
            // part way (Ctrl-C) never looks like a whole one.
            let partial = out.as_ref().map(|p| p.with_extension("partial"));
            if let Some(p) = &out {
                anyhow::ensure!(!p.exists(), "{} exists (never overwritten)", p.display());
            }
            let mut sink: Box<dyn std::io::Write> = match &partial {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut bar = crate::progress::Progress::new("dead letters exported");
            let n = edge_gateway::dlq_tools::export(
                &cfg,
                &admin.access(),
                &filters.sink,
                &filters.filters(),
                &mut sink,
                &mut |n| bar.set(n),
            )?;
            drop(sink);
            if let (Some(p), Some(o)) = (&partial, &out) {
                std::fs::File::open(p).and_then(|f| f.sync_all())?;
                std::fs::rename(p, o)?;
            }
            bar.finish(n);
            Ok(())
        }
        DlqCmd::Requeue {
            filters,
            limit,
            admin,
            config,
        } => change(filters, limit, admin, config, false),
        DlqCmd::Purge {
            filters,
            limit,
            admin,
            config,
        } => change(filters, limit, admin, config, true),
    }
}

fn change(
    filters: DlqFilters,
    limit: usize,
    admin: AdminArgs,
    config: ConfigArgs,
    purge: bool,
) -> anyhow::Result<()> {
    let cfg = config.load()?;
    init_cli_logging();
    let n = edge_gateway::dlq_tools::change(
        &cfg,
        &admin.access(),
        &filters.sink,
        &filters.filters(),
        limit,
        purge,
    )?;
    let key = if purge { "purged" } else { "requeued" };
    println!("{}", serde_json::json!({"sink": filters.sink, key: n}));
    Ok(())
}

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// JSON Lines of records (`-` for stdin).
    file: PathBuf,
    /// The sink they are re-enqueued for.
    #[arg(long)]
    sink: String,
    /// At most this many records a second (default: as fast as the WAL commits).
    #[arg(long)]
    rate: Option<f64>,
    #[command(flatten)]
    admin: AdminArgs,
    #[command(flatten)]
    config: ConfigArgs,
}

pub(crate) fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    let cfg = a.config.load()?;
    init_cli_logging();
    let input: Box<dyn std::io::BufRead> = if a.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&a.file)
                .with_context(|| format!("opening {}", a.file.display()))?,
        ))
    };
    let started = std::time::Instant::now();
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
    let r = match r {
        Ok(r) => r,
        Err(e) => anyhow::bail!("{e} (records before the failing chunk were replayed)"),
    };
    bar.finish(r.replayed);
    tracing::warn!(sink = %a.sink, replayed = r.replayed, skipped = r.skipped, file = %a.file.display(), "records replayed from the command line");
    edge_gateway::wal_tools::audit(
        &cfg.data_dir,
        &serde_json::json!({
            "at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "action": "replay",
            "sink": a.sink,
            "file": a.file.display().to_string(),
            "replayed": r.replayed,
            "skipped": r.skipped,
            "user": std::env::var("USER").unwrap_or_default(),
        }),
    )?;
    println!(
        "{}",
        serde_json::json!({"sink": a.sink, "replayed": r.replayed, "skipped": r.skipped,
            "skipped_lines": r.skipped_lines, "secs": started.elapsed().as_secs_f64()})
    );
    Ok(())
}
