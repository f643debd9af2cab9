//! The layout of one scene: camera, street cross-section, facades and objects.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::style::{DomainStyle, Rgb};

/// Pinhole camera looking down the street. A world point `(X, Y, Z)` (lateral,
/// height, depth, metres) projects to `(xv + f X / Z, yh + f (h - Y) / Z)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Camera {
    pub f: f32,
    pub xv: f32,
    pub yh: f32,
    pub height: f32,
}

impl Camera {
    #[inline]
    pub fn project(&self, x: f32, y: f32, z: f32) -> (f32, f32) {
        (
            self.xv + self.f * x / z,
            self.yh + self.f * (self.height - y) / z,
        )
    }
}

/// A stretch of street frontage on one side, between depths `z0` and `z1`.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub z0: f32,
    pub z1: f32,
    /// `Some` for a building: height, wall colour, window grid, seed.
    pub building: Option<Building>,
    /// Hedge height in the gaps (0 = grass only).
    pub hedge: f32,
}

#[derive(Clone, Debug)]
pub(crate) struct Building {
    pub height: f32,
    pub wall: Rgb,
    pub floor: f32,
    pub bay: f32,
    pub seed: u32,
}

/// One side of the street: `sign` is -1 (left) or 1 (right).
#[derive(Clone, Debug)]
pub(crate) struct Side {
    pub sign: f32,
    /// Lateral distance of the facade plane.
    pub facade: f32,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug)]
