//! OpenAI CLIP's byte-pair-encoding tokenizer (`SimpleTokenizer` semantics).
//!
//! The vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT licence),
//! vendored in this crate's `data/` folder and embedded in the binary; it is
//! decompressed once when a tokenizer is built. The encoder is built exactly
//! as OpenAI's `SimpleTokenizer` builds it: the 256 byte symbols, the same
//! symbols with `</w>` (end of word), one entry per merge (the first 48 894
//! merge lines after the header), then `<|startoftext|>` (49406) and
//! `<|endoftext|>` (49407): 49 408 tokens.
//!
//! Text cleaning follows `SimpleTokenizer.encode` without `ftfy` (which has
//! no Rust counterpart): HTML entities are unescaped twice (the common named
//! entities and every numeric one, see [`html_unescape`]), whitespace runs
//! collapse to one space, the text is trimmed and lower-cased. Text that
//! `ftfy.fix_text` would repair (mojibake, for instance) is tokenized as it is.

use std::collections::HashMap;
use std::io::Read;

use regex::Regex;

use super::ClipError;

/// The compressed vocabulary file, as distributed with OpenAI's CLIP.
static VOCAB_GZ: &[u8] = include_bytes!("../../data/bpe_simple_vocab_16e6.txt.gz");

/// Number of merge lines used, as in `SimpleTokenizer`: `49152 - 256 - 2`.
pub const NUM_MERGES: usize = 48_894;
/// Id of `<|startoftext|>`.
pub const START_OF_TEXT: u32 = 49_406;
/// Id of `<|endoftext|>`.
pub const END_OF_TEXT: u32 = 49_407;
/// Vocabulary size (256 bytes, 256 end-of-word bytes, merges, 2 specials).
pub const VOCAB_SIZE: usize = 49_408;
/// CLIP's text context length.
pub const CONTEXT_LENGTH: usize = 77;

/// OpenAI's pre-tokenisation pattern (case-insensitive, as in `SimpleTokenizer`).
const PATTERN: &str = r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// How a tokenized text is filled up to the context length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// Pad with id 0, as OpenAI's `clip.tokenize` and open_clip do.
    #[default]
    Zeros,
    /// Pad with `<|endoftext|>` (49407), as Hugging Face's `CLIPTokenizer`
    /// does with `padding="max_length"` for the OpenAI checkpoints.
    EndOfText,
}

/// The CLIP BPE tokenizer.
pub struct ClipTokenizer {
    /// Token string -> id.
    encoder: HashMap<String, u32>,
    /// Id -> token string.
    decoder: Vec<String>,
    /// `(left id, right id)` -> `(merge rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Byte -> printable unicode stand-in (GPT-2's `bytes_to_unicode`).
    byte_encoder: [char; 256],
    /// Inverse of `byte_encoder`.
    byte_decoder: HashMap<char, u8>,
    /// Id of each byte symbol (without and with `</w>`).
    byte_ids: [u32; 256],
    byte_word_end_ids: [u32; 256],
    pattern: Regex,
    whitespace: Regex,
}

/// GPT-2's reversible map from bytes to printable characters: printable
/// Latin-1 bytes map to themselves, the others to U+0100 onwards, in order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    for b in 0u32..256 {
        let code = if printable(b) {
            b
        } else {
            next += 1;
            255 + next
        };
        table[b as usize] = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    table
}

/// The order in which `SimpleTokenizer` lists the byte symbols in its
/// vocabulary: printable bytes first, then the others.
fn byte_vocab_order() -> Vec<u8> {
    let printable = |b: u8| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut order: Vec<u8> = (0u8..=255).filter(|&b| printable(b)).collect();
    order.extend((0u8..=255).filter(|&b| !printable(b)));
    order
}

