//! WebSocket framing (RFC 6455), free of I/O.
//!
//! [`parse_header`] reads one frame header from the front of a buffer and checks everything that
//! can be checked before the payload arrives: reserved bits, opcodes, masking for the sender's
//! role, control-frame rules and the size limit. [`Assembler`] follows the message sequence
//! (fragments with control frames between them) and validates the UTF-8 of text messages as
//! their fragments arrive. [`close_frame`] and [`encode_frame`] build frames to send.
//!
//! cork negotiates no extension, so every reserved bit must be clear: a compressed frame is an
//! error here rather than a payload that would pass unscanned.

/// Who sent a frame: clients must mask, servers must not (RFC 6455 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }

    pub fn name(self) -> &'static str {
        match self {
            Opcode::Continuation => "continuation",
            Opcode::Text => "text",
            Opcode::Binary => "binary",
            Opcode::Close => "close",
            Opcode::Ping => "ping",
            Opcode::Pong => "pong",
        }
    }
}

/// Close codes cork sends (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Why a frame or message was refused. Each maps to the close code the peer is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("reserved bits {0:#05b} set, but no extension was negotiated")]
    ReservedBits(u8),
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("client frame is not masked")]
    UnmaskedClientFrame,
    #[error("server frame is masked")]
    MaskedServerFrame,
    #[error("{0} frame is fragmented")]
    FragmentedControl(&'static str),
    #[error("{0} frame has a {1}-byte payload; control frames carry at most 125")]
    ControlTooLong(&'static str, u64),
    #[error("64-bit payload length has its most significant bit set")]
    LengthHighBit,
    #[error("frame payload of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge { len: u64, limit: u64 },
    #[error("message of more than {limit} bytes")]
    MessageTooLarge { limit: u64 },
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new {0} message while a fragmented message is unfinished")]
    UnfinishedMessage(&'static str),
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("close frame has a 1-byte payload")]
    CloseTooShort,
    #[error("close frame carries invalid code {0}")]
    InvalidCloseCode(u16),
}

impl WsError {
    /// The close code that tells the peer why.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::FrameTooLarge { .. } | WsError::MessageTooLarge { .. } => close_code::MESSAGE_TOO_BIG,
            WsError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            _ => close_code::PROTOCOL_ERROR,
        }
    }

    /// A short audit rule id.
    pub fn rule(&self) -> &'static str {
        match self {
            WsError::FrameTooLarge { .. } | WsError::MessageTooLarge { .. } => "websocket.message_too_big",
            WsError::InvalidUtf8 => "websocket.invalid_utf8",
            WsError::ReservedBits(_) => "websocket.unnegotiated_extension",
            _ => "websocket.protocol_error",
        }
    }
}

/// One parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes of the header itself (2 to 14).
    pub header_len: usize,
}

impl FrameHeader {
    /// Header plus payload, in bytes.
    pub fn frame_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

/// Parses the frame header at the front of `buf`. `Ok(None)` means more bytes are needed.
/// `max_payload` bounds a single frame's payload (control frames are bounded at 125 anyway).
pub fn parse_header(buf: &[u8], sender: Role, max_payload: u64) -> Result<Option<FrameHeader>, WsError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    if rsv != 0 {
        return Err(WsError::ReservedBits(rsv));
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsError::UnknownOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    match (sender, masked) {
        (Role::Client, false) => return Err(WsError::UnmaskedClientFrame),
        (Role::Server, true) => return Err(WsError::MaskedServerFrame),
        _ => {}
    }
    let short = u64::from(b1 & 0x7F);
    if opcode.is_control() {
        if !fin {
            return Err(WsError::FragmentedControl(opcode.name()));
        }
        if short > 125 {
            // The extended length is not needed to refuse it; report the 7-bit marker's meaning.
            let len = extended_len(buf, short).map_or(short, |(len, _)| len);
            return Err(WsError::ControlTooLong(opcode.name(), len));
        }
    }
    let Some((payload_len, len_bytes)) = extended_len(buf, short) else { return Ok(None) };
    if payload_len >> 63 != 0 {
        return Err(WsError::LengthHighBit);
    }
    if payload_len > max_payload {
        return Err(WsError::FrameTooLarge { len: payload_len, limit: max_payload });
    }
    let mask_at = 2 + len_bytes;
    let mask = if masked {
        let Some(key) = buf.get(mask_at..mask_at + 4) else { return Ok(None) };
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    let header_len = mask_at + if masked { 4 } else { 0 };
    Ok(Some(FrameHeader { fin, opcode, mask, payload_len, header_len }))
}

/// The payload length and how many extended-length bytes carry it, once they have arrived.
fn extended_len(buf: &[u8], short: u64) -> Option<(u64, usize)> {
    match short {
        126 => buf.get(2..4).map(|b| (u64::from(u16::from_be_bytes([b[0], b[1]])), 2)),
        127 => buf.get(2..10).map(|b| (u64::from_be_bytes(b.try_into().expect("8 bytes")), 8)),
        n => Some((n, 0)),
    }
}

/// XORs `data` with the masking key; `offset` is where `data` starts within the payload, so a
/// payload can be unmasked in pieces.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: u64) {
    let start = (offset % 4) as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[(start + i) % 4];
    }
}

