//! `chaingate-service` on a veth, bump in the wire: frames come back out
//! the interface they came in on, unchanged but for the trace trailer
//! when `--stamp` is given, and no faster than `--cap`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chaingate_hw_tests::agent::service_binary;
use chaingate_hw_tests::frames::udp;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::{Link, Topology};
use chaingate_pktio::afpacket::{AfPacket, wait_readable};
use chaingate_pktio::{PacketIo, RxBatch};
use chaingate_services::stamp;

struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `frames` into the service and collects what comes back within
/// `within`.
fn exchange(port: &mut AfPacket, frames: &[Vec<u8>], within: Duration) -> Vec<Vec<u8>> {
    for f in frames {
        port.send(f);
    }
    port.flush();
    let mut batch = RxBatch::new(32, 2048);
    let mut back = Vec::new();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && back.len() < frames.len() {
        if wait_readable(&[port.raw_fd()], 50) && PacketIo::recv(port, &mut batch).is_ok() {
            back.extend((0..batch.len()).filter_map(|i| batch.frame(i).map(<[u8]>::to_vec)));
        }
    }
    back
}

/// Starts `chaingate-service ARGS` on `link.outer` in the test's
/// namespace, and waits for its probe.
fn start(topo: &Topology, link: &Link, args: &[&str]) -> (Service, PathBuf) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let sock = std::env::temp_dir().join(format!("cg-svc-{}-{n}.sock", std::process::id()));
    let service = Service(
        Command::new("ip")
            .args(["netns", "exec", topo.netns()])
            .arg(service_binary())
            .args(args)
            .args(["--iface", &link.outer])
            .arg("--probe")
            .arg(format!("unix:{}", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while chaingate_agent::launcher::probe_socket(&sock, Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "the service did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (service, sock)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn frame(i: u8) -> Vec<u8> {
    udp(
        (Ipv4Addr::new(10, 0, 0, i), 1000),
        (Ipv4Addr::new(192, 0, 2, 1), 53),
        true,
        &[i; 900],
    )
}

#[test]
fn frames_come_back_stamped_and_capped() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let link = topo.link("svc").unwrap();
    let (_service, sock) = start(
        &topo,
        &link,
        &["monitor", "--stamp", "513", "--cap", "1Mbit"],
    );
    let mut port = AfPacket::open(&link.inner, 2048).unwrap();

    // A few frames, well under the cap: each comes back with 513 stamped.
    let sent: Vec<Vec<u8>> = (1..=5).map(frame).collect();
    let back = exchange(&mut port, &sent, Duration::from_secs(5));
    assert_eq!(back.len(), sent.len());
    for (b, s) in back.iter().zip(&sent) {
        let (ids, body) = stamp::read(b).expect("a trace trailer");
        assert_eq!(ids, [513]);
        assert_eq!(&b[..body], &s[..], "the frame itself is unchanged");
    }

    // A burst far over 1 Mbit/s: the bucket (10 ms at the rate, at least
    // one jumbo frame: 9216 bytes) lets about ten of these through.
    std::thread::sleep(Duration::from_millis(200));
    let burst: Vec<Vec<u8>> = (0..100).map(|i| frame(100 + (i % 100) as u8)).collect();
    let back = exchange(&mut port, &burst, Duration::from_secs(2));
    assert!(
        (5..=20).contains(&back.len()),
        "{} of 100 came back",
        back.len()
    );
    let answer = chaingate_agent::launcher::probe_socket(&sock, Duration::from_secs(1)).unwrap();
    let capped: u64 = answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("capped="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(capped, 100 - back.len() as u64, "{answer}");

    // The monitor's per-flow counts: one line per flow it passed.
    let flows = ask_flows(&sock);
    let total: u64 = flows
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("frames=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 5 + back.len() as u64, "{flows:?}");
    let first = format!(
        "17 10.0.0.1:1000 192.0.2.1:53 frames=1 bytes={}",
        frame(1).len()
    );
    assert!(flows.contains(&first), "{flows:?}");
    let _ = std::fs::remove_file(&sock);
}

/// The monitor's `flows` answer: its flow lines.
fn ask_flows(sock: &std::path::Path) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::os::unix::net::UnixStream::connect(sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    (&stream).write_all(b"flows\n").unwrap();
    let mut lines = BufReader::new(&stream).lines();
    let head = lines.next().unwrap().unwrap();
    let n: usize = head
        .strip_prefix("flows ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a flows answer: {head}"));
    lines.take(n).map(Result::unwrap).collect()
}

#[test]
fn the_firewall_and_the_ids_drop_what_they_must() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let fw_link = topo.link("fw").unwrap();
    let ids_link = topo.link("ids").unwrap();
    let (_fw, _) = start(
        &topo,
        &fw_link,
        &[
            "firewall",
            "--rule",
            "deny udp port 23",
            "--default",
            "allow",
        ],
    );
    let (_ids, _) = start(
        &topo,
        &ids_link,
        &["ids", "--signature", "EVIL", "--mode", "drop"],
    );
    let client = |port: u16, payload: &[u8]| {
        udp(
            (Ipv4Addr::new(10, 0, 0, 9), 4000),
            (Ipv4Addr::new(192, 0, 2, 1), port),
            true,
            payload,
        )
    };

    let mut fw = AfPacket::open(&fw_link.inner, 2048).unwrap();
    let back = exchange(
        &mut fw,
        &[client(23, b"telnet"), client(53, b"dns")],
        Duration::from_secs(2),
    );
    assert_eq!(back, [client(53, b"dns")], "port 23 denied, 53 allowed");

    let mut ids = AfPacket::open(&ids_link.inner, 2048).unwrap();
    let back = exchange(
        &mut ids,
        &[client(80, b"GET /EVIL"), client(80, b"GET /ok")],
        Duration::from_secs(2),
    );
    assert_eq!(
        back,
        [client(80, b"GET /ok")],
        "the signature's frame dropped"
    );
}
