//! Class lists for open-vocabulary CAT-Seg: the official JSON lists of SemLA's
//! 20 domains built in (by domain name or by the JSON file's stem), and class
//! files (one name per line, or an official JSON list).

use std::path::Path;

use semla_data::domains::classes as lists;

/// The official class list of a SemLA domain (`cs-normal`, `acdc-fog`,
/// `muses-rain-night`, `bdd`, `mv`, `a150`, `idd`, `pc59`, `nyu`, `coconutL`)
/// or of an official JSON file by its stem (`cs19`, `mv65`, `ade150`, `idd30`,
/// `pc59`, `nyu40`, `coconut`).
pub fn official_classes(name: &str) -> Option<&'static [&'static str]> {
    let cityscapes = name == "cs19"
        || name == "cs-normal"
        || name == "bdd"
        || name.starts_with("acdc-")
        || name.starts_with("muses-");
    if cityscapes {
        return Some(&lists::CITYSCAPES_19);
    }
    Some(match name {
        "mv" | "mv65" => &lists::MAPILLARY_VISTAS_65,
        "a150" | "ade150" => &lists::ADE20K_150,
        "idd" | "idd30" => &lists::IDD_LEVEL3_26,
        "pc59" => &lists::PASCAL_CONTEXT_59,
        "nyu" | "nyu40" => &lists::NYU_40,
        "coconutL" | "coconut" => &lists::COCO_PANOPTIC_133,
        _ => return None,
    })
}

/// The most classes a class file may list (the official aggregator keeps 256).
pub const MAX_CLASSES: usize = 4096;

/// Reads a class file: a JSON list of names (the official `datasets/*.json`) or
/// one name per line (blank lines skipped, names kept verbatim otherwise).
pub fn read_classes_file(path: &Path) -> Result<Vec<String>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > 16 << 20 {
        return Err(format!(
            "{}: {} bytes is too large for a class list",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let names: Vec<String> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a JSON list of class names: {e}", path.display()))?
    } else {
        text.lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    if names.is_empty() {
        return Err(format!("{}: no class names", path.display()));
    }
    if names.len() > MAX_CLASSES {
        return Err(format!(
            "{}: {} classes, more than {MAX_CLASSES}",
            path.display(),
            names.len()
        ));
    }
    Ok(names)
}

/// Parses `--classes`: comma-separated names (`road,car,traffic light`), or the
/// name of an official list (`cs19`, a domain name).
pub fn parse_classes_arg(arg: &str) -> Result<Vec<String>, String> {
    if let Some(list) = official_classes(arg.trim()) {
        return Ok(list.iter().map(|s| s.to_string()).collect());
    }
    let names: Vec<String> = arg
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(format!("--classes {arg:?} names no class"));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_map_to_their_official_lists() {
        assert_eq!(official_classes("acdc-night").map(<[_]>::len), Some(19));
        assert_eq!(
            official_classes("muses-fog-day").map(|l| l[0]),
            Some("road")
        );
        assert_eq!(official_classes("coconutL").map(<[_]>::len), Some(133));
        assert_eq!(official_classes("idd").map(<[_]>::len), Some(26));
        assert!(official_classes("kitti").is_none());
        assert_eq!(
            parse_classes_arg("road, car,traffic light").unwrap(),
            ["road", "car", "traffic light"]
        );
    }

    #[test]
    fn class_files_are_json_lists_or_lines() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("c.json");
        std::fs::write(&json, "[\"road\", \"car, automobile\"]").unwrap();
        assert_eq!(
            read_classes_file(&json).unwrap(),
            ["road", "car, automobile"]
        );
        let txt = dir.path().join("c.txt");
        std::fs::write(&txt, "road\r\n\ncar\n").unwrap();
        assert_eq!(read_classes_file(&txt).unwrap(), ["road", "car"]);
        std::fs::write(&txt, "\n").unwrap();
        assert!(
            read_classes_file(&txt)
                .unwrap_err()
                .contains("no class names")
        );
    }
}