/// What a frame is within the message sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRole {
    /// A control frame, complete in itself (possibly between fragments of a data message).
    Control(Opcode),
    /// A fragment of a data message (`Text` or `Binary`); `last` when it completes the message.
    Data { kind: Opcode, first: bool, last: bool },
}

/// Follows the sequence of frames in one direction: which message a frame belongs to, the
/// message size limit, and UTF-8 validity of text messages across fragment boundaries.
#[derive(Debug)]
pub struct Assembler {
    max_message: u64,
    current: Option<Opcode>,
    message_len: u64,
    utf8: Utf8Validator,
}

impl Assembler {
    pub fn new(max_message: u64) -> Self {
        Self { max_message, current: None, message_len: 0, utf8: Utf8Validator::default() }
    }

    /// Whether a fragmented message has started and not yet finished.
    pub fn in_message(&self) -> bool {
        self.current.is_some()
    }

    /// Places a frame in the sequence, given its header, before its payload is read.
    pub fn begin_frame(&mut self, header: &FrameHeader) -> Result<FrameRole, WsError> {
        if header.opcode.is_control() {
            return Ok(FrameRole::Control(header.opcode));
        }
        let (kind, first) = match (header.opcode, self.current) {
            (Opcode::Continuation, Some(kind)) => (kind, false),
            (Opcode::Continuation, None) => return Err(WsError::UnexpectedContinuation),
            (op, None) => (op, true),
            (op, Some(_)) => return Err(WsError::UnfinishedMessage(op.name())),
        };
        if first {
            self.message_len = 0;
            self.utf8 = Utf8Validator::default();
        }
        self.message_len = self.message_len.saturating_add(header.payload_len);
        if self.message_len > self.max_message {
            return Err(WsError::MessageTooLarge { limit: self.max_message });
        }
        self.current = if header.fin { None } else { Some(kind) };
        Ok(FrameRole::Data { kind, first, last: header.fin })
    }

    /// Checks an unmasked piece of a data frame's payload (text messages must be UTF-8).
    pub fn payload(&mut self, role: FrameRole, data: &[u8]) -> Result<(), WsError> {
        if let FrameRole::Data { kind: Opcode::Text, .. } = role {
            self.utf8.push(data)?;
        }
        Ok(())
    }

    /// Called once a frame's whole payload went through [`Assembler::payload`].
    pub fn end_frame(&mut self, role: FrameRole) -> Result<(), WsError> {
        if let FrameRole::Data { kind: Opcode::Text, last: true, .. } = role {
            self.utf8.finish()?;
        }
        Ok(())
    }
}

/// Incremental UTF-8 validation: a character may be split between two pushes.
#[derive(Debug, Default)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

