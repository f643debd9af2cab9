use super::*;

fn sample(domain: &str, split: Split, index: u64) -> Sample {
    SyntheticWorld::generate_named(domain, split, index, 128, 96).unwrap()
}

#[test]
fn deterministic_and_split_dependent() {
    let a = sample("clear", Split::Train, 3);
    let b = sample("clear", Split::Train, 3);
    assert_eq!(a.image, b.image);
    assert_eq!(a.labels, b.labels);
    assert_ne!(a.labels, sample("clear", Split::Train, 4).labels);
    assert_ne!(a.labels, sample("clear", Split::Val, 3).labels);
    assert_eq!(a.labels.len(), 128 * 96);
    assert!(a.labels.iter().all(|&l| usize::from(l) < NUM_CLASSES));
}

#[test]
fn at_least_six_domains_with_known_names() {
    let names = SyntheticWorld::domain_names();
    assert!(names.len() >= 6, "{names:?}");
    for name in ["clear", "night", "fog", "rain", "snow", "desert"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(matches!(
        SyntheticWorld::domain("mars"),
        Err(SyntheticError::UnknownDomain { .. })
    ));
    assert!(matches!(
        SyntheticWorld::generate_named("clear", Split::Train, 0, 4, 96),
        Err(SyntheticError::TooSmall { .. })
    ));
}

#[test]
fn every_class_appears() {
    let mut everywhere = [0usize; NUM_CLASSES];
    for domain in SyntheticWorld::domain_names() {
        let mut here = [0usize; NUM_CLASSES];
        for i in 0..6 {
            for &l in &sample(domain, Split::Train, i).labels {
                here[usize::from(l)] += 1;
                everywhere[usize::from(l)] += 1;
            }
        }
        let present = here.iter().filter(|&&n| n > 0).count();
        assert!(present >= 9, "{domain}: only {present} classes: {here:?}");
        // The street itself dominates: road is always big, and some sky is
        // always visible (overcast cities have tall buildings: about 4 %).
        let total: usize = here.iter().sum();
        assert!(
            here[usize::from(class::ROAD)] * 10 > total,
            "{domain}: {here:?}"
        );
        assert!(
            here[usize::from(class::SKY)] * 50 > total,
            "{domain}: {here:?}"
        );
    }
    for (c, n) in everywhere.iter().enumerate() {
        assert!(*n > 0, "class {} never appears", CLASS_NAMES[c]);
    }
}

/// Per-image statistics: mean RGB, luminance std, mean saturation, and the
/// mean absolute horizontal gradient (sharpness and noise).
fn features(img: &RgbImage) -> [f32; 6] {
    let (w, h) = img.dimensions();
    let n = (w * h) as f32;
    let mut sum = [0.0f32; 3];
    let mut lum = Vec::with_capacity((w * h) as usize);
    let mut sat = 0.0;
    for p in img.pixels() {
        let c = [0, 1, 2].map(|k| f32::from(p[k]) / 255.0);
        (0..3).for_each(|k| sum[k] += c[k]);
        lum.push(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]);
        let (mx, mn) = (c[0].max(c[1]).max(c[2]), c[0].min(c[1]).min(c[2]));
        sat += if mx > 0.0 { (mx - mn) / mx } else { 0.0 };
    }
    let mean_l = lum.iter().sum::<f32>() / n;
    let std_l = (lum.iter().map(|l| (l - mean_l).powi(2)).sum::<f32>() / n).sqrt();
    let mut grad = 0.0;
    for y in 0..h as usize {
        for x in 1..w as usize {
            grad += (lum[y * w as usize + x] - lum[y * w as usize + x - 1]).abs();
        }
    }
    [sum[0] / n, sum[1] / n, sum[2] / n, std_l, sat / n, grad / n]
}