impl ClipTokenizer {
    /// Builds the tokenizer from the embedded OpenAI vocabulary.
    pub fn new() -> Result<Self, ClipError> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .map_err(|e| {
                ClipError::Tokenizer(format!("embedded BPE vocabulary is unreadable: {e}"))
            })?;
        Self::from_merges_text(&text)
    }

    /// Builds the tokenizer from the text of a `bpe_simple_vocab_16e6.txt`
    /// file (header line, then one merge `left right` per line).
    pub fn from_merges_text(text: &str) -> Result<Self, ClipError> {
        let byte_encoder = bytes_to_unicode();
        let mut vocab: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
        let order = byte_vocab_order();
        for &b in &order {
            vocab.push(byte_encoder[b as usize].to_string());
        }
        for &b in &order {
            vocab.push(format!("{}</w>", byte_encoder[b as usize]));
        }
        let lines: Vec<&str> = text.split('\n').skip(1).take(NUM_MERGES).collect();
        if lines.len() != NUM_MERGES {
            return Err(ClipError::Tokenizer(format!(
                "BPE vocabulary has {} merge lines, expected {NUM_MERGES}",
                lines.len()
            )));
        }
        let mut merge_pairs = Vec::with_capacity(NUM_MERGES);
        for (i, line) in lines.iter().enumerate() {
            let mut parts = line.split_whitespace();
            let (Some(left), Some(right), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(ClipError::Tokenizer(format!(
                    "BPE merge line {} is malformed: {line:?}",
                    i + 2
                )));
            };
            vocab.push(format!("{left}{right}"));
            merge_pairs.push((left, right));
        }
        vocab.push("<|startoftext|>".to_string());
        vocab.push("<|endoftext|>".to_string());
        // Like Python's `dict(zip(vocab, range(len(vocab))))`: a repeated
        // string keeps its last id.
        let mut encoder = HashMap::with_capacity(vocab.len());
        for (id, token) in vocab.iter().enumerate() {
            encoder.insert(token.clone(), id as u32);
        }
        let lookup = |s: &str| {
            encoder.get(s).copied().ok_or_else(|| {
                ClipError::Tokenizer(format!("BPE symbol {s:?} is not in the vocabulary"))
            })
        };
        // Python's `dict(zip(merges, range(...)))` also keeps the last rank of a
        // repeated pair.
        let mut merges = HashMap::with_capacity(NUM_MERGES);
        for (rank, (left, right)) in merge_pairs.iter().enumerate() {
            let key = (lookup(left)?, lookup(right)?);
            let merged = lookup(&format!("{left}{right}"))?;
            merges.insert(key, (rank as u32, merged));
        }
        let mut byte_ids = [0u32; 256];
        let mut byte_word_end_ids = [0u32; 256];
        let mut byte_decoder = HashMap::with_capacity(256);
        for b in 0..256usize {
            let c = byte_encoder[b];
            byte_ids[b] = lookup(&c.to_string())?;
            byte_word_end_ids[b] = lookup(&format!("{c}</w>"))?;
            byte_decoder.insert(c, b as u8);
        }
        let pattern =
            Regex::new(PATTERN).map_err(|e| ClipError::Tokenizer(format!("bad pattern: {e}")))?;
        let whitespace =
            Regex::new(r"\s+").map_err(|e| ClipError::Tokenizer(format!("bad pattern: {e}")))?;
        Ok(Self {
            encoder,
            decoder: vocab,
            merges,
            byte_encoder,
            byte_decoder,
            byte_ids,
            byte_word_end_ids,
            pattern,
            whitespace,
        })
    }

    /// Vocabulary size (49 408 for OpenAI's vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// The id of a token string (a BPE symbol such as `"road</w>"`), if any.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.encoder.get(token).copied()
    }

    /// The cleaning `SimpleTokenizer.encode` applies before splitting (minus
    /// `ftfy`): HTML-unescape twice, collapse whitespace, trim, lower-case.
    pub fn clean(&self, text: &str) -> String {
        let text = html_unescape(&html_unescape(text));
        let text = self.whitespace.replace_all(text.trim(), " ");
        text.trim().to_lowercase()
    }

    /// BPE ids of `text`, without start/end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = self.clean(text);
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(&cleaned) {
            let piece = piece.as_str();
            match piece {
                "<|startoftext|>" => ids.push(START_OF_TEXT),
                "<|endoftext|>" => ids.push(END_OF_TEXT),
                _ => self.bpe(piece.as_bytes(), &mut ids),
            }
        }
        ids
    }

    /// Applies the merges to one pre-token (its UTF-8 bytes) and appends the ids.
    fn bpe(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let Some((&last, init)) = bytes.split_last() else {
            return;
        };
        let mut word: Vec<u32> = init.iter().map(|&b| self.byte_ids[b as usize]).collect();
        word.push(self.byte_word_end_ids[last as usize]);
        while word.len() > 1 {
            // The adjacent pair with the lowest merge rank.
            let best = word
                .windows(2)
                .filter_map(|w| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, merged)| (rank, w[0], w[1], merged))
                })
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, left, right, merged)) = best else {
                break;
            };
            // Merge every occurrence, scanning left to right without overlaps.
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == left && word[i + 1] == right {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        out.extend(word);
    }

    /// `text` as a context of `context_length` ids: `<|startoftext|>`, the BPE
    /// ids, `<|endoftext|>`, then padding. Too long a text is truncated and its
    /// last id replaced by `<|endoftext|>`, as `clip.tokenize(truncate=True)`
    /// does (Hugging Face's truncation gives the same ids).
    pub fn encode_context(&self, text: &str, context_length: usize, padding: Padding) -> Vec<u32> {
        let mut ids = Vec::with_capacity(context_length.max(2));
        ids.push(START_OF_TEXT);
        ids.extend(self.encode(text));
        ids.push(END_OF_TEXT);
        if ids.len() > context_length {
            ids.truncate(context_length);
            if let Some(last) = ids.last_mut() {
                *last = END_OF_TEXT;
            }
        }
        let pad = match padding {
            Padding::Zeros => 0,
            Padding::EndOfText => END_OF_TEXT,
        };
        ids.resize(context_length, pad);
        ids
    }

    /// Ids back to text, as `SimpleTokenizer.decode` (`</w>` becomes a space;
    /// invalid UTF-8 is replaced). Padding zeros decode to `!`, as in OpenAI's.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut text = String::new();
        for &id in ids {
            if let Some(token) = self.decoder.get(id as usize) {
                text.push_str(token);
            }
        }
        let mut bytes = Vec::with_capacity(text.len());
        for c in text.chars() {
            match self.byte_decoder.get(&c) {
                Some(&b) => bytes.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }

    /// The printable stand-in of a byte (exposed for tests and tools).
    pub fn byte_symbol(&self, byte: u8) -> char {
        self.byte_encoder[byte as usize]
    }
}

