//! Rasterises a [`Scene`] with a depth buffer, then applies the domain's
//! atmosphere, weather, grading, blur and sensor noise.

use image::RgbImage;

use super::noise::{FastRng, fbm2, hash2, value_noise};
use super::scene::{Building, FAR, ObjectKind, SKYLINE_DEPTH, Scene};
use super::style::{DomainStyle, Rgb, Weather};
use super::{Sample, class};

const SKY_DEPTH: f32 = f32::INFINITY;

/// Colour, label and depth buffers of one frame.
struct Frame {
    width: usize,
    height: usize,
    colour: Vec<Rgb>,
    label: Vec<u8>,
    depth: Vec<f32>,
}

impl Frame {
    /// Writes a fragment if it is nearer than what is there.
    #[inline]
    fn put(&mut self, x: usize, y: usize, depth: f32, label: u8, colour: Rgb) {
        let i = y * self.width + x;
        if depth < self.depth[i] {
            self.depth[i] = depth;
            self.label[i] = label;
            self.colour[i] = colour;
        }
    }
}

#[inline]
fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

#[inline]
fn scale(a: Rgb, k: f32) -> Rgb {
    [a[0] * k, a[1] * k, a[2] * k]
}

/// Lit colour: `albedo * (ambient + sun * facing) + emissive`.
#[inline]
fn lit(albedo: Rgb, style: &DomainStyle, facing: f32, emissive: Rgb) -> Rgb {
    let mut out = [0.0; 3];
    for c in 0..3 {
        out[c] = albedo[c] * (style.ambient[c] + style.sun_light[c] * facing) + emissive[c];
    }
    out
}

const WHITE_SNOW: Rgb = [0.93, 0.94, 0.97];
const LAMP_LIGHT: Rgb = [1.0, 0.82, 0.5];

/// Pixel range `[lo, hi)` covering the interval `[a, b]`, clipped to `0..n`.
#[inline]
fn span(a: f32, b: f32, n: usize) -> (usize, usize) {
    let lo = a.min(b).floor().max(0.0) as usize;
    let hi = (a.max(b).ceil().max(0.0) as usize).min(n);
    (lo.min(n), hi)
}

pub(crate) fn render(
    scene: &Scene,
    style: &DomainStyle,
    seed: u64,
    width: u32,
    height: u32,
) -> Sample {
    let (w, h) = (width as usize, height as usize);
    let mut frame = Frame {
        width: w,
        height: h,
        colour: vec![[0.0; 3]; w * h],
        label: vec![class::SKY; w * h],
        depth: vec![SKY_DEPTH; w * h],
    };
    draw_sky(&mut frame, scene, style);
    draw_ground(&mut frame, scene, style);
    draw_skyline(&mut frame, scene, style);
    draw_frontage(&mut frame, scene, style);
    for object in &scene.objects {
        draw_object(&mut frame, scene, style, object);
    }
    let mut colour = atmosphere(&frame, scene, style);
    weather(&mut colour, w, h, style, seed);
    finish(colour, frame.label, w, h, style, seed)
}

fn draw_sky(frame: &mut Frame, scene: &Scene, style: &DomainStyle) {
    let cam = &scene.camera;
    let (w, h) = (frame.width as f32, frame.height as f32);
    let sun = (scene.sun_x * w, cam.yh - 0.1 * h);
    let seed = scene.texture_seed;
    for y in 0..frame.height {
        let yc = y as f32 + 0.5;
        let t = ((cam.yh - yc) / cam.yh.max(1.0)).clamp(0.0, 1.0).powf(0.6);
        let base = mix(style.sky_horizon, style.sky_zenith, t);
        for x in 0..frame.width {
            let xc = x as f32 + 0.5;
            let mut c = base;
            if style.clouds > 0.0 {
                let n = fbm2(xc / w * 5.0, yc / h * 12.0, seed ^ 0xc10d);
                let cover = ((n - (1.0 - style.clouds)) / 0.25).clamp(0.0, 1.0);
                c = mix(c, style.cloud_colour, cover * 0.9);
            }
            if style.sun_disk.1 > 0.0 {
                let d = ((xc - sun.0).powi(2) + (yc - sun.1).powi(2)).sqrt() / w;
                let glow = style.sun_disk.1
                    * ((-d * d / 0.02).exp() * 0.45 + if d < 0.035 { 1.0 } else { 0.0 });
                c = mix(c, style.sun_disk.0, glow.min(1.0));
            }
            if style.stars && hash2(x as i32, y as i32, seed) > 0.993 {
                c = [0.7, 0.7, 0.8];
            }
            frame.colour[y * frame.width + x] = c;
        }
    }
}

