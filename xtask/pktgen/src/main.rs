//! `vnetd-pktgen`: one packet-rate run of `cargo xtask bench` (scenario `packet_rate`).
//!
//! Attaches a counting drop (TC ingress) to the receiving pod's `eth0`, optionally a bare
//! `bpf_redirect_peer` forwarder to a host-side veth, then runs the XDP generator with
//! BPF_PROG_RUN in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) on the sending pod's `eth0`
//! for the given time, pinned to one CPU, and prints one JSON line: frames sent, frames
//! counted at the receiver, seconds, rates. Everything it attached goes with the process (TCX
//! links held by its file descriptors).
//!
//! XDP_TX from live frames is a redirect to `eth0`'s `ndo_xdp_xmit`: a veth delivers such
//! frames only if its peer (the host-side veth) runs NAPI (GRO on, or an XDP program); the
//! caller turns GRO on. Generation and the whole forwarding path then run in the pinned CPU's
//! softirq.
use std::{
    fs::File,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, TestRun as _, TestRunAttrs, TestRunOptions, Xdp, tc,
    },
};
use clap::Parser;
use nix::sched::{CloneFlags, CpuSet, sched_setaffinity, setns};
use serde_json::json;

#[derive(Parser)]
#[command(about = "XDP live-frames packet-rate run between two pods")]
struct Args {
    /// The sending pod's network namespace (a path such as /run/netns/NAME).
    #[arg(long)]
    tx_netns: PathBuf,
    /// The receiving pod's network namespace.
    #[arg(long)]
    rx_netns: PathBuf,
    /// The pods' interface (both sides).
    #[arg(long, default_value = "eth0")]
    dev: String,
    #[arg(long)]
    src_mac: String,
    #[arg(long)]
    dst_mac: String,
    #[arg(long)]
    src_ip: Ipv4Addr,
    #[arg(long)]
    dst_ip: Ipv4Addr,
    #[arg(long, default_value_t = 9)]
    dst_port: u16,
    /// The first source port.
    #[arg(long, default_value_t = 10000)]
    sport_first: u16,
    /// Source ports `--sport-first` .. + this, in turn.
    #[arg(long, default_value_t = 1024)]
    sports: u16,
    /// Destination ports `--dst-port` .. + this: the next one after each round of source ports
    /// (with `--tcp-syn`, every frame a new flow for as many frames as sports times dports).
    #[arg(long, default_value_t = 1)]
    dports: u16,
    /// TCP SYNs (with their checksum) instead of UDP.
    #[arg(long)]
    tcp_syn: bool,
    /// The whole frame, Ethernet header included, without FCS.
    #[arg(long, default_value_t = 64)]
    frame_len: usize,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// The CPU the generator (and the softirq forwarding its frames) runs on.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Attach the bare forwarder in this namespace (the node's)...
    #[arg(long)]
    forward_netns: Option<PathBuf>,
    /// ... on this host-side veth's TC ingress (the sending pod's)...
    #[arg(long)]
    forward_from: Option<String>,
    /// ... redirecting to this host-side veth's peer (the receiving pod's).
    #[arg(long)]
    forward_to: Option<String>,
}

/// How long one BPF_PROG_RUN call generates for (see the loop in `main`).
const CALL_SECONDS: f64 = 1.0;

