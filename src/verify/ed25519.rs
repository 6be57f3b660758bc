//! Ed25519 as hlgate checks it, one signature at a time or many together.
//!
//! The rule, for one signature and for a batch alike: `S` canonical (`S < L`), `R` the
//! canonical encoding of a curve point, the key a canonical point of large order (checked at
//! load), and RFC 8032's group equation `[8][S]B = [8]R + [8][k]A` (§5.1.7). That is ZIP-215
//! (`ed25519-zebra`) with canonical `R` on top. With the cofactor in the equation, a batch
//! (`Σ zᵢ` over the same equation, random `zᵢ`) accepts exactly what signature-by-signature
//! checks accept; without it (the cofactorless `[S]B = R + [k]A` some libraries check one by
//! one) no batch can promise that. Only the key's holder can make a signature the two
//! equations disagree on.

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_zebra::batch;
use ed25519_zebra::{Signature, VerificationKey, VerificationKeyBytes};

/// A configured public key.
#[derive(Clone, Copy)]
pub struct Key {
    key: VerificationKey,
}

impl Key {
    /// `None` unless `raw` is the canonical encoding of a curve point of large order: a
    /// small-order key would let anyone sign.
    pub fn from_bytes(raw: [u8; 32]) -> Option<Key> {
        let point = CompressedEdwardsY(raw).decompress()?;
        if point.is_small_order() || point.compress().to_bytes() != raw {
            return None;
        }
        let key = VerificationKey::try_from(raw).ok()?;
        Some(Key { key })
    }

    pub fn bytes(&self) -> VerificationKeyBytes {
        self.key.into()
    }

    /// One signature, by the rule above.
    pub fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        signature(sig).is_some_and(|sig| self.key.verify(&sig, message).is_ok())
    }

    /// `sig` ready for a batch with this key; `None` when it cannot be valid (wrong length,
    /// non-canonical `R`). Cheap: the hash of the message waits for [`Batchable::item`].
    pub fn batchable(&self, sig: &[u8]) -> Option<Batchable> {
        signature(sig).map(|sig| Batchable {
            key: self.bytes(),
            sig,
        })
    }

    /// What a batch needs of one signature of `message` by this key.
    #[cfg(test)]
    pub fn item(&self, message: &[u8], sig: &[u8]) -> Option<batch::Item> {
        self.batchable(sig).map(|b| b.item(message))
    }
}

/// A signature and the key a batch is to check it with, before the message is hashed.
#[derive(Clone, Copy)]
pub struct Batchable {
    key: VerificationKeyBytes,
    sig: Signature,
}

impl Batchable {
    /// Hashes `message` with `R` and the key: the part of a check that is done per signature.
    pub fn item(self, message: &[u8]) -> batch::Item {
        batch::Item::from((self.key, self.sig, message))
    }
}

/// A signature whose `R` is canonically encoded; `S` is checked by the equation.
fn signature(sig: &[u8]) -> Option<Signature> {
    let sig = Signature::from_slice(sig).ok()?;
    canonical_encoding(sig.r_bytes()).then_some(sig)
}

/// Whether `y` (with the sign of `x` in its top bit) is how the point it names, if any, is
/// written: `y < p`, and no negative zero (`x = 0` holds for `y = 1` and `y = p - 1` only).
/// Whether it names a point at all is left to decompression.
pub fn canonical_encoding(encoded: &[u8; 32]) -> bool {
    let mut y = *encoded;
    let sign = y[31] >> 7 == 1;
    y[31] &= 0x7f;
    // p = 2^255 - 19: little-endian 0xed, then 30 bytes 0xff, then 0x7f.
    let at_least_p = y[0] >= 0xed && y[1..31].iter().all(|b| *b == 0xff) && y[31] == 0x7f;
    if at_least_p {
        return false;
    }
    let one = y[0] == 1 && y[1..].iter().all(|b| *b == 0);
    let minus_one = y[0] == 0xec && y[1..31].iter().all(|b| *b == 0xff) && y[31] == 0x7f;
    !(sign && (one || minus_one))
}

