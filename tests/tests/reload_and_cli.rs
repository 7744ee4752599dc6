//! Policy reload on SIGHUP, and the `cork config` and `cork --help` commands.

use std::process::Command;

use cork_tests::*;

#[test]
fn sighup_reloads_the_policy_without_dropping_connections() {
    let origin = Origin::start(&TEST_NAMES);
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let base = format!("https://origin.test:{}", origin.https.port());
    let other = format!("https://other.test:{}/text/reloaded", origin.https.port());
    assert!(!curl(&cork, &[&other]).status.success(), "other.test starts out refused");

    // A keep-alive session is open across the reload and must keep working on the same connection.
    let mut session = python()
        .arg(clients_dir().join("keepalive_session.py"))
        .arg(&base)
        .env("HTTPS_PROXY", cork.proxy_url())
        .env("REQUESTS_CA_BUNDLE", cork.ca_bundle())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(session.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "first 200");

    std::fs::write(cork.policy_path(), policy_for(&origin, &["origin.test", "other.test"], "", "")).unwrap();
    cork.proc.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cork.metric("cork_policy_reloads_total") < 1 {
        assert!(std::time::Instant::now() < deadline, "no reload: {}", cork.proc.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::io::Write::write_all(session.stdin.as_mut().unwrap(), b"go\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "second 200");
    assert!(session.wait().unwrap().success());
    let reqs: Vec<_> = cork.audit().into_iter().filter(|r| r["kind"] == "request" && r["host"] == "origin.test").collect();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0]["client"], reqs[1]["client"], "the session's connection survived the reload");

    let out = curl(&cork, &[&other]);
    assert_eq!(out.stdout, b"reloaded", "{}", text(&out));

    // An invalid policy is refused and the running one stays.
    std::fs::write(cork.policy_path(), "hosts: [not, a, mapping\n").unwrap();
    cork.proc.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cork.proc.stderr().contains("policy reload failed") {
        assert!(std::time::Instant::now() < deadline, "{}", cork.proc.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(curl(&cork, &[&other]).stdout, b"reloaded");
}

#[test]
fn config_init_writes_a_policy_that_config_check_accepts() {
    let dir = TempDir::new("config");
    let file = dir.path().join("cork.yaml");
    let out = run(Command::new(binary("cork")).args(["config", "init"]).arg(&file));
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("api.anthropic.com") && written.contains("# "), "commented default");
    let again = run(Command::new(binary("cork")).args(["config", "init"]).arg(&file));
    assert!(!again.status.success(), "no silent overwrite");
    let check = run(Command::new(binary("cork")).args(["config", "check"]).arg(&file));
    assert!(check.status.success(), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("ok"));
}

#[test]
fn config_check_reports_line_and_column() {
    let dir = TempDir::new("config");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "mode: enforce\nhosts:\n  allow: [a.test]\n  alow: [b.test]\n").unwrap();
    let out = run(Command::new(binary("cork")).args(["config", "check"]).arg(&file));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:", file.display())), "{err}");
    assert!(err.contains("alow"), "{err}");
}

#[test]
fn help_documents_every_subcommand() {
    let out = run(Command::new(binary("cork")).arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "config", "scan"] {
        assert!(help.contains(cmd), "{help}");
    }
    let run_help = run(Command::new(binary("cork")).args(["run", "--help"]));
    let run_help = String::from_utf8_lossy(&run_help.stdout);
    for flag in ["--listen", "--admin", "--config", "--state-dir"] {
        assert!(run_help.contains(flag), "{run_help}");
    }
}