fn main() -> Result<()> {
    let args = Args::parse();
    let mut ebpf = Ebpf::load(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/vnetd-pktgen-ebpf"
    )))
    .context("loading the generator's programs")?;

    enter(&args.rx_netns)?;
    let counter: &mut SchedClassifier = ebpf
        .program_mut("count_drop")
        .context("no count_drop")?
        .try_into()?;
    counter.load()?;
    let _ = tc::qdisc_add_clsact(&args.dev);
    counter
        .attach(&args.dev, TcAttachType::Ingress)
        .with_context(|| {
            format!(
                "attaching the counter to {} in {}",
                args.dev,
                args.rx_netns.display()
            )
        })?;

    if let Some(ns) = &args.forward_netns {
        let (Some(from), Some(to)) = (&args.forward_from, &args.forward_to) else {
            bail!("--forward-netns needs --forward-from and --forward-to");
        };
        enter(ns)?;
        let to_index = nix::net::if_::if_nametoindex(to.as_str())
            .with_context(|| format!("no interface {to} in {}", ns.display()))?;
        let mut peer: Array<_, u32> = Array::try_from(ebpf.map_mut("PEER").context("no PEER")?)?;
        peer.set(0, to_index, 0)?;
        let fwd: &mut SchedClassifier = ebpf
            .program_mut("bare_forward")
            .context("no bare_forward")?
            .try_into()?;
        fwd.load()?;
        let _ = tc::qdisc_add_clsact(from);
        fwd.attach(from, TcAttachType::Ingress).with_context(|| {
            format!("attaching the bare forwarder to {from} in {}", ns.display())
        })?;
    }

    enter(&args.tx_netns)?;
    let ifindex = nix::net::if_::if_nametoindex(args.dev.as_str())
        .with_context(|| format!("no interface {} in {}", args.dev, args.tx_netns.display()))?;
    let frame = frame(&args)?;
    {
        let mut template: Array<_, Template> =
            Array::try_from(ebpf.map_mut("TEMPLATE").context("no TEMPLATE")?)?;
        template.set(0, Template::of(&args, &frame), 0)?;
    }
    // program_mut borrows the whole object: the counter's map first.
    let counter_map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.take_map("RECEIVED").context("no RECEIVED")?)?;
    let gen_prog: &mut Xdp = ebpf
        .program_mut("pktgen")
        .context("no pktgen")?
        .try_into()?;
    gen_prog.load()?;

    let mut cpus = CpuSet::new();
    cpus.set(args.cpu)?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)
        .with_context(|| format!("pinning the generator to CPU {}", args.cpu))?;

    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let received = || -> Result<u64> { Ok(counter_map.get(&0, 0)?.iter().sum()) };
    let run = |repeat: u32| -> Result<()> {
        let r = gen_prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        });
        r.map(drop).context("BPF_PROG_RUN (XDP live frames)")
    };
    // Warm-up: neighbours, flows and pages in place; its frames are not counted.
    run(10_000)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = received()?;
    let (mut sent, mut repeat) = (0u64, 50_000u32);
    let start = Instant::now();
    let want = Duration::from_secs_f64(args.seconds);
    while start.elapsed() < want {
        let t = Instant::now();
        run(repeat)?;
        sent += u64::from(repeat);
        // Each call sets the live-frames state up and tears it down, and the CPU idles in
        // between (measured: CPU 0 idle 25% of the run with calls of 0.1 s, 2-3% with calls
        // of 1 s): calls of about a second, the last one cut to the time left.
        let per = t.elapsed().as_secs_f64() / f64::from(repeat);
        let left = want.saturating_sub(start.elapsed()).as_secs_f64();
        repeat = ((CALL_SECONDS.min(left) / per.max(1e-9)) as u32).clamp(10_000, 40_000_000);
    }
    let seconds = start.elapsed().as_secs_f64();
    // Frames still in the veths' rings when the last call returned.
    std::thread::sleep(Duration::from_millis(200));
    let counted = received()? - before;
    ensure!(
        counted > 0,
        "no frame reached the receiving pod's {}",
        args.dev
    );
    println!(
        "{}",
        json!({
            "sent": sent,
            "received": counted,
            "seconds": seconds,
            "sent_mpps": sent as f64 / seconds / 1e6,
            "received_mpps": counted as f64 / seconds / 1e6,
            "cpu": args.cpu,
            "frame_len": frame.len(),
            "source_ports": args.sports,
            "destination_ports": args.dports,
            "protocol": if args.tcp_syn { "tcp_syn" } else { "udp" },
        })
    );
    Ok(())
}

/// Moves this (single-threaded) process into the network namespace at `path`.
fn enter(path: &PathBuf) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    setns(f, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {}", path.display()))
}

fn mac(s: &str) -> Result<[u8; 6]> {
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("not a MAC address: {s}"))?;
    b.try_into()
        .map_err(|_| anyhow::anyhow!("not a MAC address: {s}"))
}

/// `TEMPLATE`'s value: the same layout as the generator program's `Template`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Template {
    headers: [u8; HEADERS],
    sport_first: u16,
    sport_count: u16,
    dport_first: u16,
    dport_count: u16,
    tcp_sum: u32,
}

// SAFETY: plain integers and bytes; the padding after `dport_count` is zeroed by `of`.
unsafe impl aya::Pod for Template {}

/// Ethernet, IPv4, TCP: the headers the generator rewrites on every frame.
const HEADERS: usize = 54;
impl Template {
    fn of(a: &Args, frame: &[u8]) -> Template {
        // SAFETY: all-zero bytes are a valid Template, padding included.
        let mut t: Template = unsafe { std::mem::zeroed() };
        t.headers.copy_from_slice(&frame[..HEADERS]);
        t.sport_first = a.sport_first;
        t.sport_count = a.sports;
        t.dport_first = a.dst_port;
        t.dport_count = a.dports;
        t.tcp_sum = if a.tcp_syn { tcp_sum(frame) } else { 0 };
        t
    }
}

