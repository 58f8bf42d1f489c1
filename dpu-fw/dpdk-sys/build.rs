//! Generates bindings to the system's DPDK with bindgen and builds the C
//! shim, when the `bindings` feature is on (see Cargo.toml).
//!
//! The compiler flags are pkg-config's raw output: DPDK needs
//! `-include rte_config.h` and `-march=...`, which the pkg-config crate
//! would drop. `rte_flow_item_*_mask` are `static const` in the header, not
//! symbols: they are left out (masks are built in Rust).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "bindings")]
    bindings::generate();
}

#[cfg(feature = "bindings")]
mod bindings {
    use std::path::PathBuf;
    use std::process::Command;

    fn pkg_config(arg: &str) -> Vec<String> {
        let out = Command::new("pkg-config")
            .args([arg, "libdpdk"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run pkg-config ({e}): install pkg-config"));
        assert!(
            out.status.success(),
            "pkg-config finds no libdpdk: install libdpdk-dev (DPDK 22.11): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    pub(super) fn generate() {
        println!("cargo:rerun-if-changed=csrc");
        let version = Command::new("pkg-config")
            .args(["--modversion", "libdpdk"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if !version.starts_with("22.11") {
            println!(
                "cargo:warning=DPDK {version} found; chaingate is built and tested against 22.11"
            );
        }
        let cflags = pkg_config("--cflags");
        let mut build = cc::Build::new();
        build.file("csrc/shim.c").include("csrc").warnings(false);
        for f in &cflags {
            build.flag(f);
        }
        build.compile("chaingate_dpdk_shim");

        for lib in pkg_config("--libs") {
            if let Some(dir) = lib.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            }
        }
        // Only what the bindings call; each brings its own dependencies.
        for lib in ["rte_ethdev", "rte_mbuf", "rte_mempool", "rte_eal"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }

        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        bindgen::Builder::default()
            .header("csrc/wrapper.h")
            .clang_args(&cflags)
            .clang_arg("-Icsrc")
            .clang_arg("-DALLOW_EXPERIMENTAL_API")
            .allowlist_function("rte_(eal|eth|flow|pktmbuf|mempool|mtr|dev|lcore|socket|strerror).*|cg_.*")
            .allowlist_type("rte_flow.*|rte_eth.*|rte_mbuf|rte_mempool|rte_ether.*|rte_(ipv4|ipv6|tcp|udp|icmp|vxlan|vlan)_hdr|rte_mtr.*")
            .allowlist_var("RTE_(MAX_ETHPORTS|ETH_NAME_MAX_LEN|MBUF_DEFAULT_BUF_SIZE|PKTMBUF_HEADROOM)")
            .blocklist_item("rte_flow_item_.*_mask")
            .derive_default(true)
            .derive_debug(false)
            .wrap_unsafe_ops(true)
            .layout_tests(false)
            .generate_comments(false)
            .prepend_enum_name(false)
            .generate()
            .expect("bindgen over the DPDK headers")
            .write_to_file(out.join("bindings.rs"))
            .expect("write the bindings");
    }
}
