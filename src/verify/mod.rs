//! Signature checks: Ed25519 (`X-GHL-Signature`) and legacy RSA-SHA256 (`X-WH-Signature`).
//!
//! Keys are decoded once, at start-up: Ed25519 keys into decompressed points ([`ed25519`]),
//! RSA keys into the PKCS#1 form `ring` verifies with. Ed25519 signatures of requests that
//! arrive together are verified together ([`batch`]). Only a [`Verified`] body may reach the
//! store, and only this module can make one.

pub mod batch;
mod compact;
pub mod ed25519;
pub mod pem;

pub use compact::compact_json;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};

/// Which scheme vouched for a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Ed25519,
    RsaSha256,
}

impl Scheme {
    /// The name used in the `x-hl-signature-scheme` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "ed25519",
            Scheme::RsaSha256 => "rsa-sha256",
        }
    }

    /// The scheme an `x-hl-signature-scheme` header names.
    pub fn from_name(name: &str) -> Option<Scheme> {
        match name {
            "ed25519" => Some(Scheme::Ed25519),
            "rsa-sha256" => Some(Scheme::RsaSha256),
            _ => None,
        }
    }

    /// The request header HighLevel sends this scheme's signature in.
    pub fn header_name(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "X-GHL-Signature",
            Scheme::RsaSha256 => "X-WH-Signature",
        }
    }

    /// `None` for a byte [`Scheme::to_u8`] never gives.
    pub fn from_u8(n: u8) -> Option<Scheme> {
        match n {
            0 => Some(Scheme::Ed25519),
            1 => Some(Scheme::RsaSha256),
            _ => None,
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Scheme::Ed25519 => 0,
            Scheme::RsaSha256 => 1,
        }
    }
}

/// Public keys of one scheme, decoded once.
#[derive(Clone)]
pub struct Keyring {
    scheme: Scheme,
    keys: Vec<PublicKey>,
    /// The Ed25519 key that verified last: the one a batch assumes (during a key rotation,
    /// HighLevel signs with one key at a time).
    recent: Arc<AtomicUsize>,
}

#[derive(Clone)]
enum PublicKey {
    Ed25519(ed25519::Key),
    Rsa(UnparsedPublicKey<Vec<u8>>),
}

impl PublicKey {
    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::Ed25519(key) => key.verifies(message, sig),
            PublicKey::Rsa(key) => key.verify(message, sig).is_ok(),
        }
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring({}, {} key(s))",
            self.scheme.as_str(),
            self.keys.len()
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("no PEM public key block found")]
    Empty,
    #[error("PEM block {0} is not valid base64")]
    Base64(usize),
    #[error("PEM block {0} is not an Ed25519 public key")]
    NotEd25519(usize),
    #[error("PEM block {0} is not an RSA public key")]
    NotRsa(usize),
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of the rsaEncryption algorithm OID.
const RSA_OID: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

impl Keyring {
    /// Ed25519 keys from PEM text with one or more `PUBLIC KEY` blocks.
    pub fn ed25519_from_pem(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (i, block) in public_blocks(text)?.into_iter().enumerate() {
            let key = block
                .strip_prefix(&ED25519_SPKI_PREFIX[..])
                .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
                .and_then(ed25519::Key::from_bytes)
                .ok_or(KeyringError::NotEd25519(i + 1))?;
            keys.push(PublicKey::Ed25519(key));
        }
        Ok(Keyring {
            scheme: Scheme::Ed25519,
            keys,
            recent: Arc::default(),
        })
    }

    /// RSA keys from PEM text with `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1) blocks.
    pub fn rsa_from_pem(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (i, block) in public_blocks(text)?.into_iter().enumerate() {
            let pkcs1 = rsa_pkcs1_from_spki(&block)
                .or_else(|| der_sequence(&block).map(|_| block.clone()))
                .filter(|der| der.len() > 64)
                .ok_or(KeyringError::NotRsa(i + 1))?;
            keys.push(PublicKey::Rsa(UnparsedPublicKey::new(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                pkcs1,
            )));
        }
        Ok(Keyring {
            scheme: Scheme::RsaSha256,
            keys,
            recent: Arc::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        let recent = self.recent.load(Ordering::Relaxed);
        let order = self
            .keys
            .iter()
            .enumerate()
            .skip(recent)
            .chain(self.keys.iter().enumerate().take(recent));
        for (i, key) in order {
            if key.verifies(message, sig) {
                if i != recent {
                    self.recent.store(i, Ordering::Relaxed);
                }
                return true;
            }
        }
        false
    }

    /// `sig` ready for a batch, with the key that verified last.
    fn batchable(&self, sig: &[u8]) -> Option<ed25519::Batchable> {
        match self.keys.get(self.recent.load(Ordering::Relaxed))? {
            PublicKey::Ed25519(key) => key.batchable(sig),
            PublicKey::Rsa(_) => None,
        }
    }
}

/// The SubjectPublicKeyInfo PEM of a raw 32-byte Ed25519 public key.
pub fn ed25519_public_pem(public: &[u8]) -> String {
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(public);
    pem::encode("PUBLIC KEY", &spki)
}

fn public_blocks(text: &str) -> Result<Vec<Vec<u8>>, KeyringError> {
    let blocks: Vec<pem::PemBlock> = pem::pem_blocks(text)
        .into_iter()
        .filter(|b| b.label.ends_with("PUBLIC KEY"))
        .collect();
    if blocks.is_empty() {
        return Err(KeyringError::Empty);
    }
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, b)| b.der.ok_or(KeyringError::Base64(i + 1)))
        .collect()
}

