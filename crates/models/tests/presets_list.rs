//! Every embedded preset parses, and its parameter count (computed from the config) is what
//! `models/presets/README.md` lists for it: the table is checked, not hand-copied.

use silica_models::presets;

#[test]
fn every_preset_parses_and_matches_the_readme_table() {
    let readme = include_str!("../presets/README.md");
    for name in presets::names() {
        let cfg = presets::preset(name).unwrap_or_else(|e| panic!("preset {name}: {e}"));
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("preset {name} has no row in presets/README.md"));
        let want = |n: u64| {
            let s = n.to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            out
        };
        let total = want(cfg.num_params());
        assert!(
            row.contains(&format!("| {total} |")) || row.contains(&format!("| {total} (")),
            "preset {name}: README row lacks the computed count {total}: {row}"
        );
        if cfg.moe.is_some() {
            let active = want(cfg.num_active_params());
            assert!(
                row.contains(&format!("{active} active")),
                "preset {name}: README row lacks the active count {active}: {row}"
            );
        }
    }
}
