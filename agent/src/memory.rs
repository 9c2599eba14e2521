//! The node's memory budget: what loupe may hold of pods' data (bodies being read and decoded,
//! kept bodies, their indexes and renderings), half of its cgroup's memory limit by default
//! (`node::memory_budget`). A stage reserves before it holds: a fetch as its buffer grows, ingest
//! four times a body's size when it keeps it, and beside that what its renderings' compressed blocks
//! hold, once made (`ingest::Snapshot`). What does not fit is refused whole, with
//! [`Exceeded`] as the target's reason; the rest of the node is untouched. A [`Reservation`] gives
//! its bytes back when dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

crate::telemetry::gauge!(
    pub MEMORY_BUDGET,
    "loupe_memory_budget_bytes",
    "What loupe may hold of pods' bodies (being read or kept), indexes and renderings (0: no budget).",
);
crate::telemetry::gauge!(
    pub MEMORY_HELD,
    "loupe_memory_held_bytes",
    "What bodies being read and bodies kept hold now, as reserved.",
);

crate::telemetry::counter!(
    pub REFUSALS,
    "loupe_memory_budget_refusals_total",
    "Bodies refused because they did not fit the memory budget (being read, decoded or kept); each endpoint is down with the reason.",
);

// Events: each counts (the refused target's error carries the reason to /targets and the log).

fn refused(exceeded: Exceeded) -> Exceeded {
    REFUSALS.inc();
    exceeded
}

/// A body holds about this many times its size while kept: itself, its index (0.3x) and one
/// rendering (1.9x), measured at 1M series (BENCHMARKS.md), with a margin.
pub const HELD_FACTOR: usize = 4;

/// A reservation did not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("memory budget: {what} would hold {needed} bytes with {held} of the node's {limit} in use")]
pub struct Exceeded {
    /// What asked: "this body" (kept), "reading this body" (a fetch).
    pub what: &'static str,
    pub needed: usize,
    pub held: usize,
    pub limit: usize,
}

/// The budget, shared by every stage (clones share it). Limit 0: no budget, use still counted.
#[derive(Clone, Debug, Default)]
pub struct Budget(Arc<State>);

#[derive(Debug, Default)]
struct State {
    limit: usize,
    held: AtomicUsize,
}

/// Bytes held of a budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    bytes: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        MEMORY_BUDGET.set(limit as u64);
        Budget(Arc::new(State {
            limit,
            held: AtomicUsize::new(0),
        }))
    }

    /// Reserves `bytes` for `what`, counting `freeing` (what the holder it replaces holds) as
    /// free.
    pub fn reserve(
        &self,
        what: &'static str,
        bytes: usize,
        freeing: usize,
    ) -> Result<Reservation, Exceeded> {
        self.add(what, bytes, freeing)?;
        Ok(Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    fn add(&self, what: &'static str, bytes: usize, freeing: usize) -> Result<(), Exceeded> {
        self.try_add(what, bytes, freeing).map_err(refused)
    }

    /// [`Budget::add`], a refusal not counted (it refuses no body).
    fn try_add(&self, what: &'static str, bytes: usize, freeing: usize) -> Result<(), Exceeded> {
        let state = &self.0;
        let mut held = state.held.load(Ordering::Relaxed);
        loop {
            if state.limit > 0 && held.saturating_sub(freeing) + bytes > state.limit {
                return Err(Exceeded {
                    what,
                    needed: bytes,
                    held,
                    limit: state.limit,
                });
            }
            match state.held.compare_exchange_weak(
                held,
                held + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => held = now,
            }
        }
        MEMORY_HELD.set((held + bytes) as u64);
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.0.held.load(Ordering::Relaxed)
    }

    /// The budget's limit (0: none).
    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// The largest body that could be kept ([`HELD_FACTOR`] times it fits the budget).
    pub fn largest_body(&self) -> usize {
        match self.0.limit {
            0 => usize::MAX,
            limit => limit / HELD_FACTOR,
        }
    }
}

impl Reservation {
    /// Holds `more` bytes too, if they fit.
    pub fn grow(&mut self, what: &'static str, more: usize) -> Result<(), Exceeded> {
        self.budget.add(what, more, 0)?;
        self.bytes += more;
        Ok(())
    }

    /// Like [`Reservation::grow`], for a body being read or decoded: refused as soon as it
    /// passes [`Budget::largest_body`], which could never be kept, so that a body too large
    /// for the node leaves the rest of the budget to the others early.
    pub fn grow_body(&mut self, what: &'static str, more: usize) -> Result<(), Exceeded> {
        let total = self.bytes + more;
        if total > self.budget.largest_body() {
            return Err(refused(Exceeded {
                what,
                needed: total.saturating_mul(HELD_FACTOR),
                held: self.budget.held(),
                limit: self.budget.limit(),
            }));
        }
        self.grow(what, more)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A reservation of `bytes` more from the same budget, for what is kept beside this one's
    /// holder and may go before it (a rendering's compressed blocks): `None` if they do not fit,
    /// which refuses no body and so is not counted in `loupe_memory_budget_refusals_total`.
    pub fn beside(&self, what: &'static str, bytes: usize) -> Option<Reservation> {
        self.budget.try_add(what, bytes, 0).ok()?;
        Some(Reservation {
            budget: self.budget.clone(),
            bytes,
        })
    }

    /// How much more a body being read may reserve ([`Reservation::grow_body`]).
    pub fn body_room(&self) -> usize {
        self.budget.largest_body().saturating_sub(self.bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let before = self.budget.0.held.fetch_sub(self.bytes, Ordering::Relaxed);
        MEMORY_HELD.set(before.saturating_sub(self.bytes) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_the_limit_grow_and_give_back() {
        let budget = Budget::new(100);
        let mut a = budget.reserve("a", 60, 0).unwrap();
        let before = REFUSALS.get();
        let refused = budget.reserve("b", 50, 0).unwrap_err();
        assert!(REFUSALS.get() > before);
        assert_eq!(
            refused.to_string(),
            "memory budget: b would hold 50 bytes with 60 of the node's 100 in use"
        );
        // What the new holder replaces counts as free.
        let b = budget.reserve("b", 50, 20).unwrap();
        assert_eq!(budget.held(), 110);
        drop(b);
        assert!(a.grow("a", 41).is_err());
        a.grow("a", 40).unwrap();
        assert_eq!((a.bytes(), budget.held()), (100, 100));
        drop(a);
        assert_eq!(budget.held(), 0);
        // A body being read stops at what could be kept: a quarter of the budget.
        let mut body = budget.reserve("reading", 0, 0).unwrap();
        body.grow_body("reading", 25).unwrap();
        let err = body.grow_body("reading", 1).unwrap_err();
        assert_eq!(err.needed, 26 * HELD_FACTOR);
        assert_eq!(budget.held(), 25);
        drop(body);
        // No limit: everything fits, and is counted.
        let none = Budget::default();
        let r = none.reserve("x", usize::MAX / 2, 0).unwrap();
        assert_eq!(none.held(), r.bytes());
        // Beside a reservation: from the same budget, refused without counting a body.
        let budget = Budget::new(100);
        let body = budget.reserve("a", 60, 0).unwrap();
        let members = body.beside("members", 30).unwrap();
        assert_eq!(budget.held(), 90);
        assert!(body.beside("members", 11).is_none());
        drop(members);
        assert_eq!(budget.held(), 60);
    }
}
