//! `report.md` and a self-contained `report.html` (inline SVG, no external assets) from a run's
//! results. Every number comes from [`RunResult`]; nothing is hard-coded.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::pipeline::RunResult;

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.1}"))
}

/// Mean over random seeds of a metric.
fn random_mean(docs: &[Value], path: &[&str]) -> Option<f64> {
    let xs: Vec<f64> = docs.iter().filter_map(|d| num(d, path)).collect();
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Rows of the main table: task, metric, original, CRISPR, random, Δ.
fn summary_rows(r: &RunResult) -> Vec<[String; 6]> {
    let mut rows = Vec::new();
    for (task, t) in &r.tasks {
        let mut metrics = vec![("acc", "accuracy")];
        if t.original.get("mean").and_then(|m| m.get("acc_ambig")).is_some() {
            metrics.extend([
                ("acc_ambig", "acc. ambiguous"),
                ("acc_disambig", "acc. disambiguated"),
                ("bias_score_ambig", "bias score ambiguous"),
                ("bias_score_disambig", "bias score disambiguated"),
            ]);
        }
        for (key, label) in metrics {
            let o = num(&t.original, &["mean", key]);
            let c = num(&t.crispr, &["mean", key]);
            let rnd = random_mean(&t.random, &["mean", key]);
            let pm = |d: &Value, m: Option<f64>| match (m, num(d, &["std", key])) {
                (Some(m), Some(s)) if key == "acc" => format!("{m:.1} ± {s:.1}"),
                (m, _) => fmt_opt(m),
            };
            let delta = match (o, c) {
                (Some(o), Some(c)) => format!("{:+.1}", c - o),
                _ => "–".into(),
            };
            rows.push([task.clone(), label.to_string(), pm(&t.original, o), pm(&t.crispr, c), fmt_opt(rnd), delta]);
        }
    }
    rows
}

/// Where the bias neurons sit: counts by (layer, kind) with the stack prefix for encoder–decoders.
fn placement(r: &RunResult) -> BTreeMap<(String, usize), BTreeMap<String, usize>> {
    let mut m: BTreeMap<(String, usize), BTreeMap<String, usize>> = BTreeMap::new();
    for n in &r.bias_neurons {
        let (stack, layer, kind) = parse_module(&n.module);
        *m.entry((stack, layer)).or_default().entry(kind).or_default() += 1;
    }
    m
}

/// (stack, layer, short kind) from a module path in either family's naming.
pub fn parse_module(module: &str) -> (String, usize, String) {
    let parts: Vec<&str> = module.split('.').collect();
    let stack = if module.starts_with("encoder.") { "encoder" } else { "decoder" }.to_string();
    let layer = parts.iter().find_map(|p| p.parse::<usize>().ok()).unwrap_or(0);
    let last = parts.last().copied().unwrap_or("");
    let kind = match last {
        "q_proj" => "q",
        "k_proj" => "k",
        "v_proj" => "v",
        "o_proj" => "o",
        "gate_proj" => "gate",
        "up_proj" => "up",
        "down_proj" => "down",
        "act_fn" => "act",
        other if module.contains("EncDecAttention") => match other {
            "q" => "cross_q",
            "k" => "cross_k",
            "v" => "cross_v",
            _ => "cross_o",
        },
        other => other,
    };
    (stack, layer, kind.to_string())
}

/// The model as the user named it (not a cache path).
fn model_name(r: &RunResult) -> String {
    r.model
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| crate::pipeline::display_model_name(&r.config.model))
}

/// The selection options in words (empty for the paper's global ranking).
fn selection_words(r: &RunResult) -> String {
    let sel = &r.config.selection;
    let mut parts = Vec::new();
    if sel.normalize {
        parts.push("scores normalised per module".to_string());
    }
    if sel.exclude_massive {
        let k = r.excluded.get("massive-activation").copied().unwrap_or(0);
        parts.push(format!("{k} rows writing massive-activation dimensions excluded"));
    }
    if !sel.protect.is_empty() {
        let k = r.excluded.get("protected").copied().unwrap_or(0);
        parts.push(format!(
            "the top {} skill neurons of {} protected ({k} candidates removed)",
            sel.protect_top,
            sel.protect.join(", ")
        ));
    }
    if let Some(c) = &r.config.search.constraint {
        let mut cs = Vec::new();
        if let Some(d) = c.max_drop {
            cs.push(format!(
                "no retained task (on {} dev instances × {} instructions) and not the target's disambiguated accuracy dropping by more than {d} points",
                c.retain_dev_limit, c.retain_instructions
            ));
        }
        if let Some(k) = c.max_kl {
            cs.push(format!("mean KL on {} neutral prompts at most {k}", c.kl_prompts));
        }
        parts.push(format!("n constrained on dev: {}", cs.join("; ")));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("Selection: {}.", parts.join("; "))
    }
}

