//! The kernel side, seen from the agent: load the programs, attach and pin them, write and
//! read their maps. Everything is pinned under `--bpffs`, so the dataplane outlives the agent
//! and the next agent adopts it (programs are swapped into the pinned links atomically).
pub mod maps;
mod pins;
pub mod tables;

use std::{io, path::Path};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
    },
};
pub use pins::{PinLayout, Removed};
use tracing::{info, warn};
use vnetd_common::{ABI_VERSION, programs};

/// The compiled eBPF object (built by build.rs from ebpf/vnetd-ebpf).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vnetd-ebpf"));

/// Loaded programs and their maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pins: Option<PinLayout>,
    /// The programs' log (aya-log), until the agent takes it to forward.
    kernel_log: Option<KernelLog>,
    /// What this agent holds in the tables a reload diffs against (see [`Mirror`]).
    mirror: Mirror,
    /// Moved on after every write to ENDPOINTS (the programs' copies of its entries).
    endpoints_generation: maps::EndpointsGeneration,
}

/// What the agent wrote to the maps a reload diffs against, kept so a reload does not read
/// tens of thousands of entries back from the kernel. Each is `None` until first read from the
/// kernel (at start, adopting a previous agent's pins) and again after any failed write or
/// delete on its map (the kernel's content is then unknown): the next use reads it back. Only
/// this agent writes these maps (one agent per pin directory); NSG_HITS counters the programs
/// create in a reload's race are removed by rule index with their classifier.
#[derive(Debug, Default)]
struct Mirror {
    nsgs: Option<maps::nsg::Present>,
    routes: Option<maps::routes::Present>,
    endpoints: Option<std::collections::BTreeMap<std::net::Ipv4Addr, vnetd_common::Endpoint>>,
}

/// The programs' log records (aya-log's ring), forwarded to the agent's `log`/`tracing`.
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

impl Dataplane {
    /// Loads the programs with every map pinned under `bpffs` (reusing pinned maps: their
    /// contents, conntrack included, survive the agent). First removes what other ABIs pinned
    /// there (their links detached, so this agent's programs can take the hooks), and checks
    /// every map pinned for this ABI against the object's definition (see [`check_pinned_map`]).
    pub fn load_pinned(bpffs: &Path) -> Result<Self> {
        let pins = PinLayout::new(bpffs);
        pins.prepare(bpffs)?;
        for dir in pins::abi_dirs(bpffs)? {
            if dir != pins.root() {
                let removed = pins::remove_abi(&dir)
                    .with_context(|| format!("removing another ABI's pins {}", dir.display()))?;
                info!(
                    dir = %dir.display(),
                    links = removed.links,
                    maps = removed.maps,
                    "removed the pins of another ABI"
                );
            }
        }
        let definitions = object_map_definitions()?;
        let map_paths: Vec<(&str, std::path::PathBuf)> = maps::ALL
            .iter()
            .map(|name| (*name, pins.map(name)))
            .collect();
        for (name, path) in &map_paths {
            let definition = definitions
                .get(*name)
                .with_context(|| format!("the eBPF object declares no map {name}"))?;
            check_pinned_map(name, path, definition)?;
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        // Not pinned: each agent reads the log of the programs it loaded.
        let kernel_log = aya_log::EbpfLogger::init(&mut ebpf)
            .inspect_err(|err| warn!("the programs' log is not forwarded: {err}"))
            .ok();
        let endpoints_generation = endpoints_generation(&ebpf)?;
        let mut dp = Self {
            ebpf,
            pins: Some(pins),
            kernel_log,
            mirror: Mirror::default(),
            endpoints_generation,
        };
        dp.load_programs()?;
        Ok(dp)
    }

    /// Loads the programs with private maps, nothing pinned: for BPF_PROG_RUN tests.
    pub fn load_unpinned() -> Result<Self> {
        let ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        let endpoints_generation = endpoints_generation(&ebpf)?;
        let mut dp = Self {
            ebpf,
            pins: None,
            kernel_log: None,
            mirror: Mirror::default(),
            endpoints_generation,
        };
        dp.load_programs()?;
        Ok(dp)
    }

    fn load_programs(&mut self) -> Result<()> {
        self.xdp(programs::UPLINK_XDP)?
            .load()
            .context("verifying uplink_xdp")?;
        self.classifier(programs::UPLINK_TC_INGRESS)?
            .load()
            .context("verifying uplink_ingress")?;
        self.classifier(programs::POD_TC_INGRESS)?
            .load()
            .context("verifying pod_ingress")?;
        self.classifier(programs::POD_TC_EGRESS)?
            .load()
            .context("verifying pod_egress")?;
        self.classifier(programs::UPLINK_TC_EGRESS)?
            .load()
            .context("verifying uplink_egress")?;
        Ok(())
    }

    /// The programs' log, to forward (once).
    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        self.kernel_log.take()
    }