/// How many bytes a UTF-8 sequence starting with `lead` has, if `lead` can start one.
fn utf8_width(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7F => Some(1),
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

impl Utf8Validator {
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), WsError> {
        if self.pending_len > 0 {
            let width = utf8_width(self.pending[0]).ok_or(WsError::InvalidUtf8)?;
            while self.pending_len < width && !data.is_empty() {
                self.pending[self.pending_len] = data[0];
                self.pending_len += 1;
                data = &data[1..];
            }
            match std::str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                // Still incomplete but a valid prefix so far: wait for more.
                Err(e) if e.error_len().is_none() => return Ok(()),
                Err(_) => return Err(WsError::InvalidUtf8),
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                Ok(())
            }
            Err(_) => Err(WsError::InvalidUtf8),
        }
    }

    /// The message ended: no character may be left unfinished.
    pub fn finish(&mut self) -> Result<(), WsError> {
        if self.pending_len > 0 {
            self.pending_len = 0;
            return Err(WsError::InvalidUtf8);
        }
        Ok(())
    }
}

/// Checks a close frame's (unmasked) payload: empty, or a valid code and UTF-8 reason.
pub fn check_close_payload(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::CloseTooShort),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(WsError::InvalidCloseCode(code));
            }
            std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Encodes one frame. `mask` must be `Some` for frames sent to a server.
pub fn encode_frame(fin: bool, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = out.len() + if mask.is_some() { 4 } else { 0 };
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
    out
}

