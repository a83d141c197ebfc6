//! G.711 µ-law (ITU-T G.711) codec and the audio helpers the bridge and the simulator need.
//!
//! Twilio Media Streams and the Realtime API's `audio/pcmu` are both 8 kHz mono µ-law, one byte
//! per sample, so 8 bytes are one millisecond. The bridge never decodes audio on its path (it
//! forwards the base64 strings as they are); these functions serve padding, the simulator's
//! VAD and tone generator, and tests.
//!
//! ```
//! use twilio_realtime::proto::mulaw;
//!
//! assert_eq!(mulaw::decode(0x80), 32124);
//! assert_eq!(mulaw::encode(mulaw::decode(0x2a)), 0x2a);
//! assert_eq!(mulaw::base64_decoded_len("//////8="), 5);
//! assert_eq!(mulaw::bytes_to_ms(160), 20);
//! ```

use base64::Engine;

/// The µ-law byte for silence (a sample of 0).
pub const SILENCE: u8 = 0xFF;
/// µ-law bytes per millisecond at 8 kHz.
pub const BYTES_PER_MS: usize = 8;
/// Samples per second.
pub const SAMPLE_RATE: u32 = 8000;

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

const fn decode_const(b: u8) -> i16 {
    let u = !b;
    let sign = u & 0x80;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn build_table() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decode_const(i as u8);
        i += 1;
    }
    t
}

/// Decoded value of every µ-law byte, built at compile time.
static DECODE_TABLE: [i16; 256] = build_table();

/// Decodes one µ-law byte to a 16-bit linear sample.
#[inline]
pub fn decode(b: u8) -> i16 {
    DECODE_TABLE[b as usize]
}

/// Encodes one 16-bit linear sample to µ-law (G.711: bias 0x84, clip at 32635).
#[inline]
pub fn encode(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    if s > CLIP {
        s = CLIP;
    }
    s += BIAS;
    // Exponent: position of the highest set bit above bit 7 (0..=7).
    let exponent = (31 - (s as u32).leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign as u8 | ((exponent as u8) << 4) | mantissa as u8)
}

/// Decodes `src`, appending the samples to `dst`.
pub fn decode_into(src: &[u8], dst: &mut Vec<i16>) {
    dst.reserve(src.len());
    dst.extend(src.iter().map(|&b| decode(b)));
}

/// Encodes `src`, appending the bytes to `dst`.
pub fn encode_into(src: &[i16], dst: &mut Vec<u8>) {
    dst.reserve(src.len());
    dst.extend(src.iter().map(|&s| encode(s)));
}

/// Bytes of µ-law for `ms` milliseconds.
pub fn ms_to_bytes(ms: u64) -> u64 {
    ms * BYTES_PER_MS as u64
}

/// Whole milliseconds of µ-law in `bytes` bytes (rounded down).
pub fn bytes_to_ms(bytes: u64) -> u64 {
    bytes / BYTES_PER_MS as u64
}

/// The number of bytes a standard (padded or unpadded) base64 string decodes to, from its
/// length alone: the audio fast path counts bytes without decoding. Whitespace is not
/// expected (Twilio and OpenAI send none).
pub fn base64_decoded_len(b64: &str) -> usize {
    let bytes = b64.as_bytes();
    let mut len = bytes.len();
    while len > 0 && bytes[len - 1] == b'=' {
        len -= 1;
    }
    len / 4 * 3
        + match len % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        }
}

/// Why a payload is not valid, padded standard base64 ([`validate_base64`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Base64Error {
    /// The length is not a multiple of 4 (unpadded or cut short).
    Length(usize),
    /// More than two `=` at the end, or bits left over in the last symbol.
    Padding,
    /// A byte outside the alphabet (or `=` inside the payload).
    InvalidByte {
        /// Its offset in the payload.
        offset: usize,
        /// The byte.
        byte: u8,
    },
}

impl std::fmt::Display for Base64Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Base64Error::Length(n) => write!(f, "base64 of length {n}, not a multiple of 4"),
            Base64Error::Padding => f.write_str("bad base64 padding"),
            Base64Error::InvalidByte { offset, byte } => {
                write!(f, "invalid base64 byte {byte:#04x} at offset {offset}")
            }
        }
    }
}

impl std::error::Error for Base64Error {}

impl Base64Error {
    fn of(e: base64::DecodeError, shift: usize) -> Base64Error {
        match e {
            base64::DecodeError::InvalidByte(i, byte) => Base64Error::InvalidByte {
                offset: i.saturating_add(shift),
                byte,
            },
            base64::DecodeError::InvalidLength(n) => Base64Error::Length(n),
            base64::DecodeError::InvalidLastSymbol(..) | base64::DecodeError::InvalidPadding => {
                Base64Error::Padding
            }
        }
    }
}

