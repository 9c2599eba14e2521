//! Loading the eBPF object, attaching it in pod namespaces, reading its ring buffer.
//!
//! One [`Probe`] attaches the capture program on `lo` egress in every watched pod's network
//! namespace (TCX links where the kernel has them, netlink `clsact` filters otherwise). How the
//! program tells namespaces apart is chosen at load by trying (`method`): the netns cookie
//! helper (about Linux 6.14+), or a slot in each namespace's netlink filter (Linux 5.8+, so every
//! LTS kernel from 5.10); either way the program is loaded once, and a segment's
//! [`FlowKey::netns`](super::FlowKey::netns) is the namespace's [`Netns::cookie`].
//! [`Probe::load`] also attaches once in a scratch namespace, so a kernel where no TC attachment
//! works is found at start, with one error, not once per pod. What is copied is decided by kernel
//! maps the probe edits: watched server ports per namespace with their metrics paths
//! ([`Probe::watch_port`]) and the agent's own client ports ([`OwnFlows`]), so the fetch path's
//! requests are never copied. On a watched port the program copies only exchanges whose request
//! is a GET of a watched path (it reads the request line itself): an app's API traffic on its
//! metrics port never reaches user space, and is counted as skipped ([`Probe::skipped`]).
//!
//! Ring-buffer records (layout: [`loupe_common::SegmentHeader`]) become [`Segment`](super::Segment)s. With the
//! `bpf_loop` programs a packet with more than [`loupe_common::CHUNK_BYTES`] of payload
//! (loopback GSO makes packets of 32 KiB up to about 128 KiB) arrives as several segments with
//! consecutive sequence numbers; the one-record program sends it whole (up to 64 KiB). When the ring is full
//! the program drops the rest of that packet and counts it ([`Probe::dropped`]); the flow then
//! has a sequence gap.
//!
//! For flow reassembly ([`super::flow`]):
//! - Sort by `seq`: records of different CPUs interleave in the ring, and the two directions of
//!   a flow are emitted independently. Chunks of one packet carry consecutive `seq`s
//!   (`packet seq + i * 4096`); only the first keeps SYN, only the last keeps FIN/PSH/RST.
//! - A flow's first record is its first watched GET (bare SYNs are not sent), so a direction
//!   synchronizes at a message start. FIN and RST without payload arrive alone once the flow
//!   has sent a watched GET; a FIN occupies the sequence number after the last payload byte of
//!   its segment.
//! - After skipped exchanges the next record of each direction is marked
//!   [`Segment::resumed`](super::Segment::resumed): its sequence number jumps with nothing lost.
//! - When the ring is full, the rest of that packet is not emitted (counted in
//!   [`Probe::dropped`]); later packets of the flow may arrive again: a gap in `seq` without
//!   the resumed mark is the only sign in the stream. The FIN of a flow can be lost the same way.
//! - IPv4 and IPv6 (`127.0.0.1` and `::1`): addresses arrive as [`std::net::SocketAddr`]s of
//!   the packet's own family (the record's IPv4-mapped form is undone). IPv6 packets with
//!   extension headers other than the Hop-by-Hop jumbo header of GSO packets above 64 KiB are
//!   not seen (loopback TCP has none). A flow whose two ports are both watched counts as a
//!   request to its destination port.
//! - Own flows are skipped entirely (SYN to FIN) while registered; a FIN or ACK sent after the
//!   guard is dropped can still show up as a lone segment of an unknown flow.
//!
//! Kernel needs: BTF (`/sys/kernel/btf/vmlinux`), ring buffers (5.8+), TC attachments (TCX 6.6+,
//! else `sch_ingress` + `cls_bpf`); see `ebpf/src/main.rs`. Otherwise [`Probe::load`] fails
//! saying which.
//!
//! Size: this file holds the probe's kernel-facing life cycle (load, method choice, attach,
//! detach, maps), which reads best in one place; beside it `method` (the methods), `slots`
//! (the per-namespace method's slots), `own_flows` (what the program skips) and `ring`
//! (reading records).
//!
//! Leftovers: a TCX link is released with its file descriptor, so even `kill -9` leaves nothing
//! attached. A netlink filter outlives the process, so [`Probe::attach`] first removes every
//! filter named like one of loupe's programs ([`PROGRAM_NAMES`]) from that namespace's `lo`
//! egress.

mod method;
mod own_flows;
mod ring;
mod slots;