/// The one's-complement sum (folded) of the TCP pseudo-header and the TCP header of `frame`
/// with both ports and the checksum taken as zero: the generator adds each frame's ports.
fn tcp_sum(frame: &[u8]) -> u32 {
    let ip = &frame[14..34];
    let tcp_len = u16::from_be_bytes([ip[2], ip[3]]) - 20;
    let mut words: Vec<u16> = ip[12..20]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    words.push(6);
    words.push(tcp_len);
    let tcp = &frame[34..34 + usize::from(tcp_len)];
    for (i, c) in tcp.chunks(2).enumerate() {
        // Ports (words 0 and 1) and the checksum (word 8) are zero here.
        if !matches!(i, 0 | 1 | 8) {
            words.push(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    fold(words.iter().map(|&w| u32::from(w)).sum())
}

fn fold(sum: u32) -> u32 {
    let sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16)
}

/// The frame: Ethernet, IPv4 (TTL 64, checksum), then UDP (checksum 0: none, zero payload)
/// or, with `--tcp-syn`, a TCP SYN without options (its checksum is the generator's, per
/// frame) and Ethernet padding.
fn frame(a: &Args) -> Result<Vec<u8>> {
    ensure!(
        (60..=1500).contains(&a.frame_len),
        "--frame-len {} is outside 60..=1500",
        a.frame_len
    );
    let mut f = vec![0u8; a.frame_len];
    f[0..6].copy_from_slice(&mac(&a.dst_mac)?);
    f[6..12].copy_from_slice(&mac(&a.src_mac)?);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = if a.tcp_syn {
        40
    } else {
        (a.frame_len - 14) as u16
    };
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = if a.tcp_syn { 6 } else { 17 };
    ip[12..16].copy_from_slice(&a.src_ip.octets());
    ip[16..20].copy_from_slice(&a.dst_ip.octets());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[34..36].copy_from_slice(&a.sport_first.to_be_bytes());
    f[36..38].copy_from_slice(&a.dst_port.to_be_bytes());
    if a.tcp_syn {
        let tcp = &mut f[34..54];
        tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x02;
        tcp[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    } else {
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's arguments between two pods of the lab's addresses, and `extra`.
    fn args(extra: &[&str]) -> Args {
        let base = [
            "vnetd-pktgen",
            "--tx-netns=/a",
            "--rx-netns=/b",
            "--src-mac=02:00:0a:00:02:0a",
            "--dst-mac=ee:ee:ee:ee:ee:ee",
            "--src-ip=10.0.2.10",
            "--dst-ip=10.0.2.11",
        ];
        Args::parse_from(base.iter().chain(extra))
    }

    /// The frame is what the receiving stack would accept: lengths, protocol and an IPv4
    /// header checksum that sums to 0xffff.
    #[test]
    fn frame_is_valid_udp() {
        let a = args(&[]);
        let f = frame(&a).unwrap();
        assert_eq!(f.len(), 64);
        assert_eq!(&f[0..6], &[0xee; 6]);
        assert_eq!(&f[6..12], &[2, 0, 10, 0, 2, 10]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 50, "IPv4 total length");
        assert_eq!(f[23], 17, "UDP");
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 30, "UDP length");
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 9, "destination port");
        let sum: u32 = f[14..34]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff, "IPv4 header checksum");
        let short = args(&["--frame-len=20"]);
        assert!(frame(&short).is_err());
        assert!(mac("02:00").is_err());
    }

    /// A TCP SYN with the ports and checksum the generator writes (as its program does: the
    /// template's sum plus the frame's ports) has a valid TCP checksum for any ports.
    #[test]
    fn tcp_syn_checksum_is_valid_for_every_port_pair() {
        let syn = args(&["--tcp-syn"]);
        let mut f = frame(&syn).unwrap();
        assert_eq!(f.len(), 64);
        assert_eq!(f[23], 6, "TCP");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 40, "IPv4 total length");
        assert_eq!(f[47], 0x02, "SYN only");
        let t = Template::of(&syn, &f);
        for (sport, dport) in [(10000u16, 9u16), (65535, 65535), (10001, 1), (0, 0)] {
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&dport.to_be_bytes());
            let csum = !(fold(t.tcp_sum + u32::from(sport) + u32::from(dport)) as u16);
            f[50..52].copy_from_slice(&csum.to_be_bytes());
            let mut sum: u32 = f[26..34]
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            sum += 6 + 20;
            sum += f[34..54]
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum::<u32>();
            assert_eq!(fold(sum), 0xffff, "TCP checksum, ports {sport} {dport}");
        }
    }
}