/// The run's sample sizes in one sentence, so that a report of a subset run says so.
fn protocol(r: &RunResult) -> String {
    let c = &r.config;
    let count = |n: usize, what: &str| if n == 0 { format!("all {what}") } else { format!("{n} {what}") };
    let seeds: Vec<String> = c.attribution.seeds.iter().map(u64::to_string).collect();
    format!(
        "Attribution on {} dev instances × {} (seed {}); n searched over [{}, {}] on {} × {}; test on {} × {} \
         for the target task and {} × {} for each retained task; random control over {} seeds.",
        c.attribution.samples,
        count(c.attribution.instructions, "instructions"),
        seeds.join(", "),
        c.search.lo,
        c.search.hi,
        count(c.search.dev_limit, "dev instances"),
        count(c.search.instructions, "instructions"),
        count(c.test.limit, "test instances"),
        count(c.test.instructions, "instructions"),
        count(c.test.retain_limit, "test instances"),
        count(c.test.retain_instructions, "instructions"),
        c.test.random_seeds.len(),
    ) + &precision_words(r)
}

/// For bf16 runs: what the precision changes, and what the re-check did.
fn precision_words(r: &RunResult) -> String {
    if r.config.precision.is_f32() {
        return String::new();
    }
    match &r.recheck {
        Some(c) => format!(
            " Weights in bf16: attribution and KL are bf16's; {} of {} evaluation choices closer than {:.3} nats \
             were re-scored in f32 ({} changed), so every choice is the f32 engine's.",
            c.rescored, c.examples, c.margin, c.changed
        ),
        None => " Weights in bf16, choices not re-checked in f32 (recheck_margin = 0): close calls may differ from \
                 the f32 engine's."
            .to_string(),
    }
}