fn draw_ground(frame: &mut Frame, scene: &Scene, style: &DomainStyle) {
    let cam = scene.camera;
    let seed = scene.texture_seed;
    let first_row = cam.yh.floor().max(0.0) as usize;
    for y in first_row..frame.height {
        let yc = y as f32 + 0.5;
        if yc <= cam.yh + 1e-3 {
            continue;
        }
        let z = cam.f * cam.height / (yc - cam.yh);
        for x in 0..frame.width {
            let xc = x as f32 + 0.5;
            let wx = (xc - cam.xv) * z / cam.f;
            let rel = wx - scene.road_centre;
            let lateral = rel.abs();
            let grain = fbm2(wx * 1.5, z * 0.4, seed ^ 0x0a0d);
            let snow_mask = style.snow_cover
                * (0.6 + 0.8 * value_noise(wx * 0.8, z * 0.3, seed ^ 0x5e0)).min(1.0);
            let (label, albedo) = if lateral < scene.road_half {
                let mut c = scale(style.road, 0.8 + 0.4 * grain);
                let dash = (z / 9.0).fract() < 0.5;
                if (lateral < 0.08 && dash)
                    || (lateral > scene.road_half - 0.3 && lateral < scene.road_half - 0.15)
                {
                    c = [0.85, 0.85, 0.8];
                }
                // Tyre tracks stay clear of snow.
                let track = ((lateral - scene.road_half * 0.5).abs() < 0.7) as u8 as f32;
                c = mix(c, WHITE_SNOW, snow_mask * (1.0 - 0.8 * track) * 0.9);
                if style.wet > 0.0 {
                    let ripple = value_noise(wx * 3.0, z * 0.8, seed ^ 0x3e7);
                    c = mix(c, style.sky_horizon, style.wet * (0.5 + 0.5 * ripple));
                }
                (class::ROAD, c)
            } else if lateral < scene.road_half + scene.sidewalk {
                let across = lateral - scene.road_half;
                let mut c = scale(style.sidewalk, 0.85 + 0.25 * grain);
                if across < 0.2 {
                    c = scale(style.sidewalk, 1.15);
                } else if z.fract() < 0.07 || (across * 1.25).fract() < 0.07 {
                    c = scale(c, 0.8);
                }
                c = mix(c, WHITE_SNOW, snow_mask);
                if style.wet > 0.0 {
                    c = mix(c, style.sky_horizon, style.wet * 0.3);
                }
                (class::SIDEWALK, c)
            } else {
                let c = scale(
                    style.terrain,
                    0.65 + 0.6 * fbm2(wx * 0.6, z * 0.6, seed ^ 0x7e2),
                );
                (class::TERRAIN, mix(c, WHITE_SNOW, snow_mask * 0.5))
            };
            let mut light = lit(albedo, style, 0.8, [0.0; 3]);
            if style.lamp_pools > 0.0 {
                for &(lx, _, lz) in &scene.lamps {
                    let d2 = (wx - lx).powi(2) + (z - lz).powi(2);
                    if d2 < 100.0 {
                        let k = style.lamp_pools * 0.9 * (-d2 / 18.0).exp();
                        for c in 0..3 {
                            light[c] += albedo[c] * LAMP_LIGHT[c] * k;
                        }
                    }
                }
            }
            frame.put(x, y, z, label, light);
        }
    }
}

