//! A TLS handshake that ends in a [`KernelConnection`], so the kernel can be rekeyed later.
//!
//! rustls hands out a `KernelConnection` (the only way to follow a TLS 1.3 KeyUpdate once the
//! records are in the kernel) from its unbuffered connections alone. [`Handshake`] drives one,
//! sans-I/O: the caller reads whole TLS records into `incoming`, calls [`Handshake::advance`],
//! writes what it appended to `outgoing`, and repeats until [`Progress::Done`]. Reading one
//! record at a time is what keeps every byte after the handshake in the socket for the kernel.
//!
//! [`KernelConnection`]: rustls::kernel::KernelConnection

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::CommonState;

/// What the handshake needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Send what was appended to `outgoing`, then read one more record into `incoming`.
    NeedRecord,
    /// The handshake is over and everything rustls had to send is in `outgoing`.
    Done,
}

/// Why a handshake cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the peer closed the connection during the handshake")]
    PeerClosed,
    #[error("application data arrived before the handshake finished")]
    EarlyData,
    #[error("{0} bytes arrived after the last handshake record; the kernel would never see them")]
    TrailingBytes(usize),
}

/// An unbuffered rustls connection during its handshake, either side.
pub enum Handshake {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// Runs rustls over `incoming` until it blocks or finishes; one expansion per side, because
/// the two unbuffered connection types share no trait.
macro_rules! advance_side {
    ($conn:expr, $incoming:expr, $outgoing:expr) => {{
        let conn = $conn;
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut $incoming[..]);
            let step = match state {
                Err(e) => Err(HandshakeError::Tls(e)),
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let start = $outgoing.len();
                    let written = match encode.encode(&mut []) {
                        Err(EncodeError::InsufficientSize(need)) => {
                            $outgoing.resize(start + need.required_size, 0);
                            encode.encode(&mut $outgoing[start..]).map_err(|e| HandshakeError::Tls(rustls::Error::General(e.to_string())))
                        }
                        Ok(n) => Ok(n),
                        Err(e) => Err(HandshakeError::Tls(rustls::Error::General(e.to_string()))),
                    };
                    written.map(|n| {
                        $outgoing.truncate(start + n);
                        None
                    })
                }
                // The caller sends `outgoing` before it reads again.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Progress::NeedRecord)),
                // A server may write (0.5-RTT) before the client's Finished; that is not the end.
                Ok(ConnectionState::WriteTraffic(_)) => Ok(Some(if conn.is_handshaking() { Progress::NeedRecord } else { Progress::Done })),
                Ok(ConnectionState::ReadTraffic(_)) | Ok(ConnectionState::ReadEarlyData(_)) => Err(HandshakeError::EarlyData),
                Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => Err(HandshakeError::PeerClosed),
                Ok(_) => Err(HandshakeError::Tls(rustls::Error::General("rustls reached a connection state cork does not know".into()))),
            };
            $incoming.drain(..discard);
            match step {
                Ok(None) => continue,
                Ok(Some(Progress::Done)) if !$incoming.is_empty() => break Err(HandshakeError::TrailingBytes($incoming.len())),
                Ok(Some(progress)) => break Ok(progress),
                Err(e) => {
                    // Queue the alert rustls prepared, if any, so the peer learns why.
                    if let UnbufferedStatus { state: Ok(ConnectionState::EncodeTlsData(mut alert)), .. } = conn.process_tls_records(&mut []) {
                        let start = $outgoing.len();
                        $outgoing.resize(start + 64, 0);
                        let n = alert.encode(&mut $outgoing[start..]).unwrap_or(0);
                        $outgoing.truncate(start + n);
                    }
                    break Err(e);
                }
            }
        }
    }};
}

impl Handshake {
    /// Feeds rustls the records in `incoming` (consumed as rustls takes them) and appends to
    /// `outgoing` every record it wants sent. On an error, `outgoing` may hold an alert worth
    /// sending before closing.
    pub fn advance(&mut self, incoming: &mut Vec<u8>, outgoing: &mut Vec<u8>) -> Result<Progress, HandshakeError> {
        match self {
            Handshake::Client(conn) => advance_side!(conn, incoming, outgoing),
            Handshake::Server(conn) => advance_side!(conn, incoming, outgoing),
        }
    }

    /// The negotiated state: version, cipher suite, ALPN protocol, peer certificates.
    pub fn common(&self) -> &CommonState {
        match self {
            Handshake::Client(conn) => conn,
            Handshake::Server(conn) => conn,
        }
    }

    pub fn is_client(&self) -> bool {
        matches!(self, Handshake::Client(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rcgen::{CertifiedKey, KeyPair};
    use rustls::crypto::ring::default_provider;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ConnectionTrafficSecrets, RootCertStore, ServerConfig};

    fn configs(alpn: &[&[u8]]) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key: KeyPair = signing_key;
        let provider = Arc::new(default_provider());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
            .unwrap();
        server.enable_secret_extraction = true;
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let mut client = ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots).with_no_client_auth();
        client.enable_secret_extraction = true;
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        (Arc::new(server), Arc::new(client))
    }

