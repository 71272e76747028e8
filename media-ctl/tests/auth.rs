//! Signed callbacks: any single-byte change is refused, and any replay
//! inside the window is refused.

use proptest::prelude::*;
use room_media_ctl::auth::{AgoraSign, AuthError, HmacAuth, LiveKitWebhookAuth, Signed, TencentSign, TrtcSign};

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

    /// TRTC, Agora (V1 and V2) and LiveKit: a signature over a body
    /// passes for that body, and any single changed byte of the body or
    /// of the signature text is refused.
    #[test]
    fn provider_signatures_refuse_any_changed_byte(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        scheme in 0u8..4,
        in_body in any::<bool>(),
    ) {
        let trtc = TrtcSign::new("trtc-key");
        let agora = AgoraSign::new("agora-secret");
        let livekit = LiveKitWebhookAuth::new("APIkey", "livekit-secret", 10);
        let sign = |b: &[u8]| match scheme {
            0 => trtc.sign(b),
            1 => agora.sign_v1(b),
            2 => agora.sign_v2(b),
            _ => livekit.sign(b, NOW, 600),
        };
        let verify = |sig: &str, b: &[u8]| match scheme {
            0 => trtc.verify(sig, b),
            1 => agora.verify_v1(sig, b),
            2 => agora.verify_v2(sig, b),
            _ => livekit.verify(sig, b, NOW + 1),
        };
        let sig = sign(&body);
        prop_assert_eq!(verify(&sig, &body), Ok(()));
        let (mut sig2, mut body2) = (sig.clone().into_bytes(), body.clone());
        if in_body && !body2.is_empty() {
            let i = at.index(body2.len());
            body2[i] ^= flip;
        } else {
            let i = at.index(sig2.len());
            sig2[i] ^= flip;
        }
        let sig2 = String::from_utf8_lossy(&sig2).into_owned();
        prop_assume!((sig2.as_str(), body2.as_slice()) != (sig.as_str(), body.as_slice()));
        prop_assert!(verify(&sig2, &body2).is_err(), "accepted {:?}", sig2);
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

#[test]
fn trtc_and_agora_match_their_documented_examples() {
    // TRTC's "Verify Signature Example": key 123654 over its example body.
    let body = "{\n\t\"EventGroupId\":\t2,\n\t\"EventType\":\t204,\n\t\"CallbackTs\":\t1664209748188,\n\t\"EventInfo\":\t{\n\t\t\"RoomId\":\t8489,\n\t\t\"EventTs\":\t1664209748,\n\t\t\"EventMsTs\":\t1664209748180,\n\t\t\"UserId\":\t\"user_85034614\",\n\t\t\"Reason\":\t0\n\t}\n}";
    let trtc = TrtcSign::new("123654");
    assert_eq!(trtc.sign(body.as_bytes()), "kkoFeO3Oh2ZHnjtg8tEAQhtXK16/KI05W3BQff8IvGA=");
    assert_eq!(trtc.verify("kkoFeO3Oh2ZHnjtg8tEAQhtXK16/KI05W3BQff8IvGA=", body.as_bytes()), Ok(()));
    assert_eq!(
        trtc.verify("kkoFeO3Oh2ZHnjtg8tEAQhtXK16/KI05W3BQff8IvGA", body.as_bytes()),
        Err(AuthError::MalformedSignature)
    );
    assert_eq!(
        TrtcSign::new("123655").verify("kkoFeO3Oh2ZHnjtg8tEAQhtXK16/KI05W3BQff8IvGA=", body.as_bytes()),
        Err(AuthError::BadSignature)
    );

    // Agora's signature example: secret "secret" over its example body.
    let body = br#"{"eventType":10,"noticeId":"4eb720f0-8da7-11e9-a43e-53f411c2761f","notifyMs":1560408533119,"payload":{"a":"1","b":2},"productId":1}"#;
    let agora = AgoraSign::new("secret");
    assert_eq!(agora.sign_v1(body), "5a3bb6a6d9fad2ea9ae3fb707a14c9d7f3136df1");
    assert_eq!(agora.sign_v2(body), "de96da5acf03b0021ac3b4fa2225e7ae6f3533a30d50bb02c08ea4fa748bda24");
    assert_eq!(agora.verify_v1("5a3bb6a6d9fad2ea9ae3fb707a14c9d7f3136df1", body), Ok(()));
    assert_eq!(agora.verify_v2("de96da5acf03b0021ac3b4fa2225e7ae6f3533a30d50bb02c08ea4fa748bda24", body), Ok(()));
    assert_eq!(agora.verify_v2("5a3bb6a6d9fad2ea9ae3fb707a14c9d7f3136df1", body), Err(AuthError::MalformedSignature));
}

#[test]
fn livekit_tokens_are_checked_for_issuer_time_algorithm_and_body() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let auth = LiveKitWebhookAuth::new("APIkey", "secret", 10);
    let body = br#"{"event":"room_started","room":{"name":"class1"}}"#;
    let token = auth.sign(body, NOW, 300);
    assert_eq!(auth.verify(&token, body, NOW), Ok(()));
    assert_eq!(auth.verify(&format!("Bearer {token}"), body, NOW + 300), Ok(()));
    assert_eq!(auth.verify(&token, b"{}", NOW), Err(AuthError::BodyMismatch));
    assert_eq!(auth.verify(&token, body, NOW + 311), Err(AuthError::Expired { at: NOW + 300, now: NOW + 311 }));
    assert_eq!(auth.verify(&token, body, NOW - 11), Err(AuthError::Expired { at: NOW, now: NOW - 11 }));
    assert_eq!(LiveKitWebhookAuth::new("other", "secret", 10).verify(&token, body, NOW), Err(AuthError::WrongIssuer));
    assert_eq!(LiveKitWebhookAuth::new("APIkey", "other", 10).verify(&token, body, NOW), Err(AuthError::BadSignature));
    // alg "none" with an empty signature, and a body swapped under a valid header.
    let claims = token.split('.').nth(1).expect("claims");
    let none = format!("{}.{claims}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(auth.verify(&none, body, NOW), Err(AuthError::UnsupportedAlgorithm("none".into())));
    assert!(matches!(auth.verify("a.b", body, NOW), Err(AuthError::MalformedToken(_))));
    assert!(matches!(auth.verify(&"x".repeat(10_000), body, NOW), Err(AuthError::MalformedToken(_))));
    assert!(matches!(auth.verify("!!.!!.!!", body, NOW), Err(AuthError::MalformedToken(_))));
}
