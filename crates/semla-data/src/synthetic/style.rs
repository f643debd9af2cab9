//! The named domains of the synthetic world: style and content priors.

/// An RGB colour in `[0, 1]`.
pub(crate) type Rgb = [f32; 3];

/// Weather particles drawn over the image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Weather {
    Clear,
    /// Rain streaks per pixel.
    Rain(f32),
    /// Snow flakes per pixel.
    Snow(f32),
}

/// A synthetic domain: how its scenes look and what they contain.
#[derive(Clone, Debug)]
pub struct DomainStyle {
    /// The domain name (`clear`, `night`, ...).
    pub name: &'static str,
    /// One line saying what the domain looks like.
    pub description: &'static str,
    // Sky.
    pub(crate) sky_zenith: Rgb,
    pub(crate) sky_horizon: Rgb,
    /// Cloud cover in `[0, 1]` and cloud colour.
    pub(crate) clouds: f32,
    pub(crate) cloud_colour: Rgb,
    /// Sun disk (and glow) near the horizon: (colour, strength); strength 0 = none.
    pub(crate) sun_disk: (Rgb, f32),
    pub(crate) stars: bool,
    // Light.
    pub(crate) ambient: Rgb,
    pub(crate) sun_light: Rgb,
    /// Which facade side the sun lights: -1 left, 1 right.
    pub(crate) sun_side: f32,
    /// Probability that a window is lit, and the strength of all emitters.
    pub(crate) window_lit: f32,
    pub(crate) emissive: f32,
    /// Light pools under street lamps (night).
    pub(crate) lamp_pools: f32,
    // Materials.
    pub(crate) road: Rgb,
    /// Wet road: mirror-like mix of the sky colour into the road.
    pub(crate) wet: f32,
    pub(crate) sidewalk: Rgb,
    pub(crate) terrain: Rgb,
    pub(crate) vegetation: Rgb,
    pub(crate) walls: &'static [Rgb],
    pub(crate) car_paints: &'static [Rgb],
    /// Snow on the ground, roofs and crowns in `[0, 1]`.
    pub(crate) snow_cover: f32,
    // Atmosphere and camera.
    pub(crate) haze_colour: Rgb,
    /// Extinction per metre: transmittance `exp(-haze * depth)`.
    pub(crate) haze: f32,
    pub(crate) weather: Weather,
    pub(crate) saturation: f32,
    pub(crate) contrast: f32,
    pub(crate) tint: Rgb,
    pub(crate) blur: bool,
    pub(crate) sensor_noise: f32,
    // Content priors.
    /// Cars per metre of lane.
    pub(crate) car_rate: f32,
    /// People per metre of sidewalk.
    pub(crate) person_rate: f32,
    /// Trees per metre of sidewalk.
    pub(crate) tree_rate: f32,
    /// Probability that a street segment has a building.
    pub(crate) building_prob: f32,
    /// Building heights in metres.
    pub(crate) building_height: (f32, f32),
    /// Metres of street per lamp or sign pole.
    pub(crate) pole_spacing: f32,
}

const CITY_WALLS: [Rgb; 6] = [
    [0.62, 0.58, 0.52],
    [0.55, 0.40, 0.33],
    [0.70, 0.68, 0.64],
    [0.45, 0.47, 0.50],
    [0.72, 0.62, 0.45],
    [0.58, 0.30, 0.25],
];
const GREY_WALLS: [Rgb; 5] = [
    [0.50, 0.50, 0.52],
    [0.40, 0.41, 0.44],
    [0.62, 0.62, 0.63],
    [0.35, 0.36, 0.38],
    [0.55, 0.53, 0.50],
];
const ADOBE_WALLS: [Rgb; 4] = [
    [0.85, 0.72, 0.52],
    [0.80, 0.62, 0.42],
    [0.90, 0.82, 0.66],
    [0.74, 0.55, 0.38],
];
const SUBURB_WALLS: [Rgb; 5] = [
    [0.75, 0.35, 0.28],
    [0.85, 0.80, 0.68],
    [0.45, 0.55, 0.65],
    [0.70, 0.70, 0.60],
    [0.55, 0.35, 0.25],
];
const CAR_PAINTS: [Rgb; 7] = [
    [0.75, 0.08, 0.08],
    [0.10, 0.20, 0.55],
    [0.85, 0.85, 0.85],
    [0.12, 0.12, 0.12],
    [0.55, 0.57, 0.60],
    [0.90, 0.75, 0.10],
    [0.15, 0.40, 0.20],
];
const DULL_PAINTS: [Rgb; 4] = [
    [0.45, 0.45, 0.47],
    [0.2, 0.2, 0.22],
    [0.7, 0.7, 0.72],
    [0.35, 0.15, 0.12],
];

