//! The decoder backward pass: from the gradient of the logits back through every layer, visiting
//! every hooked site's activation and gradient; no weight gradient is formed.

use super::*;

impl<F: Float> LlamaModel<F> {
    /// Backward pass. `d_logits` is the gradient with respect to the logits of `rows` (as returned
    /// by [`Self::logits`]). Calls `visit` once per hooked module, last layer first.
    pub fn backward(&self, trace: &Trace<F>, rows: &[usize], d_logits: &[F], visit: GradVisitor<'_, F>) {
        let cfg = &self.cfg;
        let (n, d) = (trace.tokens, cfg.hidden_size);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut d_sel = vec![F::ZERO; rows.len() * d];
        let capped;
        let d_logits = match cfg.final_softcap {
            None => d_logits,
            Some(cap) => {
                // d/dz [c·tanh(z/c)] = 1 − tanh², with tanh = capped logit / c.
                let c = F::from_f64(cap);
                let logits = self.logits(&trace.hidden, rows);
                capped =
                    d_logits.iter().zip(&logits).map(|(&g, &y)| g * (F::ONE - (y / c) * (y / c))).collect::<Vec<F>>();
                &capped[..]
            }
        };
        head.backward_into(&mut d_sel, d_logits, rows.len(), cfg.vocab_size);
        let mut d_hidden = vec![F::ZERO; n * d];
        for (i, &r) in rows.iter().enumerate() {
            for (a, &b) in d_hidden[r * d..(r + 1) * d].iter_mut().zip(&d_sel[i * d..(i + 1) * d]) {
                *a += b;
            }
        }
        let mut dx = vec![F::ZERO; n * d];
        rms_norm_backward(&mut dx, &d_hidden, &trace.final_in, &trace.final_inv_rms, &self.final_norm);
        for l in (0..self.layers.len()).rev() {
            self.layer_backward(l, &trace.layers[l], &mut dx, n, visit);
        }
    }

    pub(super) fn layer_backward(&self, l: usize, t: &LayerTrace<F>, dx: &mut [F], n: usize, visit: GradVisitor<'_, F>) {
        let cfg = &self.cfg;
        let layer = &self.layers[l];
        let id = |proj| cfg.site_index(l, proj);
        // MLP: x_out = x_mid + [post_norm](down(act(gate) ⊙ up))
        let d_down = residual_grad(dx, &t.down, &t.inv_post_mlp, &layer.post_mlp_norm);
        visit(id(Proj::Down), &t.down, &d_down);
        let mut d_act = vec![F::ZERO; n * cfg.intermediate_size];
        layer.down.backward_into(&mut d_act, &d_down, n);
        visit(id(Proj::Act), &t.act, &d_act);
        // The GELU's shared terms are recomputed rather than kept in every trace.
        let ff = cfg.intermediate_size;
        let terms = cfg.activation.terms(&t.gate, ff);
        let (d_gate, d_up) = gated_backward(cfg.activation, &d_act, &t.gate, &t.up, &terms, ff);
        let mut d_h2 = vec![F::ZERO; n * cfg.hidden_size];
        if cfg.fused {
            let d_gate_up = concat_cols(&[&d_gate, &d_up], n);
            visit(id(Proj::GateUp), &concat_cols(&[&t.gate, &t.up], n), &d_gate_up);
            layer.gate.backward_into(&mut d_h2, &d_gate_up, n);
        } else {
            visit(id(Proj::Gate), &t.gate, &d_gate);
            visit(id(Proj::Up), &t.up, &d_up);
            layer.gate.backward_into(&mut d_h2, &d_gate, n);
            layer.up.backward_into(&mut d_h2, &d_up, n);
        }
        rms_norm_backward(dx, &d_h2, &t.x_mid, &t.inv_rms2, &layer.mlp_norm);

        // Attention: x_mid = x_in + [post_norm](o(attn(rope([norm](q)), rope([norm](k)), v)))
        let d_o = residual_grad(dx, &t.o, &t.inv_post_attn, &layer.post_attn_norm);
        visit(id(Proj::O), &t.o, &d_o);
        let mut d_attn = vec![F::ZERO; n * cfg.num_heads * cfg.head_dim];
        layer.o.backward_into(&mut d_attn, &d_o, n);
        let (mut dq, mut dk, dv) =
            attention_backward(&self.attn_spec(l), (&t.attn.probs, &t.attn.caps), &t.q_rot, &t.k_rot, &t.v, &d_attn, n, n);
        let rope = self.rope_of(l);
        rope.apply(&mut dq, n, cfg.num_heads, cfg.head_dim, 0, true);
        rope.apply(&mut dk, n, cfg.num_kv_heads, cfg.head_dim, 0, true);
        if cfg.qk_norm {
            let mut dq_in = vec![F::ZERO; dq.len()];
            rms_norm_backward(&mut dq_in, &dq, &t.q, &t.inv_q, &layer.q_norm);
            dq = dq_in;
            let mut dk_in = vec![F::ZERO; dk.len()];
            rms_norm_backward(&mut dk_in, &dk, &t.k, &t.inv_k, &layer.k_norm);
            dk = dk_in;
        }
        let mut d_h = vec![F::ZERO; n * cfg.hidden_size];
        if cfg.fused {
            let d_qkv = concat_cols(&[&dq, &dk, &dv], n);
            visit(id(Proj::Qkv), &concat_cols(&[&t.q, &t.k, &t.v], n), &d_qkv);
            layer.q.backward_into(&mut d_h, &d_qkv, n);
        } else {
            visit(id(Proj::Q), &t.q, &dq);
            visit(id(Proj::K), &t.k, &dk);
            visit(id(Proj::V), &t.v, &dv);
            layer.q.backward_into(&mut d_h, &dq, n);
            layer.k.backward_into(&mut d_h, &dk, n);
            layer.v.backward_into(&mut d_h, &dv, n);
        }
        rms_norm_backward(dx, &d_h, &t.x_in, &t.inv_rms1, &layer.attn_norm);
    }
}

/// The gradient reaching a sub-layer's output from the residual gradient `dx`: through the
/// post-norm when there is one.
fn residual_grad<F: Float>(dx: &[F], out: &[F], inv: &[F], norm: &[F]) -> Vec<F> {
    if norm.is_empty() {
        return dx.to_vec();
    }
    let mut d = vec![F::ZERO; dx.len()];
    rms_norm_backward(&mut d, dx, out, inv, norm);
    d
}
