//! Minimal WAV files for the simulator: 8 kHz mono 16-bit PCM out (playable anywhere), and
//! 8 kHz mono PCM16 or µ-law in.

use std::io;
use std::path::Path;

use crate::proto::mulaw;

/// Writes µ-law audio as an 8 kHz mono 16-bit PCM WAV file.
pub fn write(path: &Path, mulaw_audio: &[u8]) -> io::Result<()> {
    let data_len = (mulaw_audio.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&mulaw::SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(mulaw::SAMPLE_RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for &b in mulaw_audio {
        out.extend_from_slice(&mulaw::decode(b).to_le_bytes());
    }
    std::fs::write(path, out)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Reads an 8 kHz mono WAV file (16-bit PCM or µ-law) as µ-law bytes.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let b = std::fs::read(path)?;
    if b.len() < 12 || &b[..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let (mut fmt, mut i) = (None, 12usize);
    while i + 8 <= b.len() {
        let id = &b[i..i + 4];
        let len = u32::from_le_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
        let body = b
            .get(i + 8..i + 8 + len)
            .ok_or_else(|| bad("truncated chunk"))?;
        if id == b"fmt " {
            if body.len() < 16 {
                return Err(bad("short fmt chunk"));
            }
            let tag = u16::from_le_bytes([body[0], body[1]]);
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            if channels != 1 || rate != mulaw::SAMPLE_RATE {
                return Err(bad("need 8 kHz mono"));
            }
            fmt = Some((tag, bits));
        } else if id == b"data" {
            return match fmt {
                Some((1, 16)) => Ok(body
                    .chunks_exact(2)
                    .map(|s| mulaw::encode(i16::from_le_bytes([s[0], s[1]])))
                    .collect()),
                Some((7, 8)) => Ok(body.to_vec()),
                _ => Err(bad("need 16-bit PCM or 8-bit µ-law")),
            };
        }
        i += 8 + len + (len & 1);
    }
    Err(bad("no data chunk"))
}
