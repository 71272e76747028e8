//! Mix layouts: `room_media_ctl::layout::layout` (templates resolved on a
//! canvas) over a layout request in JSON, as a host's API would take it
//! from a teacher's client. The crate has no JSON form of its own, so the
//! request shape is defined here (see docs/FUZZING.md). Checks the bounds
//! the module documents: inside the canvas, even sizes, one z per region,
//! crops inside their inputs, at most `max_inputs` inputs.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use room_media_ctl::layout::{
    Canvas, Corner, Fit, Input, InputKind, Length, Limits, Rect, RegionSpec, Rgb, Template, Watermark, WatermarkKind,
    layout,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(untagged)]
enum Len {
    Px(u32),
    Frac(f64),
}

impl Len {
    fn get(&self) -> Length {
        match *self {
            Len::Px(p) => Length::Px(p),
            Len::Frac(f) => Length::Frac(f),
        }
    }
}

#[derive(Deserialize)]
struct CropJ {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

#[derive(Deserialize)]
struct RegionJ {
    input: String,
    x: Len,
    y: Len,
    w: Len,
    h: Len,
    #[serde(default)]
    z: i32,
    crop: Option<CropJ>,
    #[serde(default)]
    fit: u8,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TemplateJ {
    Single { input: String },
    SideBySide { left: String, right: String },
    Pip { main: String, overlay: String, corner: u8, scale: f64, margin: u32 },
    Grid { inputs: Vec<String> },
    Custom { regions: Vec<RegionJ> },
}

#[derive(Deserialize)]
struct InputJ {
    id: String,
    #[serde(default)]
    kind: u8,
    w: u32,
    h: u32,
}

#[derive(Deserialize)]
struct WatermarkJ {
    text: Option<String>,
    image: Option<String>,
    x: Len,
    y: Len,
    size: Len,
}

#[derive(Deserialize)]
struct Request {
    width: u32,
    height: u32,
    #[serde(default)]
    color: [u8; 3],
    template: TemplateJ,
    inputs: Vec<InputJ>,
    watermark: Option<WatermarkJ>,
    max_inputs: Option<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<Request>(data) else { return };
    let canvas = Canvas { width: req.width, height: req.height, color: Rgb(req.color[0], req.color[1], req.color[2]) };
    let template = match req.template {
        TemplateJ::Single { input } => Template::Single { input },
        TemplateJ::SideBySide { left, right } => Template::SideBySide { left, right },
        TemplateJ::Pip { main, overlay, corner, scale, margin } => Template::PictureInPicture {
            main,
            overlay,
            corner: [Corner::TopLeft, Corner::TopRight, Corner::BottomLeft, Corner::BottomRight]
                [usize::from(corner % 4)],
            scale,
            margin,
        },
        TemplateJ::Grid { inputs } => Template::Grid { inputs },
        TemplateJ::Custom { regions } => Template::Custom(
            regions
                .into_iter()
                .map(|r| RegionSpec {
                    input: r.input,
                    x: r.x.get(),
                    y: r.y.get(),
                    width: r.w.get(),
                    height: r.h.get(),
                    z: r.z,
                    crop: r.crop.map(|c| Rect { x: c.x, y: c.y, width: c.w, height: c.h }),
                    fit: [Fit::Contain, Fit::Cover, Fit::Stretch][usize::from(r.fit % 3)],
                })
                .collect(),
        ),
    };
    let inputs: Vec<Input> = req
        .inputs
        .into_iter()
        .map(|i| Input {
            id: i.id,
            kind: match i.kind % 5 {
                0 => InputKind::AudioVideo,
                1 => InputKind::Video,
                2 => InputKind::Audio,
                3 => InputKind::Image,
                _ => InputKind::Color(Rgb(1, 2, 3)),
            },
            width: i.w,
            height: i.h,
        })
        .collect();
    let watermark = req.watermark.map(|w| Watermark {
        kind: match (w.text, w.image) {
            (Some(t), _) => WatermarkKind::Text(t),
            (None, Some(p)) => WatermarkKind::Image(p),
            (None, None) => WatermarkKind::Text(String::new()),
        },
        x: w.x.get(),
        y: w.y.get(),
        size: w.size.get(),
    });
    let mut limits = Limits::default();
    if let Some(m) = req.max_inputs {
        limits.max_inputs = usize::from(m);
    }
    let Ok(l) = layout(canvas, &template, &inputs, watermark.as_ref(), limits) else { return };
    assert_eq!(l.canvas, canvas);
    assert!(!l.regions.is_empty());
    let used: BTreeSet<&str> = l.regions.iter().map(|r| r.input.as_str()).collect();
    assert!(used.len() <= limits.max_inputs);
    let mut zs = BTreeSet::new();
    for r in &l.regions {
        let rect = r.rect;
        assert!(rect.width > 0 && rect.height > 0, "{rect:?}");
        assert!(rect.width % 2 == 0 && rect.height % 2 == 0, "odd size {rect:?}");
        assert!(u64::from(rect.x) + u64::from(rect.width) <= u64::from(canvas.width), "{rect:?}");
        assert!(u64::from(rect.y) + u64::from(rect.height) <= u64::from(canvas.height), "{rect:?}");
        assert!(zs.insert(r.z), "z {} twice", r.z);
        let input = inputs.iter().find(|i| i.id == r.input).expect("a placed input was given");
        if let Some(c) = r.crop {
            assert!(u64::from(c.x) + u64::from(c.width) <= u64::from(input.width));
            assert!(u64::from(c.y) + u64::from(c.height) <= u64::from(input.height));
        }
    }
    if let Some(w) = &l.watermark {
        assert!(w.size >= 1);
        assert!(w.x <= canvas.width && w.y <= canvas.height);
    }
});
