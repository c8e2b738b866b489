//! Any Authorization value: verification returns, never panics, and never
//! accepts something that is not a token signed with the key.
#![no_main]

use insights_remote::token::{Claims, KeyRing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ring = KeyRing::new("fuzz-signing-key-0123456789abcdef!!").unwrap();
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(claims) = ring.verify(text) {
            // Only a real signature gets here: re-minting the same claims must verify too.
            let again = ring.mint(&Claims { ..claims.clone() }).unwrap();
            assert_eq!(ring.verify(&again).unwrap(), claims);
        }
    }
});