const CLEAR: DomainStyle = DomainStyle {
    name: "clear",
    description: "sunny city street, blue sky, mixed buildings and trees",
    sky_zenith: [0.25, 0.45, 0.85],
    sky_horizon: [0.65, 0.80, 0.95],
    clouds: 0.15,
    cloud_colour: [0.95, 0.95, 0.97],
    sun_disk: ([1.0, 1.0, 0.9], 0.0),
    stars: false,
    ambient: [0.55, 0.58, 0.65],
    sun_light: [0.55, 0.52, 0.45],
    sun_side: 1.0,
    window_lit: 0.0,
    emissive: 0.0,
    lamp_pools: 0.0,
    road: [0.36, 0.36, 0.38],
    wet: 0.0,
    sidewalk: [0.66, 0.63, 0.60],
    terrain: [0.40, 0.58, 0.22],
    vegetation: [0.22, 0.45, 0.12],
    walls: &CITY_WALLS,
    car_paints: &CAR_PAINTS,
    snow_cover: 0.0,
    haze_colour: [0.75, 0.82, 0.92],
    haze: 0.004,
    weather: Weather::Clear,
    saturation: 1.1,
    contrast: 1.05,
    tint: [1.0, 1.0, 1.0],
    blur: false,
    sensor_noise: 0.01,
    car_rate: 0.045,
    person_rate: 0.04,
    tree_rate: 0.05,
    building_prob: 0.75,
    building_height: (8.0, 24.0),
    pole_spacing: 18.0,
};

