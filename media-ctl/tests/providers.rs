//! Each provider's callbacks, in the shapes their documents give, parsed
//! into typed results: segments with the right times and streams, stream
//! up and down events, ignored callbacks saying what they were, and typed
//! errors naming the provider and field.

use room_media_ctl::ingest::{
    Callback, FileFormat, IngestError, Ingested, Ingestor, Provider, Segment, StreamEvent, Timing, Track,
    parse_callback,
};

const NOW: i64 = 1_700_000_100_000;

fn segments(body: &str, at: i64) -> Vec<Segment> {
    match parse_callback(body.as_bytes(), at) {
        Ok(Callback::Segments(s)) => s,
        other => panic!("not segments: {other:?}\n{body}"),
    }
}

fn up(body: &str, at: i64) -> StreamEvent {
    match parse_callback(body.as_bytes(), at) {
        Ok(Callback::StreamUp(e)) => e,
        other => panic!("not up: {other:?}\n{body}"),
    }
}

fn down(body: &str, at: i64) -> StreamEvent {
    match parse_callback(body.as_bytes(), at) {
        Ok(Callback::StreamDown(e)) => e,
        other => panic!("not down: {other:?}\n{body}"),
    }
}

fn ignored(body: &str) -> (Provider, String) {
    match parse_callback(body.as_bytes(), NOW) {
        Ok(Callback::Ignored { provider, why }) => (provider, why),
        other => panic!("not ignored: {other:?}\n{body}"),
    }
}

#[test]
fn nginx_rtmp_form_callbacks() {
    let session =
        "app=live&flashver=FMLE%2F3.0&swfurl=&tcurl=rtmp%3A%2F%2Fexample%2Flive&pageurl=&addr=192.0.2.7&clientid=12";
    let e = up(&format!("{session}&call=publish&name=room42&type=live"), NOW);
    assert_eq!(
        (e.provider, e.stream.as_str(), e.track, e.at, e.timed_on_arrival),
        (Provider::NginxRtmp, "live/room42", Track::All, NOW, true)
    );
    assert_eq!(e.detail.as_deref(), Some("from 192.0.2.7"));
    let e = down(&format!("{session}&call=publish_done&name=room42"), NOW);
    assert_eq!(e.stream, "live/room42");

    // record_unique: the name carries the second the file was opened.
    let done = format!("{session}&call=record_done&recorder=&name=room42&path=%2Frec%2Froom42-1700000000.flv");
    let s = segments(&done, NOW);
    assert_eq!(s.len(), 1);
    let s = &s[0];
    assert_eq!(
        (s.stream.as_str(), s.start, s.end, s.timing),
        ("live/room42", 1_700_000_000_000, NOW, Timing::StartOnly)
    );
    assert_eq!(
        (s.url.as_str(), s.file_id.as_str(), s.format),
        ("/rec/room42-1700000000.flv", "/rec/room42-1700000000.flv", FileFormat::Flv)
    );

    // Without a time in the name (no record_unique, or an strftime suffix):
    // timed on arrival.
    for path in ["%2Frec%2Froom42.flv", "%2Frec%2Froom42-20240101-120000.flv"] {
        let s = segments(&format!("{session}&call=record_done&name=room42&path={path}"), NOW);
        assert_eq!((s[0].start, s[0].end, s[0].timing), (NOW, NOW, Timing::OnArrival), "{path}");
    }
    // A name nginx escapes into the path.
    let s = segments(&format!("{session}&call=record_done&name=a+b&path=%2Frec%2Fa%2520b-1700000000.flv"), NOW);
    assert_eq!((s[0].stream.as_str(), s[0].start), ("live/a b", 1_700_000_000_000));

    // The publisher's own arguments come last and cannot override nginx's fields.
    let injected = format!("{session}&call=publish&name=room42&type=live&call=record_done&path=%2Fetc%2Fpasswd");
    assert_eq!(up(&injected, NOW).stream, "live/room42");

    let (p, why) = ignored(&format!("{session}&call=play&name=room42"));
    assert_eq!(p, Provider::NginxRtmp);
    assert!(why.contains("call=play"), "{why}");
    assert_eq!(
        parse_callback(format!("{session}&call=record_done&name=room42").as_bytes(), NOW),
        Err(IngestError::Field { provider: Provider::NginxRtmp, field: "path" })
    );
    assert!(matches!(parse_callback(b"call=publish&name=%zz", NOW), Err(IngestError::Form(_))));
    let err = parse_callback(b"user=x&token=y", NOW).expect_err("no call");
    assert!(
        matches!(&err, IngestError::UnknownShape { seen } if seen.contains("form body") && seen.contains("\"user\"")),
        "{err}"
    );
}