fn draw_skyline(frame: &mut Frame, scene: &Scene, style: &DomainStyle) {
    let cam = scene.camera;
    let w = frame.width as f32;
    let d = SKYLINE_DEPTH;
    let bottom = cam.yh + cam.f * cam.height / d;
    for (i, &(x0, x1, top, is_tree)) in scene.skyline.iter().enumerate() {
        let (lo, hi) = span(x0 * w, x1 * w, frame.width);
        let wall = style.walls[i % style.walls.len()];
        for x in lo..hi {
            let xc = x as f32 + 0.5;
            let top_m = if is_tree {
                top * (0.7 + 0.5 * value_noise(xc / w * 40.0, 0.0, scene.texture_seed))
            } else {
                top
            };
            let top_y = cam.yh + cam.f * (cam.height - top_m) / d;
            let (ylo, yhi) = span(top_y, bottom, frame.height);
            for y in ylo..yhi {
                let (label, albedo, emissive) = if is_tree {
                    (class::VEGETATION, scale(style.vegetation, 0.8), [0.0; 3])
                } else {
                    let lit_window = style.window_lit > 0.0
                        && hash2(x as i32, y as i32 / 2, i as u32) < style.window_lit * 0.5;
                    let e = if lit_window {
                        scale(LAMP_LIGHT, 0.6 * style.emissive)
                    } else {
                        [0.0; 3]
                    };
                    (class::BUILDING, scale(wall, 0.85), e)
                };
                frame.put(x, y, d, label, lit(albedo, style, 0.5, emissive));
            }
        }
    }
}

/// Wall colour with windows at facade coordinates `(along, up)` in metres.
fn wall_albedo(b: &Building, style: &DomainStyle, along: f32, up: f32) -> (Rgb, Rgb) {
    let grain = fbm2(along * 0.7, up * 0.7, b.seed);
    let mut c = scale(b.wall, 0.85 + 0.3 * grain);
    let mut emissive = [0.0; 3];
    if up > b.height - 0.35 {
        c = scale(b.wall, 0.7);
        return (mix(c, WHITE_SNOW, style.snow_cover), emissive);
    }
    let fy = (up / b.floor).fract();
    let fz = (along / b.bay).fract();
    let ground_floor = up < b.floor;
    let window = if ground_floor {
        up > 0.3 && up < b.floor - 0.5 && fz > 0.1 && fz < 0.9 && (along / b.bay) as i32 % 3 != 0
    } else {
        fy > 0.3 && fy < 0.8 && fz > 0.25 && fz < 0.75
    };
    if window {
        let cell = hash2((along / b.bay) as i32, (up / b.floor) as i32, b.seed);
        c = mix([0.10, 0.12, 0.15], style.sky_horizon, 0.25 + 0.3 * cell);
        if cell < style.window_lit {
            emissive = scale(
                [1.0, 0.8, 0.45],
                style.emissive * (0.6 + 0.4 * cell / style.window_lit.max(1e-3)),
            );
        }
    }
    (c, emissive)
}