/// Whether every item verifies, all at once, with random coefficients from the system's
/// generator. `false` says only that at least one does not.
pub fn all_verify(items: Vec<batch::Item>) -> bool {
    let mut rng = Prefilled::for_items(items.len());
    let mut verifier = batch::Verifier::new();
    for item in items {
        verifier.queue(item);
    }
    verifier.verify(&mut rng).is_ok()
}

/// The batch draws 16 random bytes per signature: one read of the system's generator for the
/// whole batch instead of one system call each.
struct Prefilled {
    bytes: Vec<u8>,
    at: usize,
}

impl Prefilled {
    fn for_items(n: usize) -> Prefilled {
        let mut bytes = vec![0; 16 * n];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        Prefilled { bytes, at: 0 }
    }
}

impl rand_core::RngCore for Prefilled {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let left = &self.bytes[self.at..];
        if left.len() >= dest.len() {
            dest.copy_from_slice(&left[..dest.len()]);
            self.at += dest.len();
        } else {
            rand_core::OsRng.fill_bytes(dest);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Every byte it gives comes from the operating system's generator.
impl rand_core::CryptoRng for Prefilled {}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::EdwardsPoint;
    use curve25519_dalek::scalar::Scalar;
    use sha2::{Digest, Sha512};

    /// A signer that knows its scalar, so that tests can make the signatures only a key's
    /// holder can make: `R = [r]B + T` with `T` of small order, encodings of its choosing.
    struct Signer {
        a: Scalar,
        public: [u8; 32],
    }

    fn scalar() -> Scalar {
        let mut wide = [0u8; 64];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut wide);
        Scalar::from_bytes_mod_order_wide(&wide)
    }

    impl Signer {
        fn new() -> Signer {
            let a = scalar();
            let public = EdwardsPoint::mul_base(&a).compress().to_bytes();
            Signer { a, public }
        }

        fn key(&self) -> Key {
            Key::from_bytes(self.public).unwrap()
        }

        fn k(&self, r: &[u8; 32], message: &[u8]) -> Scalar {
            let hash = Sha512::new()
                .chain_update(r)
                .chain_update(self.public)
                .chain_update(message);
            Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
        }

        /// A signature with `R` written as `r_bytes` and `S = r + k·a` (as bytes, unreduced
        /// when `s_plus_l`).
        fn sign_raw(
            &self,
            r: Scalar,
            r_bytes: [u8; 32],
            message: &[u8],
            s_plus_l: bool,
        ) -> Vec<u8> {
            let s = r + self.k(&r_bytes, message) * self.a;
            let mut s = s.to_bytes();
            if s_plus_l {
                add_l(&mut s);
            }
            [r_bytes.as_slice(), &s].concat()
        }

        /// `R = [r]B + T`.
        fn sign(&self, message: &[u8], torsion: EdwardsPoint) -> Vec<u8> {
            let r = scalar();
            let point = EdwardsPoint::mul_base(&r) + torsion;
            self.sign_raw(r, point.compress().to_bytes(), message, false)
        }
    }

    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn add_l(s: &mut [u8; 32]) {
        let mut carry = 0u16;
        for (s, l) in s.iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
    }

    /// The identity written as `y = p + 1` and as `y = 1` with the sign bit set.
    fn non_canonical_identities() -> [[u8; 32]; 2] {
        let mut above_p = [0xff; 32];
        above_p[0] = 0xee;
        above_p[31] = 0x7f;
        let mut negative_zero = [0; 32];
        negative_zero[0] = 1;
        negative_zero[31] = 0x80;
        [above_p, negative_zero]
    }

