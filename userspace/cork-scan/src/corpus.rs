//! Deterministic benchmark corpus: mixed prose, JSON, HTML and base64 with secrets planted at
//! known offsets (feature `corpus`).

use crate::template::{expand, Rng};

/// A generated corpus and where its secrets are.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub bytes: Vec<u8>,
    /// `(rule id, byte range)` of every planted secret.
    pub planted: Vec<(&'static str, std::ops::Range<usize>)>,
}

const PROSE: &[&str] = &[
    "The committee reviewed the quarterly results and agreed to revisit the budget next month. ",
    "Rivers carry sediment downstream, slowly reshaping valleys over thousands of years. ",
    "Please find attached the meeting notes; action items are listed at the end of the document. ",
    "In 2023 the team shipped 14 releases, fixed 312 bugs and closed 1,204 support tickets. ",
];

fn json_record(rng: &mut Rng, i: usize) -> String {
    format!(
        "{{\"id\":{i},\"uuid\":\"{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}\",\"name\":\"user{}\",\"email\":\"user{}@example.com\",\"active\":{},\"score\":{}.{},\"tags\":[\"alpha\",\"beta\"],\"created\":\"2024-0{}-1{}T10:2{}:00Z\"}}\n",
        rng.next_u64() as u32, rng.next_u64() as u16, rng.below(4096), rng.below(4096), rng.next_u64() & 0xffff_ffff_ffff,
        rng.below(100_000), rng.below(100_000), rng.below(2) == 1, rng.below(1000), rng.below(100), 1 + rng.below(9), rng.below(10), rng.below(10)
    )
}

fn html_block(rng: &mut Rng) -> String {
    format!(
        "<div class=\"card\"><a href=\"https://www.example.com/articles/{}\">Read more</a><p style=\"color:#333\">{}</p></div>\n",
        rng.below(100_000),
        PROSE[rng.below(PROSE.len())]
    )
}

fn base64_blob(rng: &mut Rng) -> String {
    use base64::Engine as _;
    let n = 300 + rng.below(1200);
    let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    format!("\"attachment\":\"{}\"\n", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The kinds of piece a corpus mixes, for a corpus of one kind ([`generate_only`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Prose,
    Json,
    Html,
    Base64,
}

/// Builds about `size` bytes; plants one secret every `every` bytes on average from the rule
/// examples (expanded with the generator), skipping rules without examples.
pub fn generate(size: usize, every: usize, seed: u64) -> Corpus {
    generate_only(size, every, seed, None)
}

/// [`generate`] with every piece of the kind `only`, if given (the same draws otherwise: a
/// piece's text and the planted secrets come out as in the mix), to see what one kind costs.
pub fn generate_only(size: usize, every: usize, seed: u64, only: Option<Piece>) -> Corpus {
    let mut rng = Rng::new(seed);
    let examples: Vec<(&'static str, &'static str)> = crate::rules()
        .filter(|r| !r.optional)
        .flat_map(|r| r.examples.iter().map(move |e| (r.id, *e)))
        .collect();
    let mut bytes = Vec::with_capacity(size + 4096);
    let mut planted = Vec::new();
    let mut next_plant = every / 2;
    let mut i = 0;
    while bytes.len() < size {
        let drawn = match rng.below(10) {
            0..=2 => Piece::Prose,
            3..=5 => Piece::Json,
            6..=8 => Piece::Html,
            _ => Piece::Base64,
        };
        let piece = match only.unwrap_or(drawn) {
            Piece::Prose => PROSE[rng.below(PROSE.len())].to_string(),
            Piece::Json => json_record(&mut rng, i),
            Piece::Html => html_block(&mut rng),
            Piece::Base64 => base64_blob(&mut rng),
        };
        bytes.extend_from_slice(piece.as_bytes());
        i += 1;
        if bytes.len() >= next_plant && !examples.is_empty() {
            let (id, tmpl) = examples[rng.below(examples.len())];
            let secret = expand(tmpl, &mut rng);
            bytes.extend_from_slice(b"\n");
            let start = bytes.len();
            bytes.extend_from_slice(secret.as_bytes());
            planted.push((id, start..bytes.len()));
            bytes.extend_from_slice(b"\n");
            next_plant += every;
        }
    }
    Corpus { bytes, planted }
}