fn draw_frontage(frame: &mut Frame, scene: &Scene, style: &DomainStyle) {
    let cam = scene.camera;
    for side in &scene.sides {
        let facing = if side.sign == style.sun_side {
            0.9
        } else {
            0.1
        };
        for seg in &side.segments {
            // Columns covered by the facade plane between z0 and z1.
            let xa = cam.xv + cam.f * side.sign * side.facade / seg.z0;
            let xb = cam.xv + cam.f * side.sign * side.facade / seg.z1;
            let (lo, hi) = span(xa, xb, frame.width);
            let top_m = seg.building.as_ref().map_or(seg.hedge, |b| b.height);
            if top_m <= 0.0 {
                continue;
            }
            for x in lo..hi {
                let d = (x as f32 + 0.5 - cam.xv) * side.sign;
                if d <= 0.0 {
                    continue;
                }
                let z = cam.f * side.facade / d;
                if z < seg.z0 || z > seg.z1 {
                    continue;
                }
                let top = cam.yh + cam.f * (cam.height - top_m) / z;
                let bottom = cam.yh + cam.f * cam.height / z;
                let (ylo, yhi) = span(top, bottom, frame.height);
                for y in ylo..yhi {
                    let up = cam.height - (y as f32 + 0.5 - cam.yh) * z / cam.f;
                    if !(0.0..=top_m).contains(&up) {
                        continue;
                    }
                    match &seg.building {
                        Some(b) => {
                            let (albedo, emissive) = wall_albedo(b, style, z, up);
                            frame.put(
                                x,
                                y,
                                z,
                                class::BUILDING,
                                lit(albedo, style, facing, emissive),
                            );
                        }
                        None => {
                            let n = fbm2(z * 1.2, up * 2.0, scene.texture_seed ^ 0x4ed9);
                            let mut albedo = scale(style.vegetation, 0.6 + 0.6 * n);
                            albedo = mix(
                                albedo,
                                WHITE_SNOW,
                                style.snow_cover * (n > 0.5) as u8 as f32 * 0.8,
                            );
                            frame.put(
                                x,
                                y,
                                z,
                                class::VEGETATION,
                                lit(albedo, style, 0.5, [0.0; 3]),
                            );
                        }
                    }
                }
            }
            // The building's front face at z0, reaching 12 m away from the street.
            if let Some(b) = &seg.building {
                let z = seg.z0;
                let xa = cam.xv + cam.f * side.sign * side.facade / z;
                let xb = cam.xv + cam.f * side.sign * (side.facade + 12.0) / z;
                let (lo, hi) = span(xa, xb, frame.width);
                let top = cam.yh + cam.f * (cam.height - b.height) / z;
                let bottom = cam.yh + cam.f * cam.height / z;
                let (ylo, yhi) = span(top, bottom, frame.height);
                for x in lo..hi {
                    let along = ((x as f32 + 0.5 - cam.xv) * z / cam.f).abs() - side.facade;
                    if !(0.0..=12.0).contains(&along) {
                        continue;
                    }
                    for y in ylo..yhi {
                        let up = cam.height - (y as f32 + 0.5 - cam.yh) * z / cam.f;
                        if !(0.0..=b.height).contains(&up) {
                            continue;
                        }
                        let (albedo, emissive) = wall_albedo(b, style, along + 0.5, up);
                        frame.put(x, y, z, class::BUILDING, lit(albedo, style, 0.45, emissive));
                    }
                }
            }
        }
    }
    let _ = FAR;
}

/// A fragment of an object at local coordinates `(u, v)` (metres right of its
/// anchor and above the ground): label, albedo, emissive.
type Fragment = Option<(u8, Rgb, Rgb)>;

fn car_fragment(
    paint: Rgb,
    towards: bool,
    width: f32,
    height: f32,
    style: &DomainStyle,
    u: f32,
    v: f32,
) -> Fragment {
    let hw = width / 2.0;
    let a = u.abs();
    if a > hw || v > height {
        return None;
    }
    if v < 0.42 && a > hw - 0.5 && a < hw - 0.08 {
        return Some((class::CAR, [0.04, 0.04, 0.04], [0.0; 3]));
    }
    if v < 0.3 {
        return None;
    }
    if v < 0.95 {
        let lamp = v > 0.66 && v < 0.82 && a > hw - 0.42 && a < hw - 0.08;
        if lamp {
            let (c, e) = if towards {
                (
                    [0.95, 0.95, 0.85],
                    scale([1.0, 0.95, 0.8], 1.6 * style.emissive),
                )
            } else {
                (
                    [0.8, 0.1, 0.08],
                    scale([1.0, 0.1, 0.05], 0.9 * style.emissive),
                )
            };
            return Some((class::CAR, c, e));
        }
        if v < 0.55 && v > 0.42 && a < 0.25 {
            return Some((class::CAR, [0.85, 0.85, 0.8], [0.0; 3]));
        }
        let shade = if v < 0.42 {
            0.45
        } else {
            0.8 + 0.25 * (v - 0.3)
        };
        return Some((class::CAR, scale(paint, shade), [0.0; 3]));
    }
    let cabin = hw - 0.12 - (v - 0.95) * 0.45;
    if a > cabin {
        return None;
    }
    let roof = v > height - 0.1;
    if roof {
        return Some((
            class::CAR,
            mix(paint, WHITE_SNOW, style.snow_cover),
            [0.0; 3],
        ));
    }
    if a > cabin - 0.12 {
        return Some((class::CAR, scale(paint, 0.9), [0.0; 3]));
    }
    Some((
        class::CAR,
        mix([0.06, 0.07, 0.09], style.sky_horizon, 0.25),
        [0.0; 3],
    ))
}