/// A close frame with `code` and a reason cut to fit the 125-byte control payload (at a
/// character boundary, so the reason stays valid UTF-8).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(true, Opcode::Close, &payload, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
    const BIG: u64 = 1 << 20;

    fn client(fin: bool, op: Opcode, payload: &[u8]) -> Vec<u8> {
        encode_frame(fin, op, payload, Some(KEY))
    }

    fn header(buf: &[u8], role: Role) -> Result<Option<FrameHeader>, WsError> {
        parse_header(buf, role, BIG)
    }

    #[test]
    fn short_lengths() {
        let f = encode_frame(true, Opcode::Text, b"hi", None);
        let h = header(&f, Role::Server).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.payload_len, h.header_len, h.mask), (true, Opcode::Text, 2, 2, None));
    }

    #[test]
    fn sixteen_bit_length() {
        let f = encode_frame(true, Opcode::Binary, &[7; 300], None);
        let h = header(&f, Role::Server).unwrap().unwrap();
        assert_eq!((h.payload_len, h.header_len), (300, 4));
        assert_eq!(h.frame_len(), f.len() as u64);
    }

    #[test]
    fn sixty_four_bit_length() {
        let f = encode_frame(true, Opcode::Binary, &vec![0; 70_000], Some(KEY));
        let h = header(&f, Role::Client).unwrap().unwrap();
        assert_eq!((h.payload_len, h.header_len, h.mask), (70_000, 14, Some(KEY)));
    }

    #[test]
    fn non_minimal_length_is_accepted() {
        // RFC 6455 asks senders for the minimal encoding; receivers need not insist.
        let buf = [0x82, 126, 0, 5, 1, 2, 3, 4, 5];
        assert_eq!(header(&buf, Role::Server).unwrap().unwrap().payload_len, 5);
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let f = encode_frame(true, Opcode::Binary, &vec![0; 70_000], Some(KEY));
        for n in 0..14 {
            assert_eq!(header(&f[..n], Role::Client), Ok(None), "{n} bytes");
        }
        assert!(header(&f[..14], Role::Client).unwrap().is_some());
    }

    #[test]
    fn masking_roles() {
        assert_eq!(header(&encode_frame(true, Opcode::Text, b"x", None), Role::Client), Err(WsError::UnmaskedClientFrame));
        assert_eq!(header(&client(true, Opcode::Text, b"x"), Role::Server), Err(WsError::MaskedServerFrame));
    }

    #[test]
    fn reserved_bits_are_refused() {
        for rsv in [0x40u8, 0x20, 0x10, 0x70] {
            let mut f = client(true, Opcode::Text, b"x");
            f[0] |= rsv;
            assert_eq!(header(&f, Role::Client), Err(WsError::ReservedBits(rsv >> 4)), "{rsv:#x}");
        }
    }

    #[test]
    fn unknown_opcodes() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(header(&[0x80 | op, 0x80, 1, 2, 3, 4], Role::Client), Err(WsError::UnknownOpcode(op)));
        }
    }

    #[test]
    fn control_frames_are_small_and_whole() {
        assert_eq!(header(&client(false, Opcode::Ping, b"x"), Role::Client), Err(WsError::FragmentedControl("ping")));
        assert_eq!(header(&client(true, Opcode::Pong, &[0; 126]), Role::Client), Err(WsError::ControlTooLong("pong", 126)));
        assert_eq!(header(&[0x88, 127], Role::Server), Err(WsError::ControlTooLong("close", 127)));
        assert!(header(&client(true, Opcode::Ping, &[0; 125]), Role::Client).unwrap().is_some());
    }

    #[test]
    fn frame_size_limit() {
        let f = encode_frame(true, Opcode::Binary, &[0; 2000], None);
        assert_eq!(parse_header(&f, Role::Server, 1999), Err(WsError::FrameTooLarge { len: 2000, limit: 1999 }));
        assert!(parse_header(&f, Role::Server, 2000).unwrap().is_some());
        // A huge claimed length is refused from the header alone.
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(parse_header(&huge, Role::Server, BIG), Err(WsError::FrameTooLarge { len: 1 << 40, limit: BIG }));
    }

    #[test]
    fn length_high_bit() {
        let mut f = vec![0x82, 127];
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&f, Role::Server, u64::MAX), Err(WsError::LengthHighBit));
    }

    #[test]
    fn masking_round_trip_in_pieces() {
        let f = client(true, Opcode::Text, b"hello world");
        let h = header(&f, Role::Client).unwrap().unwrap();
        let mut payload = f[h.header_len..].to_vec();
        let (a, b) = payload.split_at_mut(5);
        apply_mask(a, KEY, 0);
        apply_mask(b, KEY, 5);
        assert_eq!(payload, b"hello world");
    }

    fn run(asm: &mut Assembler, frames: &[(bool, Opcode, &[u8])]) -> Result<Vec<FrameRole>, WsError> {
        let mut roles = Vec::new();
        for (fin, op, payload) in frames {
            let h = FrameHeader { fin: *fin, opcode: *op, mask: None, payload_len: payload.len() as u64, header_len: 2 };
            let role = asm.begin_frame(&h)?;
            asm.payload(role, payload)?;
            asm.end_frame(role)?;
            roles.push(role);
        }
        Ok(roles)
    }

    #[test]
    fn single_frame_messages() {
        let mut a = Assembler::new(BIG);
        let roles = run(&mut a, &[(true, Opcode::Text, b"a"), (true, Opcode::Binary, &[0xFF])]).unwrap();
        assert_eq!(roles[0], FrameRole::Data { kind: Opcode::Text, first: true, last: true });
        assert_eq!(roles[1], FrameRole::Data { kind: Opcode::Binary, first: true, last: true });
        assert!(!a.in_message());
    }

    #[test]
    fn fragments_with_interleaved_control() {
        let mut a = Assembler::new(BIG);
        let roles = run(
            &mut a,
            &[(false, Opcode::Text, b"ab"), (true, Opcode::Ping, b"p"), (false, Opcode::Continuation, b"cd"), (true, Opcode::Continuation, b"ef")],
        )
        .unwrap();
        assert_eq!(roles[1], FrameRole::Control(Opcode::Ping));
        assert_eq!(roles[2], FrameRole::Data { kind: Opcode::Text, first: false, last: false });
        assert_eq!(roles[3], FrameRole::Data { kind: Opcode::Text, first: false, last: true });
    }

    #[test]
    fn continuation_without_start() {
        assert_eq!(run(&mut Assembler::new(BIG), &[(true, Opcode::Continuation, b"x")]), Err(WsError::UnexpectedContinuation));
    }

    #[test]
    fn new_message_inside_a_fragmented_one() {
        let r = run(&mut Assembler::new(BIG), &[(false, Opcode::Binary, b"x"), (true, Opcode::Text, b"y")]);
        assert_eq!(r, Err(WsError::UnfinishedMessage("text")));
    }

    #[test]
    fn message_limit_counts_all_fragments() {
        let r = run(&mut Assembler::new(5), &[(false, Opcode::Binary, b"abc"), (true, Opcode::Continuation, b"def")]);
        assert_eq!(r, Err(WsError::MessageTooLarge { limit: 5 }));
        // The count starts again with the next message.
        let mut a = Assembler::new(5);
        run(&mut a, &[(false, Opcode::Binary, b"abc"), (true, Opcode::Continuation, b"de")]).unwrap();
        run(&mut a, &[(true, Opcode::Binary, b"abcde")]).unwrap();
    }

    #[test]
    fn utf8_split_across_fragments() {
        let snowman = "☃".as_bytes();
        let r = run(&mut Assembler::new(BIG), &[(false, Opcode::Text, &snowman[..1]), (false, Opcode::Continuation, &snowman[1..2]), (true, Opcode::Continuation, &snowman[2..])]);
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn invalid_utf8_is_refused() {
        for bad in [&b"\xFF"[..], b"\xC0\x80", b"\xED\xA0\x80", b"a\xE2\x28\xA1", b"\xF5\x80\x80\x80"] {
            assert_eq!(run(&mut Assembler::new(BIG), &[(true, Opcode::Text, bad)]), Err(WsError::InvalidUtf8), "{bad:?}");
        }
    }

    #[test]
    fn truncated_utf8_at_message_end() {
        assert_eq!(run(&mut Assembler::new(BIG), &[(true, Opcode::Text, &"é".as_bytes()[..1])]), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_split_across_fragments() {
        let r = run(&mut Assembler::new(BIG), &[(false, Opcode::Text, b"\xE2"), (true, Opcode::Continuation, b"\x28\xA1")]);
        assert_eq!(r, Err(WsError::InvalidUtf8));
    }

    #[test]
    fn binary_messages_are_not_utf8_checked() {
        assert!(run(&mut Assembler::new(BIG), &[(true, Opcode::Binary, b"\xFF\xFE")]).is_ok());
    }

    #[test]
    fn utf8_validator_byte_by_byte() {
        let text = "aé☃😀z".as_bytes();
        let mut v = Utf8Validator::default();
        for b in text {
            v.push(std::slice::from_ref(b)).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn close_payloads() {
        assert_eq!(check_close_payload(b""), Ok(None));
        assert_eq!(check_close_payload(b"\x03"), Err(WsError::CloseTooShort));
        assert_eq!(check_close_payload(b"\x03\xe8bye"), Ok(Some(1000)));
        assert_eq!(check_close_payload(b"\x03\xed"), Err(WsError::InvalidCloseCode(1005)));
        assert_eq!(check_close_payload(b"\x03\xe8\xFF"), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn close_frame_reason_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let f = close_frame(close_code::POLICY_VIOLATION, &reason, None);
        let h = header(&f, Role::Server).unwrap().unwrap();
        assert!(h.payload_len <= 125);
        let payload = &f[h.header_len..];
        assert_eq!(check_close_payload(payload), Ok(Some(1008)));
    }

    #[test]
    fn masked_close_frame() {
        let f = close_frame(1008, "blocked", Some(KEY));
        let h = header(&f, Role::Client).unwrap().unwrap();
        let mut payload = f[h.header_len..].to_vec();
        apply_mask(&mut payload, KEY, 0);
        assert_eq!(&payload[..2], &1008u16.to_be_bytes());
        assert_eq!(&payload[2..], b"blocked");
    }

    #[test]
    fn error_close_codes() {
        assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
        assert_eq!(WsError::FrameTooLarge { len: 1, limit: 0 }.close_code(), 1009);
        assert_eq!(WsError::ReservedBits(4).close_code(), 1002);
    }
}
