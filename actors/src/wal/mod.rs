//! Write-ahead log.
pub mod actor;
pub mod idem;
pub(crate) mod key_index;
pub mod quota;
pub mod record;
pub mod rejected;
pub mod store;
pub use actor::{AppendError, AppendReply, Wal, WalArgs, WalMsg};
pub use quota::{DeviceQuota, Usage};
pub use record::*;
pub use rejected::Rejected;
pub use store::{
    free_space_of, glob, AppendRefused, BackupReport, Compacted, DeadFilter, DeadLetter, DeadRow,
    DiskFull, Dump, FreeSpace, Full, HistoryRow, MaintainReport, Op, OpResult, Problem, RecordView,
    Removal, RepairReport, SinkState, SinksChanged, VerifyReport, WalError, WalLimits, WalReader,
    WalStore, FORMAT_VERSION,
};

#[cfg(test)]
mod abuse_tests;
#[cfg(test)]
mod compact_tests;
#[cfg(test)]
mod disk_tests;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod fill_tests;
#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod lanes_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod upgrade_tests;
