//! `vnetd`: the agent daemon and its command line.
use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::Mutex;
use tracing::{error, info};
use vnetd::{
    api::{
        client,
        proto::{Request, Response, StatusReport},
        server,
    },
    daemon::{self, Agent},
    dataplane, health, metrics, netlink, reload, spec,
};

/// mimalloc rather than glibc's malloc: a reload builds and drops a spec's whole document
/// tree, model and tables (tens of thousands of small allocations for an NSG of 1000 rules),
/// and measured on the control-plane bench's spec that CPU work took 30% less time with it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_SOCKET: &str = "/run/vnetd/vnetd.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/vnetd";
const DEFAULT_BPFFS: &str = "/sys/fs/bpf/vnetd";
/// How long SIGTERM waits for a request in progress (a CNI ADD creating an interface) to
/// finish; well inside the DaemonSet's terminationGracePeriodSeconds.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Parser)]
#[command(
    name = "vnetd",
    version,
    about = "Azure-style virtual networking for Linux containers, in eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load and attach the dataplane, fill its maps, serve the API.
    Run {
        #[arg(long)]
        spec: PathBuf,
        /// This node's name in the spec's `nodes`.
        #[arg(long)]
        node: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        api_socket: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_addr: std::net::SocketAddr,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Seconds a request may hold the agent before `/healthz` fails (and kubelet restarts
        /// the agent; the dataplane keeps forwarding).
        #[arg(long, value_name = "SECONDS", default_value_t = health::DEFAULT_STUCK_AFTER.as_secs(),
              value_parser = clap::value_parser!(u64).range(1..))]
        stuck_after: u64,
    },
    /// Check a spec: exit 0 if valid, else 1 and one line per problem.
    Validate { file: PathBuf },
    /// Endpoints, programs and links, traffic and drops.
    Status {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        api_socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Flow-log records (Azure's NSG flow-log v2 tuple and the deciding rule): what the agent
    /// has buffered, then with --follow new ones as they come.
    Flows {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        api_socket: PathBuf,
        /// Keep printing new records until interrupted.
        #[arg(long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Detach the programs and remove the pins and state of a node.
    Teardown {
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { file } => return spec::cli_validate(&file),
        Command::Run {
            spec,
            node,
            api_socket,
            state_dir,
            bpffs,
            metrics_addr,
            log_format,
            stuck_after,
        } => {
            init_logging(log_format);
            // The agent, if it was drained on SIGTERM, is dropped only here, after the
            // runtime: see `serve_agent`.
            let (result, _drained) = run(
                daemon::Paths {
                    spec,
                    api_socket,
                    state_dir,
                    bpffs,
                },
                node,
                metrics_addr,
                Duration::from_secs(stuck_after),
            );
            result
        }
        Command::Status { api_socket, json } => status(&api_socket, json),
        Command::Flows {
            api_socket,
            follow,
            json,
        } => flows(&api_socket, follow, json),
        Command::Teardown {
            node,
            state_dir,
            bpffs,
        } => teardown(node.as_deref(), &state_dir, &bpffs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vnetd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Test-only pause point: with `VNETD_TEST_PAUSE_BEFORE_SOCKET=<file>` set, the agent waits
/// while `<file>` exists once the dataplane is attached, before it binds the API socket, so an
/// end-to-end test sees for certain what the probes answer in between (not after a guessed
/// sleep). Unset in production: one environment lookup per start.
async fn pause_for_tests_before_socket() {
    let Some(marker) = std::env::var_os("VNETD_TEST_PAUSE_BEFORE_SOCKET") else {
        return;
    };
    tracing::warn!(marker = ?marker, "test pause point: waiting before binding the API socket");
    while std::path::Path::new(&marker).exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The agent, held locked after a drain: no queued request may start while the runtime shuts
/// down (it would be cancelled half-way), so it is dropped after the runtime.
type Drained = Option<tokio::sync::OwnedMutexGuard<Agent>>;

#[tokio::main]
async fn run(
    paths: daemon::Paths,
    node: String,
    metrics_addr: std::net::SocketAddr,
    stuck_after: Duration,
) -> (Result<()>, Drained) {
    let mut drained = None;
    let result = run_agent(paths, node, metrics_addr, stuck_after, &mut drained).await;
    (result, drained)
}

async fn run_agent(
    paths: daemon::Paths,
    node: String,
    metrics_addr: std::net::SocketAddr,
    stuck_after: Duration,
    drained: &mut Drained,
) -> Result<()> {
    // The text the agent starts from: the spec watch compares what it reads later with it.
    let started_from = std::fs::read_to_string(&paths.spec).ok();
    let loaded = match &started_from {
        Some(text) => spec::check_str(text),
        None => spec::load_file(&paths.spec),
    };
    let spec = match loaded {
        Ok(spec) => spec,
        Err(problems) => {
            for p in &problems {
                error!("{p}");
            }
            bail!(
                "{} is not a valid spec ({} problems)",
                paths.spec.display(),
                problems.len()
            );
        }
    };
    let plan = vnetd::plan::NodePlan::from_spec(&spec, &node)?;
    daemon::ensure_dir(&paths.state_dir)?;
    // Before anything is touched: a second agent on this state dir, or on this socket, stops
    // here and leaves the running one's dataplane and socket alone.
    let _lock = lock_state_dir(&paths.state_dir)?;
    server::remove_stale(&paths.api_socket)?;
    // The probes answer from here on: alive while the dataplane loads, ready once it serves.
    let health = health::Health::new(paths.api_socket.clone(), stuck_after);
    let feed = metrics::StatusFeed::starting();
    let http = tokio::spawn(metrics::serve(
        metrics::bind(metrics_addr).await?,
        feed.clone(),
        health.clone(),
    ));
    let agent = Agent::start(plan, &paths.bpffs, &paths.state_dir).await?;
    feed.publish(&agent);
    pause_for_tests_before_socket().await;
    let listener = server::bind(&paths.api_socket)?;
    health.serving();
    let serving = Serving {
        feed,
        health,
        http,
        started_from,
    };
    let result = serve_agent(agent, &paths, node, listener, serving, drained).await;
    let _ = std::fs::remove_file(&paths.api_socket);
    result
}

/// What the serving agent needs besides itself: the status snapshot, the probes' state, the
/// metrics server's task, and the spec's text at start (for the spec watch).
struct Serving {
    feed: metrics::StatusFeed,
    health: health::Health,
    http: tokio::task::JoinHandle<Result<()>>,
    started_from: Option<String>,
}

/// Serves until an error or a signal. On SIGTERM (or Ctrl-C) the agent stops accepting,
/// turns not ready, removes its socket (a CNI call now fails at once with "try again later"
/// instead of waiting), waits up to [`DRAIN_TIMEOUT`] for a request in progress to finish,
/// and leaves the dataplane running: only `vnetd teardown` removes it.
async fn serve_agent(
    mut agent: Agent,
    paths: &daemon::Paths,
    node: String,
    listener: tokio::net::UnixListener,
    serving: Serving,
    drained: &mut Drained,
) -> Result<()> {
    let Serving {
        feed,
        health,
        mut http,
        started_from,
    } = serving;
    info!(node = %agent.node(), socket = %paths.api_socket.display(), "vnetd running");
    let (flows, conntrack) = agent.conntrack_collector()?;
    let (flow_events, flow_log) = agent.flow_log_reader()?;
    let kernel_log = agent.take_kernel_log();
    let gc_interval = vnetd::gc::interval()?;
    let agent = Arc::new(Mutex::new(agent));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        res = server::serve(listener, agent.clone(), feed.clone()) => res?,
        res = reload::watch(paths.spec.clone(), node.clone(), agent.clone(), started_from) => res?,
        res = &mut http => res.context("the metrics server")??,
        res = feed.clone().refresh(agent.clone()) => res?,
        res = vnetd::gc::run(flows, conntrack, gc_interval, flow_log.clone()) => res?,
        res = vnetd::flowlog::read(flow_events, flow_log) => res?,
        res = forward_kernel_log(kernel_log) => res?,
        res = netlink::links::watch(|| async {
            if let Err(err) = agent.lock().await.reconcile_links().await {
                error!("following the node's links: {err:#}");
            }
        }) => res?,
        _ = tokio::signal::ctrl_c() => info!("interrupted: stopping, leaving the dataplane running"),
        _ = term.recv() => info!("terminated: stopping, leaving the dataplane running"),
    }
    // The accept loop is gone with the select; the probes still answer (not ready) meanwhile.
    health.stopping();
    let _ = std::fs::remove_file(&paths.api_socket);
    match tokio::time::timeout(DRAIN_TIMEOUT, agent.lock_owned()).await {
        Ok(guard) => {
            info!("stopped: no request in progress; the dataplane keeps running from its pins");
            *drained = Some(guard);
        }
        Err(_) => error!(
            "a request still held the agent after {}s: stopping anyway (the next agent \
             completes or releases what it left)",
            DRAIN_TIMEOUT.as_secs()
        ),
    }
    Ok(())
}

/// Forwards the programs' log, or waits forever if it could not be opened.
async fn forward_kernel_log(log: Option<dataplane::KernelLog>) -> Result<()> {
    match log {
        Some(log) => dataplane::forward_kernel_log(log).await,
        None => std::future::pending().await,
    }
}

/// Takes `<state_dir>/lock` (an exclusive flock, held until the process exits, however it
/// exits) and writes our pid in it: one agent per state dir, because two would hand out the
/// same addresses and fight over the same endpoints.
fn lock_state_dir(state_dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)
                .and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(lock)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "another vnetd agent{} uses the state dir {}: one agent per state dir (it holds \
                 {})",
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                },
                state_dir.display(),
                path.display()
            )
        }
        Err((_, errno)) => Err(errno).with_context(|| format!("locking {}", path.display())),
    }
}