/// Reads a DER length at `input[0..]`; returns (length, bytes used).
fn der_len(input: &[u8]) -> Option<(usize, usize)> {
    let first = *input.first()?;
    if first < 0x80 {
        return Some((first as usize, 1));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 || input.len() < 1 + n {
        return None;
    }
    let len = input[1..=n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Some((len, 1 + n))
}

/// Splits one DER element with the given tag off the front: (contents, rest).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let (len, used) = der_len(&input[1..])?;
    let start = 1 + used;
    let end = start.checked_add(len)?;
    (end <= input.len()).then(|| (&input[start..end], &input[end..]))
}

fn der_sequence(input: &[u8]) -> Option<&[u8]> {
    der_take(input, 0x30).map(|(contents, _)| contents)
}

/// The PKCS#1 `RSAPublicKey` inside an RSA SubjectPublicKeyInfo.
fn rsa_pkcs1_from_spki(spki: &[u8]) -> Option<Vec<u8>> {
    let contents = der_sequence(spki)?;
    let (algorithm, rest) = der_take(contents, 0x30)?;
    if !algorithm.starts_with(&RSA_OID) {
        return None;
    }
    let (bits, _) = der_take(rest, 0x03)?;
    let (unused, key) = bits.split_first()?;
    (*unused == 0).then(|| key.to_vec())
}

/// The signature headers of a request, as received.
#[derive(Clone, Copy, Debug, Default)]
pub struct SignatureHeaders<'a> {
    pub ghl: Option<&'a str>,
    pub wh: Option<&'a str>,
}

/// A header whose value is missing, empty or `N/A` counts as absent.
pub fn present(value: Option<&str>) -> Option<&str> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("N/A"))
}

/// The configured keys and policy.
#[derive(Clone, Debug)]
pub struct Verifier {
    pub ed25519: Keyring,
    pub rsa: Keyring,
    pub accept_legacy_rsa: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no usable signature header")]
    Missing,
    #[error("signature does not verify")]
    Invalid,
}

/// A body whose signature verified. Only [`Verifier::verify`] makes one.
#[derive(Debug)]
pub struct Verified<'a> {
    body: &'a [u8],
    scheme: Scheme,
    signature: &'a str,
    /// The compact re-serialisation, when only it verified.
    compact: Option<Vec<u8>>,
}

impl<'a> Verified<'a> {
    /// The body as received.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
    /// The bytes the signature covers: the body, or its compact form when only that verified.
    /// Everything read from the body (and its dedup key) comes from these bytes, so that a
    /// re-indented copy of a signed event is the same event.
    pub fn signed_form(&self) -> &[u8] {
        self.compact.as_deref().unwrap_or(self.body)
    }
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
    /// The header value as received.
    pub fn signature(&self) -> &'a str {
        self.signature
    }
    /// True when only the compact re-serialisation verified.
    pub fn used_fallback(&self) -> bool {
        self.compact.is_some()
    }
}

