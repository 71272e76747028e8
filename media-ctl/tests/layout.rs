//! Layouts: whatever validates renders inside its canvas; bad ones get
//! errors naming what is wrong.

use proptest::prelude::*;
use room_media_ctl::layout::{
    Canvas, Corner, Fit, Input, InputKind, Layout, LayoutError, Length, Limits, Rect, RegionSpec, Rgb, Template,
    Watermark, WatermarkKind, layout,
};

fn inputs(n: usize) -> Vec<Input> {
    (0..n).map(|i| Input { id: format!("s{i}"), kind: InputKind::AudioVideo, width: 1280, height: 720 }).collect()
}

fn inside(l: &Layout) -> bool {
    l.regions.iter().all(|r| {
        r.rect.width > 0
            && r.rect.height > 0
            && r.rect.width % 2 == 0
            && r.rect.height % 2 == 0
            && r.rect.x + r.rect.width <= l.canvas.width
            && r.rect.y + r.rect.height <= l.canvas.height
    }) && l.watermark.as_ref().is_none_or(|w| w.x <= l.canvas.width && w.y <= l.canvas.height)
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![(0u32..5000).prop_map(Length::Px), (-0.5f64..1.5).prop_map(Length::Frac)]
}

fn template() -> impl Strategy<Value = Template> {
    prop_oneof![
        (0usize..4).prop_map(|i| Template::Single { input: format!("s{i}") }),
        (0usize..4, 0usize..4)
            .prop_map(|(a, b)| Template::SideBySide { left: format!("s{a}"), right: format!("s{b}") }),
        (0usize..4, 0usize..4, 0u8..4, 0.0f64..0.7, 0u32..200).prop_map(|(a, b, c, scale, margin)| {
            let corner = [Corner::TopLeft, Corner::TopRight, Corner::BottomLeft, Corner::BottomRight][usize::from(c)];
            Template::PictureInPicture { main: format!("s{a}"), overlay: format!("s{b}"), corner, scale, margin }
        }),
        proptest::collection::vec(0usize..20, 0..20)
            .prop_map(|v| Template::Grid { inputs: v.into_iter().map(|i| format!("s{i}")).collect() }),
        proptest::collection::vec(
            (
                0usize..5,
                length(),
                length(),
                length(),
                length(),
                -3i32..3,
                proptest::option::of((0u32..1400, 0u32..800, 0u32..1400, 0u32..800))
            ),
            0..6
        )
        .prop_map(|rs| Template::Custom(
            rs.into_iter()
                .map(|(i, x, y, width, height, z, crop)| RegionSpec {
                    input: format!("s{i}"),
                    x,
                    y,
                    width,
                    height,
                    z,
                    crop: crop.map(|(x, y, width, height)| Rect { x, y, width, height }),
                    fit: Fit::Cover,
                })
                .collect()
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_valid_layout_renders_inside_its_canvas(
        w in 0u32..5000,
        h in 0u32..5000,
        t in template(),
        n in 1usize..20,
        wm in proptest::option::of((length(), length(), length())),
    ) {
        let canvas = Canvas { width: w, height: h, color: Rgb(0, 0, 0) };
        let watermark = wm.map(|(x, y, size)| Watermark { kind: WatermarkKind::Text("Roomkit".into()), x, y, size });
        if let Ok(l) = layout(canvas, &t, &inputs(n), watermark.as_ref(), Limits::default()) {
            prop_assert!(inside(&l), "outside: {:?}", l);
            let zs: std::collections::BTreeSet<i32> = l.regions.iter().map(|r| r.z).collect();
            prop_assert_eq!(zs.len(), l.regions.len());
            prop_assert!(l.regions.windows(2).all(|p| p[0].z < p[1].z));
            prop_assert!((128..=4096).contains(&w) && (128..=4096).contains(&h) && w % 2 == 0 && h % 2 == 0);
        }
    }
}

#[test]
fn bad_layouts_name_what_is_wrong() {
    let canvas = Canvas { width: 640, height: 360, color: Rgb(0, 0, 0) };
    let ins = inputs(3);
    let l = |c: Canvas, t: &Template| layout(c, t, &ins, None, Limits::default());
    let single = Template::Single { input: "s0".into() };
    assert_eq!(
        l(Canvas { width: 100, ..canvas }, &single),
        Err(LayoutError::CanvasSide { side: 100, min: 128, max: 4096 })
    );
    assert_eq!(l(Canvas { width: 641, ..canvas }, &single), Err(LayoutError::OddSide(641)));
    assert_eq!(l(canvas, &Template::Single { input: "nope".into() }), Err(LayoutError::UnknownInput("nope".into())));
    let region = |x, z, crop| RegionSpec {
        input: "s1".into(),
        x: Length::Px(x),
        y: Length::Px(0),
        width: Length::Frac(0.5),
        height: Length::Px(100),
        z,
        crop,
        fit: Fit::Contain,
    };
    assert!(matches!(
        l(canvas, &Template::Custom(vec![region(400, 0, None)])),
        Err(LayoutError::Outside { region: 0, .. })
    ));
    assert_eq!(
        l(canvas, &Template::Custom(vec![region(0, 1, None), region(10, 1, None)])),
        Err(LayoutError::DuplicateZ(1))
    );
    let crop = Rect { x: 1200, y: 0, width: 200, height: 100 };
    assert!(matches!(
        l(canvas, &Template::Custom(vec![region(0, 0, Some(crop))])),
        Err(LayoutError::CropOutside { .. })
    ));
    let pip = Template::PictureInPicture {
        main: "s0".into(),
        overlay: "s1".into(),
        corner: Corner::TopLeft,
        scale: 0.9,
        margin: 0,
    };
    assert_eq!(l(canvas, &pip), Err(LayoutError::BadScale("0.9".into())));
    let many = Template::Grid { inputs: (0..17).map(|i| format!("x{i}")).collect() };
    let lots: Vec<Input> =
        (0..17).map(|i| Input { id: format!("x{i}"), kind: InputKind::Video, width: 64, height: 64 }).collect();
    assert_eq!(
        layout(canvas, &many, &lots, None, Limits::default()),
        Err(LayoutError::TooManyInputs { count: 17, max: 16 })
    );
    let empty =
        Watermark { kind: WatermarkKind::Text("  ".into()), x: Length::Px(0), y: Length::Px(0), size: Length::Px(20) };
    assert_eq!(layout(canvas, &single, &ins, Some(&empty), Limits::default()), Err(LayoutError::EmptyWatermark));
}

#[test]
fn templates_place_what_they_say() {
    let canvas = Canvas { width: 640, height: 360, color: Rgb(0, 0, 0) };
    let pip = Template::PictureInPicture {
        main: "s0".into(),
        overlay: "s1".into(),
        corner: Corner::BottomRight,
        scale: 0.25,
        margin: 16,
    };
    let l = layout(canvas, &pip, &inputs(2), None, Limits::default()).expect("valid");
    assert_eq!(l.regions[0].rect, Rect { x: 0, y: 0, width: 640, height: 360 });
    assert_eq!(l.regions[1].rect, Rect { x: 464, y: 254, width: 160, height: 90 });
    let grid = Template::Grid { inputs: (0..5).map(|i| format!("s{i}")).collect() };
    let l = layout(canvas, &grid, &inputs(5), None, Limits::default()).expect("valid");
    assert_eq!(l.regions.len(), 5);
    assert_eq!(l.regions[4].rect, Rect { x: 212, y: 180, width: 212, height: 180 });
}