pub fn markdown(r: &RunResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# CRISPR run: {} on {}\n", r.config.task, model_name(r));
    if let Some(v) = &r.verdict {
        let _ = writeln!(s, "**Verdict: {}**\n", v.headline);
        for d in &v.details {
            let _ = writeln!(s, "- {d}");
        }
        let _ = writeln!(s);
    }
    if let Some(d) = &r.diagnostics {
        let _ = writeln!(s, "Activation diagnostics: {}\n", d.summary);
    }
    let sel = selection_words(r);
    if !sel.is_empty() {
        let _ = writeln!(s, "{sel}\n");
    }
    let _ = writeln!(
        s,
        "Preset `{}`. {} Pruned **{} neurons** (chosen on dev) of {} in the `{}` universe. Pruned model: `{}`.\n",
        r.config.preset,
        protocol(r),
        r.n_selected,
        num(&r.model, &["universe", r.config.attribution.settings.universe.name()]).unwrap_or(0.0),
        r.config.attribution.settings.universe.name(),
        r.pruned_model
    );
    let _ = writeln!(
        s,
        "## Test results (mean ± std over instructions; random = mean over {} seeds)\n",
        r.config.test.random_seeds.len()
    );
    let _ = writeln!(s, "| task | metric | original | CRISPR | random | Δ CRISPR |\n|---|---|---|---|---|---|");
    for row in summary_rows(r) {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    if r.search_points.is_empty() {
        let _ = writeln!(s, "\n## Choosing n on dev\n\n| n | dev accuracy |\n|---|---|");
        for (n, acc) in &r.search {
            let mark = if *n == r.n_selected { " ← chosen" } else { "" };
            let _ = writeln!(s, "| {n} | {acc:.2}{mark} |");
        }
    } else {
        let names: Vec<&String> = r.search_points[0].retained.keys().collect();
        let head: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            s,
            "\n## Choosing n on dev (retention-constrained)\n\n| n | dev accuracy | disambiguated | {} | KL | feasible |\n|{}",
            head.join(" | "),
            "---|".repeat(5 + names.len())
        );
        for p in &r.search_points {
            let mark = if p.n == r.n_selected { " ← chosen" } else { "" };
            let ret: Vec<String> = names.iter().map(|n| fmt_opt(p.retained.get(*n).copied())).collect();
            let _ = writeln!(
                s,
                "| {} | {:.2}{mark} | {} | {} | {} | {} |",
                p.n,
                p.acc,
                fmt_opt(p.acc_disambig),
                ret.join(" | "),
                p.kl.map_or("–".into(), |k| format!("{k:.4}")),
                if p.feasible { "yes" } else { "no" }
            );
        }
    }
    let _ = writeln!(s, "\n## Bias neurons\n\n| rank | neuron | score | output / module median | writes massive dim |\n|---|---|---|---|---|");
    for (i, n) in r.bias_neurons.iter().enumerate().take(50) {
        let (rel, massive) = neuron_diag(r, i);
        let _ = writeln!(s, "| {} | `{}` | {:.3e} | {rel} | {massive} |", i + 1, n.id, n.score);
    }
    if r.bias_neurons.len() > 50 {
        let _ = writeln!(s, "\n({} more in metrics.json)", r.bias_neurons.len() - 50);
    }
    let _ = writeln!(s, "\n## Where they sit\n\n| stack | layer | kinds |\n|---|---|---|");
    for ((stack, layer), kinds) in placement(r) {
        let k: Vec<String> = kinds.iter().map(|(k, c)| format!("{k}×{c}")).collect();
        let _ = writeln!(s, "| {stack} | {layer} | {} |", k.join(", "));
    }
    let _ = writeln!(s, "\n## Time\n");
    for (stage, secs) in &r.seconds {
        let _ = writeln!(s, "- {stage}: {secs:.0} s");
    }
    let _ = writeln!(s, "\nReplay with `crispr run --config config.toml --out <dir>`.");
    s
}

/// The diagnostics columns of the i-th pruned neuron.
fn neuron_diag(r: &RunResult, i: usize) -> (String, &'static str) {
    match r.diagnostics.as_ref().and_then(|d| d.pruned.get(i)) {
        Some(d) => (
            d.relative_magnitude.map_or("–".into(), |x| format!("{x:.1}×")),
            if d.writes_massive { "yes" } else { "no" },
        ),
        None => ("–".into(), "–"),
    }
}

/// Line chart of several series against n, with the chosen n marked.
/// A named, coloured series of (n, value) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn svg_lines(series: &[Series<'_>], chosen: f64, y_label: &str, aria: &str) -> String {
    let (w, h, pad) = (560.0, 260.0, 48.0);
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
    if all.is_empty() {
        return String::new();
    }
    let max_n = all.iter().map(|p| p.0).fold(1.0f64, f64::max);
    let (lo, hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (lo, hi) = if hi - lo < 1e-9 { (lo - 1.0, hi + 1.0) } else { (lo - (hi - lo) * 0.05, hi + (hi - lo) * 0.05) };
    let x = |n: f64| pad + n / max_n * (w - 2.0 * pad);
    let y = |v: f64| h - pad - (v - lo) / (hi - lo) * (h - 2.0 * pad);
    let mut s = format!(r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{aria}">"#);
    let _ = write!(
        s,
        r##"<line x1="{pad}" y1="{0}" x2="{1}" y2="{0}" stroke="#999"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{0}" stroke="#999"/>"##,
        h - pad,
        w - pad
    );
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{v:.2}</text><line x1="{pad}" x2="{}" y1="{2}" y2="{2}" stroke="#eee"/>"##,
            pad - 4.0,
            y(v) + 4.0,
            w - pad
        );
        let n = max_n * i as f64 / 4.0;
        let _ =
            write!(s, r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{n:.0}</text>"#, x(n), h - pad + 16.0);
    }
    let _ = write!(
        s,
        r##"<line x1="{0:.1}" x2="{0:.1}" y1="{pad}" y2="{1}" stroke="#dc2626" stroke-dasharray="4 3"><title>chosen n</title></line>"##,
        x(chosen),
        h - pad
    );
    for (k, (name, colour, pts)) in series.iter().enumerate() {
        let p: Vec<String> = pts.iter().map(|(n, v)| format!("{:.1},{:.1}", x(*n), y(*v))).collect();
        let _ = write!(s, r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#, p.join(" "));
        for (n, v) in pts {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{name}, n = {n}: {v:.3}</title></circle>"#,
                x(*n),
                y(*v)
            );
        }
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
            pad + 8.0 + 150.0 * k as f64,
            8.0,
            pad + 22.0 + 150.0 * k as f64,
            17.0,
            esc(name)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">pruned neurons n</text><text x="12" y="{2}" font-size="12" transform="rotate(-90 12 {2})" text-anchor="middle">{3}</text></svg>"#,
        w / 2.0,
        h - 6.0,
        h / 2.0,
        esc(y_label)
    );
    s
}