pub use method::{MethodChoice, ProbeMethod, METHOD_ENV};
pub use own_flows::{OwnFlowGuard, OwnFlows};
pub use ring::{decode_record, SegmentStream};

use std::collections::{BTreeSet, HashMap as StdHashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::links::Link as _;
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::sys::BpfHelper;
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use loupe_common::{
    DropCounters, PortKey, WatchedPort, DEFAULT_RING_BYTES, DROPS_MAP, MAX_PATHS_PER_PORT,
    NETNS_SLOTS_MAP, OWN_FLOWS_MAP, PER_NAMESPACE_LOOP_PROGRAM_NAME, PER_NAMESPACE_PROGRAM_NAME,
    PROGRAM_NAME, PROGRAM_NAMES, SEGMENTS_MAP, WATCHED_PORTS_MAP, WATCHED_PORT_NUMBERS_MAP,
};
use slots::NetnsSlots;

use super::NetnsCookie;
use crate::resolve::netns::{identity_kind, IdentityKind, Netns, NetnsError};

pub use loupe_common::PROGRAM_NAME as CAPTURE_PROGRAM_NAME;
/// Names of every program loupe attaches (shared and per-namespace).
pub use loupe_common::PROGRAM_NAMES as CAPTURE_PROGRAM_NAMES;

/// The capture object built by `agent/build.rs` from `ebpf/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loupe"));

/// The interface the program observes in each namespace.
const LOOPBACK: &str = "lo";

crate::telemetry::counter!(
    pub RINGBUF_DROPPED_EVENTS,
    "loupe_ringbuf_dropped_events_total",
    "Segment records the eBPF program could not emit (ring buffer full, or a packet beyond 64 chunks).",
);
crate::telemetry::counter!(
    pub RINGBUF_DROPPED_BYTES,
    "loupe_ringbuf_dropped_bytes_total",
    "TCP payload bytes the eBPF program could not emit.",
);
crate::telemetry::counter!(
    pub OVER_SHARE_PACKETS,
    "loupe_ringbuf_over_share_packets_total",
    "Packets the eBPF program refused because their pod had put its share into a ring buffer more than half full (a pod flooding its loopback).",
);
crate::telemetry::counter!(
    pub OVER_SHARE_BYTES,
    "loupe_ringbuf_over_share_bytes_total",
    "TCP payload bytes the eBPF program refused because their pod was over its share of the ring buffer.",
);
crate::telemetry::counter!(
    pub SKIPPED_PACKETS,
    "loupe_capture_skipped_packets_total",
    "Packets with payload on watched ports the eBPF program did not copy: their exchange was not a GET of a watched path (or began before the port was watched).",
);
crate::telemetry::counter!(
    pub SKIPPED_BYTES,
    "loupe_capture_skipped_bytes_total",
    "TCP payload bytes on watched ports the eBPF program did not copy: their exchange was not a GET of a watched path (or began before the port was watched).",
);
crate::telemetry::counter!(
    pub ATTACH_FAILURES,
    "loupe_capture_attach_failures_total",
    "Failed attempts to attach the capture program in a pod's network namespace.",
);
crate::telemetry::counter!(
    pub STALE_FILTERS_REMOVED,
    "loupe_capture_stale_filters_removed_total",
    "Namespaces where netlink filters left by an earlier loupe process were removed.",
);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("ring buffer size {bytes} is not a power of two of at least one page (4096)")]
    RingSize { bytes: u32 },
    #[error("cannot load the eBPF capture object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF capture object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux is missing; CONFIG_DEBUG_INFO_BTF): loupe observes only on kernels with BTF")]
    NoBtf,
    #[error("no capture method loads on this kernel: shared program: {shared}; per-namespace program: {per_namespace}")]
    NoMethod {
        shared: String,
        per_namespace: String,
    },
    #[error("per-namespace capture: all {max} namespace slots are taken")]
    SlotsFull { max: u32 },
    #[error("the per-namespace capture method attaches with netlink filters only (a TCX link hands the program no classid), but TCX only was asked for")]
    SlotsNeedNetlink,
    #[error("eBPF capture program: {what}: {source}")]
    Program {
        what: &'static str,
        source: ProgramError,
    },
    #[error("eBPF map {name}: {what}: {source}")]
    Map {
        name: &'static str,
        what: &'static str,
        source: MapError,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "cannot attach the capture program on lo egress in network namespace {netns}: {reason}"
    )]
    Attach { netns: String, reason: String },
    #[error("the segment stream was already taken from this probe")]
    SegmentsTaken,
    #[error("cannot watch the capture ring buffer for readiness: {0}")]
    Poll(#[source] std::io::Error),
}