pub(crate) enum ObjectKind {
    /// `towards`: seen from the front (headlights) instead of from behind.
    Car {
        paint: Rgb,
        towards: bool,
        width: f32,
        height: f32,
    },
    Person {
        shirt: Rgb,
        trousers: Rgb,
        height: f32,
    },
    /// Street lamp with an arm reaching over the road (`reach` signed).
    Lamp {
        height: f32,
        reach: f32,
    },
    /// Pole with a sign panel: shape 0 disc, 1 rectangle, 2 triangle.
    SignPole {
        height: f32,
        shape: u8,
        colour: Rgb,
    },
    Tree {
        trunk: f32,
        crown: f32,
        seed: u32,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Object {
    pub kind: ObjectKind,
    pub x: f32,
    pub z: f32,
}

/// A complete scene layout.
#[derive(Clone, Debug)]
pub(crate) struct Scene {
    pub camera: Camera,
    /// Lateral position of the road centre and the road half width.
    pub road_centre: f32,
    pub road_half: f32,
    pub sidewalk: f32,
    pub sides: [Side; 2],
    /// Distant skyline blocks: (x0, x1) in image fractions, height in metres, is_tree.
    pub skyline: Vec<(f32, f32, f32, bool)>,
    pub objects: Vec<Object>,
    /// Lamp heads (x, y, z) for light pools and glows.
    pub lamps: Vec<(f32, f32, f32)>,
    /// Horizontal position of the sun disk, as a fraction of the width.
    pub sun_x: f32,
    pub texture_seed: u32,
}

/// Depth of the far end of the frontage and of the skyline.
pub(crate) const FAR: f32 = 110.0;
pub(crate) const SKYLINE_DEPTH: f32 = 220.0;

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// Exponential gap with the given rate (events per metre).
fn gap(rng: &mut StdRng, rate: f32) -> f32 {
    -(1.0 - rng.random::<f32>()).ln() / rate.max(1e-4)
}

impl Scene {
    pub fn sample(style: &DomainStyle, seed: u64, width: u32, height: u32) -> Scene {
        let mut rng = StdRng::seed_from_u64(seed);
        let (w, h) = (width as f32, height as f32);
        let camera = Camera {
            f: w * rng.random_range(0.8..1.05),
            xv: w * (0.5 + rng.random_range(-0.1..0.1)),
            yh: h * rng.random_range(0.40..0.50),
            height: rng.random_range(1.3..1.8),
        };
        let road_half = rng.random_range(3.5..6.5);
        let road_centre = rng.random_range(-2.0..1.0);
        let sidewalk = rng.random_range(2.0..4.0);
        let sides = [-1.0f32, 1.0].map(|sign| {
            let kerb = road_centre * sign + road_half + sidewalk;
            let facade = kerb + rng.random_range(0.0..3.0);
            let mut segments = Vec::new();
            let mut z = rng.random_range(1.0..6.0);
            while z < FAR {
                let len = rng.random_range(8.0..28.0);
                let building = (rng.random::<f32>() < style.building_prob).then(|| Building {
                    height: rng.random_range(style.building_height.0..style.building_height.1),
                    wall: pick(&mut rng, style.walls),
                    floor: rng.random_range(2.8..3.6),
                    bay: rng.random_range(2.2..3.6),
                    seed: rng.random(),
                });
                let hedge = if rng.random::<f32>() < 0.6 {
                    rng.random_range(0.6..2.2)
                } else {
                    0.0
                };
                segments.push(Segment {
                    z0: z,
                    z1: (z + len).min(FAR),
                    building,
                    hedge,
                });
                z += len;
            }
            Side {
                sign,
                facade,
                segments,
            }
        });

        let mut skyline = Vec::new();
        let mut x = -0.1f32;
        while x < 1.1 {
            let span = rng.random_range(0.03..0.12);
            let is_tree = rng.random::<f32>() > style.building_prob;
            let top = if is_tree {
                rng.random_range(6.0..14.0)
            } else {
                rng.random_range(style.building_height.0..style.building_height.1 * 1.6)
            };
            skyline.push((x, x + span, top, is_tree));
            x += span;
        }

        let mut objects = Vec::new();
        // Cars: same-direction lane (seen from behind), oncoming lane (from the
        // front), and cars parked along both kerbs.
        let lanes = [
            (road_centre + road_half * 0.5, false, 1.0),
            (road_centre - road_half * 0.5, true, 1.0),
            (road_centre + road_half - 1.1, false, 0.6),
            (road_centre - road_half + 1.1, true, 0.6),
        ];
        for (lane_x, towards, weight) in lanes {
            let mut z = 4.0 + gap(&mut rng, style.car_rate * weight);
            while z < 70.0 && objects.len() < 24 {
                objects.push(Object {
                    kind: ObjectKind::Car {
                        paint: pick(&mut rng, style.car_paints),
                        towards,
                        width: rng.random_range(1.7..2.0),
                        height: rng.random_range(1.4..1.8),
                    },
                    x: lane_x + rng.random_range(-0.3..0.3),
                    z,
                });
                z += 6.0 + gap(&mut rng, style.car_rate * weight);
            }
        }
        let shirts: [Rgb; 6] = [
            [0.7, 0.1, 0.1],
            [0.1, 0.3, 0.7],
            [0.9, 0.9, 0.85],
            [0.15, 0.15, 0.15],
            [0.8, 0.6, 0.1],
            [0.2, 0.5, 0.3],
        ];
        let trousers: [Rgb; 3] = [[0.1, 0.12, 0.25], [0.15, 0.15, 0.15], [0.45, 0.38, 0.3]];
        for sign in [-1.0f32, 1.0] {
            let inner = road_centre + sign * (road_half + 0.5);
            let outer = road_centre + sign * (road_half + sidewalk - 0.3);
            let mut z = 3.0 + gap(&mut rng, style.person_rate);
            while z < 60.0 {
                let t: f32 = rng.random();
                objects.push(Object {
                    kind: ObjectKind::Person {
                        shirt: pick(&mut rng, &shirts),
                        trousers: pick(&mut rng, &trousers),
                        height: rng.random_range(1.55..1.95),
                    },
                    x: inner + (outer - inner) * t,
                    z,
                });
                z += 1.5 + gap(&mut rng, style.person_rate);
            }
            // Trees along the back of the sidewalk.
            let tree_x = road_centre + sign * (road_half + sidewalk - 0.7);
            let mut z = 4.0 + gap(&mut rng, style.tree_rate);
            while z < 90.0 {
                objects.push(Object {
                    kind: ObjectKind::Tree {
                        trunk: rng.random_range(1.8..3.0),
                        crown: rng.random_range(1.5..3.2),
                        seed: rng.random(),
                    },
                    x: tree_x,
                    z,
                });
                z += 5.0 + gap(&mut rng, style.tree_rate);
            }
        }
        // Lamps and sign poles along the kerbs; the first sign pole is always
        // close enough to be seen.
        let mut lamps = Vec::new();
        let first_sign = rng.random_range(6.0..20.0);
        for sign in [-1.0f32, 1.0] {
            let kerb_x = road_centre + sign * (road_half + 0.35);
            let mut z = rng.random_range(3.0..style.pole_spacing);
            let mut first = sign < 0.0 && rng.random::<bool>() || sign > 0.0;
            while z < 100.0 {
                if first && z > first_sign || rng.random::<f32>() < 0.3 {
                    first = false;
                    objects.push(Object {
                        kind: ObjectKind::SignPole {
                            height: rng.random_range(2.4..3.2),
                            shape: rng.random_range(0..3),
                            colour: pick(
                                &mut rng,
                                &[[0.85, 0.1, 0.1], [0.1, 0.3, 0.8], [0.95, 0.8, 0.1]],
                            ),
                        },
                        x: kerb_x,
                        z,
                    });
                } else {
                    let height = rng.random_range(6.0..8.5);
                    let reach = -sign * rng.random_range(0.8..1.8);
                    objects.push(Object {
                        kind: ObjectKind::Lamp { height, reach },
                        x: kerb_x,
                        z,
                    });
                    lamps.push((kerb_x + reach, height, z));
                }
                z += style.pole_spacing * rng.random_range(0.6..1.4);
            }
        }
        // Far first, so nearer objects win ties in the depth buffer.
        objects.sort_by(|a, b| b.z.total_cmp(&a.z));
        Scene {
            camera,
            road_centre,
            road_half,
            sidewalk,
            sides,
            skyline,
            objects,
            lamps,
            sun_x: rng.random_range(0.15..0.85),
            texture_seed: rng.random(),
        }
    }
}
