//! The traffic tool itself (`chaingate-traffic`), on two links joined by
//! the kernel with nothing between them: everything arrives, whole and
//! in order, TCP connections open and close, answers come back; with the
//! links apart, it says that everything was lost.

use std::process::Command;

use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::Topology;
use chaingate_hw_tests::workspace_binary;
use serde_json::Value;

fn traffic(lan: &str, wan: &str, args: &[&str]) -> (i32, Value) {
    let out = Command::new(workspace_binary("chaingate-hw-tests", "chaingate-traffic"))
        .args(["--lan", lan, "--wan", wan, "--json"])
        .args(args)
        .output()
        .expect("chaingate-traffic runs");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn the_tool_sees_what_the_wire_did() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let lan = topo.link("lan").unwrap();
    let wan = topo.link("wan").unwrap();
    let ns = topo.netns().to_owned();
    let (l, w) = (format!("{ns}:{}", lan.outer), format!("{ns}:{}", wan.outer));

    // Apart: every frame lost, exit 3.
    let (code, out) = traffic(
        &l,
        &w,
        &["--flows", "2", "--packets", "5", "--settle", "200ms"],
    );
    assert_eq!(code, 3);
    assert_eq!(out["forward"]["lost"], 10);
    assert_eq!(out["forward"]["frames"], 0);

    // Joined: TCP, echoed; all there, in order, unchanged, no stamps.
    topo.cross_connect(&lan.inner, &wan.inner).unwrap();
    let (code, out) = traffic(
        &l,
        &w,
        &[
            "--tcp",
            "--flows",
            "4",
            "--clients",
            "2",
            "--packets",
            "50",
            "--echo",
            "--size",
            "700",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["opened"], 4);
    for side in ["forward", "back"] {
        let s = &out[side];
        assert_eq!(s["frames"], 200, "{side}: {s}");
        assert_eq!(
            (s["lost"].as_u64(), s["corrupt"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(s["reordered"], 0);
        assert_eq!(
            s["stamps"],
            serde_json::json!([{ "instances": [], "frames": 200 }])
        );
        assert!(s["latency_ns"]["p50"].as_u64().is_some_and(|n| n > 0));
    }
    let addresses = out["forward"]["addresses"].as_array().unwrap();
    assert!(
        addresses
            .iter()
            .any(|a| a == "10.0.0.2:10001 -> 192.0.2.10:80"),
        "{addresses:?}"
    );
}

#[test]
fn bad_arguments_are_named() {
    let out = Command::new(workspace_binary("chaingate-hw-tests", "chaingate-traffic"))
        .args(["--lan", "ns:", "--wan", "x"])
        .output()
        .expect("chaingate-traffic runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[NETNS:]IFACE"));
    let out = Command::new(workspace_binary("chaingate-hw-tests", "chaingate-traffic"))
        .args(["--lan", "a", "--wan", "b", "--settle", "soon"])
        .output()
        .expect("chaingate-traffic runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
}