/// How the program is attached on `lo` egress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX when the kernel has it (6.6+), else netlink `clsact`.
    #[default]
    Auto,
    /// TCX only.
    Tcx,
    /// Netlink `clsact` + `cls_bpf` only (filters outlive the process; cleaned up on attach).
    Netlink,
}

/// How an attachment was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedVia {
    Tcx,
    Netlink,
}

impl std::fmt::Display for AttachedVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedVia::Tcx => "TCX",
            AttachedVia::Netlink => "netlink",
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// Bytes of the segment ring buffer shared by all namespaces: a power of two, at least 4096.
    pub ring_bytes: u32,
    pub attach_mode: AttachMode,
    /// Defaults to [`MethodChoice::from_env`] (`LOUPE_PROBE_METHOD`), else auto.
    pub method: MethodChoice,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ring_bytes: DEFAULT_RING_BYTES,
            attach_mode: AttachMode::Auto,
            method: MethodChoice::from_env(),
        }
    }
}

struct Attachment {
    link: SchedClassifierLink,
    via: AttachedVia,
    /// The per-namespace method's slot, in the filter's classid and `NETNS_SLOTS`.
    slot: Option<u16>,
    /// Netlink filters must be removed from inside the namespace; holding the namespace also
    /// keeps its identity (an inode number, on kernels without netns cookies) from being reused
    /// while it is attached.
    netns: Netns,
}

enum LogForwarding {
    /// A tokio task moves the program's log records into the `log` crate.
    Task(tokio::task::JoinHandle<()>),
    /// No runtime at load time: the records stay in the kernel (the map must stay open).
    Idle(#[allow(dead_code)] Box<EbpfLogger<&'static dyn log::Log>>),
    None,
}

/// The loaded capture program and its maps.
pub struct Probe {
    ebpf: Ebpf,
    /// The program attached in every namespace (which one depends on the method).
    program: &'static str,
    method: ProbeMethod,
    method_reason: String,
    attach_support: AttachedVia,
    /// Slots of attached namespaces (per-namespace method only).
    slots: Option<NetnsSlots>,
    attach_mode: AttachMode,
    attachments: StdHashMap<NetnsCookie, Attachment>,
    watched: HashMap<MapData, PortKey, WatchedPort>,
    watched_ports: StdHashMap<NetnsCookie, BTreeSet<u16>>,
    /// The program's fast-path table: namespaces watching each port number.
    port_numbers: Array<MapData, u32>,
    own_flows: OwnFlows,
    drops: PerCpuArray<MapData, DropCounters>,
    /// What the counters above were last brought up to, in [`Probe::totals`]' order.
    seen: [AtomicU64; 6],
    segments: Option<RingBuf<MapData>>,
    log_forwarding: LogForwarding,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("method", &self.method)
            .field("attach_mode", &self.attach_mode)
            .field("attached", &self.attachments.keys().collect::<Vec<_>>())
            .field("watched_ports", &self.watched_ports)
            .finish_non_exhaustive()
    }
}

// The agent moves these handles into tasks and threads.
const _: () = {
    const fn send<T: Send + 'static>() {}
    const fn sync<T: Sync>() {}
    send::<Probe>();
    send::<SegmentStream>();
    send::<OwnFlows>();
    send::<OwnFlowGuard>();
    sync::<OwnFlows>();
};

fn map_err(name: &'static str, what: &'static str) -> impl FnOnce(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, what, source }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name)
        .ok_or(ProbeError::Missing { kind: "map", name })
}