fn draw_object(
    frame: &mut Frame,
    scene: &Scene,
    style: &DomainStyle,
    object: &super::scene::Object,
) {
    let cam = scene.camera;
    if object.z < 1.5 {
        return;
    }
    let s = cam.f / object.z;
    let cx = cam.xv + cam.f * object.x / object.z;
    let yb = cam.yh + cam.f * cam.height / object.z;
    let (umin, umax, vmax) = match &object.kind {
        ObjectKind::Car { width, height, .. } => (-width / 2.0, width / 2.0, *height),
        ObjectKind::Person { height, .. } => (-0.3, 0.3, *height),
        ObjectKind::Lamp { height, reach } => {
            (reach.min(0.0) - 0.35, reach.max(0.0) + 0.35, height + 0.1)
        }
        ObjectKind::SignPole { height, .. } => (-0.45, 0.45, height + 0.8),
        ObjectKind::Tree { trunk, crown, .. } => (-crown * 1.2, crown * 1.2, trunk + crown * 1.9),
    };
    let (xlo, xhi) = span(cx + umin * s, cx + umax * s, frame.width);
    let (ylo, yhi) = span(yb - vmax * s, yb, frame.height);
    for y in ylo..yhi {
        let v = (yb - (y as f32 + 0.5)) / s;
        for x in xlo..xhi {
            let u = (x as f32 + 0.5 - cx) / s;
            let fragment = match &object.kind {
                ObjectKind::Car {
                    paint,
                    towards,
                    width,
                    height,
                } => car_fragment(*paint, *towards, *width, *height, style, u, v),
                ObjectKind::Person {
                    shirt,
                    trousers,
                    height,
                } => person_fragment(*shirt, *trousers, *height, u, v),
                ObjectKind::Lamp { height, reach } => lamp_fragment(*height, *reach, style, u, v),
                ObjectKind::SignPole {
                    height,
                    shape,
                    colour,
                } => sign_fragment(*height, *shape, *colour, u, v),
                ObjectKind::Tree { trunk, crown, seed } => {
                    tree_fragment(*trunk, *crown, *seed, style, u, v)
                }
            };
            if let Some((label, albedo, emissive)) = fragment {
                frame.put(x, y, object.z, label, lit(albedo, style, 0.6, emissive));
            }
        }
    }
}

fn person_fragment(shirt: Rgb, trousers: Rgb, height: f32, u: f32, v: f32) -> Fragment {
    let head_c = height - 0.12;
    if u * u + (v - head_c).powi(2) < 0.12 * 0.12 {
        let c = if v > head_c + 0.03 {
            [0.12, 0.08, 0.05]
        } else {
            [0.80, 0.60, 0.47]
        };
        return Some((class::PERSON, c, [0.0; 3]));
    }
    let hip = height * 0.52;
    let shoulder = height - 0.26;
    let a = u.abs();
    if v >= hip && v <= shoulder && a < 0.2 {
        return Some((class::PERSON, shirt, [0.0; 3]));
    }
    if v >= hip - 0.05 && v <= shoulder && (0.2..0.27).contains(&a) {
        return Some((class::PERSON, scale(shirt, 0.8), [0.0; 3]));
    }
    if v < hip && a > 0.02 && a < 0.17 {
        let c = if v < 0.08 {
            [0.05, 0.05, 0.05]
        } else {
            trousers
        };
        return Some((class::PERSON, c, [0.0; 3]));
    }
    None
}

fn lamp_fragment(height: f32, reach: f32, style: &DomainStyle, u: f32, v: f32) -> Fragment {
    let metal = [0.33, 0.34, 0.36];
    if u.abs() < 0.09 && v < height {
        return Some((class::POLE, metal, [0.0; 3]));
    }
    let on_arm = (u - reach / 2.0).abs() <= reach.abs() / 2.0;
    if on_arm && v > height - 0.12 && v <= height {
        return Some((class::POLE, metal, [0.0; 3]));
    }
    if (u - reach).abs() < 0.32 && v > height - 0.3 && v <= height - 0.1 {
        return Some((
            class::POLE,
            [0.8, 0.8, 0.75],
            scale(LAMP_LIGHT, 2.0 * style.emissive),
        ));
    }
    None
}

