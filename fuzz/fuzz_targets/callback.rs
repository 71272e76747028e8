//! Recording and stream callbacks, every provider shape:
//! `room_media_ctl::ingest::Ingestor::ingest` (through `parse_callback`:
//! nginx-rtmp forms, SRS, Tencent, TRTC, Agora, LiveKit, Roomkit JSON), and
//! the signature verifiers of `room_media_ctl::auth` on the same body.
//!
//! Input: `<header line>\n<body>`; the header is what a provider puts in
//! its signature header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use room_media_ctl::auth::{AgoraSign, HmacAuth, LiveKitWebhookAuth, Signed, TencentSign, TrtcSign};
use room_media_ctl::ingest::{
    IngestLimits, Ingested, Ingestor, MAX_FILES_PER_CALLBACK, MAX_SEGMENT_MS, MAX_TIME_MS, parse_callback,
};

const NOW_S: u64 = 1_764_000_000;
const NOW_MS: i64 = 1_764_000_000_000;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(0);
    let (header, body) = (&data[..split], data.get(split + 1..).unwrap_or(data));
    let header = String::from_utf8_lossy(header);

    // Ingestion: bounded, all-or-nothing, idempotent.
    let limits = IngestLimits { max_streams: 4, max_segments_per_stream: 8 };
    let mut ingestor = Ingestor::with_limits(limits);
    let first = ingestor.ingest(body, NOW_MS);
    if let Ok(room_media_ctl::ingest::Callback::Segments(segs)) = parse_callback(body, NOW_MS) {
        assert!(segs.len() <= MAX_FILES_PER_CALLBACK);
    }
    match &first {
        Ok(Ingested::New) | Ok(Ingested::Partly { .. }) => {
            let before = ingestor.clone();
            // The same callback again (providers retry) changes nothing.
            assert!(matches!(ingestor.ingest(body, NOW_MS), Ok(Ingested::Duplicate)));
            assert_eq!(ingestor, before);
        }
        Err(_) => assert_eq!(ingestor, Ingestor::with_limits(limits), "a refused callback changed the timelines"),
        _ => {}
    }
    assert!(ingestor.timelines().len() <= limits.max_streams);
    for t in ingestor.timelines().values() {
        assert!(t.len() <= limits.max_segments_per_stream);
        for s in t.segments() {
            assert!(0 <= s.start && s.start <= s.end && s.end <= MAX_TIME_MS, "{s:?}");
            assert!(s.duration() <= MAX_SEGMENT_MS, "{s:?}");
        }
        let _ = (t.span(), t.gaps(), t.overlaps());
    }

    // Signature verifiers: a header of any shape is a typed error, and
    // what the verifier's own signer produces verifies.
    let key = b"callback key 0123456789".to_vec();
    let tencent = TencentSign::new(key.clone(), 86_400);
    let t = header.split_once(':').and_then(|(t, _)| t.parse::<u64>().ok()).unwrap_or(NOW_S + 60);
    let sign = header.split_once(':').map_or(&*header, |(_, s)| s);
    let _ = tencent.verify(t, sign, NOW_S);
    if t >= NOW_S && t - NOW_S <= 86_400 {
        assert_eq!(tencent.verify(t, &tencent.sign(t), NOW_S), Ok(()));
    }
    let trtc = TrtcSign::new(key.clone());
    let _ = trtc.verify(&header, body);
    assert_eq!(trtc.verify(&trtc.sign(body), body), Ok(()));
    let agora = AgoraSign::new(key.clone());
    let _ = agora.verify_v1(&header, body);
    let _ = agora.verify_v2(&header, body);
    assert_eq!(agora.verify_v1(&agora.sign_v1(body), body), Ok(()));
    assert_eq!(agora.verify_v2(&agora.sign_v2(body), body), Ok(()));
    let livekit = LiveKitWebhookAuth::new("APIkey", key.clone(), 10);
    let _ = livekit.verify(&header, body, NOW_S);
    assert_eq!(livekit.verify(&livekit.sign(body, NOW_S, 600), body, NOW_S), Ok(()));
    let mut hmac = HmacAuth::new(key, 300, 4);
    let nonce = header.chars().take(80).collect::<String>();
    let signed = Signed { timestamp: NOW_S, nonce: nonce.clone(), signature: header.to_string() };
    let _ = hmac.verify(&signed, body, NOW_S);
    let good = hmac.sign(NOW_S, &nonce, body);
    let _ = hmac.verify(&good, body, NOW_S);
    // A nonce is accepted once at most.
    assert!(hmac.verify(&good, body, NOW_S).is_err());
    assert!(hmac.nonces() <= 4);
});