impl Probe {
    /// Loads the object into the kernel (maps and program, nothing attached yet) and, inside a
    /// tokio runtime, starts forwarding the program's aya-log records to the `log` crate. Picks
    /// the capture method (see `method`) and checks, in a scratch namespace, that the program
    /// can be attached at all.
    pub fn load(config: &ProbeConfig) -> Result<Probe, ProbeError> {
        if !config.ring_bytes.is_power_of_two() || config.ring_bytes < 4096 {
            return Err(ProbeError::RingSize {
                bytes: config.ring_bytes,
            });
        }
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(ProbeError::NoBtf);
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(SEGMENTS_MAP, config.ring_bytes)
            .load(OBJECT)
            .map_err(ProbeError::Load)?;
        let (method, program, method_reason) = choose_method(&mut ebpf, config.method)?;
        if method == ProbeMethod::PerNamespace && config.attach_mode == AttachMode::Tcx {
            return Err(ProbeError::SlotsNeedNetlink);
        }
        let slots = match method {
            ProbeMethod::PerNamespace => {
                Some(NetnsSlots::new(take_map(&mut ebpf, NETNS_SLOTS_MAP)?)?)
            }
            ProbeMethod::Shared => None,
        };
        // Slot 0 belongs to no namespace: the check's filter sees nothing.
        let check_slot = slots.as_ref().map(|_| 0);
        let attach_support = check_attach(
            classifier(&mut ebpf, program)?,
            config.attach_mode,
            check_slot,
        )?;
        log::info!(
            "capture method: {method} ({method_reason}); pods are attached with {attach_support}"
        );
        let log_forwarding = start_log_forwarding(&mut ebpf);
        let watched = HashMap::try_from(take_map(&mut ebpf, WATCHED_PORTS_MAP)?)
            .map_err(map_err(WATCHED_PORTS_MAP, "open"))?;
        let port_numbers = Array::try_from(take_map(&mut ebpf, WATCHED_PORT_NUMBERS_MAP)?)
            .map_err(map_err(WATCHED_PORT_NUMBERS_MAP, "open"))?;
        let own_flows = HashMap::try_from(take_map(&mut ebpf, OWN_FLOWS_MAP)?)
            .map_err(map_err(OWN_FLOWS_MAP, "open"))?;
        let drops = PerCpuArray::try_from(take_map(&mut ebpf, DROPS_MAP)?)
            .map_err(map_err(DROPS_MAP, "open"))?;
        let segments = RingBuf::try_from(take_map(&mut ebpf, SEGMENTS_MAP)?)
            .map_err(map_err(SEGMENTS_MAP, "open"))?;
        Ok(Probe {
            ebpf,
            program,
            method,
            method_reason,
            attach_support,
            slots,
            attach_mode: config.attach_mode,
            attachments: StdHashMap::new(),
            watched,
            watched_ports: StdHashMap::new(),
            port_numbers,
            own_flows: OwnFlows::new(own_flows),
            drops,
            seen: Default::default(),
            segments: Some(segments),
            log_forwarding,
        })
    }

    /// The capture method chosen at load.
    pub fn method(&self) -> ProbeMethod {
        self.method
    }

    /// Why that method was chosen (what the kernel lacks for the shared one, if anything).
    pub fn method_reason(&self) -> &str {
        &self.method_reason
    }

    /// How the start-up check in a scratch namespace attached: what pods will get.
    pub fn attach_support(&self) -> AttachedVia {
        self.attach_support
    }

    /// Attaches the program on `lo` egress inside `netns` and returns the namespace's cookie
    /// (the one segments carry). Attaching a namespace twice is a no-op. Netlink filters named
    /// like loupe's programs already there (a crashed earlier run) are removed first. With the
    /// per-namespace method the namespace first gets a slot, which its filter carries.
    pub fn attach(&mut self, netns: &Netns) -> Result<NetnsCookie, ProbeError> {
        let cookie = netns.cookie()?;
        if self.attachments.contains_key(&cookie) {
            return Ok(cookie);
        }
        let slot = match &mut self.slots {
            Some(slots) => Some(
                slots
                    .assign(cookie)
                    .inspect_err(|_| ATTACH_FAILURES.inc())?,
            ),
            None => None,
        };
        let attached = self.attach_with_slot(netns, slot);
        let (link, via, netns) = match attached {
            Ok(attached) => attached,
            Err(e) => {
                ATTACH_FAILURES.inc();
                if let (Some(slots), Some(slot)) = (&mut self.slots, slot) {
                    slots.release(slot);
                }
                return Err(e);
            }
        };
        self.attachments.insert(
            cookie,
            Attachment {
                link,
                via,
                slot,
                netns,
            },
        );
        Ok(cookie)
    }

    fn attach_with_slot(
        &mut self,
        netns: &Netns,
        slot: Option<u16>,
    ) -> Result<(SchedClassifierLink, AttachedVia, Netns), ProbeError> {
        let mode = self.attach_mode;
        let program = classifier(&mut self.ebpf, self.program)?;
        let (link, via) = netns
            .run(|| attach_here(program, mode, slot))?
            .map_err(|reason| ProbeError::Attach {
                netns: netns.path().display().to_string(),
                reason,
            })?;
        Ok((link, via, netns.try_clone()?))
    }

    /// How the namespace with this cookie is attached, if it is.
    pub fn attached_via(&self, cookie: NetnsCookie) -> Option<AttachedVia> {
        self.attachments.get(&cookie).map(|a| a.via)
    }