    pub fn xdp(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?;
        prog.try_into()
            .with_context(|| format!("{name} is not an XDP program"))
    }

    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        let prog = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?;
        prog.try_into()
            .with_context(|| format!("{name} is not a TC program"))
    }

    fn pins(&self) -> Result<&PinLayout> {
        self.pins
            .as_ref()
            .context("this dataplane was loaded without pins")
    }

    /// Attaches the uplink programs to `ifname`: XDP (native where the driver has it, unless
    /// `generic_xdp`), TC ingress and TC egress (the node's own flows in the SNAT port range).
    /// Programs are swapped into links a previous agent pinned.
    pub fn attach_uplink(&mut self, ifname: &str, generic_xdp: bool) -> Result<()> {
        self.attach_xdp(programs::UPLINK_XDP, ifname, generic_xdp)?;
        self.attach_tc(programs::UPLINK_TC_INGRESS, ifname, TcAttachType::Ingress)?;
        self.attach_tc(programs::UPLINK_TC_EGRESS, ifname, TcAttachType::Egress)
    }

    /// The programs on a pod's host-side veth: TC ingress sees what the pod sends, TC egress
    /// what the node's stack sends into it (packets vnetd redirects into a pod skip it).
    pub const POD_PROGRAMS: [(&str, TcAttachType); 2] = [
        (programs::POD_TC_INGRESS, TcAttachType::Ingress),
        (programs::POD_TC_EGRESS, TcAttachType::Egress),
    ];

    /// Attaches the pod programs to a pod's host-side veth (swapped into pinned links).
    pub fn attach_pod(&mut self, host_ifname: &str) -> Result<()> {
        for (program, hook) in Self::POD_PROGRAMS {
            self.attach_tc(program, host_ifname, hook)?;
        }
        Ok(())
    }

    /// Detaches a pod's programs by removing their link pins (a link dies with its last fd).
    pub fn detach_pod(&self, host_ifname: &str) -> Result<()> {
        for (program, _) in Self::POD_PROGRAMS {
            remove_pin(&self.pins()?.link(program, host_ifname))?;
        }
        Ok(())
    }

    /// Detaches the uplink programs from `ifname` (an uplink the spec no longer names).
    pub fn detach_uplink(&self, ifname: &str) -> Result<()> {
        remove_pin(&self.pins()?.link(programs::UPLINK_XDP, ifname))?;
        remove_pin(&self.pins()?.link(programs::UPLINK_TC_INGRESS, ifname))?;
        remove_pin(&self.pins()?.link(programs::UPLINK_TC_EGRESS, ifname))
    }

    fn attach_xdp(&mut self, program: &str, ifname: &str, generic: bool) -> Result<()> {
        let pin = self.pins()?.link(program, ifname);
        let pinned = open_pinned_link(&pin)?;
        let prog = self.xdp(program)?;
        let swapped = match pinned {
            Some(fd) => {
                let link = XdpLink::try_from(fd).context("pinned link is not an XDP link")?;
                swap_or_defunct(prog.attach_to_link(link), &pin, program, ifname)?
            }
            None => None,
        };
        let link_id = match swapped {
            Some(id) => id,
            None if generic => prog
                .attach(ifname, XdpMode::Skb)
                .with_context(|| format!("attaching {program} (generic XDP) to {ifname}"))?,
            None => prog
                .attach(ifname, XdpMode::default())
                .or_else(|_| prog.attach(ifname, XdpMode::Skb))
                .with_context(|| format!("attaching {program} (XDP) to {ifname}"))?,
        };
        let link = FdLink::try_from(prog.take_link(link_id)?).context("XDP link has no fd")?;
        pin_link(link, &pin)
    }

    fn attach_tc(&mut self, program: &str, ifname: &str, hook: TcAttachType) -> Result<()> {
        let pin = self.pins()?.link(program, ifname);
        let pinned = open_pinned_link(&pin)?;
        let prog = self.classifier(program)?;
        let swapped = match pinned {
            Some(fd) => {
                let link = SchedClassifierLink::try_from(fd).context("pinned link is not TCX")?;
                swap_or_defunct(prog.attach_to_link(link), &pin, program, ifname)?
            }
            None => None,
        };
        let link_id = match swapped {
            Some(id) => id,
            None => {
                // TCX (kernel >= 6.6) needs no qdisc; netlink TC on older kernels does.
                let _ = tc::qdisc_add_clsact(ifname);
                prog.attach(ifname, hook)
                    .with_context(|| format!("attaching {program} (TC {hook:?}) to {ifname}"))?
            }
        };
        let link = FdLink::try_from(prog.take_link(link_id)?).context("TC link has no fd")?;
        pin_link(link, &pin)
    }

    /// The attached programs, from the link pins: (program, interface).
    pub fn links(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.pins()?.links_dir())? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some((program, ifname)) = name.split_once('@') {
                out.push((program.to_string(), ifname.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Forwards the programs' log records (rare events, e.g. a flow the kernel refused to insert)
/// to the agent's log as they come: aya-log writes them through `log`, which the agent's
/// `tracing` subscriber takes (debug level: quiet by default).
pub async fn forward_kernel_log(log: KernelLog) -> Result<()> {
    // SAFETY: the logger owns its ring's fd for as long as the AsyncFd owns the logger, and
    // always answers that same fd.
    let mut log = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE)
    }
    .map_err(|err| err.into_parts().1)
    .context("watching the programs' log")?;
    loop {
        let mut ready = log
            .readable_mut()
            .await
            .context("waiting on the programs' log")?;
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

fn open_pinned_link(path: &Path) -> Result<Option<FdLink>> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => Ok(Some(FdLink::from(pinned))),
        Err(LinkError::SyscallError(err)) if err.io_error.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(err) => Err(err).with_context(|| format!("opening pinned link {}", path.display())),
    }
}

/// The result of swapping a program into a pinned link: the link's id, or `None` when the link
/// is defunct because its interface was deleted (the kernel answers ENOLINK; a re-created
/// interface of the same name is another device). A defunct link's pin is removed so the caller
/// attaches afresh.
fn swap_or_defunct<T>(
    swapped: Result<T, ProgramError>,
    pin: &Path,
    program: &str,
    ifname: &str,
) -> Result<Option<T>> {
    match swapped {
        Ok(id) => Ok(Some(id)),
        Err(err) if is_errno(&err, libc::ENOLINK) => {
            tracing::warn!(
                program,
                ifname,
                "the pinned link's interface is gone: attaching to the current {ifname}"
            );
            remove_pin(pin)?;
            Ok(None)
        }
        Err(err) => Err(err).with_context(|| format!("swapping {program} on {ifname}")),
    }
}

fn is_errno(err: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            == Some(errno)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The programs' endpoint copies' generation, numbered afresh before any program is attached.
fn endpoints_generation(ebpf: &Ebpf) -> Result<maps::EndpointsGeneration> {
    let map = ebpf
        .map(maps::ENDPOINTS_GENERATION)
        .with_context(|| format!("no map {}", maps::ENDPOINTS_GENERATION))?;
    maps::EndpointsGeneration::open(map)
}

fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    if path.exists() {
        // Adopted: the pin already names this link.
        return Ok(());
    }
    link.pin(path)
        .with_context(|| format!("pinning link at {}", path.display()))?;
    Ok(())
}

fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

/// Maps a pinned map of another shape is replaced for, rather than refused: the agent rewrites
/// all of NODE and ROUTES before it attaches any program, TRAFFIC and DROPS only count
/// (Prometheus sees a counter reset), the collector recounts ENDPOINT_ASSURED at each
/// pass, and the endpoint cache and its generation are numbered afresh at every start (see
/// `EndpointsGeneration::open`). Any other map (ENDPOINTS: the pods; later conntrack) holds
/// state between agents and is refused.
const REPLACED_ON_MISMATCH: &[&str] = &[
    maps::NODE,
    maps::ROUTES,
    maps::TRAFFIC,
    maps::DROPS,
    maps::CONNTRACK_STATS,
    maps::ENDPOINT_ASSURED,
    maps::NO_MASQUERADE,
    maps::PUBLIC_IPS,
    maps::PUBLIC_PORTS,
    maps::GROUP_PORTS,
    maps::NSG_SRC_ADDR,
    maps::NSG_DST_ADDR,
    maps::NSG_SRC_PORT,
    maps::NSG_DST_PORT,
    maps::NSG_PROTO,
    maps::NSG_PORTLESS,
    maps::NSG_RULES,
    maps::NSG_HITS,
    maps::FLOW_EVENTS,
    maps::FLOW_EVENTS_LOST,
    maps::ICMP_ERROR_BUDGET,
    maps::ENDPOINTS_GENERATION,
    maps::ENDPOINT_CACHE,
];

/// A map as the object defines it: what the kernel reports for a map created from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MapDefinition {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

/// The object's maps, by name (parsed, nothing created in the kernel).
fn object_map_definitions() -> Result<std::collections::HashMap<String, MapDefinition>> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).context("parsing the eBPF object")?;
    Ok(object
        .maps
        .iter()
        .map(|(name, map)| {
            let definition = MapDefinition {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
                flags: map.map_flags(),
            };
            (name.clone(), definition)
        })
        .collect())
}

