//! A backend that refuses every rule, as a port without flow support does:
//! what proves, in tests, that nothing depends on rules being installed.

use alloc::vec::Vec;

use chaingate_shared::Nanos;

use super::{
    CounterId, Counts, EncapId, FlowOffload, OffloadError, Place, PortAttr, Rule, RuleHandle,
    TableId, TableSpec, VxlanTunnel,
};

/// Refuses everything with one error (by default: table full).
#[derive(Clone, Copy, Debug)]
pub struct Refusing {
    error: OffloadError,
}

impl Default for Refusing {
    fn default() -> Self {
        Self {
            error: OffloadError::Full,
        }
    }
}

impl Refusing {
    /// Refuses with `error`.
    #[must_use]
    pub const fn with(error: OffloadError) -> Self {
        Self { error }
    }
}

impl FlowOffload for Refusing {
    fn configure(&mut self, _: &PortAttr) -> Result<(), OffloadError> {
        Ok(())
    }

    fn start(&mut self) -> Result<(), OffloadError> {
        Ok(())
    }

    fn create(&mut self, _: &Rule) -> Result<RuleHandle, OffloadError> {
        Err(self.error)
    }

    fn create_table(&mut self, _: &TableSpec) -> Result<TableId, OffloadError> {
        Err(self.error)
    }

    fn destroy_table(&mut self, _: TableId) -> Result<(), OffloadError> {
        Err(OffloadError::UnknownHandle)
    }

    fn enqueue(
        &mut self,
        rules: &[Rule],
        _: &[Place],
        out: &mut Vec<Result<RuleHandle, OffloadError>>,
    ) {
        out.clear();
        out.extend(rules.iter().map(|_| Err(self.error)));
    }

    fn destroy(&mut self, _: RuleHandle) -> Result<(), OffloadError> {
        Err(OffloadError::UnknownHandle)
    }

    fn create_counter(&mut self, _: u16) -> Result<CounterId, OffloadError> {
        Err(self.error)
    }

    fn query_counter(&mut self, _: CounterId) -> Result<Counts, OffloadError> {
        Err(OffloadError::UnknownHandle)
    }

    fn destroy_counter(&mut self, _: CounterId) -> Result<(), OffloadError> {
        Err(OffloadError::UnknownHandle)
    }

    fn create_encap(&mut self, _: &VxlanTunnel) -> Result<EncapId, OffloadError> {
        Err(self.error)
    }

    fn aged(&mut self, _: Nanos, _: &mut Vec<u64>) {}

    fn capacity(&self) -> Option<usize> {
        Some(0)
    }
}
