//! Just enough PEM: labelled base64 blocks; text outside the blocks is ignored.

use base64::Engine;

/// One `-----BEGIN label-----` … `-----END label-----` block.
#[derive(Debug, Clone)]
pub struct PemBlock {
    pub label: String,
    /// The decoded bytes; `None` when the base64 inside is broken.
    pub der: Option<Vec<u8>>,
}

/// Every PEM block in `text`, in order.
pub fn pem_blocks(text: &str) -> Vec<PemBlock> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_string(), String::new()));
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if let Some((begin, body)) = current.take() {
                if begin == label {
                    let der = base64::engine::general_purpose::STANDARD.decode(&body).ok();
                    blocks.push(PemBlock { label: begin, der });
                }
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        }
    }
    blocks
}

/// Encodes bytes as a PEM block with 64-column lines.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_noise() {
        let pem = encode("PUBLIC KEY", &[1, 2, 3, 250]);
        let text = format!("# comment\n{pem}\ntrailing words\n");
        let blocks = pem_blocks(&text);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].label, "PUBLIC KEY");
        assert_eq!(blocks[0].der.as_deref(), Some(&[1u8, 2, 3, 250][..]));
    }

    #[test]
    fn mismatched_end_is_dropped() {
        let text = "-----BEGIN A-----\nAQID\n-----END B-----\n";
        assert!(pem_blocks(text).is_empty());
    }
}
