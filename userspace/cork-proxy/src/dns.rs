//! The DNS guard: a small UDP resolver that a bottle's UDP/53 is rewritten to.
//!
//! It answers only names the host rules allow (on any of `hosts.ports`), from `upstream.resolve`
//! pins when there is one, else by forwarding the query to the host's own resolver (the first
//! `nameserver` of /etc/resolv.conf). Every other name is answered NXDOMAIN. A name whose
//! subdomain labels look like encoded data (`cork_scan::url::scan_hostname`, the same check as
//! the scanner's `dns.label_exfil` rule) is answered REFUSED even when its suffix is allowed: the
//! query itself would carry the data out. Every query is audited (kind `dns`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cork_policy::{normalize_host, HostRules, HostVerdict};
use simple_dns::rdata::{RData, A, AAAA};
use simple_dns::{Packet, PacketFlag, ResourceRecord, CLASS, OPCODE, QCLASS, QTYPE, RCODE, TYPE};
use tokio::net::UdpSocket;

use crate::audit::{AuditRecord, Verdict};
use crate::inspect::record_block;
use crate::state::ProxyState;

/// TTL of answers built from pins: short, so a policy reload takes effect quickly.
const PIN_TTL: u32 = 5;
/// How long a forwarded query may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest datagram read (EDNS clients advertise up to 4096).
const MAX_DATAGRAM: usize = 4096;

/// What the guard decided for one query, before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer with these addresses (possibly none: NODATA).
    Answer(Vec<IpAddr>),
    /// Ask the host's resolver and relay its answer.
    Forward,
    /// Answer with this code; rule and reason go to the audit log.
    Refuse { rcode: RefuseCode, rule: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    NxDomain,
    Refused,
    FormErr,
}

impl RefuseCode {
    fn rcode(self) -> RCODE {
        match self {
            RefuseCode::NxDomain => RCODE::NameError,
            RefuseCode::Refused => RCODE::Refused,
            RefuseCode::FormErr => RCODE::FormatError,
        }
    }
}

/// Whether the host rules allow `name` on any allowed port (DNS carries no port).
fn name_verdict(hosts: &HostRules, name: &str) -> HostVerdict {
    let mut first_block = None;
    for &port in hosts.ports.iter().chain(hosts.ports.is_empty().then_some(&443)) {
        match hosts.check(name, port) {
            HostVerdict::Block { rule, reason } => {
                first_block.get_or_insert(HostVerdict::Block { rule, reason });
            }
            allowed => return allowed,
        }
    }
    first_block.unwrap_or(HostVerdict::Block { rule: "host.not_allowed".into(), reason: format!("{name} is not allowed") })
}

/// The policy decision for one question, free of I/O.
pub fn decide(policy: &cork_policy::Policy, name: &str, qtype: QTYPE) -> Decision {
    let name = normalize_host(name);
    if name.is_empty() {
        return Decision::Refuse { rcode: RefuseCode::Refused, rule: "dns.root".into(), reason: "queries for the root are refused".into() };
    }
    // Exfiltration through labels is refused first: the name never reaches any resolver.
    if let Some(found) = cork_scan::url::scan_hostname(&name) {
        return Decision::Refuse {
            rcode: RefuseCode::Refused,
            rule: "dns.label_exfil".into(),
            reason: format!("{} in label {:?} (entropy {:.2})", found.reason, found.label, found.entropy),
        };
    }
    if let HostVerdict::Block { rule, reason } = name_verdict(&policy.hosts, &name) {
        return Decision::Refuse { rcode: RefuseCode::NxDomain, rule, reason };
    }
    let wanted = match qtype {
        QTYPE::TYPE(TYPE::A) => Some(false),
        QTYPE::TYPE(TYPE::AAAA) => Some(true),
        QTYPE::ANY => None,
        // Other types of an allowed name: answered empty (NODATA), never forwarded, so no TXT or
        // NULL record can become a side channel.
        _ => return Decision::Answer(Vec::new()),
    };
    if let Some(ip) = policy.upstream.resolve.get(&name) {
        let keep = match wanted {
            Some(v6) => ip.is_ipv6() == v6,
            None => true,
        };
        return Decision::Answer(if keep { vec![*ip] } else { Vec::new() });
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Decision::Answer(vec![ip]);
    }
    if wanted.is_none() {
        return Decision::Answer(Vec::new());
    }
    Decision::Forward
}

