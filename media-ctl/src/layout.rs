//! Mix layouts: typed templates resolved into validated regions on a
//! canvas, in pixels.
//!
//! Lengths are given in pixels or as fractions of the canvas (x and widths
//! of its width, y and heights of its height). A resolved [`Layout`] is
//! always inside its canvas, with even sizes (what 4:2:0 video needs), one
//! z per region, crops inside their inputs, and at most `max_inputs`
//! inputs.

use std::collections::BTreeSet;

/// An RGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// `0xRRGGBB`, as ffmpeg's colour syntax wants it.
    pub fn hex(self) -> String {
        format!("0x{:02X}{:02X}{:02X}", self.0, self.1, self.2)
    }
}

/// Bounds a layout must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Smallest canvas side.
    pub min_side: u32,
    /// Largest canvas side.
    pub max_side: u32,
    /// Most inputs in one layout.
    pub max_inputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { min_side: 128, max_side: 4096, max_inputs: 16 }
    }
}

/// The output picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canvas {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Background.
    pub color: Rgb,
}

/// A length: pixels, or a fraction of the canvas side it runs along.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    /// Pixels.
    Px(u32),
    /// A fraction, 0.0 to 1.0.
    Frac(f64),
}

/// What an input carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputKind {
    /// A camera or screen with sound.
    AudioVideo,
    /// Picture only.
    Video,
    /// Sound only (mixed, never drawn).
    Audio,
    /// A still image (slides exported as pictures, a logo).
    Image,
    /// A plain colour.
    Color(Rgb),
}

impl InputKind {
    /// Whether it is drawn.
    pub fn has_picture(self) -> bool {
        !matches!(self, InputKind::Audio)
    }

    /// Whether it is heard.
    pub fn has_sound(self) -> bool {
        matches!(self, InputKind::AudioVideo | InputKind::Audio)
    }
}

/// An input a layout may place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Its id (a stream id).
    pub id: String,
    /// What it carries.
    pub kind: InputKind,
    /// Its picture's width.
    pub width: u32,
    /// Its picture's height.
    pub height: u32,
}

/// How a picture fills its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fit {
    /// Scaled to fit inside, padded (letterbox).
    #[default]
    Contain,
    /// Scaled to cover, the excess cropped.
    Cover,
    /// Scaled to the region, aspect ignored.
    Stretch,
}

/// A rectangle in input or canvas pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// A region of a custom layout.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionSpec {
    /// The input shown.
    pub input: String,
    /// Left.
    pub x: Length,
    /// Top.
    pub y: Length,
    /// Width.
    pub width: Length,
    /// Height.
    pub height: Length,
    /// Stacking order: higher is drawn later (on top). Unique per layout.
    pub z: i32,
    /// The part of the input shown, in input pixels.
    pub crop: Option<Rect>,
    /// How the picture fills the region.
    pub fit: Fit,
}

/// A corner of the canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Corner {
    /// Top left.
    TopLeft,
    /// Top right.
    TopRight,
    /// Bottom left.
    BottomLeft,
    /// Bottom right.
    BottomRight,
}

/// A layout template.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Template {
    /// One input full canvas.
    Single {
        /// The input.
        input: String,
    },
    /// Two inputs, left and right halves.
    SideBySide {
        /// Left.
        left: String,
        /// Right.
        right: String,
    },
    /// `main` full canvas, `overlay` small in a corner (the teacher over slides).
    PictureInPicture {
        /// The full-canvas input.
        main: String,
        /// The small one.
        overlay: String,
        /// Where.
        corner: Corner,
        /// Its width as a fraction of the canvas width (0.1 to 0.5).
        scale: f64,
        /// Distance from the edges in pixels.
        margin: u32,
    },
    /// Inputs in a grid, row by row.
    Grid {
        /// The inputs.
        inputs: Vec<String>,
    },
    /// Regions given one by one.
    Custom(Vec<RegionSpec>),
}

/// A watermark.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WatermarkKind {
    /// Text drawn in white.
    Text(String),
    /// An image file.
    Image(String),
}

/// A watermark and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    /// What.
    pub kind: WatermarkKind,
    /// Left.
    pub x: Length,
    /// Top.
    pub y: Length,
    /// Size: text height, or image width (its height follows its aspect).
    pub size: Length,
}

/// A watermark placed in pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedWatermark {
    /// What.
    pub text: Option<String>,
    /// Or which image.
    pub image: Option<String>,
    /// Left, top.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Size in pixels.
    pub size: u32,
}