    /// Every kind of signature the rule has to decide on, with its verdict.
    fn edge_cases(signer: &Signer, message: &[u8]) -> Vec<(&'static str, Vec<u8>, bool)> {
        let mut cases = vec![
            ("honest", signer.sign(message, EIGHT_TORSION[0]), true),
            (
                "other message",
                signer.sign(b"other", EIGHT_TORSION[0]),
                false,
            ),
        ];
        for t in &EIGHT_TORSION[1..] {
            // The cofactored equation holds: RFC 8032's check, and the batch's.
            cases.push(("mixed-order R", signer.sign(message, *t), true));
            let r = Scalar::ZERO;
            cases.push((
                "small-order R",
                signer.sign_raw(r, t.compress().to_bytes(), message, false),
                true,
            ));
        }
        let honest = signer.sign_raw(
            Scalar::ONE,
            EdwardsPoint::mul_base(&Scalar::ONE).compress().to_bytes(),
            message,
            true,
        );
        cases.push(("S + L", honest, false));
        for r_bytes in non_canonical_identities() {
            cases.push((
                "non-canonical R",
                signer.sign_raw(Scalar::ZERO, r_bytes, message, false),
                false,
            ));
        }
        cases.push((
            "R not a point",
            {
                let mut sig = signer.sign(message, EIGHT_TORSION[0]);
                let not_a_point = (2u8..=255)
                    .map(|y| [y].into_iter().chain([0; 31]).collect::<Vec<u8>>())
                    .find(|raw| {
                        CompressedEdwardsY(raw.as_slice().try_into().unwrap())
                            .decompress()
                            .is_none()
                    })
                    .unwrap();
                sig[..32].copy_from_slice(&not_a_point);
                sig
            },
            false,
        ));
        cases
    }

    #[test]
    fn one_signature_follows_the_cofactored_rule_with_canonical_encodings() {
        let signer = Signer::new();
        let key = signer.key();
        let message = br#"{"type":"ContactCreate"}"#;
        for (name, sig, valid) in edge_cases(&signer, message) {
            assert_eq!(key.verifies(message, &sig), valid, "{name}");
        }
        assert!(!key.verifies(message, &[0; 63]), "short signature");
    }

    /// The promise batching rests on: a batch holds exactly when each of its signatures
    /// verifies alone, whatever mix of edge cases it holds.
    #[test]
    fn a_batch_holds_exactly_when_every_signature_verifies_alone() {
        let signer = Signer::new();
        let key = signer.key();
        let message = br#"{"type":"ContactCreate","id":"1"}"#;
        let cases = edge_cases(&signer, message);
        let good = || {
            key.item(message, &signer.sign(message, EIGHT_TORSION[0]))
                .unwrap()
        };
        for (name, sig, valid) in &cases {
            // Alone, and hidden among honest signatures.
            let Some(item) = key.item(message, sig) else {
                assert!(!valid, "{name}: no batch item for a valid signature");
                continue;
            };
            assert_eq!(all_verify(vec![item.clone()]), *valid, "{name} alone");
            let mut items: Vec<_> = (0..15).map(|_| good()).collect();
            items.insert(7, item);
            assert_eq!(all_verify(items), *valid, "{name} among 15 honest ones");
        }
        // All valid edge cases at once, and all of them with one invalid.
        let valid: Vec<_> = cases
            .iter()
            .filter(|c| c.2)
            .map(|c| key.item(message, &c.1).unwrap())
            .collect();
        assert!(valid.len() > 10);
        assert!(all_verify(valid.clone()));
        for (name, sig, _) in cases.iter().filter(|c| !c.2) {
            if let Some(bad) = key.item(message, sig) {
                let mut items = valid.clone();
                items.push(bad);
                assert!(!all_verify(items), "{name} among valid edge cases");
            }
        }
    }

    #[test]
    fn small_order_and_non_canonical_keys_are_refused() {
        for t in EIGHT_TORSION {
            assert!(Key::from_bytes(t.compress().to_bytes()).is_none());
        }
        for raw in non_canonical_identities() {
            assert!(Key::from_bytes(raw).is_none());
        }
        assert!(Key::from_bytes(Signer::new().public).is_some());
    }

    #[test]
    fn canonical_encodings() {
        let point = |s: u64| {
            EdwardsPoint::mul_base(&Scalar::from(s))
                .compress()
                .to_bytes()
        };
        for s in 0..50 {
            assert!(canonical_encoding(&point(s)));
        }
        for raw in non_canonical_identities() {
            assert!(!canonical_encoding(&raw));
        }
        // y = p - 1 is the point of order 2, x = 0: its sign bit must be clear.
        let mut minus_one = [0xff; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        assert!(canonical_encoding(&minus_one));
        minus_one[31] |= 0x80;
        assert!(!canonical_encoding(&minus_one));
    }
}
