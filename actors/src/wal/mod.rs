//! Write-ahead log.
pub mod actor;
pub mod idem;
pub mod record;
pub mod rejected;
pub mod store;
pub use actor::{AppendError, AppendReply, Wal, WalArgs, WalMsg};
pub use record::*;
pub use rejected::Rejected;
pub use store::{
    DeadLetter, Dump, Full, MaintainReport, Op, OpResult, WalError, WalLimits, WalReader, WalStore,
};

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod idem_tests;
#[cfg(test)]
mod tests;