impl Verifier {
    /// [`Verifier::verify`], with an Ed25519 signature of the body as received verified in a
    /// batch with those of the requests that ask at the same time on this thread
    /// ([`batch`]); what the batch does not vouch for is checked on its own.
    pub async fn verify_gathered<'a>(
        &self,
        body: &'a [u8],
        headers: SignatureHeaders<'a>,
    ) -> Result<Verified<'a>, VerifyError> {
        if let Some(header) = present(headers.ghl) {
            let batchable = base64::engine::general_purpose::STANDARD
                .decode(header)
                .ok()
                .and_then(|sig| self.ed25519.batchable(&sig));
            if let Some(batchable) = batchable {
                if batch::verified_together(|| batchable.item(body)).await {
                    return Ok(Verified {
                        body,
                        scheme: Scheme::Ed25519,
                        signature: header,
                        compact: None,
                    });
                }
            }
        }
        self.verify(body, headers)
    }

    /// Checks a body against its signature headers.
    ///
    /// `X-GHL-Signature` wins when present (no RSA fallback when it fails); otherwise
    /// `X-WH-Signature` when legacy RSA is accepted. When the raw bytes fail, their compact form
    /// (`JSON.stringify(JSON.parse(body))`, [`compact_json`]) gets one more try.
    pub fn verify<'a>(
        &self,
        body: &'a [u8],
        headers: SignatureHeaders<'a>,
    ) -> Result<Verified<'a>, VerifyError> {
        let (scheme, header, keys) = if let Some(h) = present(headers.ghl) {
            (Scheme::Ed25519, h, &self.ed25519)
        } else if let Some(h) = present(headers.wh).filter(|_| self.accept_legacy_rsa) {
            (Scheme::RsaSha256, h, &self.rsa)
        } else {
            return Err(VerifyError::Missing);
        };
        let sig = base64::engine::general_purpose::STANDARD
            .decode(header)
            .map_err(|_| VerifyError::Invalid)?;
        let verified = |compact| Verified {
            body,
            scheme,
            signature: header,
            compact,
        };
        if keys.verifies(body, &sig) {
            return Ok(verified(None));
        }
        match compact_json(body) {
            Some(compact) if compact != body && keys.verifies(&compact, &sig) => {
                Ok(verified(Some(compact)))
            }
            _ => Err(VerifyError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn ed25519_pair() -> (Ed25519KeyPair, Keyring) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pem = ed25519_public_pem(pair.public_key().as_ref());
        (pair, Keyring::ed25519_from_pem(&pem).unwrap())
    }

    fn verifier(ed25519: Keyring) -> Verifier {
        Verifier {
            ed25519,
            rsa: Keyring::rsa_from_pem(include_str!("highlevel-rsa.pem")).unwrap(),
            accept_legacy_rsa: true,
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn a_scheme_is_named_back_and_sent_in_highlevel_s_header() {
        for scheme in [Scheme::Ed25519, Scheme::RsaSha256] {
            assert_eq!(Scheme::from_name(scheme.as_str()), Some(scheme));
        }
        assert_eq!(Scheme::from_name("hmac"), None);
        assert_eq!(Scheme::Ed25519.header_name(), "X-GHL-Signature");
        assert_eq!(Scheme::RsaSha256.header_name(), "X-WH-Signature");
    }

    #[test]
    fn highlevel_keys_load() {
        let ed = Keyring::ed25519_from_pem(include_str!("highlevel-ed25519.pem")).unwrap();
        assert_eq!(ed.len(), 1);
        let rsa = Keyring::rsa_from_pem(include_str!("highlevel-rsa.pem")).unwrap();
        assert_eq!(rsa.len(), 1);
        // An Ed25519 block is not an RSA key and the other way round.
        assert_eq!(
            Keyring::rsa_from_pem(include_str!("highlevel-ed25519.pem")).unwrap_err(),
            KeyringError::NotRsa(1)
        );
        assert_eq!(
            Keyring::ed25519_from_pem(include_str!("highlevel-rsa.pem")).unwrap_err(),
            KeyringError::NotEd25519(1)
        );
    }

    #[test]
    fn several_blocks_and_surrounding_text() {
        let (_, one) = ed25519_pair();
        let text = format!(
            "# rotation: old key first\n{}\nsome note\n{}",
            include_str!("highlevel-ed25519.pem"),
            include_str!("highlevel-ed25519.pem")
        );
        assert_eq!(Keyring::ed25519_from_pem(&text).unwrap().len(), 2);
        assert_eq!(one.len(), 1);
        assert_eq!(
            Keyring::ed25519_from_pem("nothing").unwrap_err(),
            KeyringError::Empty
        );
    }

    #[test]
    fn a_key_that_is_not_a_curve_point_is_refused_at_load() {
        let not_a_point = (2u8..=255)
            .map(|y| {
                let mut raw = [0u8; 32];
                raw[0] = y;
                raw
            })
            .find(|raw| {
                curve25519_dalek::edwards::CompressedEdwardsY(*raw)
                    .decompress()
                    .is_none()
            })
            .expect("some small y has no x on the curve");
        assert_eq!(
            Keyring::ed25519_from_pem(&ed25519_public_pem(&not_a_point)).unwrap_err(),
            KeyringError::NotEd25519(1)
        );
    }

    /// `S + L` is the same scalar mod `L`; RFC 8032 and `ring` refuse it (no malleable
    /// signatures), and so must we.
    #[test]
    fn a_non_canonical_s_is_refused() {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let (pair, keys) = ed25519_pair();
        let v = verifier(keys);
        let body = br#"{"type":"ContactCreate"}"#;
        let good = pair.sign(body).as_ref().to_vec();
        assert!(v
            .verify(
                body,
                SignatureHeaders {
                    ghl: Some(&b64(&good)),
                    wh: None
                }
            )
            .is_ok());

        let mut malleated = good.clone();
        let mut carry = 0u16;
        for (s, l) in malleated[32..].iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "S + L fits in 32 bytes");
        let ring_key = signature::UnparsedPublicKey::new(&signature::ED25519, pair.public_key());
        assert!(ring_key.verify(body, &malleated).is_err());
        let h = SignatureHeaders {
            ghl: Some(&b64(&malleated)),
            wh: None,
        };
        assert_eq!(v.verify(body, h).unwrap_err(), VerifyError::Invalid);
    }

    #[test]
    fn na_and_empty_headers_are_absent() {
        let (_, ring) = ed25519_pair();
        let v = verifier(ring);
        for ghl in [None, Some(""), Some("N/A"), Some("  ")] {
            let h = SignatureHeaders { ghl, wh: None };
            assert_eq!(v.verify(b"{}", h).unwrap_err(), VerifyError::Missing);
        }
    }

    #[test]
    fn ed25519_failure_does_not_fall_back_to_rsa() {
        let (_, ring) = ed25519_pair();
        let v = verifier(ring);
        let h = SignatureHeaders {
            ghl: Some("AAAA"),
            wh: Some("BBBB"),
        };
        assert_eq!(v.verify(b"{}", h).unwrap_err(), VerifyError::Invalid);
    }

    #[test]
    fn compact_fallback_is_reported() {
        let (pair, ring) = ed25519_pair();
        let v = verifier(ring);
        let compact = br#"{"b":1,"a":[1,2]}"#;
        let pretty = b"{ \"b\": 1,\n  \"a\": [1, 2] }";
        let sig = b64(pair.sign(compact).as_ref());
        let h = SignatureHeaders {
            ghl: Some(&sig),
            wh: None,
        };
        assert!(!v.verify(compact, h).unwrap().used_fallback());
        let got = v.verify(pretty, h).unwrap();
        assert!(got.used_fallback());
        assert_eq!(got.scheme(), Scheme::Ed25519);
        assert_eq!(got.body(), pretty);
        assert_eq!(got.signed_form(), compact);
    }

    #[test]
    fn legacy_rsa_can_be_turned_off() {
        let (_, ring) = ed25519_pair();
        let mut v = verifier(ring);
        v.accept_legacy_rsa = false;
        let h = SignatureHeaders {
            ghl: None,
            wh: Some("c2ln"),
        };
        assert_eq!(v.verify(b"{}", h).unwrap_err(), VerifyError::Missing);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn setup() -> (Ed25519KeyPair, Verifier) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let verifier = Verifier {
            ed25519: Keyring::ed25519_from_pem(&ed25519_public_pem(pair.public_key().as_ref()))
                .unwrap(),
            rsa: Keyring::rsa_from_pem(include_str!("highlevel-rsa.pem")).unwrap(),
            accept_legacy_rsa: true,
        };
        (pair, verifier)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn signed_bodies_verify(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let (pair, verifier) = setup();
            let sig = base64::engine::general_purpose::STANDARD.encode(pair.sign(&body));
            let headers = SignatureHeaders { ghl: Some(&sig), wh: None };
            prop_assert!(verifier.verify(&body, headers).is_ok());
        }

        #[test]
        fn any_flipped_bit_fails(
            body in proptest::collection::vec(any::<u8>(), 1..2048),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (pair, verifier) = setup();
            let sig = base64::engine::general_purpose::STANDARD.encode(pair.sign(&body));
            let mut flipped = body.clone();
            let i = at.index(flipped.len());
            flipped[i] ^= 1 << bit;
            let headers = SignatureHeaders { ghl: Some(&sig), wh: None };
            // The compact fallback must not rescue a changed body either.
            prop_assert!(verifier.verify(&flipped, headers).is_err());
        }

        #[test]
        fn any_flipped_signature_bit_fails(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            at in 0usize..64,
            bit in 0u8..8,
        ) {
            let (pair, verifier) = setup();
            let mut raw = pair.sign(&body).as_ref().to_vec();
            raw[at] ^= 1 << bit;
            let sig = base64::engine::general_purpose::STANDARD.encode(raw);
            let headers = SignatureHeaders { ghl: Some(&sig), wh: None };
            prop_assert!(verifier.verify(&body, headers).is_err());
        }
    }
}