fn status(socket: &std::path::Path, json: bool) -> Result<()> {
    let report = match client::call(socket, &Request::Status, Duration::from_secs(10))? {
        Response::Status(report) => report,
        Response::Error(err) => bail!("the agent refused: {err}"),
        other => bail!("unexpected response {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_status(&report);
    }
    Ok(())
}

/// How often `vnetd flows --follow` asks the agent for new records.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

fn flows(socket: &std::path::Path, follow: bool, json: bool) -> Result<()> {
    use std::io::Write as _;
    let mut after = None;
    let mut lost_seen = None;
    let stdout = std::io::stdout();
    loop {
        let report = match client::call(socket, &Request::Flows { after }, Duration::from_secs(10))?
        {
            Response::Flows(report) => report,
            Response::Error(err) => bail!("the agent refused: {err}"),
            other => bail!("unexpected response {other:?}"),
        };
        let mut out = stdout.lock();
        for record in &report.records {
            if json {
                writeln!(out, "{}", serde_json::to_string(record)?)?;
            } else {
                writeln!(out, "{record}")?;
            }
        }
        out.flush()?;
        if let Some(last) = report.records.last() {
            after = Some(last.seq);
        }
        if lost_seen.is_some_and(|seen| report.lost > seen) || (!follow && report.lost > 0) {
            eprintln!(
                "vnetd: {} flow-log records were lost (the dataplane's ring was full)",
                report.lost
            );
        }
        lost_seen = Some(report.lost);
        if !follow {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

fn print_status(r: &StatusReport) {
    println!("node {}  uplink {}", r.node, r.uplink);
    println!("endpoints ({}):", r.endpoints.len());
    for ep in &r.endpoints {
        let who = ep.container_group.clone().or_else(|| {
            ep.k8s_pod
                .as_ref()
                .map(|p| format!("{}/{p}", ep.k8s_namespace.as_deref().unwrap_or("")))
        });
        let public = match (ep.public_ip, &ep.fqdn) {
            (Some(ip), Some(fqdn)) => format!(" public {ip} ({fqdn})"),
            (Some(ip), None) => format!(" public {ip}"),
            _ => String::new(),
        };
        println!(
            "  {:<15} {} {:<15} subnet {} nsg {} {} {}{public}",
            ep.ip,
            ep.mac,
            ep.host_ifname,
            ep.subnet,
            ep.nsg.as_deref().unwrap_or("-"),
            ep.attachment.container_id,
            who.unwrap_or_default()
        );
    }
    println!("programs:");
    for (prog, ifname) in &r.links {
        println!("  {prog:<12} on {ifname}");
    }
    println!("traffic:");
    for (path, packets, bytes) in &r.traffic {
        println!("  {path:<16} {packets:>12} packets {bytes:>14} bytes");
    }
    println!("drops:");
    for (reason, n) in &r.drops {
        println!("  {reason:<16} {n:>12}");
    }
    let c = &r.conntrack;
    let live: u64 = c.entries.iter().map(|(_, n)| n).sum();
    println!(
        "conntrack: {live} entries: {} of new flows (of {}), {} of assured flows (of {}); {} \
         evicted (new flows), {} collector passes",
        live.saturating_sub(c.assured),
        c.new_capacity,
        c.assured,
        c.capacity,
        c.evictions,
        c.gc_passes
    );
    for (kind, n) in &c.entries {
        println!("  {kind:<16} {n:>12}");
    }
    let mut by_pod = c.assured_by_endpoint.clone();
    by_pod.sort_by_key(|(ip, n)| (std::cmp::Reverse(*n), *ip));
    if let Some((ip, n)) = by_pod.first() {
        println!(
            "  assured flows of the busiest pod: {ip} {n} (a pod may hold {})",
            c.endpoint_share
        );
    }
    for (event, n) in &c.events {
        println!("  {event:<20} {n:>8}");
    }
    let deleted: Vec<String> = c
        .gc_deleted
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    println!(
        "  expired: {}",
        if deleted.is_empty() {
            "none".to_string()
        } else {
            deleted.join(", ")
        }
    );
    let snat = &r.snat;
    println!(
        "snat ports: {} in use, {} per destination (range {}-{}), {} allocation failures",
        snat.ports_in_use,
        snat.ports_per_destination,
        snat.port_range.0,
        snat.port_range.1,
        snat.allocation_failures
    );
    for (nat_ip, n) in &snat.ports_in_use_by_nat_ip {
        println!("  {:<16} {n:>12}", nat_ip.to_string());
    }
    if let Some(d) = &snat.busiest_destination {
        println!(
            "  busiest destination {} -> {}:{} {}: {} of {}",
            d.nat_ip,
            d.remote_ip,
            d.remote_port,
            d.protocol,
            d.ports_in_use,
            snat.ports_per_destination
        );
    }
    println!("nsg rule hits:");
    for h in &r.nsg_rule_hits {
        println!(
            "  {:<20} {:<8} {:<32} {:<5} {:>12}",
            h.nsg, h.direction, h.rule, h.access, h.hits
        );
    }
    println!("flow-log records lost: {}", r.flow_records_lost);
    println!(
        "spec reloads: {} applied, {} refused",
        r.reloads_ok, r.reloads_failed
    );
}

/// Deletes the pods' interfaces the agent made, the pins (links detach, maps go) and the
/// state. With `--node`, refuses to touch state that belongs to another node.
#[tokio::main(flavor = "current_thread")]
async fn teardown(
    node: Option<&str>,
    state_dir: &std::path::Path,
    bpffs: &std::path::Path,
) -> Result<()> {
    if let (Some(node), Some(recorded)) = (node, daemon::recorded_node(state_dir)?)
        && node != recorded
    {
        bail!(
            "{} holds the state of node {recorded}, not {node}",
            state_dir.display()
        );
    }
    // A running agent would re-create what this removes, and hand out addresses it forgot.
    let _lock = if state_dir.exists() {
        Some(lock_state_dir(state_dir)?)
    } else {
        None
    };
    // Programs first (every ABI's links detached, TCX and XDP), then the pods' interfaces.
    let pins = dataplane::teardown(bpffs)?;
    let mut interfaces = 0;
    if state_dir.join("endpoints").exists() {
        for ep in vnetd::endpoints::EndpointStore::open(state_dir)?
            .load_all()?
            .values()
        {
            vnetd::netlink::delete_pod_interface(&ep.host_ifname).await?;
            interfaces += 1;
        }
    }
    match std::fs::remove_dir_all(state_dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", state_dir.display())),
    }
    println!(
        "detached {} links and removed {} pinned maps under {}, {interfaces} pod interfaces and \
         the state in {}",
        pins.links,
        pins.maps,
        bpffs.display(),
        state_dir.display()
    );
    Ok(())
}
