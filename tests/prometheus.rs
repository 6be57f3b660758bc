//! The Prometheus rules in `deploy/prometheus/`: valid (`promtool check rules`), their unit
//! tests pass (`promtool test rules`), and every metric and outcome they name is one hlgate
//! exports. Without promtool the first two skip, except under CI (`CI` set), where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use hlgate::metrics::{Gauges, Metrics};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// `promtool` with `args` in the rules' directory; `None` when it is not installed (and CI is
/// not set).
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
    {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing under CI: install Debian's prometheus package"
            );
            eprintln!("skipped: promtool is not installed (scripts/test installs it)");
            None
        }
        Err(e) => panic!("promtool: {e}"),
    }
}

fn assert_success(output: std::process::Output) {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_rules_are_valid() {
    if let Some(output) = promtool(&["check", "rules", "hlgate-rules.yml"]) {
        assert_success(output);
    }
}

#[test]
fn the_rules_pass_their_unit_tests() {
    if let Some(output) = promtool(&["test", "rules", "hlgate-rules.test.yml"]) {
        assert_success(output);
    }
}

/// The words of `text` that start with `prefix`, made of `[a-z_]`.
fn names<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let is_name = |c: char| c.is_ascii_lowercase() || c == '_';
    text.match_indices(prefix)
        .filter(|(i, _)| !text[..*i].ends_with(|c: char| is_name(c) || c == ':'))
        .map(|(i, _)| {
            let rest = &text[i..];
            &rest[..rest.find(|c: char| !is_name(c)).unwrap_or(rest.len())]
        })
        .collect()
}

#[test]
fn the_rules_name_only_metrics_and_outcomes_hlgate_exports() {
    let rules = std::fs::read_to_string(dir().join("hlgate-rules.yml")).unwrap();
    let gauges = Gauges {
        last_accepted_seconds: Some(1.0),
        tenants: vec![("needs_reauth", 0)],
        ..Gauges::default()
    };
    let exported = Metrics::default().render(&gauges);
    let families: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let used = names(&rules, "hlgate_");
    assert!(used.len() > 10, "{used:?}");
    for name in used {
        assert!(families.contains(&name), "{name} is not exported");
    }
    // Outcomes, in `outcome="…"` and `outcome=~"…|…"`.
    for (i, _) in rules.match_indices("outcome=") {
        let quoted = rules[i..].split('"').nth(1).unwrap();
        for outcome in quoted.split('|') {
            let series = format!("hlgate_webhooks_total{{outcome=\"{outcome}\"}}");
            assert!(exported.contains(&series), "no outcome {outcome}");
        }
    }
}