fn sign_fragment(height: f32, shape: u8, colour: Rgb, u: f32, v: f32) -> Fragment {
    let centre = height + 0.38;
    let dv = v - centre;
    let inside = match shape {
        0 => u * u + dv * dv < 0.36 * 0.36,
        1 => u.abs() < 0.42 && dv.abs() < 0.32,
        _ => dv > -0.3 && dv < 0.36 && u.abs() < (0.36 - dv) * 0.62,
    };
    if inside {
        let border = match shape {
            0 => u * u + dv * dv > 0.26 * 0.26,
            1 => u.abs() > 0.36 || dv.abs() > 0.26,
            _ => u.abs() > (0.36 - dv) * 0.62 - 0.08 || dv < -0.22,
        };
        let c = match (shape, border) {
            (0, true) | (2, true) => colour,
            (0, false) | (2, false) => [0.92, 0.92, 0.9],
            (_, true) => [0.92, 0.92, 0.9],
            (_, false) => colour,
        };
        return Some((class::SIGN, c, [0.0; 3]));
    }
    if u.abs() < 0.05 && v < centre {
        return Some((class::POLE, [0.55, 0.56, 0.58], [0.0; 3]));
    }
    None
}

fn tree_fragment(
    trunk: f32,
    crown: f32,
    seed: u32,
    style: &DomainStyle,
    u: f32,
    v: f32,
) -> Fragment {
    let centre = trunk + crown * 0.85;
    let dv = (v - centre) * 1.1;
    let r2 = u * u + dv * dv;
    let max_r = crown * 1.2;
    if r2 < max_r * max_r {
        let angle = dv.atan2(u);
        let lobe = crown * (0.8 + 0.4 * value_noise(angle * 2.5 + 10.0, 3.0, seed));
        if r2 < lobe * lobe {
            let n = fbm2(u * 2.5, v * 2.5, seed);
            let mut c = scale(style.vegetation, 0.55 + 0.8 * n);
            // Light from above: the top of the crown is brighter.
            c = scale(c, 0.85 + 0.25 * (dv / crown).clamp(-1.0, 1.0));
            if dv > 0.0 && n > 0.45 {
                c = mix(c, WHITE_SNOW, style.snow_cover);
            }
            return Some((class::VEGETATION, c, [0.0; 3]));
        }
    }
    if u.abs() < 0.14 && v < centre {
        return Some((class::VEGETATION, [0.30, 0.22, 0.14], [0.0; 3]));
    }
    None
}

/// Haze by depth (sky keeps its own colour) and glows around lamp heads.
fn atmosphere(frame: &Frame, scene: &Scene, style: &DomainStyle) -> Vec<Rgb> {
    let mut out = frame.colour.clone();
    for (i, c) in out.iter_mut().enumerate() {
        let d = frame.depth[i];
        if d.is_finite() {
            let t = (-style.haze * d.min(SKYLINE_DEPTH)).exp();
            *c = mix(style.haze_colour, *c, t);
        }
    }
    if style.lamp_pools > 0.0 {
        let cam = scene.camera;
        for &(lx, ly, lz) in &scene.lamps {
            let (px, py) = cam.project(lx, ly - 0.2, lz);
            let radius = (1.2 * cam.f / lz).max(1.0);
            let (xlo, xhi) = span(px - 3.0 * radius, px + 3.0 * radius, frame.width);
            let (ylo, yhi) = span(py - 3.0 * radius, py + 3.0 * radius, frame.height);
            for y in ylo..yhi {
                for x in xlo..xhi {
                    let d2 = ((x as f32 + 0.5 - px).powi(2) + (y as f32 + 0.5 - py).powi(2))
                        / (radius * radius);
                    let k = 0.5 * style.lamp_pools * (-d2 / 2.0).exp();
                    let c = &mut out[y * frame.width + x];
                    for ch in 0..3 {
                        c[ch] += LAMP_LIGHT[ch] * k;
                    }
                }
            }
        }
    }
    out
}