    /// Detaches from that namespace and forgets its watched ports. Call it when the pod goes
    /// away: a netlink attachment holds the namespace open until then.
    pub fn detach(&mut self, cookie: NetnsCookie) {
        let ports: Vec<u16> = self
            .watched_ports
            .get(&cookie)
            .map(|ports| ports.iter().copied().collect())
            .unwrap_or_default();
        for port in ports {
            self.unwatch_port(cookie, port);
        }
        if let Some(attachment) = self.attachments.remove(&cookie) {
            let slot = attachment.slot;
            detach_attachment(cookie, attachment);
            if let (Some(slots), Some(slot)) = (&mut self.slots, slot) {
                slots.release(slot);
            }
        }
    }

    /// Copies the exchanges on server port `port` in the namespace with this cookie whose
    /// request is a GET of one of `paths` (compared with the request line up to a space or `?`,
    /// as [`crate::store::Store::match_observed`] does); nothing else on the port is copied.
    /// Watching a watched port again replaces its paths.
    pub fn watch_port<P: AsRef<str>>(
        &mut self,
        cookie: NetnsCookie,
        port: u16,
        paths: &[P],
    ) -> Result<(), ProbeError> {
        let value = WatchedPort::new(paths.iter().map(|p| p.as_ref().as_bytes()));
        if value.any_get != 0 {
            log::info!(
                "port {port} in netns cookie {cookie} has {} watched paths, more than the {MAX_PATHS_PER_PORT} the probe compares: every GET on it is copied",
                paths.len()
            );
        }
        self.watched
            .insert(PortKey::new(cookie, port), value, 0)
            .map_err(map_err(WATCHED_PORTS_MAP, "insert"))?;
        if self.watched_ports.entry(cookie).or_default().insert(port) {
            self.count_port_number(port, 1)?;
        }
        Ok(())
    }

    pub fn unwatch_port(&mut self, cookie: NetnsCookie, port: u16) {
        if let Err(e) = self.watched.remove(&PortKey::new(cookie, port)) {
            log::debug!("unwatching port {port} in netns cookie {cookie}: {e}");
        }
        let Some(ports) = self.watched_ports.get_mut(&cookie) else {
            return;
        };
        let removed = ports.remove(&port);
        if ports.is_empty() {
            self.watched_ports.remove(&cookie);
        }
        if removed {
            if let Err(e) = self.count_port_number(port, -1) {
                log::warn!("{e}");
            }
        }
    }

    /// Moves the fast path's count of namespaces watching `port` by `delta`.
    fn count_port_number(&mut self, port: u16, delta: i32) -> Result<(), ProbeError> {
        let index = u32::from(port);
        let count = self
            .port_numbers
            .get(&index, 0)
            .map_err(map_err(WATCHED_PORT_NUMBERS_MAP, "read"))?;
        self.port_numbers
            .set(index, count.saturating_add_signed(delta), 0)
            .map_err(map_err(WATCHED_PORT_NUMBERS_MAP, "update"))
    }

