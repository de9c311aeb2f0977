//! Crypto capability: `moa:crypto/signatures`, RS256 signature checks done natively (ring) instead of
//! in wasm, with a bounded cache of the checks that passed. Pure computation: no grant, no config.

use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use anyhow::Result;
use bindings::moa::crypto::signatures::{self, RsaPublicKey};
use ring::digest;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use wasmtime::component::{HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/crypto",
        imports: { default: trappable },
    });
}

/// How many verified signatures the cache remembers (32 bytes each, about 3 MiB in all).
const CACHED_SIGNATURES: usize = 100_000;

/// Signatures that verified, by a SHA-256 over key, message and signature; the oldest go first.
///
/// Only successes are kept: a flood of bad tokens cannot push good ones out faster than new good
/// ones arrive, and a failed check is always done again. Whether a signature verifies depends only
/// on these inputs, so a remembered success is as good as a new check for any caller; what the
/// token says (issuer, audience, expiry, groups) is still checked by the guest on every request.
#[derive(Default)]
pub struct VerifiedSignatures {
    seen: Mutex<Remembered>,
}

/// The fingerprints of verified signatures, as a set and in the order they came.
type Remembered = (HashSet<[u8; 32]>, VecDeque<[u8; 32]>);

impl VerifiedSignatures {
    /// Whether `signature` is `key`'s RS256 signature of `message` (from the cache when it is there).
    pub fn verify_rs256(&self, n: &[u8], e: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let fingerprint = fingerprint(n, e, message, signature);
        if self
            .seen
            .lock()
            .is_ok_and(|seen| seen.0.contains(&fingerprint))
        {
            return true;
        }
        let valid = RsaPublicKeyComponents { n, e }
            .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
            .is_ok();
        if valid && let Ok(mut seen) = self.seen.lock() {
            let (set, order) = &mut *seen;
            if set.insert(fingerprint) {
                order.push_back(fingerprint);
                while order.len() > CACHED_SIGNATURES {
                    if let Some(oldest) = order.pop_front() {
                        set.remove(&oldest);
                    }
                }
            }
        }
        valid
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().map(|seen| seen.0.len()).unwrap_or(0)
    }
}

/// SHA-256 over the inputs, each length-prefixed so that no two different inputs share a text.
fn fingerprint(n: &[u8], e: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in [n, e, message, signature] {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// Marker type naming this capability in the linker.
pub struct Crypto;

impl HasData for Crypto {
    type Data<'a> = CryptoView<'a>;
}

/// What the host trait sees: the app's cache.
pub struct CryptoView<'a> {
    verified: &'a VerifiedSignatures,
}

impl signatures::Host for CryptoView<'_> {
    fn verify_rs256(
        &mut self,
        key: RsaPublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        Ok(self
            .verified
            .verify_rs256(&key.n, &key.e, &message, &signature))
    }
}

/// `moa:crypto/signatures@0.1.0` for every component (it reads nothing but its arguments).
pub struct CryptoCapability;

impl Capability for CryptoCapability {
    const NAME: &'static str = "crypto";
    const IMPORTS: &'static [&'static str] = &["moa:crypto/signatures@0.1.0"];

    type AppState = Arc<VerifiedSignatures>;
    type ComponentState = Arc<VerifiedSignatures>;
    type InstanceState = Arc<VerifiedSignatures>;
    type View<'a> = CryptoView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> Result<()> {
        signatures::add_to_linker::<T, Crypto>(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(_cx: &ConfigureContext<'_>) -> Result<Arc<VerifiedSignatures>> {
        Ok(Arc::default())
    }

    fn component(
        verified: &Arc<VerifiedSignatures>,
        _cx: &ComponentContext<'_>,
    ) -> Result<Arc<VerifiedSignatures>> {
        Ok(verified.clone())
    }

    fn instance(verified: &Arc<VerifiedSignatures>) -> Arc<VerifiedSignatures> {
        verified.clone()
    }

    fn view<'a>(parts: InstanceParts<'a, Arc<VerifiedSignatures>>) -> CryptoView<'a> {
        CryptoView {
            verified: parts.state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    use rsa::traits::PublicKeyParts as _;

    #[test]
    fn good_signatures_verify_and_are_remembered_bad_ones_never() {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("key");
        let public = private.to_public_key();
        let (n, e) = (public.n().to_bytes_be(), public.e().to_bytes_be());
        let signer = SigningKey::<rsa::sha2::Sha256>::new(private);
        let message = b"header.payload";
        let signature = signer.sign(message).to_vec();
        let verified = VerifiedSignatures::default();
        assert!(verified.verify_rs256(&n, &e, message, &signature));
        assert_eq!(verified.len(), 1, "a success is remembered");
        assert!(
            verified.verify_rs256(&n, &e, message, &signature),
            "and found again"
        );
        assert_eq!(verified.len(), 1);
        let mut forged = signature.clone();
        forged[10] ^= 1;
        assert!(!verified.verify_rs256(&n, &e, message, &forged));
        assert!(!verified.verify_rs256(&n, &e, b"header.other", &signature));
        assert!(!verified.verify_rs256(&n, &e, message, &signature[..100]));
        let mut other_n = n.clone();
        other_n[5] ^= 1;
        assert!(!verified.verify_rs256(&other_n, &e, message, &signature));
        assert_eq!(verified.len(), 1, "failures are not remembered");
    }
}
