//! The HTML report as a browser shows it: headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`; `$CRISPR_CHROMIUM` may name another binary) loads the report of a real run and a
//! small script checks that the verdict and every plot are laid out and visible, and that the
//! page raised no error. A missing browser fails the test: it never passes silently.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CRISPR_CHROMIUM") {
        return PathBuf::from(p);
    }
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if Path::new(c).is_file() {
            return PathBuf::from(c);
        }
    }
    panic!("no Chromium found: install Debian's `chromium` (.ci/run does) or set CRISPR_CHROMIUM");
}

/// Checks run inside the page: every figure's SVG and the verdict box have a non-empty box, are
/// displayed and visible; errors raised while loading are collected from the start of <head>.
const ERROR_TRAP: &str = r#"<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message||e.type))},true);</script>"#;
const CHECK: &str = r#"<script>
window.addEventListener('load', function () {
  function shown(el) {
    var r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 20 && r.height > 20 && s.display !== 'none' && s.visibility !== 'hidden' && parseFloat(s.opacity) > 0;
  }
  var v = document.getElementById('verdict');
  var svgs = Array.prototype.slice.call(document.querySelectorAll('figure svg'));
  var out = {
    verdict: !!v && shown(v) && v.innerText.indexOf('Verdict') >= 0,
    plots: svgs.map(function (s) { return { label: s.getAttribute('aria-label'), shown: shown(s), marks: s.querySelectorAll('circle,rect,polyline').length }; }),
    errors: window.__errors
  };
  var pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"#;

#[test]
fn report_renders_with_verdict_and_plots_and_no_errors() {
    let browser = chromium();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny").join("llama");
    let cfg = tmp.path().join("config.toml");
    let settings = common::ATTRIBUTION_SETTINGS_TOML;
    std::fs::write(
        &cfg,
        format!(
            r#"model = "{}"
task = "bbq:Age"
retain = ["rte"]
preset = "browser-test"
split_seed = 0

[attribution]
samples = 8
seeds = [2026]
instructions = 2

{settings}

[search]
lo = 0
hi = 24
final_width = 3
dev_limit = 6
instructions = 2
seed = 0

[search.constraint]
max_drop = 10.0
max_kl = 0.05
retain_dev_limit = 4
retain_instructions = 2
kl_prompts = 4

[test]
limit = 6
instructions = 2
retain_limit = 4
retain_instructions = 2
random_seeds = [1]
seed = 0
"#,
            model.display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("run");
    let o = Command::new(common::crispr_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .env("CRISPR_DATA_DIR", common::data_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let page =
        html.replacen("<head>", &format!("<head>{ERROR_TRAP}"), 1).replacen("</body>", &format!("{CHECK}</body>"), 1);
    let page_path = tmp.path().join("checked.html");
    std::fs::write(&page_path, page).unwrap();
    let profile = tmp.path().join("profile");
    let o = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1100,3000",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page_path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", browser.display()));
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    let start = dom.find("<pre id=\"check\">").unwrap_or_else(|| panic!("the check did not run; browser log:\n{log}"));
    let json = &dom[start + "<pre id=\"check\">".len()..];
    let json = &json[..json.find("</pre>").unwrap()];
    let json = json.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    let check: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(check["verdict"], true, "verdict not visible: {check}");
    let plots = check["plots"].as_array().unwrap();
    let labels: Vec<&str> = plots.iter().map(|p| p["label"].as_str().unwrap_or("")).collect();
    for want in ["dev accuracy against pruned neurons", "retention trade-off against n", "KL divergence against n"] {
        assert!(labels.contains(&want), "plot {want:?} missing: {labels:?}");
    }
    assert!(plots.len() >= 5, "every figure: {labels:?}");
    for p in plots {
        assert_eq!(p["shown"], true, "plot not visible: {p}");
        assert!(p["marks"].as_u64().unwrap() > 0, "plot has nothing drawn: {p}");
    }
    assert_eq!(check["errors"], serde_json::json!([]), "page errors");
    for line in log.lines() {
        assert!(!line.contains("Uncaught") && !line.contains(":CONSOLE("), "browser console: {line}");
    }
}