    /// The program's average time on `packet` (an Ethernet frame, as on `lo`) over `repeat` runs,
    /// from the kernel's own test run (`BPF_PROG_TEST_RUN`): what it costs per packet without
    /// the statistics' own overhead. The packet runs in the agent's namespace, outside any
    /// filter (no slot), so it shows the cost of packets the program lets go. For benchmarks.
    pub fn time_per_packet(&self, packet: &[u8], repeat: u32) -> Result<Duration, ProbeError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let program: &SchedClassifier = self
            .ebpf
            .program(self.program)
            .ok_or(ProbeError::Missing {
                kind: "program",
                name: self.program,
            })?
            .try_into()
            .map_err(|source| ProbeError::Program {
                what: "not a TC classifier",
                source,
            })?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat,
                ..TestRunOptions::new()
            })
            .map_err(|source| ProbeError::Program {
                what: "test run",
                source,
            })?;
        Ok(result.duration)
    }

    /// A handle for the fetch path to mark its own flows as not to be copied.
    pub fn own_flows(&self) -> OwnFlows {
        self.own_flows.clone()
    }

    /// The stream of captured segments. The ring buffer has one reader: a second call fails.
    /// Needs a tokio runtime with I/O enabled.
    pub fn segments(&mut self) -> Result<SegmentStream, ProbeError> {
        let ring = self.segments.take().ok_or(ProbeError::SegmentsTaken)?;
        SegmentStream::new(ring)
    }

    /// Records and payload bytes the program dropped since load, summed over CPUs; also brings
    /// the `loupe_ringbuf_dropped_*` and `loupe_capture_skipped_*` counters up to date.
    pub fn dropped(&self) -> (u64, u64) {
        let totals = self.totals();
        (totals.events, totals.bytes)
    }

    /// Packets and payload bytes on watched ports the program skipped since load (not part of
    /// an exchange whose request is a GET of a watched path); updates the counters as
    /// [`Probe::dropped`] does.
    pub fn skipped(&self) -> (u64, u64) {
        let totals = self.totals();
        (totals.skipped_packets, totals.skipped_bytes)
    }

    /// Packets and payload bytes the program refused since load because their namespace was
    /// over its share of a ring more than half full; updates the counters as
    /// [`Probe::dropped`] does.
    pub fn over_share(&self) -> (u64, u64) {
        let totals = self.totals();
        (totals.over_share_packets, totals.over_share_bytes)
    }

    /// The program's counters summed over CPUs (the last known sums when they cannot be read).
    fn totals(&self) -> DropCounters {
        let seen = |i: usize| self.seen[i].load(Ordering::Relaxed);
        let values = match self.drops.get(&0, 0) {
            Ok(values) => values,
            Err(e) => {
                log::warn!("cannot read the capture drop counters ({DROPS_MAP}): {e}");
                return DropCounters {
                    events: seen(0),
                    bytes: seen(1),
                    skipped_packets: seen(2),
                    skipped_bytes: seen(3),
                    over_share_packets: seen(4),
                    over_share_bytes: seen(5),
                };
            }
        };
        let sum = values
            .iter()
            .fold(DropCounters::default(), |sum, c| DropCounters {
                events: sum.events.wrapping_add(c.events),
                bytes: sum.bytes.wrapping_add(c.bytes),
                skipped_packets: sum.skipped_packets.wrapping_add(c.skipped_packets),
                skipped_bytes: sum.skipped_bytes.wrapping_add(c.skipped_bytes),
                over_share_packets: sum.over_share_packets.wrapping_add(c.over_share_packets),
                over_share_bytes: sum.over_share_bytes.wrapping_add(c.over_share_bytes),
            });
        let counters = [
            (sum.events, &RINGBUF_DROPPED_EVENTS),
            (sum.bytes, &RINGBUF_DROPPED_BYTES),
            (sum.skipped_packets, &SKIPPED_PACKETS),
            (sum.skipped_bytes, &SKIPPED_BYTES),
            (sum.over_share_packets, &OVER_SHARE_PACKETS),
            (sum.over_share_bytes, &OVER_SHARE_BYTES),
        ];
        for (i, (total, counter)) in counters.into_iter().enumerate() {
            let previous = self.seen[i].fetch_max(total, Ordering::Relaxed);
            counter.add(total.saturating_sub(previous));
        }
        sum
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        for (cookie, attachment) in std::mem::take(&mut self.attachments) {
            detach_attachment(cookie, attachment);
        }
        if let LogForwarding::Task(task) = &self.log_forwarding {
            task.abort();
        }
    }
}

/// Picks the capture method by loading: the shared program if allowed and the kernel takes it,
/// else the per-namespace one (`bpf_loop` if the kernel has it, else one or two records per packet).
/// Returns the method, the program attached, and why.
fn choose_method(
    ebpf: &mut Ebpf,
    choice: MethodChoice,
) -> Result<(ProbeMethod, &'static str, String), ProbeError> {
    let shared = match try_shared(ebpf, choice)? {
        Ok(reason) => return Ok((ProbeMethod::Shared, PROGRAM_NAME, reason)),
        Err(why_not) => why_not,
    };
    let per_namespace = |copy: &str| {
        format!("shared program: {shared}; so one netlink filter per pod namespace, its slot in the classid ({copy})")
    };
    let loop_error = if choice == MethodChoice::PerNamespaceFlat {
        format!("{METHOD_ENV}=per-namespace-flat")
    } else {
        match load_program(ebpf, PER_NAMESPACE_LOOP_PROGRAM_NAME)? {
            Ok(()) => {
                return Ok((
                    ProbeMethod::PerNamespace,
                    PER_NAMESPACE_LOOP_PROGRAM_NAME,
                    per_namespace("payload copied with bpf_loop"),
                ))
            }
            Err(e) => method::helper_missing(BpfHelper::BPF_FUNC_loop).unwrap_or_else(|| {
                format!(
                    "the bpf_loop variant does not load: {}",
                    crate::telemetry::one_line(&crate::telemetry::with_causes(&e))
                )
            }),
        }
    };
    match load_program(ebpf, PER_NAMESPACE_PROGRAM_NAME)? {
        Ok(()) => Ok((
            ProbeMethod::PerNamespace,
            PER_NAMESPACE_PROGRAM_NAME,
            per_namespace(&format!(
                "payload copied in one or two records per packet, without loops: {loop_error}"
            )),
        )),
        Err(e) => Err(ProbeError::NoMethod {
            shared,
            per_namespace: format!(
                "{loop_error}; the one-record variant: {}",
                crate::telemetry::one_line(&crate::telemetry::with_causes(&e))
            ),
        }),
    }
}