/// The host's resolver: the first `nameserver` line of /etc/resolv.conf.
pub fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver")).then(|| words.next()?.parse::<IpAddr>().ok()).flatten().map(|ip| SocketAddr::new(ip, 53))
    })
}

fn qtype_name(qtype: QTYPE) -> String {
    match qtype {
        QTYPE::TYPE(t) => format!("{t:?}"),
        other => format!("{other:?}"),
    }
}

/// A reply to `query` with `rcode`, echoing its question.
fn reply(query: &Packet<'_>, rcode: RCODE, answers: Vec<IpAddr>) -> Option<Vec<u8>> {
    let mut out = Packet::new_reply(query.id());
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        out.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    out.set_flags(PacketFlag::RECURSION_AVAILABLE);
    *out.rcode_mut() = rcode;
    if let Some(q) = query.questions.first() {
        out.questions.push(q.clone());
        for ip in answers {
            let rdata = match ip {
                IpAddr::V4(v4) => RData::A(A::from(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA::from(v6)),
            };
            out.answers.push(ResourceRecord::new(q.qname.clone(), CLASS::IN, PIN_TTL, rdata));
        }
    }
    out.build_bytes_vec().ok()
}

/// A FORMERR for bytes that did not parse, when at least the id is there.
fn formerr(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 2 {
        return None;
    }
    let mut out = Packet::new_reply(u16::from_be_bytes([raw[0], raw[1]]));
    *out.rcode_mut() = RCODE::FormatError;
    out.build_bytes_vec().ok()
}

/// Serves queries on `socket` until the task is dropped.
pub async fn serve(socket: UdpSocket, state: Arc<ProxyState>) {
    let socket = Arc::new(socket);
    let upstream = system_resolver();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(error = %e, "DNS guard: receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let raw = buf[..n].to_vec();
        let (socket, state) = (socket.clone(), state.clone());
        tokio::spawn(async move { answer(&socket, &state, peer, &raw, upstream).await });
    }
}

async fn answer(socket: &UdpSocket, state: &ProxyState, peer: SocketAddr, raw: &[u8], upstream: Option<SocketAddr>) {
    let started = Instant::now();
    let snap = state.snapshot();
    state.metrics.connection("dns");
    let mut record = AuditRecord::new(&state.instance, "dns", state.next_request_id(), peer.to_string());
    let query = match Packet::parse(raw) {
        Ok(q) => q,
        Err(e) => {
            record_block(&mut record, cork_policy::Mode::Enforce, "dns.malformed", format!("not a DNS query: {e}"));
            state.metrics.error("dns.malformed");
            if let Some(bytes) = formerr(raw) {
                let _ = socket.send_to(&bytes, peer).await;
            }
            state.audit.write(&record);
            return;
        }
    };
    let decision = if query.has_flags(PacketFlag::RESPONSE) || query.opcode() != OPCODE::StandardQuery || query.questions.len() != 1 {
        Decision::Refuse {
            rcode: RefuseCode::Refused,
            rule: "dns.unsupported".into(),
            reason: "only standard queries with one question are answered".into(),
        }
    } else {
        let q = &query.questions[0];
        record.host = Some(normalize_host(&q.qname.to_string()));
        record.method = Some(qtype_name(q.qtype));
        if q.qclass != QCLASS::CLASS(CLASS::IN) {
            Decision::Refuse { rcode: RefuseCode::Refused, rule: "dns.unsupported".into(), reason: "only class IN is answered".into() }
        } else {
            decide(&snap.policy, &q.qname.to_string(), q.qtype)
        }
    };
    let response = match decision {
        Decision::Answer(ips) => {
            record.reason = Some(if ips.is_empty() { "answered without records".into() } else { format!("answered {ips:?}") });
            record.status = Some(0);
            reply(&query, RCODE::NoError, ips)
        }
        Decision::Refuse { rcode, rule, reason } => {
            record_block(&mut record, cork_policy::Mode::Enforce, &rule, reason);
            record.status = Some(rcode.rcode() as u16);
            state.metrics.error(&rule);
            reply(&query, rcode.rcode(), Vec::new())
        }
        Decision::Forward => match forward(raw, upstream).await {
            Ok(bytes) => {
                record.reason = Some(format!("forwarded to {}", upstream.map(|u| u.to_string()).unwrap_or_default()));
                record.status = Some(bytes.get(3).map(|b| u16::from(b & 0x0f)).unwrap_or(0));
                Some(bytes)
            }
            Err(e) => {
                record.verdict = Verdict::Block;
                record.rules.push("dns.upstream".into());
                record.reason = Some(e);
                record.status = Some(RCODE::ServerFailure as u16);
                reply(&query, RCODE::ServerFailure, Vec::new())
            }
        },
    };
    if let Some(bytes) = response {
        record.bytes_down = bytes.len() as u64;
        if let Err(e) = socket.send_to(&bytes, peer).await {
            tracing::debug!(error = %e, %peer, "DNS guard: reply failed");
        }
    }
    record.bytes_up = raw.len() as u64;
    record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    state.audit.write(&record);
}

/// Sends the query as is to the host's resolver and returns its answer (same id).
async fn forward(raw: &[u8], upstream: Option<SocketAddr>) -> Result<Vec<u8>, String> {
    let upstream = upstream.ok_or("no nameserver in /etc/resolv.conf")?;
    let bind: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let attempt = async {
        let sock: UdpSocket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
        sock.connect(upstream).await.map_err(|e| e.to_string())?;
        sock.send(raw).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Only an answer to this query's id is relayed.
            if n >= 2 && buf[..2] == raw[..2] {
                return Ok::<Vec<u8>, String>(buf[..n].to_vec());
            }
        }
    };
    match tokio::time::timeout(FORWARD_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|e| format!("forwarding to {upstream} failed: {e}")),
        Err(_) => Err(format!("{upstream} did not answer in time")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> cork_policy::Policy {
        let mut p = cork_policy::Policy::embedded_default();
        p.hosts.allow = vec!["origin.test".into(), "*.exfil.test".into()];
        p.hosts.block = vec!["bad.exfil.test".into()];
        p.upstream.resolve.insert("origin.test".into(), "127.0.0.2".parse().unwrap());
        p
    }

    #[test]
    fn pins_answer_allowed_names_by_family() {
        let p = policy();
        assert_eq!(decide(&p, "Origin.Test.", QTYPE::TYPE(TYPE::A)), Decision::Answer(vec!["127.0.0.2".parse().unwrap()]));
        assert_eq!(decide(&p, "origin.test", QTYPE::TYPE(TYPE::AAAA)), Decision::Answer(vec![]));
        assert_eq!(decide(&p, "origin.test", QTYPE::TYPE(TYPE::TXT)), Decision::Answer(vec![]));
        assert_eq!(decide(&p, "a.exfil.test", QTYPE::TYPE(TYPE::A)), Decision::Forward);
    }

    #[test]
    fn disallowed_blocked_and_exfil_names_are_refused() {
        let p = policy();
        assert!(matches!(decide(&p, "evil.test", QTYPE::TYPE(TYPE::A)), Decision::Refuse { rcode: RefuseCode::NxDomain, .. }));
        assert!(matches!(decide(&p, "bad.exfil.test", QTYPE::TYPE(TYPE::A)), Decision::Refuse { rcode: RefuseCode::NxDomain, ref rule, .. } if rule == "host.blocklist"));
        let exfil = "4a6f686e20536d6974682c2070617373776f72643a2068756e746572.exfil.test";
        assert!(matches!(decide(&p, exfil, QTYPE::TYPE(TYPE::A)), Decision::Refuse { rcode: RefuseCode::Refused, ref rule, .. } if rule == "dns.label_exfil"));
    }

    #[test]
    fn replies_parse_back() {
        let mut q = Packet::new_query(0x1234);
        q.questions.push(simple_dns::Question::new(simple_dns::Name::new_unchecked("origin.test"), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
        let raw = q.build_bytes_vec().unwrap();
        let parsed = Packet::parse(&raw).unwrap();
        let bytes = reply(&parsed, RCODE::NoError, vec!["127.0.0.2".parse().unwrap()]).unwrap();
        let back = Packet::parse(&bytes).unwrap();
        assert_eq!(back.id(), 0x1234);
        assert_eq!(back.answers.len(), 1);
        assert!(matches!(back.answers[0].rdata, RData::A(ref a) if a.address == u32::from(std::net::Ipv4Addr::new(127, 0, 0, 2))));
        assert_eq!(formerr(&[0xab]), None);
        assert_eq!(Packet::parse(&formerr(&[0xab, 0xcd, 0xff]).unwrap()).unwrap().rcode(), RCODE::FormatError);
    }
}
