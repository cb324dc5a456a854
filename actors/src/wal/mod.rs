//! Write-ahead log.
pub mod record;
pub mod store;
pub use record::*;
pub use store::{Dump, Full, MaintainReport, Op, OpResult, WalError, WalLimits, WalStore};

#[cfg(test)]
mod tests;
