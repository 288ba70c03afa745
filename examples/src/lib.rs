//! Code the examples share: a user-written `Scheduler` that the `custom_scheduler` example
//! simulates and the `custom_scheduler` bench measures beside the built-in strategies.

use faas_core::scheduler::{InstanceView, Node, PlacementRequest, Scheduler};
use faas_core::FunctionRef;

/// Cloud (amd64) nodes first, then the rest; the least busy instance serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloudFirst;

impl Scheduler for CloudFirst {
    fn place(&self, request: &PlacementRequest<'_>, nodes: &[Node]) -> faas_core::Result<usize> {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| request.admits(n))
            .max_by_key(|(_, n)| (n.arch == "amd64", n.free_slots()))
            .map(|(i, _)| i)
            // "No room now" (Unavailable: wait) or "never" (a constraint or platform no node
            // meets: refuse), as every scheduler must tell them apart.
            .ok_or_else(|| request.unplaceable(nodes))
    }

    fn route(&self, _function: &FunctionRef, instances: &[InstanceView]) -> Option<usize> {
        instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.has_capacity())
            .min_by_key(|(_, i)| i.in_flight)
            .map(|(i, _)| i)
    }

    fn name(&self) -> &str {
        "cloud-first"
    }
}