/// Loads the shared program when allowed: `Ok(Ok(reason))` when it loads, `Ok(Err(why not))`
/// when another method should be tried.
fn try_shared(ebpf: &mut Ebpf, choice: MethodChoice) -> Result<Result<String, String>, ProbeError> {
    if matches!(
        choice,
        MethodChoice::PerNamespace | MethodChoice::PerNamespaceFlat
    ) {
        return Ok(Err(format!("not tried ({METHOD_ENV})")));
    }
    if identity_kind() == IdentityKind::Inode {
        // The shared program's records carry kernel cookies, which user space cannot read here.
        let why = "namespaces are identified by inode here (no SO_NETNS_COOKIE), not by the cookie it reports".to_owned();
        if choice == MethodChoice::Shared {
            return Err(ProbeError::NoMethod {
                shared: why,
                per_namespace: format!("not allowed ({METHOD_ENV}=shared)"),
            });
        }
        return Ok(Err(why));
    }
    let missing = method::shared_missing_helpers();
    match load_program(ebpf, PROGRAM_NAME)? {
        Ok(()) => Ok(Ok("bpf_get_netns_cookie and bpf_loop are available to TC programs: one program serves every namespace".to_owned())),
        Err(source) if choice == MethodChoice::Shared => Err(ProbeError::Program {
            what: "load (verifier)",
            source,
        }),
        Err(e) => Ok(Err(missing.unwrap_or_else(|| {
            format!("it does not load: {}", crate::telemetry::one_line(&crate::telemetry::with_causes(&e)))
        }))),
    }
}

fn start_log_forwarding(ebpf: &mut Ebpf) -> LogForwarding {
    match EbpfLogger::init(ebpf) {
        Ok(logger) => match tokio::runtime::Handle::try_current() {
            Ok(runtime) => LogForwarding::Task(runtime.spawn(forward_logs(logger))),
            Err(_) => {
                log::warn!("no tokio runtime while loading the capture program: its log records are not forwarded");
                LogForwarding::Idle(Box::new(logger))
            }
        },
        Err(e) => {
            log::warn!("capture program log records are not forwarded: {e}");
            LogForwarding::None
        }
    }
}

/// Attaches `program` in a new, empty namespace that disappears right after: finds a kernel
/// without TCX, `sch_ingress` or `cls_bpf` at start. Returns how it attached.
fn check_attach(
    program: &mut SchedClassifier,
    mode: AttachMode,
    slot: Option<u16>,
) -> Result<AttachedVia, ProbeError> {
    let attached = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare only moves this short-lived thread into a new namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(format!(
                        "cannot create a scratch network namespace: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                let (link, via) = attach_here(program, mode, slot)?;
                link.detach()
                    .map_err(|e| format!("detaching from the scratch namespace: {e}"))?;
                Ok(via)
            })
            .join()
            .unwrap_or_else(|_| Err("the attach check thread panicked".to_owned()))
    });
    attached.map_err(|reason| ProbeError::Attach {
        netns: "a scratch namespace (start-up check)".to_owned(),
        reason,
    })
}

/// Times a load interrupted by a signal is tried again.
const LOAD_ATTEMPTS: usize = 5;

/// Loads the named program into the kernel. The verifier gives up with `EAGAIN` when a signal
/// is pending for the loading thread (a child process exiting under a runtime that handles
/// SIGCHLD is enough, and checking these programs takes a second or more on a busy machine), so
/// signals are blocked for this thread while it loads (process-wide signals go to the other
/// threads meanwhile), and a load that is interrupted all the same is tried again, as libbpf
/// does: a signal never makes loupe settle for a lesser capture method.
fn load_program(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<Result<(), ProgramError>, ProbeError> {
    let program = classifier(ebpf, name)?;
    let mut attempt = 1;
    loop {
        match without_signals(|| program.load()) {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                log::debug!("loading {name}: interrupted ({io_error}), attempt {attempt}");
                attempt += 1;
            }
            result => return Ok(result),
        }
    }
}

