use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::ModelArgs;
use crispr::loader::ModelFormat;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let cfg = &loaded.model.cfg;
    let text = &loaded.text;
    let (format, path) = match &loaded.format {
        ModelFormat::Checkpoint(p) => ("checkpoint", p),
        ModelFormat::Gguf(p) => ("gguf", p),
    };
    let params = loaded.model.parameter_count();
    let eot = text.end_of_turn.map(|id| json!({"id": id, "token": text.token(id)}));
    let info = json!({
        "path": path.display().to_string(),
        "format": format,
        "family": "decoder-only",
        "architecture": cfg.arch.name(),
        "parameters": params,
        "layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "attention_heads": cfg.num_heads,
        "key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta,
        "tied_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "sliding_window": cfg.sliding_window,
        "universe": {"linear": cfg.linear_universe(), "ffn": cfg.ffn_universe()},
        "modules_per_layer": crispr::model::Proj::ALL.iter().map(|&p| json!({"module": p.hf_suffix(), "out": cfg.out_dim(p)})).collect::<Vec<_>>(),
        "chat_template": text.chat_template.is_some(),
        "end_of_turn": eot,
        "bos_token": text.bos_token,
        "eos_token": text.eos_token,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("model        {path}", path = path.display());
    println!("format       {format}");
    println!("architecture {} (decoder-only), {:.1} M parameters", cfg.arch.name(), params as f64 / 1e6);
    println!(
        "shape        {} layers, hidden {}, ffn {}, heads {} (kv {}), head_dim {}, vocab {}",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size
    );
    println!(
        "rope         theta {}{}",
        cfg.rope_theta,
        if cfg.rope_scaling.is_some() { ", llama3 scaling" } else { "" }
    );
    println!(
        "neurons      linear universe {} (q,k,v,o,gate,up,down), ffn universe {}",
        cfg.linear_universe(),
        cfg.ffn_universe()
    );
    match (&text.chat_template, text.end_of_turn) {
        (Some(_), Some(id)) => {
            println!("chat         template present, end of turn {:?} (id {id})", text.token(id).unwrap_or_default())
        }
        (Some(_), None) => println!("chat         template present, no end-of-turn token found"),
        (None, _) => println!("chat         no template (use --raw when scoring)"),
    }
    Ok(())
}