/// Unescapes HTML character references as far as practical for CLIP
/// prompts: every numeric reference (`&#38;`, `&#x26;`, with or without `;`;
/// invalid code points become U+FFFD) and the common named entities (`&amp;
/// &lt; &gt; &quot; &apos; &nbsp;` and a few more; `amp lt gt quot nbsp`
/// also without `;`, as HTML5 allows). Python's `html.unescape` knows the
/// full HTML5 table; entities outside this subset are left as they are.
pub fn html_unescape(text: &str) -> String {
    const NAMED: &[(&str, &str)] = &[
        ("amp;", "&"),
        ("lt;", "<"),
        ("gt;", ">"),
        ("quot;", "\""),
        ("apos;", "'"),
        ("nbsp;", "\u{a0}"),
        ("copy;", "\u{a9}"),
        ("reg;", "\u{ae}"),
        ("deg;", "\u{b0}"),
        ("hellip;", "\u{2026}"),
        ("mdash;", "\u{2014}"),
        ("ndash;", "\u{2013}"),
        ("lsquo;", "\u{2018}"),
        ("rsquo;", "\u{2019}"),
        ("ldquo;", "\u{201c}"),
        ("rdquo;", "\u{201d}"),
        ("amp", "&"),
        ("lt", "<"),
        ("gt", ">"),
        ("quot", "\""),
        ("nbsp", "\u{a0}"),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some((c, used)) = numeric_reference(after) {
            out.push(c);
            rest = &after[used..];
            continue;
        }
        if let Some((name, value)) = NAMED.iter().find(|(name, _)| after.starts_with(name)) {
            out.push_str(value);
            rest = &after[name.len()..];
            continue;
        }
        out.push('&');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Parses `#123;` / `#x7b;` (the `;` optional) at the start of `s`.
fn numeric_reference(s: &str) -> Option<(char, usize)> {
    let body = s.strip_prefix('#')?;
    let (digits_start, radix) = match body.as_bytes().first() {
        Some(b'x') | Some(b'X') => (1, 16),
        _ => (0, 10),
    };
    let digits: String = body[digits_start..]
        .chars()
        .take_while(|c| c.is_digit(radix))
        .collect();
    if digits.is_empty() {
        return None;
    }
    let mut used = 1 + digits_start + digits.len();
    if body[digits_start + digits.len()..].starts_with(';') {
        used += 1;
    }
    let code = u32::from_str_radix(&digits, radix).unwrap_or(u32::MAX);
    let c = if code == 0 {
        '\u{fffd}'
    } else {
        char::from_u32(code).unwrap_or('\u{fffd}')
    };
    Some((c, used))
}
