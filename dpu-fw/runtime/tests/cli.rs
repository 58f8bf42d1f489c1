//! `dpu-fw flows` as an operator runs it: on files and pipes, on captures
//! with other link types, on broken files and wrong paths.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use support::Ng;

mod support;

fn dpu_fw(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dpu-fw"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn prints_the_sample_as_documented() {
    let out = dpu_fw(&["flows", "samples/mixed.pcap"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../samples/mixed.flows.jsonl"
    ))
    .unwrap();
    assert_eq!(text(&out.stdout), text(&expected));
    assert!(out.stderr.is_empty());
    let first: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["frame"], 1);
    assert_eq!(first["key"]["vlan"][0], 100);
}

#[test]
fn reads_standard_input() {
    let capture = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../samples/mixed.pcap"
    ))
    .unwrap();
    let out = dpu_fw(&["flows", "-"], Some(&capture));
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).lines().count(), 19);
}

#[test]
fn other_link_types_are_skipped_with_a_note_and_numbering_continues() {
    let eth = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../samples/mixed.pcap"
    ))
    .unwrap();
    let first_frame = &eth[24 + 16..24 + 16 + 58];
    let mut ng = Ng::section(false, Vec::new());
    ng.interface(113).interface(1);
    ng.enhanced(0, &[0u8; 30], 30)
        .enhanced(0, &[0u8; 30], 30)
        .enhanced(1, first_frame, 58);
    let out = dpu_fw(&["flows", "-"], Some(&ng.out));
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["frame"], 3, "skipped frames keep their numbers");
    let notes = text(&out.stderr);
    assert!(
        notes.contains("frame 1: link type 113 is not Ethernet"),
        "{notes}"
    );
    assert!(
        notes.contains("2 frame(s) of link type 113 skipped"),
        "{notes}"
    );
}

#[test]
fn a_truncated_capture_prints_what_it_has_and_fails() {
    let capture = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../samples/mixed.pcap"
    ))
    .unwrap();
    let out = dpu_fw(&["flows", "-"], Some(&capture[..capture.len() - 3]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).lines().count(), 18);
    let err = text(&out.stderr);
    assert!(err.contains("capture ends inside record"), "{err}");
    assert!(err.contains("the 18 frame(s) before were printed"), "{err}");
}

#[test]
fn wrong_inputs_get_clear_errors() {
    let out = dpu_fw(&["flows", "no/such/file.pcap"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot open no/such/file.pcap"),
        "{}",
        text(&out.stderr)
    );

    let out = dpu_fw(&["flows", "Cargo.toml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Cargo.toml: not a pcap or pcapng capture"),
        "{}",
        text(&out.stderr)
    );

    let out = dpu_fw(&["flows"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("<CAPTURE>"));
}

#[test]
fn help_explains_the_output() {
    let out = dpu_fw(&["flows", "--help"], None);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("pcapng") && help.contains("\"error\""),
        "{help}"
    );
    let out = dpu_fw(&["--help"], None);
    assert!(text(&out.stdout).contains("flows"));
}
