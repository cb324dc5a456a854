//! The `dlq` subcommands: a sink's dead letters, listed, exported, requeued, purged (issue 14).

use crate::walcli::AdminArgs;
use crate::{init_cli_logging, ConfigArgs};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// What `dlq export` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExportFormat {
    /// JSON Lines: one JSON object per line.
    Jsonl,
    /// A CBOR sequence (RFC 8742): one CBOR map per entry.
    Cbor,
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
    /// or stdout. Progress on stderr. `--format cbor`: a CBOR sequence (RFC 8742), one item
    /// per entry with the same fields; `replay` reads either.
    Export {
        #[command(flatten)]
        filters: DlqFilters,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
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
            format,
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
            if format == ExportFormat::Cbor {
                sink = Box::new(edge_gateway::cbor_seq::CborSeqWriter::new(sink));
            }
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
