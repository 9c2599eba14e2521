//! The per-namespace method's slots: small numbers the agent gives each attached namespace. A
//! namespace's netlink filter carries its slot as the minor half of its classid, and the
//! `NETNS_SLOTS` map turns the slot back into the namespace's identity inside the program.

use std::collections::BTreeSet;

use aya::maps::{HashMap, MapData};
use loupe_common::{MAX_NETNS_SLOTS, NETNS_SLOTS_MAP};

use super::{map_err, ProbeError};
use crate::capture::NetnsCookie;

/// Largest slot: the table's size, well inside the 16 bits the kernel keeps of a classid.
const LAST_SLOT: u16 = {
    assert!(MAX_NETNS_SLOTS < u16::MAX as u32);
    MAX_NETNS_SLOTS as u16
};

/// The slot map and which slots are taken (slot 0 is never given: it means "no slot").
pub(super) struct NetnsSlots {
    map: HashMap<MapData, u32, u64>,
    taken: BTreeSet<u16>,
}

impl NetnsSlots {
    pub(super) fn new(map: aya::maps::Map) -> Result<Self, ProbeError> {
        Ok(Self {
            map: HashMap::try_from(map).map_err(map_err(NETNS_SLOTS_MAP, "open"))?,
            taken: BTreeSet::new(),
        })
    }

    /// Gives the lowest free slot to the namespace `identity` and writes it into the map.
    pub(super) fn assign(&mut self, identity: NetnsCookie) -> Result<u16, ProbeError> {
        let slot = (1..=LAST_SLOT)
            .find(|slot| !self.taken.contains(slot))
            .ok_or(ProbeError::SlotsFull {
                max: MAX_NETNS_SLOTS,
            })?;
        self.map
            .insert(u32::from(slot), identity, 0)
            .map_err(map_err(NETNS_SLOTS_MAP, "insert"))?;
        self.taken.insert(slot);
        Ok(slot)
    }

    /// Frees `slot`; its filter must be gone already (or never made).
    pub(super) fn release(&mut self, slot: u16) {
        if let Err(e) = self.map.remove(&u32::from(slot)) {
            log::debug!("removing slot {slot} from {NETNS_SLOTS_MAP}: {e}");
        }
        self.taken.remove(&slot);
    }
}