/// Checks that `b64` is valid, padded standard base64 and returns the number of bytes
/// it decodes to. It decodes piecewise into a stack buffer with the `base64` crate, so it
/// allocates nothing: the audio path uses it to refuse a bad payload before forwarding it.
///
/// ```
/// use twilio_realtime::proto::mulaw;
/// assert_eq!(mulaw::validate_base64("//////8=").unwrap(), 5);
/// assert!(mulaw::validate_base64("not base64!").is_err());
/// assert!(mulaw::validate_base64("//8").is_err()); // unpadded
/// ```
pub fn validate_base64(b64: &str) -> Result<usize, Base64Error> {
    const CHUNK: usize = 1024; // a multiple of 4: only the last piece may carry padding
    let mut out = [0u8; CHUNK / 4 * 3];
    let engine = &base64::engine::general_purpose::STANDARD_NO_PAD;
    let bytes = b64.as_bytes();
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1] == b'=' {
        end -= 1;
    }
    // Twilio and OpenAI always pad; an unpadded payload is refused rather than passed on to a
    // peer that may not accept it.
    if bytes.len() % 4 != 0 {
        return Err(Base64Error::Length(bytes.len()));
    }
    if bytes.len() - end > 2 {
        return Err(Base64Error::Padding);
    }
    let mut total = 0;
    for piece in bytes[..end].chunks(CHUNK) {
        total += engine.decode_slice(piece, &mut out).map_err(|e| match e {
            base64::DecodeSliceError::DecodeError(e) => Base64Error::of(e, total / 3 * 4),
            // Cannot happen: a 1024-character piece decodes to at most 768 bytes.
            base64::DecodeSliceError::OutputSliceTooSmall => Base64Error::Length(piece.len()),
        })?;
    }
    Ok(total)
}

/// `n` bytes of µ-law silence.
pub fn silence(n: usize) -> Vec<u8> {
    vec![SILENCE; n]
}

/// `n` bytes of µ-law silence, base64-encoded.
pub fn silence_base64(n: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(silence(n))
}

/// A sine tone of `freq_hz` for `ms` milliseconds at peak `amplitude`, µ-law encoded.
pub fn tone(freq_hz: f32, ms: u32, amplitude: i16) -> Vec<u8> {
    let n = ms as usize * BYTES_PER_MS;
    let step = 2.0 * std::f32::consts::PI * freq_hz / SAMPLE_RATE as f32;
    (0..n)
        .map(|i| encode(((i as f32 * step).sin() * amplitude as f32) as i16))
        .collect()
}

/// Mean absolute sample value of µ-law audio (0 for empty input): a cheap energy measure
/// for a simple voice-activity detector.
pub fn mean_abs(samples: &[u8]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: u64 = samples
        .iter()
        .map(|&b| (decode(b) as i32).unsigned_abs() as u64)
        .sum();
    sum as f32 / samples.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_base64_agrees_with_the_decoder() {
        let engine = &base64::engine::general_purpose::STANDARD;
        for n in [0usize, 1, 2, 3, 160, 767, 768, 769, 800, 4000] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let b64 = engine.encode(&data);
            assert_eq!(validate_base64(&b64).unwrap(), n, "{n} bytes");
            assert_eq!(base64_decoded_len(&b64), n);
        }
        let mut long = engine.encode(vec![0u8; 3000]).into_bytes();
        long[2000] = b'*';
        let long = String::from_utf8(long).unwrap();
        assert_eq!(
            validate_base64(&long),
            Err(Base64Error::InvalidByte {
                offset: 2000,
                byte: b'*'
            })
        );
        assert!(validate_base64("AAA=A===").is_err());
        assert!(validate_base64("A===").is_err());
    }

    #[test]
    fn g711_vectors() {
        assert_eq!(decode(0x00), -32124);
        assert_eq!(decode(0x80), 32124);
        assert_eq!(decode(0xFF), 0);
        assert_eq!(decode(0x7F), 0);
        for b in 0..=255u8 {
            if b != 0x7F {
                assert_eq!(encode(decode(b)), b, "byte {b:#04x}");
            }
        }
        assert_eq!(encode(0), 0xFF);
    }

    #[test]
    fn encode_is_monotonic_and_clips() {
        let mut last = decode(encode(i16::MIN));
        for s in (i16::MIN as i32..=i16::MAX as i32).step_by(7) {
            let d = decode(encode(s as i16));
            assert!(d >= last, "{s}");
            last = d;
        }
        assert_eq!(encode(i16::MAX), 0x80);
        assert_eq!(encode(i16::MIN), 0x00);
        assert_eq!(encode(-i16::MAX), 0x00);
    }

    #[test]
    fn quantisation_error_is_bounded() {
        for s in (-32000i32..32000).step_by(13) {
            let d = decode(encode(s as i16)) as i32;
            // the largest step of µ-law is 1024; the error is at most half a step + rounding
            assert!((d - s).abs() <= 1024, "{s} -> {d}");
        }
    }

    #[test]
    fn base64_len_matches_decoding() {
        let e = base64::engine::general_purpose::STANDARD;
        let ne = base64::engine::general_purpose::STANDARD_NO_PAD;
        for n in 0..=400usize {
            let data = vec![0x5Au8; n];
            assert_eq!(base64_decoded_len(&e.encode(&data)), n);
            assert_eq!(base64_decoded_len(&ne.encode(&data)), n);
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(ms_to_bytes(20), 160);
        assert_eq!(bytes_to_ms(167), 20);
        let s = silence_base64(160);
        assert_eq!(base64_decoded_len(&s), 160);
        assert_eq!(mean_abs(&silence(160)), 0.0);
        let t = tone(440.0, 100, 8000);
        assert_eq!(t.len(), 800);
        let m = mean_abs(&t);
        // mean |sin| = 2/π of the peak
        assert!(
            (m - 8000.0 * 2.0 / std::f32::consts::PI).abs() < 300.0,
            "{m}"
        );
        let mut pcm = vec![];
        decode_into(&t, &mut pcm);
        let mut back = vec![];
        encode_into(&pcm, &mut back);
        assert_eq!(back, t);
    }
}
