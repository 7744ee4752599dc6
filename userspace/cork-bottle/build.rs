//! Embeds the eBPF object when it has been built (`cargo xtask build-ebpf`), so the loader works
//! from a single binary. Without it the crate still builds; `Bottle::create` then reports
//! `BottleError::ObjectMissing` unless `CORK_BOTTLE_EBPF_OBJECT` names an object at run time.
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cork_bottle_embedded)");
    println!("cargo::rerun-if-env-changed=CORK_BOTTLE_EBPF_OBJECT");
    let object = match std::env::var_os("CORK_BOTTLE_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
            .join("../../target/bpf/bpfel-unknown-none/release/cork-bottle-ebpf"),
    };
    println!("cargo::rerun-if-changed={}", object.display());
    if object.is_file() {
        let object = object
            .canonicalize()
            .expect("an existing file canonicalizes");
        println!("cargo::rustc-cfg=cork_bottle_embedded");
        println!(
            "cargo::rustc-env=CORK_BOTTLE_EBPF_EMBEDDED={}",
            object.display()
        );
    } else {
        println!(
            "cargo::warning=eBPF object {} not built (run `cargo xtask build-ebpf`); cork-bottle builds without it",
            object.display()
        );
    }
}