#[test]
fn domains_are_told_apart_by_image_statistics() {
    let names = SyntheticWorld::domain_names();
    let centroids: Vec<[f32; 6]> = names
        .iter()
        .map(|d| {
            let mut acc = [0.0f32; 6];
            for i in 0..6 {
                let f = features(&sample(d, Split::Train, i).image);
                (0..6).for_each(|k| acc[k] += f[k] / 6.0);
            }
            acc
        })
        .collect();
    let mut correct = 0;
    let mut total = 0;
    for (truth, d) in names.iter().enumerate() {
        for i in 0..4 {
            let f = features(&sample(d, Split::Val, i).image);
            let nearest = centroids
                .iter()
                .enumerate()
                .map(|(k, c)| (k, (0..6).map(|j| (c[j] - f[j]).powi(2)).sum::<f32>()))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(k, _)| k)
                .unwrap();
            correct += usize::from(nearest == truth);
            total += 1;
        }
    }
    let accuracy = correct as f32 / total as f32;
    assert!(
        accuracy >= 0.9,
        "nearest-centroid domain accuracy {accuracy}"
    );
}

#[test]
fn a_colour_classifier_fitted_on_clear_degrades_on_other_domains() {
    // Per-class mean colour on clear training images, then nearest-mean pixel
    // classification: a stand-in for a segmenter that learned one style.
    let mut sums = [[0.0f64; 3]; NUM_CLASSES];
    let mut counts = [0.0f64; NUM_CLASSES];
    for i in 0..6 {
        let s = sample("clear", Split::Train, i);
        for (p, &l) in s.image.pixels().zip(&s.labels) {
            (0..3).for_each(|k| sums[usize::from(l)][k] += f64::from(p[k]));
            counts[usize::from(l)] += 1.0;
        }
    }
    let means: Vec<[f64; 3]> = (0..NUM_CLASSES)
        .map(|c| sums[c].map(|s| if counts[c] > 0.0 { s / counts[c] } else { 1e9 }))
        .collect();
    let accuracy = |domain: &str| {
        let (mut ok, mut n) = (0usize, 0usize);
        for i in 0..3 {
            let s = sample(domain, Split::Val, i);
            for (p, &l) in s.image.pixels().zip(&s.labels) {
                let pred = (0..NUM_CLASSES)
                    .min_by(|&a, &b| {
                        let da: f64 = (0..3)
                            .map(|k| (means[a][k] - f64::from(p[k])).powi(2))
                            .sum();
                        let db: f64 = (0..3)
                            .map(|k| (means[b][k] - f64::from(p[k])).powi(2))
                            .sum();
                        da.total_cmp(&db)
                    })
                    .unwrap();
                ok += usize::from(pred == usize::from(l));
                n += 1;
            }
        }
        ok as f32 / n as f32
    };
    let clear = accuracy("clear");
    for other in ["night", "fog", "snow", "desert"] {
        let acc = accuracy(other);
        assert!(acc < clear - 0.1, "{other}: {acc} vs clear {clear}");
    }
}

#[test]
fn colorize_uses_the_palette() {
    let img = colorize_labels(&[class::ROAD, class::CAR, 200, class::SKY], 2, 2);
    assert_eq!(img.get_pixel(0, 0).0, PALETTE[0]);
    assert_eq!(img.get_pixel(1, 0).0, PALETTE[9]);
    assert_eq!(img.get_pixel(0, 1).0, [0, 0, 0]);
    assert_eq!(img.get_pixel(1, 1).0, PALETTE[7]);
}

#[test]
fn light_variants_lie_between_clear_and_their_style() {
    let clear = SyntheticWorld::domain("clear").unwrap();
    assert_eq!(
        SyntheticWorld::variants().len(),
        SyntheticWorld::domains().len() - 1
    );
    for variant in SyntheticWorld::variants() {
        let style_name = variant.name.strip_suffix("-light").unwrap();
        let style = SyntheticWorld::domain(style_name).unwrap();
        // 70 % of the way in every interpolated setting (haze and ambient light here).
        let expect = |a: f32, b: f32| a + 0.7 * (b - a);
        assert!((variant.haze - expect(clear.haze, style.haze)).abs() < 1e-6);
        for c in 0..3 {
            let want = expect(clear.ambient[c], style.ambient[c]);
            assert!((variant.ambient[c] - want).abs() < 1e-6, "{}", variant.name);
        }
        // Its images are its own: not a copy of either end.
        let own = features(&sample(variant.name, Split::Train, 0).image);
        let of_style = features(&sample(style_name, Split::Train, 0).image);
        assert_ne!(own, of_style, "{}", variant.name);
    }
    let err = SyntheticWorld::domain("fog-heavy").unwrap_err().to_string();
    assert!(err.contains("fog-light"), "{err}");
}