#[test]
fn srs_callbacks() {
    let dvr = r#"{"server_id":"vid-1","action":"on_dvr","client_id":"341w361a","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","tcUrl":"rtmp://127.0.0.1:1935/live","stream":"livestream","param":"","cwd":"/usr/local/srs","file":"./objs/nginx/html/live/livestream.1700000000000.flv"}"#;
    let s = segments(dvr, NOW);
    assert_eq!(
        (s[0].stream.as_str(), s[0].start, s[0].end, s[0].timing),
        ("live/livestream", 1_700_000_000_000, NOW, Timing::StartOnly)
    );
    // A retry later is the same file.
    let mut ing = Ingestor::new();
    assert_eq!(ing.ingest(dvr.as_bytes(), NOW), Ok(Ingested::New));
    assert_eq!(ing.ingest(dvr.as_bytes(), NOW + 5_000), Ok(Ingested::Duplicate));
    // A file name dated after the callback arrived is refused, typed.
    assert_eq!(
        parse_callback(dvr.as_bytes(), 1_600_000_000_000),
        Err(IngestError::EndBeforeStart { start: 1_700_000_000_000, end: 1_600_000_000_000 })
    );
    // [timestamp] in an HLS name: the segment is placed exactly.
    let hls = r#"{"action":"on_hls","app":"live","stream":"s","duration":4.2,"file":"./live/s-1700000000000.ts","url":"live/s-1700000000000.ts","seq_no":7}"#;
    let s = segments(hls, NOW);
    assert_eq!(
        (s[0].start, s[0].end, s[0].timing, s[0].format),
        (1_700_000_000_000, 1_700_000_004_200, Timing::Reported, FileFormat::Hls)
    );

    let e = up(
        r#"{"action":"on_publish","client_id":1985,"ip":"192.168.1.10","vhost":"video.test.com","app":"live","tcUrl":"rtmp://video.test.com/live","stream":"livestream","param":"?token=x"}"#,
        NOW,
    );
    assert_eq!((e.provider, e.stream.as_str(), e.timed_on_arrival), (Provider::Srs, "live/livestream", true));
    assert_eq!(down(r#"{"action":"on_unpublish","app":"live","stream":"livestream"}"#, NOW).stream, "live/livestream");
    assert_eq!(ignored(r#"{"action":"on_connect","client_id":1985,"app":"live"}"#).0, Provider::Srs);
}

#[test]
fn tencent_css_callbacks() {
    let rec = r#"{"appid":1251457656,"app":"push.example.com","appname":"live","stream_id":"room42","channel_id":"room42","file_id":"9031868223267109922","record_file_id":"9031868223267109922","file_format":"hls","task_id":"1","start_time":1700000000,"end_time":1700000063,"start_time_usec":250000,"end_time_usec":999999,"duration":63,"file_size":1349,"video_url":"http://vod.example/playlist.m3u8","event_type":100,"t":1700000600,"sign":"x"}"#;
    let s = segments(rec, NOW);
    assert_eq!(
        (s[0].start, s[0].end, s[0].format, s[0].timing),
        (1_700_000_000_250, 1_700_000_063_999, FileFormat::Hls, Timing::Reported)
    );
    assert_eq!(
        parse_callback(rec.replace("\"start_time_usec\":250000", "\"start_time_usec\":1000000").as_bytes(), NOW),
        Err(IngestError::Field { provider: Provider::TencentCss, field: "start_time_usec" })
    );
    let push = r#"{"appid":1,"app":"push.example.com","appname":"live","stream_id":"room42","channel_id":"room42","event_time":1700000000,"sequence":"7037777160241646428","node":"125.39.15.21","user_ip":"61.135.194.200","stream_param":"","errcode":0,"errmsg":"","event_type":1,"t":1700000600,"sign":"x"}"#;
    let e = up(push, NOW);
    assert_eq!((e.stream.as_str(), e.at, e.timed_on_arrival), ("room42", 1_700_000_000_000, false));
    assert_eq!(e.detail.as_deref(), Some("sequence 7037777160241646428"));
    let cut = r#"{"stream_id":"room42","event_time":1700000070,"errcode":2,"errmsg":"recv rtmpcloseStream","push_duration":"70000","event_type":0}"#;
    let e = down(cut, NOW);
    assert_eq!(e.detail.as_deref(), Some("errcode 2: recv rtmpcloseStream"));
    assert!(ignored(r#"{"event_type":200,"stream_id":"room42"}"#).1.contains("200"));
}

#[test]
fn trtc_callbacks() {
    // TRTC's own signature example: user_85034614 stopped pushing audio.
    let stop_audio = "{\n\t\"EventGroupId\":\t2,\n\t\"EventType\":\t204,\n\t\"CallbackTs\":\t1664209748188,\n\t\"EventInfo\":\t{\n\t\t\"RoomId\":\t8489,\n\t\t\"EventTs\":\t1664209748,\n\t\t\"EventMsTs\":\t1664209748180,\n\t\t\"UserId\":\t\"user_85034614\",\n\t\t\"Reason\":\t0\n\t}\n}";
    let e = down(stop_audio, NOW);
    assert_eq!(
        (e.provider, e.stream.as_str(), e.track, e.at),
        (Provider::Trtc, "8489/user_85034614", Track::Audio, 1_664_209_748_180)
    );
    let aux = r#"{"EventGroupId":2,"EventType":205,"EventInfo":{"RoomId":"r1","EventTs":1700000000,"UserId":"t"}}"#;
    let e = up(aux, NOW);
    assert_eq!((e.stream.as_str(), e.track, e.at), ("r1/t/aux", Track::Video, 1_700_000_000_000));

    let mp4 = r#"{"EventGroupId":3,"EventType":310,"CallbackTs":1622191965320,"EventInfo":{"RoomId":"20015","EventTs":1622191989,"EventMsTs":1622186275757,"UserId":"xx","TaskId":"xx","Payload":{"Status":0,"FileList":["xxxx1.mp4","xxxx2.mp4"],"FileMessage":[{"FileName":"xxxx1.mp4","UserId":"xxxx","TrackType":"audio_video","MediaId":"main","StartTimeStamp":1622186279145,"EndTimeStamp":1622186282145},{"FileName":"xxxx2.mp4","UserId":"xxxx","TrackType":"audio","MediaId":"aux","StartTimeStamp":1622186279153,"EndTimeStamp":1622186282153}]}}}"#;
    let s = segments(mp4, NOW);
    let got: Vec<_> = s.iter().map(|s| (s.stream.as_str(), s.start, s.end, s.format)).collect();
    assert_eq!(
        got,
        vec![
            ("20015/xxxx", 1_622_186_279_145, 1_622_186_282_145, FileFormat::Mp4),
            ("20015/xxxx/aux/audio", 1_622_186_279_153, 1_622_186_282_153, FileFormat::Mp4),
        ]
    );
    let vod = r#"{"EventGroupId":3,"EventType":311,"CallbackTs":1622191965320,"EventInfo":{"RoomId":"20015","EventTs":1622191965,"EventMsTs":1622186275757,"UserId":"xx","TaskId":"xx","Payload":{"Status":0,"TencentVod":{"UserId":"xx","TrackType":"audio_video","MediaId":"main","FileId":"f-1","VideoUrl":"http://vod.example/f-1.mp4","CacheFile":"xxxx.mp4","StartTimeStamp":1622186279153,"EndTimeStamp":1622186282153}}}}"#;
    let s = segments(vod, NOW);
    assert_eq!(
        (s[0].stream.as_str(), s[0].file_id.as_str(), s[0].url.as_str()),
        ("20015/xx", "f-1", "http://vod.example/f-1.mp4")
    );
    // The call kit's wrapper.
    let wrapped = format!(
        r#"{{"CallId":"c","Callback":{vod},"CallbackCommand":"Call.CallbackAfterRecordChanged","EventTime":1}}"#
    );
    assert_eq!(segments(&wrapped, NOW), s);
    let failed = r#"{"EventGroupId":3,"EventType":311,"EventInfo":{"RoomId":"20015","EventTs":1622191965,"Payload":{"Status":1,"Errmsg":"upload stalled","TencentVod":{"UserId":"123","CacheFile":"xxx.mp4"}}}}"#;
    assert!(ignored(failed).1.contains("upload stalled"));
    assert_eq!(
        ignored(r#"{"EventGroupId":1,"EventType":103,"EventInfo":{"RoomId":1,"UserId":"u"}}"#).0,
        Provider::Trtc
    );
}

#[test]
fn agora_callbacks() {
    let uploaded = r#"{"noticeId":"n-1","productId":3,"eventType":31,"notifyMs":1619172890000,"payload":{"cname":"class1","uid":"527","sid":"s-1","sequence":2,"sendts":1619172880000,"serviceType":2,"details":{"msgName":"uploaded","status":0,"fileList":[{"fileName":"a.m3u8","trackType":"audio","uid":"57297","mixedAllUser":false,"isPlayable":true,"sliceStartTime":1619172871089},{"fileName":"b.m3u8","trackType":"audio_and_video","uid":"10230","mixedAllUser":false,"isPlayable":true,"sliceStartTime":1619172871099}]}}}"#;
    let s = segments(uploaded, NOW);
    let got: Vec<_> = s.iter().map(|s| (s.stream.as_str(), s.user.as_deref(), s.start, s.end, s.timing)).collect();
    assert_eq!(
        got,
        vec![
            ("class1/10230", Some("10230"), 1_619_172_871_099, 1_619_172_880_000, Timing::StartOnly),
            ("class1/57297/audio", Some("57297"), 1_619_172_871_089, 1_619_172_880_000, Timing::StartOnly),
        ]
    );
    // Composite with MP4 slices: the playlist of the same recording is left
    // out, and each slice ends where the next starts.
    let composite = r#"{"noticeId":"n-2","productId":3,"eventType":31,"notifyMs":1619173000000,"payload":{"cname":"class1","uid":"527","sid":"s-1","sequence":3,"sendts":1619173000000,"serviceType":2,"details":{"msgName":"uploaded","status":0,"fileList":[{"fileName":"x_1.mp4","trackType":"audio_and_video","uid":"0","mixedAllUser":true,"isPlayable":true,"sliceStartTime":1619172932080},{"fileName":"x_0.mp4","trackType":"audio_and_video","uid":"0","mixedAllUser":true,"isPlayable":true,"sliceStartTime":1619172632080},{"fileName":"x.m3u8","trackType":"audio_and_video","uid":"0","mixedAllUser":true,"isPlayable":true,"sliceStartTime":1619172632080}]}}}"#;
    let s = segments(composite, NOW);
    let got: Vec<_> = s.iter().map(|s| (s.stream.as_str(), s.file_id.as_str(), s.start, s.end)).collect();
    assert_eq!(
        got,
        vec![
            ("class1/mix", "x_0.mp4", 1_619_172_632_080, 1_619_172_932_080),
            ("class1/mix", "x_1.mp4", 1_619_172_932_080, 1_619_173_000_000),
        ]
    );
    let mut ing = Ingestor::new();
    assert_eq!(ing.ingest(composite.as_bytes(), NOW), Ok(Ingested::New));
    assert!(ing.timeline("class1/mix").expect("held").gaps().is_empty());

    let audio = r#"{"noticeId":"n-3","productId":3,"eventType":43,"notifyMs":1,"payload":{"cname":"class1","uid":"527","sid":"s-1","sequence":4,"sendts":1619172871000,"serviceType":1,"details":{"msgName":"recorder_audio_stream_state_changed","streamUid":"10230","state":1,"UtcMs":1619172875000}}}"#;
    let e = down(audio, NOW);
    assert_eq!((e.stream.as_str(), e.track, e.at), ("class1/10230", Track::Audio, 1_619_172_875_000));
    let video = audio.replace("\"eventType\":43", "\"eventType\":44").replace("\"state\":1", "\"state\":0");
    assert_eq!(up(&video, NOW).track, Track::Video);
    let (p, why) = ignored(
        r#"{"noticeId":"n-4","productId":3,"eventType":33,"payload":{"cname":"c","details":{"msgName":"uploading_progress","progress":5000}}}"#,
    );
    assert_eq!(p, Provider::Agora);
    assert!(why.contains("uploading_progress"), "{why}");
    assert!(ignored(r#"{"noticeId":"n-5","productId":1,"eventType":101,"payload":{}}"#).1.contains("productId 1"));
}

#[test]
fn livekit_callbacks() {
    let ended = r#"{"event":"egress_ended","egressInfo":{"egressId":"EG_abc","roomId":"RM_1","roomName":"class1","status":"EGRESS_COMPLETE","startedAt":"1700000000000000000","endedAt":"1700000600000000000","participant":{"roomName":"class1","identity":"teacher"},"fileResults":[{"filename":"teacher.mp4","startedAt":"1700000001500000000","endedAt":"1700000599000000000","duration":"597500000000","size":"1000","location":"https://bucket.example/teacher.mp4"}]},"id":"EV_1","createdAt":"1700000601"}"#;
    let s = segments(ended, NOW);
    assert_eq!(s.len(), 1);
    let s = &s[0];
    assert_eq!(
        (s.stream.as_str(), s.file_id.as_str(), s.url.as_str(), s.start, s.end, s.format),
        (
            "class1/teacher",
            "EG_abc/teacher.mp4",
            "https://bucket.example/teacher.mp4",
            1_700_000_001_500,
            1_700_000_599_000,
            FileFormat::Mp4
        )
    );
    // HLS results of a room composite, snake_case names, an end from the duration.
    let hls = r#"{"event":"egress_ended","egress_info":{"egress_id":"EG_2","room_name":"class1","room_composite":{"room_name":"class1","layout":"grid"},"segment_results":[{"playlist_name":"class1.m3u8","playlist_location":"https://bucket.example/class1.m3u8","started_at":1700000000000000000,"duration":60000000000,"segment_count":10}]}}"#;
    let s = segments(hls, NOW);
    assert_eq!(
        (s[0].stream.as_str(), s[0].start, s[0].end, s[0].format),
        ("class1/mix", 1_700_000_000_000, 1_700_000_060_000, FileFormat::Hls)
    );

    let published = r#"{"event":"track_published","room":{"sid":"RM_1","name":"class1"},"participant":{"sid":"PA_1","identity":"teacher"},"track":{"sid":"TR_1","type":"VIDEO","source":"SCREEN_SHARE"},"id":"EV_2","createdAt":"1700000010"}"#;
    let e = up(published, NOW);
    assert_eq!(
        (e.stream.as_str(), e.track, e.at, e.user.as_deref()),
        ("class1/teacher/screen", Track::Video, 1_700_000_010_000, Some("teacher"))
    );
    // The default track type (AUDIO) is omitted in protobuf JSON.
    let mic = r#"{"event":"track_unpublished","room":{"name":"class1"},"participant":{"identity":"teacher"},"track":{"sid":"TR_2","source":"MICROPHONE"},"createdAt":1700000020}"#;
    let e = down(mic, NOW);
    assert_eq!((e.stream.as_str(), e.track), ("class1/teacher", Track::Audio));
    let left = r#"{"event":"participant_left","room":{"name":"class1"},"participant":{"identity":"student-7"},"createdAt":"1700000030"}"#;
    assert_eq!(down(left, NOW).track, Track::All);
    let failed = r#"{"event":"egress_ended","egressInfo":{"egressId":"EG_3","roomName":"class1","status":"EGRESS_FAILED","error":"could not connect"}}"#;
    let (_, why) = ignored(failed);
    assert!(why.contains("EGRESS_FAILED") && why.contains("could not connect"), "{why}");
    assert_eq!(ignored(r#"{"event":"room_started","room":{"name":"class1"}}"#).0, Provider::LiveKit);
}
