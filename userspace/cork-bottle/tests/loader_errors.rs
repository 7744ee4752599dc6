//! Bad input to the loader: clear errors, nothing left behind. No traffic is sent here.
use std::path::PathBuf;

use cork_bottle::{bottles_parent, Bottle, BottleConfig, BottleError, ObjectSource};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn invalid_names_are_refused_before_anything_is_created() {
    for name in ["", "../escape", "a/b", "sp ace", &"x".repeat(65)] {
        match Bottle::create(name, BottleConfig::default()) {
            Err(BottleError::InvalidName(got)) => assert_eq!(got, name),
            other => panic!("{name:?}: expected InvalidName, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_object_file_is_a_clear_error() {
    let config = BottleConfig {
        object: ObjectSource::Path(PathBuf::from("/nonexistent/cork-bottle-ebpf")),
        ..BottleConfig::default()
    };
    let err = Bottle::create("missing-object", config).unwrap_err();
    assert!(matches!(err, BottleError::ObjectRead { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/cork-bottle-ebpf"),
        "{err}"
    );
}

#[test]
fn a_corrupt_object_fails_to_load_and_leaves_no_cgroup_or_pins() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        println!("SKIPPED: needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("cork-bottle-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let object = dir.join("not-elf.o");
    std::fs::write(&object, b"\x7fELF but not really an object").unwrap();
    let bpffs_root = PathBuf::from(cork_bottle::DEFAULT_BPFFS_ROOT);
    let name = format!("corrupt-{}", std::process::id());
    let config = BottleConfig {
        object: ObjectSource::Path(object),
        ..BottleConfig::default()
    };
    let err = Bottle::create(&name, config).unwrap_err();
    assert!(matches!(err, BottleError::Load(_)), "{err:?}");
    assert!(
        !bottles_parent().unwrap().join(&name).exists(),
        "cgroup left behind"
    );
    assert!(
        !bpffs_root.join(&name).exists(),
        "pin directory left behind"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
