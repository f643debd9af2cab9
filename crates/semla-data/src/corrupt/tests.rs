use super::*;
use image::Rgb;

/// A deterministic test scene: smooth gradients, a checkerboard and a bright
/// square, so blur, noise and tone changes are all measurable.
fn test_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let checker = if (x / 4 + y / 4) % 2 == 0 { 60 } else { 0 };
        let r = (x * 180 / w) as u8 + checker;
        let g = (y * 180 / h) as u8 + checker / 2;
        let b = if (w / 3..w / 2).contains(&x) && (h / 3..h / 2).contains(&y) {
            250
        } else {
            40
        };
        Rgb([r, g, b])
    })
}

fn as_f32(img: &RgbImage) -> Vec<f32> {
    img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect()
}

fn std_dev(v: &[f32]) -> f32 {
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

/// Root mean square difference between two images.
fn rms_diff(a: &RgbImage, b: &RgbImage) -> f32 {
    let (a, b) = (as_f32(a), as_f32(b));
    (a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len() as f32).sqrt()
}

/// Mean absolute horizontal gradient: falls as an image gets blurrier.
fn sharpness(img: &RgbImage) -> f32 {
    let (w, h) = img.dimensions();
    let mut total = 0.0;
    for y in 0..h {
        for x in 1..w {
            for c in 0..3 {
                total += (f32::from(img.get_pixel(x, y)[c])
                    - f32::from(img.get_pixel(x - 1, y)[c]))
                .abs();
            }
        }
    }
    total / ((w - 1) * h * 3) as f32
}

fn apply(kind: CorruptionKind, severity: u32, img: &RgbImage) -> RgbImage {
    Corruption::new(kind, severity, 7)
        .unwrap()
        .apply(img, 0)
        .unwrap()
}

#[test]
fn names_parse_and_round_trip() {
    let fog = Corruption::parse("fog3").unwrap();
    assert_eq!(
        (fog.kind, fog.severity, fog.seed),
        (CorruptionKind::Fog, 3, 0)
    );
    assert_eq!(
        Corruption::parse("night2").unwrap().kind,
        CorruptionKind::Night
    );
    let noise = Corruption::parse("gaussian_noise5").unwrap();
    assert_eq!(
        (noise.kind, noise.severity),
        (CorruptionKind::GaussianNoise, 5)
    );
    assert_eq!(
        Corruption::parse("jpeg_compression1").unwrap().kind,
        CorruptionKind::Jpeg
    );
    for kind in CorruptionKind::ALL {
        let c = Corruption::new(kind, 4, 0).unwrap();
        assert_eq!(Corruption::parse(&c.name()).unwrap(), c);
        assert_eq!(kind.name().parse::<CorruptionKind>().unwrap(), kind);
    }
    assert!(matches!(
        Corruption::parse("fog"),
        Err(CorruptError::MissingSeverity { .. })
    ));
    assert!(matches!(
        Corruption::parse("fog6"),
        Err(CorruptError::BadSeverity { severity: 6 })
    ));
    assert!(matches!(
        Corruption::parse("fog0"),
        Err(CorruptError::BadSeverity { severity: 0 })
    ));
    assert!(matches!(
        Corruption::parse("hail3"),
        Err(CorruptError::UnknownKind { .. })
    ));
}

#[test]
fn deterministic_from_seed_kind_severity_and_index() {
    let img = test_image(48, 36);
    for kind in CorruptionKind::ALL {
        let c = Corruption::new(kind, 3, 11).unwrap();
        let a = c.apply(&img, 5).unwrap();
        let b = c.apply(&img, 5).unwrap();
        assert_eq!(a, b, "{kind} is not deterministic");
        assert_eq!(a.dimensions(), img.dimensions());
    }
    // Random kinds change with the seed and with the image index.
    for kind in [
        CorruptionKind::GaussianNoise,
        CorruptionKind::ShotNoise,
        CorruptionKind::ImpulseNoise,
        CorruptionKind::Snow,
        CorruptionKind::Fog,
        CorruptionKind::Rain,
        CorruptionKind::Night,
        CorruptionKind::MotionBlur,
    ] {
        let c = Corruption::new(kind, 3, 11).unwrap();
        let base = c.apply(&img, 5).unwrap();
        assert_ne!(
            base,
            c.with_seed(12).apply(&img, 5).unwrap(),
            "{kind}: seed ignored"
        );
        assert_ne!(
            base,
            c.apply(&img, 6).unwrap(),
            "{kind}: image index ignored"
        );
    }
}

#[test]
fn noise_grows_with_severity() {
    let img = test_image(64, 48);
    for kind in [
        CorruptionKind::GaussianNoise,
        CorruptionKind::ShotNoise,
        CorruptionKind::ImpulseNoise,
    ] {
        let errors: Vec<f32> = (1..=5)
            .map(|s| rms_diff(&img, &apply(kind, s, &img)))
            .collect();
        assert!(errors.windows(2).all(|w| w[0] < w[1]), "{kind}: {errors:?}");
    }
    // Gaussian noise on mid-grey (no clipping) has exactly the published std.
    let grey = RgbImage::from_pixel(128, 128, Rgb([128, 128, 128]));
    for (s, std) in [(1, 0.08), (3, 0.18)] {
        let out = apply(CorruptionKind::GaussianNoise, s, &grey);
        let measured = std_dev(&as_f32(&out));
        assert!(
            (measured - std).abs() < 0.01,
            "severity {s}: std {measured} vs {std}"
        );
    }
}

#[test]
fn blur_grows_with_severity() {
    let img = test_image(64, 48);
    let defocus: Vec<f32> = (1..=5)
        .map(|s| sharpness(&apply(CorruptionKind::DefocusBlur, s, &img)))
        .collect();
    assert!(sharpness(&img) > defocus[0]);
    assert!(defocus.windows(2).all(|w| w[0] >= w[1]), "{defocus:?}");
    assert!(defocus[4] < 0.6 * defocus[0], "{defocus:?}");
    // The motion-blur angle is random; at a fixed (horizontal) angle the
    // published (radius, sigma) table blurs more at every severity.
    let x = FloatImage::from_rgb(&img);
    let motion: Vec<f32> = MOTION_BLUR
        .iter()
        .map(|&(radius, sigma)| sharpness(&motion_blur(&x, radius, sigma, 0.0).to_rgb()))
        .collect();
    assert!(sharpness(&img) > motion[0]);
    assert!(motion.windows(2).all(|w| w[0] > w[1]), "{motion:?}");
    // A blur keeps a flat image flat (kernels sum to one).
    let flat = RgbImage::from_pixel(40, 30, Rgb([90, 150, 210]));
    for kind in [CorruptionKind::DefocusBlur, CorruptionKind::MotionBlur] {
        assert_eq!(apply(kind, 5, &flat), flat, "{kind}");
    }
}

#[test]
fn contrast_and_fog_reduce_contrast_monotonically() {
    let img = test_image(64, 48);
    let spread: Vec<f32> = (1..=5)
        .map(|s| std_dev(&as_f32(&apply(CorruptionKind::Contrast, s, &img))))
        .collect();
    assert!(std_dev(&as_f32(&img)) > spread[0]);
    assert!(
        spread.windows(2).all(|w| w[0] > w[1]),
        "contrast: {spread:?}"
    );
    // Fog maps x to (x + t F) m / (m + t) (t = 1.5, 2, 2.5, 2.5, 3) with the
    // fractal F fixed by the seed: two scenes with the same maximum m = 1 get
    // the same fractal, so their difference shrinks by exactly m / (m + t).
    let other = RgbImage::from_fn(64, 48, |x, y| {
        let p = img.get_pixel(x, y);
        Rgb([255 - p[0], p[1] / 2, p[2]])
    });
    let (a, b) = (as_f32(&img), as_f32(&other));
    let input_gap: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
    let ratios: Vec<f32> = (1..=5)
        .map(|s| {
            let (fa, fb) = (
                as_f32(&apply(CorruptionKind::Fog, s, &img)),
                as_f32(&apply(CorruptionKind::Fog, s, &other)),
            );
            fa.iter().zip(&fb).map(|(x, y)| (x - y).abs()).sum::<f32>() / input_gap
        })
        .collect();
    let expected = [1.0 / 2.5, 1.0 / 3.0, 1.0 / 3.5, 1.0 / 3.5, 1.0 / 4.0];
    for (got, want) in ratios.iter().zip(expected) {
        assert!(
            (got - want).abs() < 0.01,
            "fog contrast {ratios:?} vs {expected:?}"
        );
    }
}

#[test]
fn contrast_matches_hand_computation() {
    // Channel means: r = (0 + 255) / 2, so at severity 1 (c = 0.4) red becomes
    // 127.5 -/+ 0.4 * 127.5 = 76.5 and 178.5 -> 77 and 179 after rounding.
    let mut img = RgbImage::new(2, 1);
    img.put_pixel(0, 0, Rgb([0, 100, 50]));
    img.put_pixel(1, 0, Rgb([255, 100, 150]));
    let out = apply(CorruptionKind::Contrast, 1, &img);
    assert_eq!(out.get_pixel(0, 0), &Rgb([77, 100, 80]));
    assert_eq!(out.get_pixel(1, 0), &Rgb([179, 100, 120]));
}

#[test]
fn brightness_shifts_hsv_value_keeping_hue() {
    // V = 0.4 -> 0.5 at severity 1: RGB scaled by 1.25.
    let img = RgbImage::from_pixel(1, 1, Rgb([40, 102, 20]));
    let out = apply(CorruptionKind::Brightness, 1, &img);
    let v = (102.0f32 / 255.0 + 0.1) * 255.0;
    let k = v / 102.0;
    assert_eq!(
        out.get_pixel(0, 0),
        &Rgb([
            (40.0 * k).round() as u8,
            v.round() as u8,
            (20.0 * k).round() as u8
        ])
    );
    let img = test_image(32, 24);
    let means: Vec<f32> = (1..=5)
        .map(|s| mean(&as_f32(&apply(CorruptionKind::Brightness, s, &img))))
        .collect();
    assert!(means.windows(2).all(|w| w[0] < w[1]), "{means:?}");
}

#[test]
fn night_darkens_and_adds_noise_with_severity() {
    let img = test_image(64, 48);
    let means: Vec<f32> = (1..=5)
        .map(|s| mean(&as_f32(&apply(CorruptionKind::Night, s, &img))))
        .collect();
    assert!(mean(&as_f32(&img)) > means[0]);
    assert!(means.windows(2).all(|w| w[0] > w[1]), "{means:?}");
    // Relative noise (std over mean on a flat grey) rises with severity.
    let grey = RgbImage::from_pixel(96, 96, Rgb([160, 160, 160]));
    let rel: Vec<f32> = (1..=5)
        .map(|s| {
            let v = as_f32(&apply(CorruptionKind::Night, s, &grey));
            std_dev(&v) / mean(&v)
        })
        .collect();
    assert!(rel.windows(2).all(|w| w[0] < w[1]), "{rel:?}");
}

#[test]
fn weather_looks_like_weather() {
    let img = test_image(64, 48);
    let base = mean(&as_f32(&img));
    // Snow whitens; fog lifts the dark parts and flattens.
    for s in 1..=5 {
        assert!(
            mean(&as_f32(&apply(CorruptionKind::Snow, s, &img))) > base,
            "snow {s}"
        );
    }
    // Rain: streaks change the image more as severity grows.
    let rain: Vec<f32> = (1..=5)
        .map(|s| rms_diff(&img, &apply(CorruptionKind::Rain, s, &img)))
        .collect();
    assert!(rain.windows(2).all(|w| w[0] < w[1]), "{rain:?}");
}

#[test]
fn jpeg_error_grows_with_lower_quality() {
    let img = test_image(64, 48);
    let e1 = rms_diff(&img, &apply(CorruptionKind::Jpeg, 1, &img));
    let e5 = rms_diff(&img, &apply(CorruptionKind::Jpeg, 5, &img));
    assert!(e1 > 0.0 && e5 > e1, "{e1} {e5}");
}

#[test]
fn plasma_fractal_is_normalised_and_seeded() {
    let mut rng = StdRng::seed_from_u64(3);
    let a = plasma_fractal(64, 2.0, &mut rng);
    assert_eq!(a.len(), 64 * 64);
    let min = a.iter().copied().fold(f32::INFINITY, f32::min);
    let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!((min, max), (0.0, 1.0));
    assert_eq!(a, plasma_fractal(64, 2.0, &mut StdRng::seed_from_u64(3)));
    // Smooth: neighbours differ far less than random values would.
    let rough: f32 = a.windows(2).map(|w| (w[0] - w[1]).abs()).sum::<f32>() / a.len() as f32;
    assert!(rough < 0.1, "{rough}");
}

#[test]
fn disk_kernel_is_a_normalised_symmetric_disk() {
    for (radius, alias) in [(3, 0.1), (8, 0.5), (10, 0.5)] {
        let k = kernels::disk_kernel(radius, alias);
        let sum: f32 = k.weights.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        let n = k.size;
        for y in 0..n {
            for x in 0..n {
                assert!((k.weights[y * n + x] - k.weights[x * n + y]).abs() < 1e-7);
                assert!((k.weights[y * n + x] - k.weights[(n - 1 - y) * n + x]).abs() < 1e-7);
            }
        }
        let c = n / 2;
        // Inside the disk the weight is about 1 / area; far outside it is ~0.
        assert!(k.weights[c * n + c] > 0.5 / (std::f32::consts::PI * (radius * radius) as f32));
        assert!(k.weights[0] < 1e-6);
    }
}

#[test]
fn empty_image_is_an_error() {
    let c = Corruption::new(CorruptionKind::Fog, 1, 0).unwrap();
    assert!(matches!(
        c.apply(&RgbImage::new(0, 5), 0),
        Err(CorruptError::EmptyImage { .. })
    ));
}

#[test]
fn real_camvid_frame_under_every_corruption() {
    let Some(path) = semla_test_support::shared::path("data/camvid/val/0016E5_07959.png") else {
        return;
    };
    let img = image::open(&path).unwrap();
    // Downscale for speed; the corruptions are resolution-independent in form.
    let img = image::imageops::resize(
        &img.to_rgb8(),
        160,
        120,
        image::imageops::FilterType::Triangle,
    );
    for kind in CorruptionKind::ALL {
        let out = apply(kind, 3, &img);
        assert_eq!(out.dimensions(), img.dimensions());
        let diff = rms_diff(&img, &out);
        assert!(diff > 0.01, "{kind} barely changed a real frame ({diff})");
    }
}