/// A region placed in pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The input.
    pub input: String,
    /// What it carries.
    pub kind: InputKind,
    /// Where on the canvas (even sizes).
    pub rect: Rect,
    /// Stacking order.
    pub z: i32,
    /// The part of the input shown.
    pub crop: Option<Rect>,
    /// How it fills the region.
    pub fit: Fit,
}

/// A resolved, valid layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The canvas.
    pub canvas: Canvas,
    /// Regions, lowest z first (drawing order).
    pub regions: Vec<Placed>,
    /// The watermark, drawn last.
    pub watermark: Option<PlacedWatermark>,
}

/// Why a layout is not valid. Each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A canvas side outside the limits.
    #[error("canvas side {side} is outside {min}..={max}")]
    CanvasSide {
        /// The side.
        side: u32,
        /// Smallest.
        min: u32,
        /// Largest.
        max: u32,
    },
    /// An odd canvas side.
    #[error("canvas side {0} is odd (4:2:0 video needs even sides)")]
    OddSide(u32),
    /// More inputs than allowed.
    #[error("{count} inputs, at most {max}")]
    TooManyInputs {
        /// Given.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// A region or template names an input not given.
    #[error("unknown input {0:?}")]
    UnknownInput(String),
    /// A template with nothing in it.
    #[error("the template places no input")]
    Empty,
    /// A fraction outside 0..=1, or not a number.
    #[error("region {region}: fraction {value} is outside 0..=1")]
    BadFraction {
        /// Region index.
        region: usize,
        /// The value.
        value: String,
    },
    /// A region of zero width or height.
    #[error("region {0} has no area")]
    ZeroSize(usize),
    /// A region reaching outside the canvas.
    #[error("region {region} ({rect:?}) reaches outside the canvas")]
    Outside {
        /// Region index.
        region: usize,
        /// Where it was.
        rect: Rect,
    },
    /// Two regions with the same z.
    #[error("two regions have z = {0}")]
    DuplicateZ(i32),
    /// A crop reaching outside its input.
    #[error("region {region}: crop {crop:?} is outside the input's {width}x{height}")]
    CropOutside {
        /// Region index.
        region: usize,
        /// The crop.
        crop: Rect,
        /// Input width.
        width: u32,
        /// Input height.
        height: u32,
    },
    /// A picture-in-picture scale outside 0.1..=0.5.
    #[error("picture-in-picture scale {0} is outside 0.1..=0.5")]
    BadScale(String),
    /// An empty watermark text or image path.
    #[error("the watermark is empty")]
    EmptyWatermark,
}

fn even(v: u32) -> u32 {
    v & !1
}

fn resolve(len: Length, side: u32, region: usize) -> Result<u32, LayoutError> {
    match len {
        Length::Px(p) => Ok(p),
        Length::Frac(f) if f.is_finite() && (0.0..=1.0).contains(&f) => Ok((f * f64::from(side)).round() as u32),
        Length::Frac(f) => Err(LayoutError::BadFraction { region, value: f.to_string() }),
    }
}

fn region(input: &str, x: u32, y: u32, w: u32, h: u32, z: i32) -> RegionSpec {
    RegionSpec {
        input: input.to_owned(),
        x: Length::Px(x),
        y: Length::Px(y),
        width: Length::Px(w),
        height: Length::Px(h),
        z,
        crop: None,
        fit: Fit::Contain,
    }
}