/// The retention trade-off of a constrained search: target gain, worst retained change and the
/// target's disambiguated change (points) against n; and KL against n.
fn svg_tradeoff(r: &RunResult) -> (String, String) {
    let pts = &r.search_points;
    let Some(base) = pts.iter().find(|p| p.n == 0) else { return (String::new(), String::new()) };
    let gain: Vec<(f64, f64)> = pts.iter().map(|p| (p.n as f64, p.acc - base.acc)).collect();
    let worst: Vec<(f64, f64)> = pts
        .iter()
        .filter_map(|p| {
            p.retained
                .iter()
                .filter_map(|(k, v)| base.retained.get(k).map(|b| v - b))
                .min_by(f64::total_cmp)
                .map(|d| (p.n as f64, d))
        })
        .collect();
    let dis: Vec<(f64, f64)> =
        pts.iter().filter_map(|p| Some((p.n as f64, p.acc_disambig? - base.acc_disambig?))).collect();
    let mut series = vec![("target gain", "#2563eb", gain)];
    if !worst.is_empty() {
        series.push(("worst retained change", "#d97706", worst));
    }
    if !dis.is_empty() {
        series.push(("target disambiguated change", "#7c3aed", dis));
    }
    let kl: Vec<(f64, f64)> = pts.iter().filter_map(|p| Some((p.n as f64, p.kl?))).collect();
    let chosen = r.n_selected as f64;
    let a = svg_lines(&series, chosen, "change on dev (points)", "retention trade-off against n");
    let b = if kl.is_empty() {
        String::new()
    } else {
        svg_lines(&[("KL on neutral prompts", "#059669", kl)], chosen, "KL (nats)", "KL divergence against n")
    };
    (a, b)
}

const PALETTE: [&str; 3] = ["#6b7280", "#2563eb", "#d97706"];

/// A line chart of dev accuracy against n (the dashed line marks the chosen n).
fn svg_search(r: &RunResult) -> String {
    let pts: Vec<(f64, f64)> = r.search.iter().map(|&(n, v)| (n as f64, v)).collect();
    svg_lines(
        &[("dev accuracy", "#2563eb", pts)],
        r.n_selected as f64,
        "dev accuracy",
        "dev accuracy against pruned neurons",
    )
}

