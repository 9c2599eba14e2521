//! The agent's own flows (the fetch path's requests), which the program skips: the
//! `OWN_FLOWS` map, keyed by (namespace, client port).

use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{HashMap, MapData};
use loupe_common::{PortKey, OWN_FLOWS_MAP};

use super::ProbeError;
use crate::capture::NetnsCookie;

crate::telemetry::counter!(
    pub OWN_FLOWS_REJECTED,
    "loupe_capture_own_flows_rejected_total",
    "Own requests that could not be registered for skipping (table full); their replies are also observed.",
);

/// The fetch path's flows, which the program skips: keyed by (namespace cookie, client port).
/// Register the port before the first packet: bind the socket, register, then connect.
#[derive(Clone)]
pub struct OwnFlows {
    map: Arc<Mutex<HashMap<MapData, PortKey, u8>>>,
}

impl std::fmt::Debug for OwnFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnFlows").finish_non_exhaustive()
    }
}

impl OwnFlows {
    pub(super) fn new(map: HashMap<MapData, PortKey, u8>) -> Self {
        Self {
            map: Arc::new(Mutex::new(map)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<MapData, PortKey, u8>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the flow from `client_port` in that namespace as the agent's own until the guard
    /// is dropped. Fails when the table is full (the flow is then observed as well).
    pub fn register(
        &self,
        cookie: NetnsCookie,
        client_port: u16,
    ) -> Result<OwnFlowGuard, ProbeError> {
        let key = PortKey::new(cookie, client_port);
        self.lock().insert(key, 1, 0).map_err(|source| {
            OWN_FLOWS_REJECTED.inc();
            ProbeError::Map {
                name: OWN_FLOWS_MAP,
                what: "insert",
                source,
            }
        })?;
        Ok(OwnFlowGuard {
            flows: self.clone(),
            key,
        })
    }

    pub fn unregister(&self, cookie: NetnsCookie, client_port: u16) {
        if let Err(e) = self.lock().remove(&PortKey::new(cookie, client_port)) {
            log::debug!("unregistering own flow port {client_port} in netns cookie {cookie}: {e}");
        }
    }
}

/// Unregisters its own flow when dropped.
#[derive(Debug)]
pub struct OwnFlowGuard {
    flows: OwnFlows,
    key: PortKey,
}

impl Drop for OwnFlowGuard {
    fn drop(&mut self) {
        self.flows.unregister(self.key.netns_cookie, self.key.port);
    }
}