fn map_type_name(map_type: u32) -> String {
    aya_obj::generated::bpf_map_type::try_from(map_type)
        .ok()
        .and_then(|t| aya::maps::MapType::try_from(t).ok())
        .map_or_else(|| format!("#{map_type}"), |t| format!("{t:?}"))
}

/// Compares the map pinned at `path` (if any) with the object's `definition` before aya adopts
/// it (aya reuses whatever is pinned at a path). A mismatch under the same ABI version means
/// the pins come from a build whose layout changed without a new version: maps in
/// [`REPLACED_ON_MISMATCH`] are unpinned (a new one is made), the others are refused with an
/// error naming the map, each differing field, and what to do.
fn check_pinned_map(name: &str, path: &Path, definition: &MapDefinition) -> Result<()> {
    let info = match aya::maps::MapInfo::from_pin(path) {
        Ok(info) => info,
        Err(aya::maps::MapError::SyscallError(err))
            if err.io_error.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(());
        }
        Err(err) => {
            return Err(err).with_context(|| format!("reading pinned map {}", path.display()));
        }
    };
    /// How a field's value reads in the error.
    type Show = fn(u32) -> String;
    let decimal: Show = |v| v.to_string();
    let hex: Show = |v| format!("{v:#x}");
    let fields: [(&str, u32, u32, Show); 5] = [
        (
            "type",
            info.map_type().map_or(u32::MAX, |t| t as u32),
            definition.map_type,
            map_type_name,
        ),
        ("key size", info.key_size(), definition.key_size, decimal),
        (
            "value size",
            info.value_size(),
            definition.value_size,
            decimal,
        ),
        (
            "max entries",
            info.max_entries(),
            definition.max_entries,
            decimal,
        ),
        ("flags", info.map_flags(), definition.flags, hex),
    ];
    let differences: Vec<String> = fields
        .iter()
        .filter(|(_, pinned, expected, _)| pinned != expected)
        .map(|(field, pinned, expected, show)| {
            format!(
                "{field} {} pinned, {} expected",
                show(*pinned),
                show(*expected)
            )
        })
        .collect();
    if differences.is_empty() {
        return Ok(());
    }
    let differences = differences.join("; ");
    if REPLACED_ON_MISMATCH.contains(&name) {
        warn!(
            map = name,
            path = %path.display(),
            %differences,
            "replacing a pinned map of another shape (the agent rewrites it)"
        );
        return remove_pin(path);
    }
    bail!(
        "pinned map {name} at {} does not match this vnetd's ABI v{ABI_VERSION}: {differences}. \
         It was pinned by a build with another layout under the same ABI version. Stop the \
         agent and run `vnetd teardown` with the same --bpffs and --state-dir (it detaches the \
         programs and deletes pod interfaces and state), or run the build that pinned it",
        path.display()
    )
}

/// Removes every ABI's pins under `bpffs`, links first, each detached from its hook (TCX and
/// XDP alike, even if something still holds the link), then the maps (they go with their last
/// user). Returns what was removed.
pub fn teardown(bpffs: &Path) -> Result<pins::Removed> {
    let mut total = pins::Removed::default();
    for dir in pins::abi_dirs(bpffs)? {
        let removed =
            pins::remove_abi(&dir).with_context(|| format!("removing {}", dir.display()))?;
        total.links += removed.links;
        total.maps += removed.maps;
    }
    Ok(total)
}