/// Grouped bars: one group per label, one bar per series.
fn svg_bars(groups: &[(String, Vec<Option<f64>>)], series: &[&str], y_label: &str) -> String {
    let (h, pad) = (260.0, 44.0);
    let gw = 22.0 * series.len() as f64 + 18.0;
    let w = (pad * 2.0 + gw * groups.len() as f64).max(360.0);
    let vals: Vec<f64> = groups.iter().flat_map(|g| g.1.iter().flatten().copied()).collect();
    let lo = vals.iter().copied().fold(0f64, f64::min);
    let hi = vals.iter().copied().fold(0f64, f64::max).max(lo + 1.0);
    let y = |v: f64| h - pad - (v - lo) / (hi - lo) * (h - 2.0 * pad);
    let mut s = format!(
        r#"<svg viewBox="0 0 {w} {}" width="{w}" height="{}" role="img" aria-label="{}">"#,
        h + 20.0,
        h + 20.0,
        esc(y_label)
    );
    let _ = write!(s, r##"<line x1="{pad}" y1="{0}" x2="{1}" y2="{0}" stroke="#999"/>"##, y(0.0), w - pad);
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{v:.0}</text><line x1="{pad}" x2="{}" y1="{2}" y2="{2}" stroke="#eee"/>"##,
            pad - 4.0,
            y(v) + 4.0,
            w - pad
        );
    }
    for (gi, (label, vs)) in groups.iter().enumerate() {
        let gx = pad + gi as f64 * gw + 9.0;
        for (si, v) in vs.iter().enumerate() {
            let Some(v) = v else { continue };
            let (top, bottom) = if *v >= 0.0 { (y(*v), y(0.0)) } else { (y(0.0), y(*v)) };
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{top:.1}" width="20" height="{:.1}" fill="{}"><title>{}: {}: {v:.2}</title></rect>"#,
                gx + si as f64 * 22.0,
                (bottom - top).max(0.5),
                PALETTE[si % PALETTE.len()],
                esc(label),
                series[si]
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            gx + 11.0 * series.len() as f64,
            h - pad + 16.0,
            esc(label)
        );
    }
    for (si, name) in series.iter().enumerate() {
        let lx = pad + si as f64 * 110.0;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}" font-size="12">{name}</text>"#,
            h + 2.0,
            PALETTE[si % PALETTE.len()],
            lx + 16.0,
            h + 12.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="12" y="{}" font-size="12" transform="rotate(-90 12 {0})" text-anchor="middle">{}</text></svg>"#,
        h / 2.0,
        esc(y_label)
    );
    s
}

/// Per-instruction accuracy: original, CRISPR, random (mean over seeds).
fn svg_per_instruction(r: &RunResult, task: &str) -> String {
    let Some(t) = r.tasks.get(task) else { return String::new() };
    let per = |d: &Value| -> Vec<(String, f64)> {
        d.get("per_instruction")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| Some((x.get("instruction")?.as_str()?.to_string(), x.get("acc")?.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let orig = per(&t.original);
    let cr = per(&t.crispr);
    let rands: Vec<Vec<(String, f64)>> = t.random.iter().map(per).collect();
    let groups: Vec<(String, Vec<Option<f64>>)> = orig
        .iter()
        .enumerate()
        .map(|(i, (name, o))| {
            let rnd: Vec<f64> = rands.iter().filter_map(|r| r.get(i).map(|x| x.1)).collect();
            let rm = (!rnd.is_empty()).then(|| rnd.iter().sum::<f64>() / rnd.len() as f64);
            (name.rsplit('/').next().unwrap_or(name).to_string(), vec![Some(*o), cr.get(i).map(|x| x.1), rm])
        })
        .collect();
    svg_bars(&groups, &["original", "CRISPR", "random"], "accuracy (%)")
}

fn svg_bias_scores(r: &RunResult) -> String {
    let Some(t) = r.tasks.get(&r.config.task) else { return String::new() };
    if num(&t.original, &["mean", "bias_score_ambig"]).is_none() {
        return String::new();
    }
    let groups: Vec<(String, Vec<Option<f64>>)> =
        [("bias_score_ambig", "ambiguous"), ("bias_score_disambig", "disambiguated")]
            .iter()
            .map(|(k, label)| {
                (
                    label.to_string(),
                    vec![
                        num(&t.original, &["mean", k]),
                        num(&t.crispr, &["mean", k]),
                        random_mean(&t.random, &["mean", k]),
                    ],
                )
            })
            .collect();
    svg_bars(&groups, &["original", "CRISPR", "random"], "BBQ bias score (×100)")
}

/// Heat map: layers × module kinds, cell = number of bias neurons.
fn svg_placement(r: &RunResult) -> String {
    let place = placement(r);
    if place.is_empty() {
        return "<p>No neurons were pruned.</p>".into();
    }
    let mut kinds: Vec<String> = place.values().flat_map(|m| m.keys().cloned()).collect();
    kinds.sort();
    kinds.dedup();
    let rows: Vec<(String, usize)> = place.keys().cloned().collect();
    let max = place.values().flat_map(|m| m.values()).copied().max().unwrap_or(1) as f64;
    let (cw, ch, left, top) = (54.0, 20.0, 110.0, 24.0);
    let w = left + cw * kinds.len() as f64 + 10.0;
    let h = top + ch * rows.len() as f64 + 10.0;
    let mut s = format!(
        r#"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="bias neurons by layer and module">"#
    );
    for (j, k) in kinds.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="16" font-size="11" text-anchor="middle">{}</text>"#,
            left + cw * j as f64 + cw / 2.0,
            esc(k)
        );
    }
    for (i, key) in rows.iter().enumerate() {
        let yy = top + ch * i as f64;
        let _ = write!(
            s,
            r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{} layer {}</text>"#,
            left - 6.0,
            yy + 14.0,
            key.0,
            key.1
        );
        for (j, k) in kinds.iter().enumerate() {
            let c = place[key].get(k).copied().unwrap_or(0);
            let alpha = if c == 0 { 0.04 } else { 0.2 + 0.8 * c as f64 / max };
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{yy:.1}" width="{}" height="{}" fill="rgba(37,99,235,{alpha:.2})"><title>{} layer {} {}: {c}</title></rect>"#,
                left + cw * j as f64,
                cw - 2.0,
                ch - 2.0,
                key.0,
                key.1,
                esc(k)
            );
            if c > 0 {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{c}</text>"#,
                    left + cw * j as f64 + cw / 2.0 - 1.0,
                    yy + 14.0
                );
            }
        }
    }
    s.push_str("</svg>");
    s
}