/// The domains, in a stable order.
pub(crate) const DOMAINS: [DomainStyle; 8] = [
    CLEAR,
    DomainStyle {
        name: "overcast",
        description: "grey cloudy downtown, flat light, tall grey buildings",
        sky_zenith: [0.62, 0.64, 0.67],
        sky_horizon: [0.80, 0.81, 0.82],
        clouds: 0.9,
        cloud_colour: [0.55, 0.56, 0.58],
        ambient: [0.78, 0.79, 0.80],
        sun_light: [0.05, 0.05, 0.05],
        walls: &GREY_WALLS,
        car_paints: &DULL_PAINTS,
        terrain: [0.38, 0.45, 0.30],
        vegetation: [0.22, 0.32, 0.18],
        haze_colour: [0.75, 0.76, 0.78],
        haze: 0.01,
        saturation: 0.55,
        contrast: 0.85,
        tree_rate: 0.02,
        building_prob: 0.95,
        building_height: (18.0, 45.0),
        person_rate: 0.07,
        ..CLEAR
    },
    DomainStyle {
        name: "night",
        description: "dark street under lamps, lit windows, car lights, sensor noise",
        sky_zenith: [0.01, 0.015, 0.04],
        sky_horizon: [0.06, 0.06, 0.10],
        clouds: 0.0,
        stars: true,
        ambient: [0.06, 0.07, 0.11],
        sun_light: [0.0, 0.0, 0.0],
        window_lit: 0.35,
        emissive: 1.0,
        lamp_pools: 1.0,
        haze_colour: [0.04, 0.04, 0.07],
        haze: 0.01,
        saturation: 0.9,
        contrast: 1.0,
        tint: [1.0, 0.95, 0.85],
        sensor_noise: 0.035,
        car_rate: 0.035,
        person_rate: 0.015,
        pole_spacing: 14.0,
        ..CLEAR
    },
    DomainStyle {
        name: "fog",
        description: "dense fog: everything fades to grey-white with distance",
        sky_zenith: [0.82, 0.83, 0.84],
        sky_horizon: [0.85, 0.86, 0.87],
        clouds: 0.0,
        ambient: [0.80, 0.80, 0.80],
        sun_light: [0.05, 0.05, 0.05],
        haze_colour: [0.83, 0.84, 0.85],
        haze: 0.07,
        saturation: 0.5,
        contrast: 0.9,
        blur: true,
        walls: &GREY_WALLS,
        tree_rate: 0.04,
        building_prob: 0.55,
        pole_spacing: 14.0,
        ..CLEAR
    },
    DomainStyle {
        name: "rain",
        description: "heavy rain: dark sky, wet reflective road, streaks, blur",
        sky_zenith: [0.30, 0.32, 0.36],
        sky_horizon: [0.48, 0.50, 0.54],
        clouds: 0.8,
        cloud_colour: [0.25, 0.26, 0.29],
        ambient: [0.42, 0.44, 0.48],
        sun_light: [0.0, 0.0, 0.0],
        window_lit: 0.1,
        emissive: 0.6,
        road: [0.20, 0.20, 0.22],
        wet: 0.45,
        sidewalk: [0.42, 0.41, 0.40],
        haze_colour: [0.45, 0.47, 0.51],
        haze: 0.025,
        weather: Weather::Rain(0.012),
        saturation: 0.65,
        contrast: 0.95,
        tint: [0.95, 0.98, 1.05],
        blur: true,
        sensor_noise: 0.015,
        car_rate: 0.07,
        person_rate: 0.015,
        ..CLEAR
    },
    DomainStyle {
        name: "snow",
        description: "snowy suburb: white ground and roofs, falling flakes, bright grey sky",
        sky_zenith: [0.70, 0.73, 0.78],
        sky_horizon: [0.86, 0.87, 0.90],
        clouds: 0.5,
        cloud_colour: [0.80, 0.81, 0.84],
        ambient: [0.85, 0.87, 0.92],
        sun_light: [0.1, 0.1, 0.1],
        walls: &SUBURB_WALLS,
        snow_cover: 0.8,
        terrain: [0.92, 0.93, 0.96],
        haze_colour: [0.86, 0.88, 0.92],
        haze: 0.015,
        weather: Weather::Snow(0.01),
        saturation: 0.8,
        tint: [0.97, 1.0, 1.06],
        tree_rate: 0.08,
        building_prob: 0.6,
        building_height: (5.0, 11.0),
        car_rate: 0.025,
        person_rate: 0.02,
        ..CLEAR
    },
    DomainStyle {
        name: "sunset",
        description: "low sun: orange-pink sky, warm light, long dark shade side",
        sky_zenith: [0.35, 0.30, 0.55],
        sky_horizon: [1.0, 0.55, 0.25],
        clouds: 0.3,
        cloud_colour: [0.95, 0.50, 0.45],
        sun_disk: ([1.0, 0.85, 0.5], 1.0),
        ambient: [0.35, 0.25, 0.28],
        sun_light: [0.85, 0.50, 0.25],
        sun_side: -1.0,
        window_lit: 0.05,
        emissive: 0.5,
        haze_colour: [0.95, 0.60, 0.40],
        haze: 0.008,
        saturation: 1.25,
        contrast: 1.1,
        tint: [1.08, 0.95, 0.85],
        ..CLEAR
    },
    DomainStyle {
        name: "desert",
        description: "desert town: sand, low adobe buildings, pale sky, dusty haze, few cars",
        sky_zenith: [0.55, 0.68, 0.85],
        sky_horizon: [0.92, 0.88, 0.78],
        clouds: 0.0,
        ambient: [0.62, 0.58, 0.52],
        sun_light: [0.6, 0.55, 0.42],
        road: [0.50, 0.46, 0.40],
        sidewalk: [0.80, 0.72, 0.58],
        terrain: [0.88, 0.74, 0.50],
        vegetation: [0.38, 0.45, 0.18],
        walls: &ADOBE_WALLS,
        haze_colour: [0.92, 0.82, 0.62],
        haze: 0.012,
        saturation: 1.0,
        contrast: 0.95,
        tint: [1.05, 1.0, 0.9],
        tree_rate: 0.012,
        building_prob: 0.35,
        building_height: (3.5, 8.0),
        car_rate: 0.015,
        person_rate: 0.015,
        pole_spacing: 26.0,
        ..CLEAR
    },
];