impl Template {
    fn regions(&self, canvas: Canvas) -> Result<Vec<RegionSpec>, LayoutError> {
        let (w, h) = (canvas.width, canvas.height);
        Ok(match self {
            Template::Single { input } => vec![region(input, 0, 0, w, h, 0)],
            Template::SideBySide { left, right } => {
                let half = even(w / 2);
                vec![region(left, 0, 0, half, h, 0), region(right, half, 0, half, h, 1)]
            }
            Template::PictureInPicture { main, overlay, corner, scale, margin } => {
                if !(scale.is_finite() && (0.1..=0.5).contains(scale)) {
                    return Err(LayoutError::BadScale(scale.to_string()));
                }
                let ow = even((f64::from(w) * scale).round() as u32);
                let oh = even((f64::from(ow) * f64::from(h) / f64::from(w)).round() as u32);
                let m = (*margin).min(w.saturating_sub(ow) / 2).min(h.saturating_sub(oh) / 2);
                let (x, y) = match corner {
                    Corner::TopLeft => (m, m),
                    Corner::TopRight => (w - ow - m, m),
                    Corner::BottomLeft => (m, h - oh - m),
                    Corner::BottomRight => (w - ow - m, h - oh - m),
                };
                vec![region(main, 0, 0, w, h, 0), region(overlay, even(x), even(y), ow, oh, 1)]
            }
            Template::Grid { inputs } => {
                if inputs.is_empty() {
                    return Err(LayoutError::Empty);
                }
                let n = inputs.len() as u32;
                let cols = (1..=n).find(|c| c * c >= n).unwrap_or(n);
                let rows = n.div_ceil(cols);
                let (cw, ch) = (even(w / cols), even(h / rows));
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        let (c, r) = (i as u32 % cols, i as u32 / cols);
                        region(id, c * cw, r * ch, cw, ch, i as i32)
                    })
                    .collect()
            }
            Template::Custom(regions) => regions.clone(),
        })
    }
}

/// Resolves `template` on `canvas` over `inputs`, with an optional
/// watermark, checking everything against `limits`.
pub fn layout(
    canvas: Canvas,
    template: &Template,
    inputs: &[Input],
    watermark: Option<&Watermark>,
    limits: Limits,
) -> Result<Layout, LayoutError> {
    for side in [canvas.width, canvas.height] {
        if !(limits.min_side..=limits.max_side).contains(&side) {
            return Err(LayoutError::CanvasSide { side, min: limits.min_side, max: limits.max_side });
        }
        if side % 2 == 1 {
            return Err(LayoutError::OddSide(side));
        }
    }
    let specs = template.regions(canvas)?;
    if specs.is_empty() {
        return Err(LayoutError::Empty);
    }
    let used: BTreeSet<&str> = specs.iter().map(|r| r.input.as_str()).collect();
    if used.len() > limits.max_inputs {
        return Err(LayoutError::TooManyInputs { count: used.len(), max: limits.max_inputs });
    }
    let mut zs = BTreeSet::new();
    let mut regions = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let input =
            inputs.iter().find(|x| x.id == spec.input).ok_or_else(|| LayoutError::UnknownInput(spec.input.clone()))?;
        let rect = Rect {
            x: resolve(spec.x, canvas.width, i)?,
            y: resolve(spec.y, canvas.height, i)?,
            width: even(resolve(spec.width, canvas.width, i)?),
            height: even(resolve(spec.height, canvas.height, i)?),
        };
        if rect.width == 0 || rect.height == 0 {
            return Err(LayoutError::ZeroSize(i));
        }
        if u64::from(rect.x) + u64::from(rect.width) > u64::from(canvas.width)
            || u64::from(rect.y) + u64::from(rect.height) > u64::from(canvas.height)
        {
            return Err(LayoutError::Outside { region: i, rect });
        }
        if !zs.insert(spec.z) {
            return Err(LayoutError::DuplicateZ(spec.z));
        }
        if let Some(c) = spec.crop {
            let inside = c.width > 0
                && c.height > 0
                && u64::from(c.x) + u64::from(c.width) <= u64::from(input.width)
                && u64::from(c.y) + u64::from(c.height) <= u64::from(input.height);
            if !inside {
                return Err(LayoutError::CropOutside { region: i, crop: c, width: input.width, height: input.height });
            }
        }
        regions.push(Placed {
            input: input.id.clone(),
            kind: input.kind,
            rect,
            z: spec.z,
            crop: spec.crop,
            fit: spec.fit,
        });
    }
    regions.sort_by_key(|r| r.z);
    let watermark = match watermark {
        None => None,
        Some(w) => {
            let (text, image) = match &w.kind {
                WatermarkKind::Text(t) if !t.trim().is_empty() => (Some(t.clone()), None),
                WatermarkKind::Image(p) if !p.trim().is_empty() => (None, Some(p.clone())),
                _ => return Err(LayoutError::EmptyWatermark),
            };
            let at = regions.len();
            let size = resolve(w.size, canvas.height, at)?.max(1);
            let x = resolve(w.x, canvas.width, at)?.min(canvas.width.saturating_sub(size));
            let y = resolve(w.y, canvas.height, at)?.min(canvas.height.saturating_sub(size));
            Some(PlacedWatermark { text, image, x, y, size })
        }
    };
    Ok(Layout { canvas, regions, watermark })
}