/// CSS class of a Δ cell: `pos` when CRISPR improved on the original (higher accuracy, or a bias
/// score closer to 0), `neg` when it got worse.
fn delta_class(row: &[String; 6]) -> &'static str {
    let parse = |x: &str| x.split_whitespace().next().and_then(|v| v.parse::<f64>().ok());
    match (parse(&row[2]), parse(&row[3])) {
        (Some(o), Some(c)) if row[1].starts_with("bias") && c.abs() != o.abs() => {
            if c.abs() < o.abs() {
                "pos"
            } else {
                "neg"
            }
        }
        (Some(o), Some(c)) if !row[1].starts_with("bias") && c != o => {
            if c > o {
                "pos"
            } else {
                "neg"
            }
        }
        _ => "",
    }
}

/// The verdict box at the top of the page.
fn verdict_html(r: &RunResult) -> String {
    let Some(v) = &r.verdict else { return String::new() };
    let class = match (v.bias_reduced, v.skills_kept) {
        (true, true) => "good",
        (false, false) | (true, false) => "bad",
        (false, true) => "mixed",
    };
    let mut s = format!(r#"<div class="verdict {class}" id="verdict"><p><b>Verdict:</b> {}</p><ul>"#, esc(&v.headline));
    for d in &v.details {
        let _ = write!(s, "<li>{}</li>", esc(d));
    }
    s.push_str("</ul></div>");
    s
}

pub fn html(r: &RunResult) -> String {
    let mut s = String::new();
    let model_name = model_name(r);
    let _ = write!(
        s,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CRISPR report: {task}</title>
<style>body{{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#111}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ddd;padding:4px 10px;text-align:right}}th{{background:#f5f5f5}}
td:first-child,td:nth-child(2),th:first-child{{text-align:left}}code{{background:#f3f4f6;padding:1px 4px;border-radius:3px}}
.pos{{color:#15803d}}.neg{{color:#b91c1c}}.verdict{{border:2px solid #999;border-radius:6px;padding:.6em 1em;margin:1em 0}}.verdict.good{{border-color:#15803d;background:#f0fdf4}}.verdict.bad{{border-color:#b91c1c;background:#fef2f2}}.verdict.mixed{{border-color:#d97706;background:#fffbeb}}figure{{margin:1em 0}}figcaption{{font-size:.9em;color:#444}}</style></head><body>
<h1>CRISPR: bias neurons of <code>{model}</code> on <code>{task}</code></h1>
{verdict}
<p>Preset <b>{preset}</b>. {protocol} The number of pruned neurons was chosen on dev: <b>n = {n}</b> ({universe} universe). The pruned model is <code>{pruned}</code>.</p>"#,
        task = esc(&r.config.task),
        model = esc(&model_name),
        verdict = verdict_html(r),
        preset = esc(&r.config.preset),
        protocol = esc(&protocol(r)),
        n = r.n_selected,
        universe = r.config.attribution.settings.universe.name(),
        pruned = esc(&r.pruned_model),
    );
    let _ = write!(s, "<h2>Test results</h2><p>Mean ± std over instructions; random pruning: same n, mean over {} seeds.</p><table><tr><th>task</th><th>metric</th><th>original</th><th>CRISPR</th><th>random</th><th>Δ CRISPR</th></tr>", r.config.test.random_seeds.len());
    for row in summary_rows(r) {
        let cls = delta_class(&row);
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{cls}\">{}</td></tr>",
            esc(&row[0]),
            esc(&row[1]),
            row[2],
            row[3],
            row[4],
            row[5]
        );
    }
    s.push_str("</table><p>For BBQ bias scores, 0 is unbiased; positive values mean answers aligned with the stereotype. Δ is CRISPR − original; green marks an improvement (higher accuracy, bias score closer to 0).</p>");
    let sel = selection_words(r);
    if !sel.is_empty() {
        let _ = write!(s, "<p>{}</p>", esc(&sel));
    }
    let _ = write!(s, "<h2>Choosing n on dev</h2><figure>{}<figcaption>Dev accuracy (mean over instructions) at every n the search evaluated; the dashed line is the chosen n.</figcaption></figure>", svg_search(r));
    let (trade, kl) = svg_tradeoff(r);
    if !trade.is_empty() {
        let _ = write!(s, "<h2>Retention trade-off</h2><figure>{trade}<figcaption>Change against the unpruned model on dev, in points, at every evaluated n: the target's accuracy gain, the largest drop of any retained task, and the target's disambiguated accuracy. The dashed line is the chosen n.</figcaption></figure>");
    }
    if !kl.is_empty() {
        let _ = write!(s, "<figure>{kl}<figcaption>Mean KL divergence between the original and the pruned model's next-token distributions on neutral prompts.</figcaption></figure>");
    }
    if let Some(d) = &r.diagnostics {
        let _ = write!(s, "<h2>Activation diagnostics</h2><p>{}</p>", esc(&d.summary));
    }
    let _ = write!(s, "<h2>Per-instruction accuracy on {}</h2><figure>{}<figcaption>Each group is one instruction.</figcaption></figure>", esc(&r.config.task), svg_per_instruction(r, &r.config.task));
    let bias = svg_bias_scores(r);
    if !bias.is_empty() {
        let _ = write!(s, "<h2>BBQ bias scores</h2><figure>{bias}<figcaption>BBQ's own bias scores (×100) on test, ambiguous and disambiguated contexts.</figcaption></figure>");
    }
    let _ = write!(s, "<h2>Where the bias neurons sit</h2><figure>{}<figcaption>Number of pruned neurons per layer and module kind.</figcaption></figure>", svg_placement(r));
    s.push_str("<h2>Top bias neurons</h2><table><tr><th>rank</th><th>neuron</th><th>score</th><th>output / module median</th><th>writes massive dim</th></tr>");
    for (i, n) in r.bias_neurons.iter().enumerate().take(30) {
        let (rel, massive) = neuron_diag(r, i);
        let _ = write!(
            s,
            "<tr><td>{}</td><td><code>{}</code></td><td>{:.3e}</td><td>{rel}</td><td>{massive}</td></tr>",
            i + 1,
            esc(&n.id),
            n.score
        );
    }
    s.push_str("</table><h2>Time</h2><ul>");
    for (stage, secs) in &r.seconds {
        let _ = write!(s, "<li>{}: {secs:.0} s</li>", esc(stage));
    }
    s.push_str("</ul><p>Replay: <code>crispr run --config config.toml --out DIR</code>. All numbers come from <code>metrics.json</code> in this directory.</p></body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: &str, o: &str, c: &str) -> [String; 6] {
        ["t".into(), metric.into(), o.into(), c.into(), "–".into(), "x".into()]
    }

    #[test]
    fn delta_colour_means_improvement() {
        assert_eq!(delta_class(&row("accuracy", "29.7 ± 7.8", "35.9 ± 4.7")), "pos");
        assert_eq!(delta_class(&row("accuracy", "62.5 ± 0.0", "37.5 ± 0.0")), "neg");
        assert_eq!(delta_class(&row("bias score ambiguous", "-13.9", "25.0")), "neg");
        assert_eq!(delta_class(&row("bias score disambiguated", "27.9", "-20.5")), "pos");
        assert_eq!(delta_class(&row("accuracy", "25.0 ± 0.0", "25.0 ± 0.0")), "");
    }
}