const fn mix(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

const fn mix3(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [mix(a[0], b[0], t), mix(a[1], b[1], t), mix(a[2], b[2], t)]
}

const fn mix_weather(a: Weather, b: Weather, t: f32) -> Weather {
    match (a, b) {
        (Weather::Clear, Weather::Rain(r)) => Weather::Rain(r * t),
        (Weather::Clear, Weather::Snow(s)) => Weather::Snow(s * t),
        (Weather::Rain(x), Weather::Rain(y)) => Weather::Rain(mix(x, y, t)),
        (Weather::Snow(x), Weather::Snow(y)) => Weather::Snow(mix(x, y, t)),
        (a, b) => {
            if t < 0.5 {
                a
            } else {
                b
            }
        }
    }
}

impl DomainStyle {
    /// The style a fraction `t` of the way from `a` to `b`: colours, light,
    /// atmosphere, weather and content rates interpolated; discrete choices (stars,
    /// blur, wall and paint sets) taken from the nearer end.
    const fn between(
        a: &DomainStyle,
        b: &DomainStyle,
        t: f32,
        name: &'static str,
        description: &'static str,
    ) -> DomainStyle {
        let near_b = t >= 0.5;
        DomainStyle {
            name,
            description,
            sky_zenith: mix3(a.sky_zenith, b.sky_zenith, t),
            sky_horizon: mix3(a.sky_horizon, b.sky_horizon, t),
            clouds: mix(a.clouds, b.clouds, t),
            cloud_colour: mix3(a.cloud_colour, b.cloud_colour, t),
            sun_disk: (
                mix3(a.sun_disk.0, b.sun_disk.0, t),
                mix(a.sun_disk.1, b.sun_disk.1, t),
            ),
            stars: if near_b { b.stars } else { a.stars },
            ambient: mix3(a.ambient, b.ambient, t),
            sun_light: mix3(a.sun_light, b.sun_light, t),
            sun_side: if near_b { b.sun_side } else { a.sun_side },
            window_lit: mix(a.window_lit, b.window_lit, t),
            emissive: mix(a.emissive, b.emissive, t),
            lamp_pools: mix(a.lamp_pools, b.lamp_pools, t),
            road: mix3(a.road, b.road, t),
            wet: mix(a.wet, b.wet, t),
            sidewalk: mix3(a.sidewalk, b.sidewalk, t),
            terrain: mix3(a.terrain, b.terrain, t),
            vegetation: mix3(a.vegetation, b.vegetation, t),
            walls: if near_b { b.walls } else { a.walls },
            car_paints: if near_b { b.car_paints } else { a.car_paints },
            snow_cover: mix(a.snow_cover, b.snow_cover, t),
            haze_colour: mix3(a.haze_colour, b.haze_colour, t),
            haze: mix(a.haze, b.haze, t),
            weather: mix_weather(a.weather, b.weather, t),
            saturation: mix(a.saturation, b.saturation, t),
            contrast: mix(a.contrast, b.contrast, t),
            tint: mix3(a.tint, b.tint, t),
            blur: if near_b { b.blur } else { a.blur },
            sensor_noise: mix(a.sensor_noise, b.sensor_noise, t),
            car_rate: mix(a.car_rate, b.car_rate, t),
            person_rate: mix(a.person_rate, b.person_rate, t),
            tree_rate: mix(a.tree_rate, b.tree_rate, t),
            building_prob: mix(a.building_prob, b.building_prob, t),
            building_height: (
                mix(a.building_height.0, b.building_height.0, t),
                mix(a.building_height.1, b.building_height.1, t),
            ),
            pole_spacing: mix(a.pole_spacing, b.pole_spacing, t),
        }
    }
}

/// How far from `clear` toward its style a `-light` variant lies.
const LIGHT: f32 = 0.7;

/// Milder versions of the styles (`fog-light`, ...): 70 % of the way from `clear`
/// to the style, so that a library over the world holds a relative of every shift
/// (as a real library holds light and dense fog).
pub(crate) const VARIANTS: [DomainStyle; 7] = [
    DomainStyle::between(
        &CLEAR,
        &DOMAINS[1],
        LIGHT,
        "overcast-light",
        "partly cloudy, softer light",
    ),
    DomainStyle::between(
        &CLEAR,
        &DOMAINS[2],
        LIGHT,
        "night-light",
        "dusk: dimming light, first lamps",
    ),
    DomainStyle::between(
        &CLEAR,
        &DOMAINS[3],
        LIGHT,
        "fog-light",
        "light fog: distance fades",
    ),
    DomainStyle::between(
        &CLEAR,
        &DOMAINS[4],
        LIGHT,
        "rain-light",
        "drizzle: damp road, few streaks",
    ),
    DomainStyle::between(
        &CLEAR,
        &DOMAINS[5],
        LIGHT,
        "snow-light",
        "light snow: patches on the ground",
    ),
    DomainStyle::between(
        &CLEAR,
        &DOMAINS[6],
        LIGHT,
        "sunset-light",
        "late afternoon: warm low light",
    ),
    DomainStyle::between(
        &CLEAR,
        &DOMAINS[7],
        LIGHT,
        "desert-light",
        "dry outskirts: sandy verges",
    ),
];