/// Runs `f` with every signal blocked for the calling thread, then restores its mask.
fn without_signals<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data, filled by sigfillset before use; pthread_sigmask changes
    // only this thread's mask and writes the previous one into `previous`, which is put back
    // below whatever `f` returns.
    let (mut all, mut previous): (libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: as above.
    let blocked = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous) == 0
    };
    let result = f();
    if blocked {
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    }
    result
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| ProbeError::Program {
            what: "not a TC classifier",
            source,
        })
}

/// Runs inside the target namespace: removes stale netlink filters, then attaches. The link is
/// taken out of aya's program so that dropping the `Ebpf` never detaches by interface index in
/// the agent's own namespace. With a `slot` (per-namespace method) only a netlink filter will
/// do: its classid carries the slot to the program.
fn attach_here(
    program: &mut SchedClassifier,
    mode: AttachMode,
    slot: Option<u16>,
) -> Result<(SchedClassifierLink, AttachedVia), String> {
    remove_stale_filters();
    let take = |program: &mut SchedClassifier, id| {
        program
            .take_link(id)
            .map_err(|e| format!("cannot take the new link: {e}"))
    };
    let mut tcx_error = String::new();
    if mode != AttachMode::Netlink && slot.is_none() {
        let tcx = program.attach_with_options(
            LOOPBACK,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        );
        match tcx {
            Ok(id) => return Ok((take(program, id)?, AttachedVia::Tcx)),
            Err(e) if mode == AttachMode::Tcx => return Err(format!("TCX: {e}")),
            Err(e) => {
                log::debug!("TCX attach on lo failed ({e}); using a netlink clsact filter");
                tcx_error = format!("TCX: {e}; ");
            }
        }
    }
    // Fails with EEXIST when the qdisc is there already; a real problem shows in the attach.
    if let Err(e) = tc::qdisc_add_clsact(LOOPBACK) {
        log::debug!("adding clsact on lo: {e}");
    }
    let id = program
        .attach_with_options(
            LOOPBACK,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions {
                classid: slot.map(|slot| TcHandle::new(0, slot)),
                ..NlOptions::default()
            }),
        )
        .map_err(|e| {
            format!("{tcx_error}netlink clsact filter (needs sch_ingress and cls_bpf): {e}")
        })?;
    Ok((take(program, id)?, AttachedVia::Netlink))
}

/// Removes netlink filters named like loupe's programs on this namespace's `lo` egress.
fn remove_stale_filters() {
    for name in PROGRAM_NAMES {
        match tc::qdisc_detach_program(LOOPBACK, TcAttachType::Egress, name) {
            Ok(()) => {
                STALE_FILTERS_REMOVED.inc();
                log::info!("removed {name} netlink filters left on lo by an earlier run");
            }
            Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Typically: no clsact qdisc on lo, so there is nothing to remove.
            Err(e) => log::debug!("looking for stale {name} filters on lo: {e}"),
        }
    }
}

fn detach_attachment(cookie: NetnsCookie, attachment: Attachment) {
    let Attachment {
        link, via, netns, ..
    } = attachment;
    let result = match via {
        // A TCX link lives in its file descriptor; closing it detaches, from any namespace.
        AttachedVia::Tcx => link.detach().map_err(|e| e.to_string()),
        AttachedVia::Netlink => match netns.run(move || link.detach()) {
            Ok(detached) => detached.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    if let Err(e) = result {
        log::warn!("detaching the capture program from netns cookie {cookie}: {e}");
    }
}

async fn forward_logs(logger: EbpfLogger<&'static dyn log::Log>) {
    let mut logger = match ring::register_readable(logger) {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("cannot poll the capture program's log ring buffer: {e}");
            return;
        }
    };
    loop {
        let mut guard = match logger.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                log::warn!("capture program log forwarding stopped: {e}");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_must_be_a_power_of_two_page_multiple() {
        for bytes in [0, 1000, 4095, 12288] {
            let err = Probe::load(&ProbeConfig {
                ring_bytes: bytes,
                ..ProbeConfig::default()
            })
            .unwrap_err();
            assert!(matches!(err, ProbeError::RingSize { .. }), "{bytes}: {err}");
        }
    }
}