/// Rain streaks or snow flakes over the image.
fn weather(colour: &mut [Rgb], w: usize, h: usize, style: &DomainStyle, seed: u64) {
    let mut rng = FastRng::new(seed ^ 0x77ea_7e33);
    match style.weather {
        Weather::Clear => {}
        Weather::Rain(density) => {
            let count = (density * (w * h) as f32) as usize;
            let slant = 0.15 * (rng.next_f32() - 0.5);
            for _ in 0..count {
                let x0 = rng.next_f32() * w as f32;
                let y0 = rng.next_f32() * h as f32;
                let len = (0.04 + 0.08 * rng.next_f32()) * h as f32;
                let alpha = 0.15 + 0.2 * rng.next_f32();
                for s in 0..len as usize {
                    let x = (x0 + s as f32 * slant) as isize;
                    let y = (y0 + s as f32) as isize;
                    if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
                        continue;
                    }
                    let c = &mut colour[y as usize * w + x as usize];
                    *c = mix(*c, [0.82, 0.84, 0.88], alpha);
                }
            }
        }
        Weather::Snow(density) => {
            let count = (density * (w * h) as f32) as usize;
            for _ in 0..count {
                let fx = rng.next_f32() * w as f32;
                let fy = rng.next_f32() * h as f32;
                let r = 0.5 + 1.3 * rng.next_f32() * rng.next_f32() * (h as f32 / 96.0);
                let (xlo, xhi) = span(fx - r, fx + r, w);
                let (ylo, yhi) = span(fy - r, fy + r, h);
                for y in ylo..yhi {
                    for x in xlo..xhi {
                        let d2 = (x as f32 + 0.5 - fx).powi(2) + (y as f32 + 0.5 - fy).powi(2);
                        if d2 < r * r + 0.25 {
                            let c = &mut colour[y * w + x];
                            *c = mix(*c, [0.97, 0.97, 1.0], 0.85);
                        }
                    }
                }
            }
        }
    }
}

/// Grading (tint, saturation, contrast, vignette), optional blur, sensor noise.
fn finish(
    mut colour: Vec<Rgb>,
    labels: Vec<u8>,
    w: usize,
    h: usize,
    style: &DomainStyle,
    seed: u64,
) -> Sample {
    for (i, c) in colour.iter_mut().enumerate() {
        let (x, y) = (
            (i % w) as f32 / w as f32 - 0.5,
            (i / w) as f32 / h as f32 - 0.5,
        );
        let vignette = 1.0 - 0.35 * (x * x + y * y);
        for (channel, tint) in c.iter_mut().zip(style.tint) {
            *channel *= tint;
        }
        let lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        for channel in c.iter_mut() {
            let v = lum + (*channel - lum) * style.saturation;
            *channel = (0.5 + (v - 0.5) * style.contrast) * vignette;
        }
    }
    if style.blur {
        colour = blur3(&colour, w, h);
    }
    let mut rng = FastRng::new(seed ^ 0x5e45_0a11);
    let mut raw = Vec::with_capacity(w * h * 3);
    for c in &colour {
        for v in c {
            let noisy = v + style.sensor_noise * rng.normal();
            raw.push((noisy.clamp(0.0, 1.0) * 255.0 + 0.5) as u8);
        }
    }
    let image = RgbImage::from_raw(w as u32, h as u32, raw)
        .unwrap_or_else(|| RgbImage::new(w as u32, h as u32));
    Sample { image, labels }
}

/// Separable `[1 2 1] / 4` blur with clamped edges.
fn blur3(src: &[Rgb], w: usize, h: usize) -> Vec<Rgb> {
    let mut tmp = vec![[0.0f32; 3]; w * h];
    for y in 0..h {
        for x in 0..w {
            let (l, r) = (x.saturating_sub(1), (x + 1).min(w - 1));
            let (a, b, c) = (src[y * w + l], src[y * w + x], src[y * w + r]);
            tmp[y * w + x] = [0, 1, 2].map(|k| 0.25 * a[k] + 0.5 * b[k] + 0.25 * c[k]);
        }
    }
    let mut out = vec![[0.0f32; 3]; w * h];
    for y in 0..h {
        let (u, d) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            let (a, b, c) = (tmp[u * w + x], tmp[y * w + x], tmp[d * w + x]);
            out[y * w + x] = [0, 1, 2].map(|k| 0.25 * a[k] + 0.5 * b[k] + 0.25 * c[k]);
        }
    }
    out
}
