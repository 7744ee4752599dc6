//! The kernel's kTLS socket options (`linux/tls.h`), which the `libc` crate does not carry.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use rustls::{ConnectionTrafficSecrets, ProtocolVersion};
use zeroize::Zeroizing;

pub const SOL_TLS: libc::c_int = 282;
pub const TLS_TX: libc::c_int = 1;
pub const TLS_RX: libc::c_int = 2;
/// cmsg type carrying a record's content type (sent with `sendmsg`, received with `recvmsg`).
pub const TLS_SET_RECORD_TYPE: libc::c_int = 1;
pub const TLS_GET_RECORD_TYPE: libc::c_int = 2;

const TLS_1_2_VERSION: u16 = 0x0303;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;
const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// Which direction of the socket a crypto state is installed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Tx,
    Rx,
}

impl Direction {
    fn optname(self) -> libc::c_int {
        match self {
            Direction::Tx => TLS_TX,
            Direction::Rx => TLS_RX,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Tx => "TLS_TX",
            Direction::Rx => "TLS_RX",
        }
    }
}

/// The cipher suites the kernel can run, as cork names them in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelCipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl KernelCipher {
    pub fn of(secrets: &ConnectionTrafficSecrets) -> Option<Self> {
        match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { .. } => Some(Self::Aes128Gcm),
            ConnectionTrafficSecrets::Aes256Gcm { .. } => Some(Self::Aes256Gcm),
            ConnectionTrafficSecrets::Chacha20Poly1305 { .. } => Some(Self::Chacha20Poly1305),
            _ => None,
        }
    }

    /// The size of this cipher's `tls12_crypto_info_*` struct.
    pub(crate) fn info_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 40,
            Self::Aes256Gcm | Self::Chacha20Poly1305 => 56,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm | Self::Chacha20Poly1305 => 32,
        }
    }
}

/// The kernel's numbering of a protocol version, or `None` for one it has no kTLS for.
pub fn kernel_version(version: ProtocolVersion) -> Option<u16> {
    match version {
        ProtocolVersion::TLSv1_2 => Some(TLS_1_2_VERSION),
        ProtocolVersion::TLSv1_3 => Some(TLS_1_3_VERSION),
        _ => None,
    }
}

/// Serialises a `tls12_crypto_info_*` struct. Every field after the two `u16`s is a byte array,
/// so the C layout is the plain concatenation: `{version, cipher, iv, key, salt, rec_seq}`.
/// For AES-GCM rustls's 12-byte IV is the kernel's 4-byte salt followed by its 8-byte IV;
/// ChaCha20-Poly1305 has no salt and a 12-byte IV.
pub(crate) fn crypto_info(version: u16, cipher: KernelCipher, key: &[u8], iv: &[u8], seq: u64) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(56));
    out.extend_from_slice(&version.to_ne_bytes());
    let (kind, salt, iv) = match cipher {
        KernelCipher::Aes128Gcm => (TLS_CIPHER_AES_GCM_128, &iv[..4], &iv[4..]),
        KernelCipher::Aes256Gcm => (TLS_CIPHER_AES_GCM_256, &iv[..4], &iv[4..]),
        KernelCipher::Chacha20Poly1305 => (TLS_CIPHER_CHACHA20_POLY1305, &iv[..0], iv),
    };
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(iv);
    out.extend_from_slice(key);
    out.extend_from_slice(salt);
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

fn setsockopt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is a live buffer of the length passed; the kernel copies it.
    let rc = unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as libc::socklen_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Attaches the "tls" upper-layer protocol to a connected TCP socket.
pub fn attach_ulp(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt(sock.as_raw_fd(), libc::SOL_TCP, libc::TCP_ULP, b"tls")
}

/// Installs one direction's traffic key.
pub fn install(sock: &impl AsRawFd, dir: Direction, version: u16, seq: u64, secrets: &ConnectionTrafficSecrets) -> io::Result<()> {
    let Some(cipher) = KernelCipher::of(secrets) else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "cipher suite has no kTLS equivalent"));
    };
    let (key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key.as_ref(), iv.as_ref()),
        _ => unreachable!("KernelCipher::of accepted it"),
    };
    let info = crypto_info(version, cipher, key, iv, seq);
    setsockopt(sock.as_raw_fd(), SOL_TLS, dir.optname(), &info)
}

/// Installs an all-zero key of `cipher`: the kernel checks only that it can instantiate the
/// cipher, which is what a trial on a scratch socket needs to know.
pub fn install_dummy(sock: &impl AsRawFd, dir: Direction, version: u16, cipher: KernelCipher) -> io::Result<()> {
    let key = vec![0u8; cipher.key_len()];
    let info = crypto_info(version, cipher, &key, &[0u8; 12], 0);
    setsockopt(sock.as_raw_fd(), SOL_TLS, dir.optname(), &info)
}

/// The record sequence number the kernel will use next for sending: how many records went out
/// under the current send key. `getsockopt(TLS_TX)` returns the whole crypto state (the
/// cipher's `tls12_crypto_info_*`, key included, sequence in its last eight bytes); the copy
/// is wiped here.
pub fn tx_record_seq(sock: &impl AsRawFd, cipher: KernelCipher) -> io::Result<u64> {
    let mut info = Zeroizing::new([0u8; 64]);
    // The kernel wants exactly the size of the cipher's struct.
    let size = cipher.info_len();
    let mut len = size as libc::socklen_t;
    // SAFETY: `info` is a live buffer of `len` bytes; the kernel writes at most that many and
    // stores the length it wrote in `len`.
    let rc = unsafe { libc::getsockopt(sock.as_raw_fd(), SOL_TLS, TLS_TX, info.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = len as usize;
    if len != size {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("getsockopt(TLS_TX) returned {len} bytes")));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&info[len - 8..len]);
    Ok(u64::from_be_bytes(seq))
}
