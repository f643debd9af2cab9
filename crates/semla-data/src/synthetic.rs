//! The synthetic street world: procedurally generated street scenes with
//! pixel-exact label maps, in several named domains.
//!
//! It is the embedded default data of `semla demo`: no files are needed, every
//! sample is a pure function of `(domain, split, index, width, height)`.
//!
//! A scene is a pinhole camera 1.5 m above a straight street that runs to a
//! vanishing point: a road with lane markings, kerbs and sidewalks, building
//! facades with windows (and their front faces), gaps with hedges and grass,
//! a distant skyline, and objects standing on the ground (cars seen from behind
//! or from the front, people, street lamps, sign poles, trees). Everything is
//! drawn with a depth buffer, textured with value noise in world coordinates,
//! lit by the domain's ambient and sun light (plus emissive windows, lamps and
//! car lights), then the domain's atmosphere (haze), weather (rain streaks, snow
//! flakes), colour grading, blur and sensor noise are applied.
//!
//! Domains differ in style (palette, illumination, haze, noise, blur) and in
//! content priors (car and people density, vegetation, building presence and
//! height), so that image statistics tell them apart and a segmenter trained
//! on one loses accuracy on the others.

mod noise;
mod render;
mod scene;
mod style;

use image::RgbImage;

pub use style::DomainStyle;

/// Number of classes of the synthetic world.
pub const NUM_CLASSES: usize = 10;

/// Class names, indexed by label value (Cityscapes order and names).
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "road",
    "sidewalk",
    "building",
    "pole",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "car",
];

/// Display colour of each class (the Cityscapes palette), indexed by label.
pub const PALETTE: [[u8; 3]; NUM_CLASSES] = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [153, 153, 153],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [0, 0, 142],
];

/// Label values of the synthetic world.
pub mod class {
    /// Road surface.
    pub const ROAD: u8 = 0;
    /// Sidewalk.
    pub const SIDEWALK: u8 = 1;
    /// Building facades.
    pub const BUILDING: u8 = 2;
    /// Lamp and sign poles.
    pub const POLE: u8 = 3;
    /// Traffic signs.
    pub const SIGN: u8 = 4;
    /// Trees and bushes.
    pub const VEGETATION: u8 = 5;
    /// Grass and soil.
    pub const TERRAIN: u8 = 6;
    /// Sky.
    pub const SKY: u8 = 7;
    /// Pedestrians.
    pub const PERSON: u8 = 8;
    /// Cars.
    pub const CAR: u8 = 9;
}

/// What can go wrong when asking the synthetic world for a sample.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    /// The domain name is not one of the world's styles.
    #[error("unknown synthetic domain `{name}` (known: {known})")]
    UnknownDomain {
        /// The name given.
        name: String,
        /// The known styles, comma-separated.
        known: String,
    },
    /// The requested image is smaller than the renderer supports.
    #[error("synthetic images must be at least 8x8 pixels, got {width}x{height}")]
    TooSmall {
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
    },
}

/// A split of a synthetic domain. Each split draws its scenes from its own
/// random stream, so train and validation never share a scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training scenes.
    Train,
    /// Validation scenes.
    Val,
    /// Test scenes.
    Test,
}

impl Split {
    /// `train`, `val` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    fn tag(self) -> u64 {
        match self {
            Split::Train => 0x7472_6169_6e00_0001,
            Split::Val => 0x7661_6c00_0000_0002,
            Split::Test => 0x7465_7374_0000_0003,
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "val" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => Err(format!(
                "unknown split `{other}` (expected train, val or test)"
            )),
        }
    }
}

/// One generated sample.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The rendered scene, `width x height` RGB.
    pub image: RgbImage,
    /// Label per pixel, row-major `[height, width]`, values `< NUM_CLASSES`.
    pub labels: Vec<u8>,
}

/// The synthetic world: its named domains and the generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyntheticWorld;

impl SyntheticWorld {
    /// All domains, in a stable order.
    pub fn domains() -> &'static [DomainStyle] {
        &style::DOMAINS
    }

    /// The domain names, in the order of [`SyntheticWorld::domains`].
    pub fn domain_names() -> Vec<&'static str> {
        style::DOMAINS.iter().map(|d| d.name).collect()
    }

    /// The milder variant of every style but `clear` (`fog-light`, ...), 70 % of the
    /// way from `clear` to the style: not among [`SyntheticWorld::domains`], but
    /// looked up by name like them.
    pub fn variants() -> &'static [DomainStyle] {
        &style::VARIANTS
    }

    /// Looks a domain (or a variant) up by name.
    pub fn domain(name: &str) -> Result<&'static DomainStyle, SyntheticError> {
        style::DOMAINS
            .iter()
            .chain(&style::VARIANTS)
            .find(|d| d.name == name)
            .ok_or_else(|| SyntheticError::UnknownDomain {
                name: name.to_string(),
                known: Self::domain_names()
                    .into_iter()
                    .chain(style::VARIANTS.iter().map(|d| d.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Renders sample `index` of `split` in `domain` at `width x height`.
    /// Deterministic: the same arguments always give the same pixels.
    pub fn generate(
        domain: &DomainStyle,
        split: Split,
        index: u64,
        width: u32,
        height: u32,
    ) -> Result<Sample, SyntheticError> {
        if width < 8 || height < 8 {
            return Err(SyntheticError::TooSmall { width, height });
        }
        let seed = sample_seed(domain.name, split, index);
        let scene = scene::Scene::sample(domain, seed, width, height);
        Ok(render::render(&scene, domain, seed, width, height))
    }

    /// [`SyntheticWorld::generate`] by domain name.
    pub fn generate_named(
        domain: &str,
        split: Split,
        index: u64,
        width: u32,
        height: u32,
    ) -> Result<Sample, SyntheticError> {
        Self::generate(Self::domain(domain)?, split, index, width, height)
    }
}

/// The first `count` samples of `domain` / `split` at `width` x `height`,
/// rendered into memory as a sample source (10 classes, ignore value 255).
pub fn render_source(
    domain: &str,
    split: Split,
    count: usize,
    width: u32,
    height: u32,
) -> Result<crate::samples::InMemorySource, SyntheticError> {
    let mut samples = Vec::with_capacity(count);
    for index in 0..count {
        let s = SyntheticWorld::generate_named(domain, split, index as u64, width, height)?;
        let labels = s.labels.iter().map(|&l| u32::from(l)).collect();
        samples.push(crate::samples::Sample::from_rgb8(
            s.image.as_raw(),
            labels,
            height as usize,
            width as usize,
        ));
    }
    Ok(crate::samples::InMemorySource::new(
        samples,
        NUM_CLASSES,
        255,
    ))
}

/// Colours a label map with [`PALETTE`] (values outside it become black).
pub fn colorize_labels(labels: &[u8], width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let label = labels.get((y * width + x) as usize).copied().unwrap_or(255);
        image::Rgb(
            PALETTE
                .get(usize::from(label))
                .copied()
                .unwrap_or([0, 0, 0]),
        )
    })
}

/// The seed of one sample: the domain name, split and index mixed together.
fn sample_seed(domain: &str, split: Split, index: u64) -> u64 {
    let mut fnv = semla_core::hash::Fnv::new();
    fnv.write(domain.as_bytes());
    let h = fnv.finish();
    noise::mix64(noise::mix64(h ^ split.tag()) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests;
