//! Signed callbacks: any single-byte change is refused, and any replay
//! inside the window is refused.

use proptest::prelude::*;
use room_media_ctl::auth::{AuthError, HmacAuth, Signed, TencentSign};

const NOW: u64 = 1_800_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn any_changed_byte_of_an_hmac_callback_is_refused(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        nonce in "[a-z0-9]{1,32}",
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        part in 0u8..3,
    ) {
        let mut auth = HmacAuth::new(b"callback-key".to_vec(), 300, 1_000);
        let signed = auth.sign(NOW, &nonce, &body);
        let (mut signed2, mut body2) = (signed.clone(), body.clone());
        match part {
            0 if !body2.is_empty() => {
                let i = at.index(body2.len());
                body2[i] ^= flip;
            }
            1 => {
                let mut n = signed2.nonce.into_bytes();
                let i = at.index(n.len());
                n[i] ^= flip;
                signed2.nonce = String::from_utf8_lossy(&n).into_owned();
            }
            _ => {
                let mut s = signed2.signature.into_bytes();
                let i = at.index(s.len());
                s[i] ^= flip;
                signed2.signature = String::from_utf8_lossy(&s).into_owned();
            }
        }
        prop_assume!((signed2.clone(), body2.clone()) != (signed.clone(), body.clone()));
        prop_assert!(auth.verify(&signed2, &body2, NOW).is_err());
        // The original still passes, once.
        prop_assert_eq!(auth.verify(&signed, &body, NOW), Ok(()));
        prop_assert_eq!(auth.verify(&signed, &body, NOW + 10), Err(AuthError::Replayed));
    }

    #[test]
    fn replays_inside_the_window_are_refused(delays in proptest::collection::vec(0u64..300, 1..20)) {
        let mut auth = HmacAuth::new(b"k".to_vec(), 300, 1_000);
        let signed = auth.sign(NOW, "n-1", b"{}");
        prop_assert_eq!(auth.verify(&signed, b"{}", NOW), Ok(()));
        for d in delays {
            prop_assert_eq!(auth.verify(&signed, b"{}", NOW + d), Err(AuthError::Replayed));
        }
        // Past the window it is refused as expired, never accepted again.
        let late = auth.verify(&signed, b"{}", NOW + 301);
        prop_assert!(matches!(late, Err(AuthError::Expired { .. })), "late replay: {:?}", late);
    }

    #[test]
    fn tencent_signs_verify_and_altered_ones_do_not(t in NOW..NOW + 3_600, at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let sign = TencentSign::new("tencent-key", 86_400);
        let good = sign.sign(t);
        prop_assert_eq!(sign.verify(t, &good, NOW), Ok(()));
        let mut bad = good.clone().into_bytes();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        let bad = String::from_utf8_lossy(&bad).into_owned();
        prop_assert!(sign.verify(t, &bad, NOW).is_err());
        prop_assert!(sign.verify(t + 1, &good, NOW).is_err());
    }
}

#[test]
fn expiry_nonces_and_the_cache_bound() {
    let sign = TencentSign::new("k", 3_600);
    assert_eq!(sign.verify(NOW - 1, &sign.sign(NOW - 1), NOW), Err(AuthError::Expired { at: NOW - 1, now: NOW }));
    assert!(matches!(sign.verify(NOW + 7_200, &sign.sign(NOW + 7_200), NOW), Err(AuthError::Expired { .. })));
    assert_eq!(sign.verify(NOW, "zz", NOW), Err(AuthError::MalformedSignature));

    let mut auth = HmacAuth::new(b"k".to_vec(), 60, 3);
    for n in 0..3 {
        let s = auth.sign(NOW, &format!("n{n}"), b"x");
        assert_eq!(auth.verify(&s, b"x", NOW), Ok(()));
    }
    let s = auth.sign(NOW, "n3", b"x");
    assert_eq!(auth.verify(&s, b"x", NOW), Err(AuthError::NonceCacheFull { max: 3 }));
    // Once the old nonces leave the window, room returns.
    let later = auth.sign(NOW + 61, "n3", b"x");
    assert_eq!(auth.verify(&later, b"x", NOW + 61), Ok(()));
    assert_eq!(auth.nonces(), 1);
    let empty = Signed { timestamp: NOW, nonce: String::new(), signature: String::new() };
    assert_eq!(auth.verify(&empty, b"x", NOW), Err(AuthError::BadNonce));
}
