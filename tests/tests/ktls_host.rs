//! kTLS as the real cork binary reports it, on whatever kernel runs the tests. The kTLS data
//! path itself needs a kernel with CONFIG_TLS and is proven in the VM (`cargo xtask vm`); here
//! the start-up line, `/status` and `/metrics` must agree with each other, and a bumped
//! connection must work either way.

use cork_tests::*;

fn ktls_line(cork: &Cork) -> String {
    cork.stdout.iter().find(|l| l.starts_with("ktls: ")).cloned().unwrap_or_else(|| panic!("no ktls: start-up line in {:#?}", cork.stdout))
}

#[test]
fn startup_line_status_and_metrics_agree_and_bumping_works() {
    let origin = Origin::start(&TEST_NAMES);
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let line = ktls_line(&cork);
    // /status also carries the io_uring line, in start-up order.
    let uring = cork.stdout.iter().find(|l| l.starts_with("io_uring: ")).unwrap_or_else(|| panic!("no io_uring: start-up line in {:#?}", cork.stdout));
    assert_eq!(cork.admin_get("/status"), format!("{line}\n{uring}\n"));
    let supported = line.starts_with("ktls: supported");
    assert!(supported || line.starts_with("ktls: unsupported ("), "{line}");
    assert_eq!(cork.metric("cork_ktls_supported"), u64::from(supported), "{line}");

    let url = format!("https://origin.test:{}/bytes/300000", origin.https.port());
    let out = curl(&cork, &["--http1.1", "-o", "/dev/null", "-w", "%{size_download}", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "300000");
    let legs: u64 = ["client", "upstream"]
        .iter()
        .flat_map(|leg| ["kernel", "userspace"].map(|r| cork.metric(&format!("cork_ktls_legs_total{{leg=\"{leg}\",result=\"{r}\"}}"))))
        .sum();
    // Without kTLS nothing is tried, so nothing is counted; with it, both legs are judged.
    assert_eq!(legs, if supported { 2 } else { 0 }, "{line}\n{}", cork.admin_get("/metrics"));
}

#[test]
fn the_policy_can_switch_ktls_off() {
    let origin = Origin::start(&TEST_NAMES);
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", "limits:\n  ktls: off\n"));
    let line = ktls_line(&cork);
    assert!(line == "ktls: supported, switched off by policy (limits.ktls: off)" || line.starts_with("ktls: unsupported ("), "{line}");
    let url = format!("https://origin.test:{}/bytes/1000", origin.https.port());
    let out = curl(&cork, &["--http1.1", "-o", "/dev/null", "-w", "%{size_download}", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cork.metric("cork_ktls_legs_total{leg=\"client\",result=\"kernel\"}"), 0);
}