    /// Splits `wire` into whole TLS records.
    fn records(wire: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = wire;
        while rest.len() >= 5 {
            let len = 5 + u16::from_be_bytes([rest[3], rest[4]]) as usize;
            out.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
        assert!(rest.is_empty(), "a partial record on the wire");
        out
    }

    fn key_bytes(secrets: &ConnectionTrafficSecrets) -> Vec<u8> {
        match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } | ConnectionTrafficSecrets::Aes256Gcm { key, iv } | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                [key.as_ref(), iv.as_ref()].concat()
            }
            _ => panic!("unexpected cipher"),
        }
    }

    /// Both sides driven one record at a time, as cork drives them on sockets: each reaches
    /// `Done` with nothing left over, agrees on ALPN, and the kernel connections they become
    /// derive matching keys, before and after a key update in each direction.
    #[test]
    fn both_sides_finish_record_by_record_and_rekey_in_step() {
        let (server_cfg, client_cfg) = configs(&[b"h2", b"http/1.1"]);
        let mut client = Handshake::Client(UnbufferedClientConnection::new(client_cfg, ServerName::try_from("localhost").unwrap()).unwrap());
        let mut server = Handshake::Server(UnbufferedServerConnection::new(server_cfg).unwrap());
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        let mut incoming = Vec::new();
        assert_eq!(client.advance(&mut incoming, &mut to_server).unwrap(), Progress::NeedRecord);
        let (mut client_done, mut server_done) = (false, false);
        for _round in 0..10 {
            for record in records(&std::mem::take(&mut to_server)) {
                assert!(!server_done, "the server got a record after it finished");
                incoming.extend_from_slice(&record);
                server_done = server.advance(&mut incoming, &mut to_client).unwrap() == Progress::Done;
            }
            for record in records(&std::mem::take(&mut to_client)) {
                if client_done {
                    // Session tickets after the handshake belong to the kernel's stream.
                    assert_eq!(record[0], 23, "only encrypted records follow the client's Finished");
                    continue;
                }
                incoming.extend_from_slice(&record);
                client_done = client.advance(&mut incoming, &mut to_server).unwrap() == Progress::Done;
            }
            if client_done && server_done && to_server.is_empty() {
                break;
            }
        }
        assert!(client_done && server_done, "the handshake did not finish");
        assert_eq!(client.common().alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(server.common().alpn_protocol(), Some(&b"h2"[..]));

        let (Handshake::Client(client), Handshake::Server(server)) = (client, server) else { unreachable!() };
        let (client_secrets, mut client_kernel) = client.dangerous_into_kernel_connection().unwrap();
        let (server_secrets, mut server_kernel) = server.dangerous_into_kernel_connection().unwrap();
        assert_eq!(key_bytes(&client_secrets.tx.1), key_bytes(&server_secrets.rx.1));
        assert_eq!(key_bytes(&client_secrets.rx.1), key_bytes(&server_secrets.tx.1));
        let (seq, client_tx) = client_kernel.update_tx_secret().unwrap();
        assert_eq!(seq, 0);
        let (_, server_rx) = server_kernel.update_rx_secret().unwrap();
        assert_eq!(key_bytes(&client_tx), key_bytes(&server_rx));
        assert_ne!(key_bytes(&client_tx), key_bytes(&client_secrets.tx.1), "a key update must change the key");
        let (_, server_tx) = server_kernel.update_tx_secret().unwrap();
        let (_, client_rx) = client_kernel.update_rx_secret().unwrap();
        assert_eq!(key_bytes(&server_tx), key_bytes(&client_rx));
    }

    /// A client whose server certificate does not verify stops with an error and an alert.
    #[test]
    fn a_failed_handshake_queues_an_alert() {
        let (server_cfg, _) = configs(&[]);
        let (_, other_client_cfg) = configs(&[]);
        let mut client = Handshake::Client(UnbufferedClientConnection::new(other_client_cfg, ServerName::try_from("localhost").unwrap()).unwrap());
        let mut server = Handshake::Server(UnbufferedServerConnection::new(server_cfg).unwrap());
        let (mut to_server, mut to_client, mut incoming) = (Vec::new(), Vec::new(), Vec::new());
        client.advance(&mut incoming, &mut to_server).unwrap();
        for record in records(&std::mem::take(&mut to_server)) {
            incoming.extend_from_slice(&record);
            server.advance(&mut incoming, &mut to_client).unwrap();
        }
        let mut result = Ok(Progress::NeedRecord);
        for record in records(&std::mem::take(&mut to_client)) {
            incoming.extend_from_slice(&record);
            to_server.clear();
            result = client.advance(&mut incoming, &mut to_server);
            if result.is_err() {
                break;
            }
        }
        let err = result.expect_err("an unknown certificate must fail the handshake");
        assert!(err.to_string().contains("certificate"), "{err}");
        // TLS 1.3 sends it under the handshake keys, as an application-data record.
        let sent = records(&to_server);
        assert!(matches!(sent.last().map(|r| r[0]), Some(21 | 23)), "an alert record should be queued for the server: {sent:?}");
    }
}
