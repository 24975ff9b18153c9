//! Golden tests for config error messages: `tests/golden/NAME.toml` must produce exactly
//! `tests/golden/NAME.errors` from `wasmgate check`. Set `UPDATE_GOLDEN=1` to rewrite the
//! expectations after an intended change, then review the diff.

use std::path::Path;

#[test]
fn config_errors_match_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases = 0;
    let mut mismatches = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for toml in entries {
        cases += 1;
        // Run from the golden folder with a relative path, as operators do.
        let name = toml.file_name().expect("file name");
        let out = std::process::Command::new(wasmgate_tests::wasmgate_bin!())
            .current_dir(&dir)
            .arg("check")
            .arg("--config")
            .arg(name)
            .output()
            .expect("run wasmgate check");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{} must be refused",
            toml.display()
        );
        // Relative paths in a config resolve to absolute ones, which messages show; the golden
        // folder's own prefix is dropped so the files hold no machine paths.
        let got = String::from_utf8_lossy(&out.stderr).replace(&format!("{}/", dir.display()), "");
        assert!(
            !got.contains(":0:0:"),
            "{}: a diagnostic without a position must not print 0:0:\n{got}",
            toml.display()
        );
        let expected_path = toml.with_extension("errors");
        if update {
            std::fs::write(&expected_path, &got).expect("write golden file");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            mismatches.push(format!(
                "--- {} expected:\n{expected}\n--- got:\n{got}",
                expected_path.display()
            ));
        }
    }
    assert!(cases >= 4, "golden cases missing");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
