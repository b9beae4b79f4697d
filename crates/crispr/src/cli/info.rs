use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::ModelArgs;
use crispr::loader::ModelFormat;
use crispr::model::universe_sizes;
use crispr::precision::{gib, Available, Precision};

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Headers, metadata and tokenizer only: no weight is read, so `info` on a model larger than
/// memory is instant and says what each precision would need.
pub fn run(args: InfoArgs) -> Result<()> {
    let model_path = args.model.path()?;
    let inspected = crispr::loader::inspect(&model_path).context("reading the model's headers")?;
    let text = &inspected.text;
    let (format, path) = match &inspected.format {
        ModelFormat::Checkpoint(p) => ("checkpoint", p),
        ModelFormat::Gguf(p) => ("gguf", p),
    };
    let sites = &inspected.sites;
    let fp = &inspected.footprint;
    let avail = Available::now();
    let memory = json!({
        "f32_bytes": fp.needed_bytes(Precision::F32),
        "bf16_bytes": fp.needed_bytes(Precision::Bf16),
        "available_bytes": avail.memory,
        "address_space_left_bytes": avail.address_space,
    });
    let (linear, ffn) = universe_sizes(sites);
    // Module kinds of the first layer (each stack), with their widths.
    let mut per_layer: Vec<serde_json::Value> = Vec::new();
    for s in sites.iter().filter(|s| s.layer == 0) {
        let kind = s.name.split('.').next_back().unwrap_or("");
        per_layer.push(json!({"stack": s.stack, "module": kind, "out": s.width, "universe": s.universe.name()}));
    }
    let mut info = inspected.describe.clone();
    let eot = text.end_of_turn.map(|id| json!({"id": id, "token": text.token(id)}));
    if let Some(obj) = info.as_object_mut() {
        obj.insert("path".into(), json!(path.display().to_string()));
        obj.insert("format".into(), json!(format));
        obj.insert("universe".into(), json!({"linear": linear, "ffn": ffn}));
        obj.insert("sites_per_layer".into(), json!(per_layer));
        obj.insert("chat_template".into(), json!(text.chat_template.is_some()));
        obj.insert("end_of_turn".into(), json!(eot));
        obj.insert("bos_token".into(), json!(text.bos_token));
        obj.insert("eos_token".into(), json!(text.eos_token));
        obj.insert("memory".into(), memory);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("model              {}", path.display());
    println!("format             {format}");
    let skip = [
        "path",
        "format",
        "universe",
        "sites_per_layer",
        "chat_template",
        "end_of_turn",
        "bos_token",
        "eos_token",
        "memory",
    ];
    if let Some(obj) = info.as_object() {
        for (k, v) in obj.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
            println!("{:<18} {}", k.replace('_', " "), v.to_string().trim_matches('"'));
        }
    }
    println!("neurons            linear universe {linear}, ffn universe {ffn}");
    let free = avail.memory.map_or_else(|| "unknown".to_string(), gib);
    println!(
        "memory             {} in f32, {} in bf16 (available: {free})",
        gib(fp.needed_bytes(Precision::F32)),
        gib(fp.needed_bytes(Precision::Bf16))
    );
    match (&text.chat_template, text.end_of_turn) {
        (Some(_), Some(id)) => {
            println!(
                "chat               template present, end of turn {:?} (id {id})",
                text.token(id).unwrap_or_default()
            )
        }
        (Some(_), None) => println!("chat               template present, no end-of-turn token found"),
        (None, _) => println!("chat               no template"),
    }
    Ok(())
}
