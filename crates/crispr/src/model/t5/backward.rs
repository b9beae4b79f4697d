//! T5 backward pass: from a candidate's log-probability back through the decoder (self- and
//! cross-attention, FFN) into the encoder, visiting every site's activation and gradient.

use super::*;

impl<F: Float> T5Model<F> {
    /// Backward through one block for `copies` gradients of the same forward pass at once
    /// (several candidates' gradients at the shared encoder output): `dx` holds `copies` stacked
    /// `[n × d_model]` gradients at the block's output and is turned into those at its input.
    /// The matrix products run once over all copies' rows — each weight is read once, in larger
    /// products — while the elementwise and attention steps run per copy on the one trace.
    /// Decoder blocks (one copy) add the gradient at the encoder output (through the
    /// cross-attention keys and values) to `d_enc`. `visit(copy, site, activation, gradient)`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn block_backward(
        &self,
        kind: StackKind,
        l: usize,
        t: &BlockTrace<F>,
        dx: &mut [F],
        n: usize,
        copies: usize,
        cross: Option<CrossGrad<'_, F>>,
        visit: CandidateGradVisitor<'_, F>,
    ) {
        let cfg = &self.cfg;
        let block = &self.stack(kind).blocks[l];
        let id = |p: T5Proj| self.site_index(kind, l, p);
        let (d, ff, inner) = (cfg.d_model, cfg.d_ff, cfg.inner_dim());
        let rows = copies * n;
        // Copy `c`'s rows of a stacked `[copies·n × width]` buffer.
        let part = |c: usize, width: usize| c * n * width..(c + 1) * n * width;

        // FFN: x_out = x_in + wo(act)
        let f = &t.ffn;
        let d_wo = dx.to_vec();
        for c in 0..copies {
            visit(c, id(T5Proj::Wo), &f.wo, &d_wo[part(c, d)]);
        }
        let mut d_act = vec![F::ZERO; rows * ff];
        block.ffn.wo.backward_into(&mut d_act, &d_wo, rows);
        for c in 0..copies {
            visit(c, id(T5Proj::Act), &f.act, &d_act[part(c, ff)]);
        }
        let act_fn = cfg.activation;
        let mut d_h = vec![F::ZERO; rows * d];
        if let Some(w1) = &block.ffn.wi_1 {
            // act = g(wi_0) ⊙ wi_1: d wi_0 = d act ⊙ wi_1 ⊙ g'(wi_0), d wi_1 = d act ⊙ g(wi_0).
            let (mut d0, mut d1) = (Vec::with_capacity(rows * ff), Vec::with_capacity(rows * ff));
            for c in 0..copies {
                let (a, b) = gated_backward(act_fn, &d_act[part(c, ff)], &f.wi_0, &f.wi_1, &f.terms, ff);
                visit(c, id(T5Proj::Wi0), &f.wi_0, &a);
                visit(c, id(T5Proj::Wi1), &f.wi_1, &b);
                d0.extend_from_slice(&a);
                d1.extend_from_slice(&b);
            }
            block.ffn.wi_0.backward_into(&mut d_h, &d0, rows);
            w1.backward_into(&mut d_h, &d1, rows);
        } else {
            let mut d0 = Vec::with_capacity(rows * ff);
            for c in 0..copies {
                let a = activate_backward(act_fn, &d_act[part(c, ff)], &f.wi_0, &f.terms, ff);
                visit(c, id(T5Proj::Wi), &f.wi_0, &a);
                d0.extend_from_slice(&a);
            }
            block.ffn.wi_0.backward_into(&mut d_h, &d0, rows);
        }
        for c in 0..copies {
            let r = part(c, d);
            rms_norm_backward(&mut dx[r.clone()], &d_h[r], &f.x_in, &f.inv_rms, &block.ffn_norm);
        }

        // Cross-attention: x_ffn = x_c + o(attn(q(norm(x_c)), K(enc), V(enc)))
        if let (Some(ct), Some(CrossGrad { k: ck, v: cv, d_enc }), Some(ca), Some(norm)) =
            (&t.cross, cross, &block.cross_attn, &block.cross_norm)
        {
            debug_assert_eq!(copies, 1, "decoder blocks run one candidate at a time");
            let m = ck.len() / inner;
            let d_o = dx.to_vec();
            visit(0, id(T5Proj::CrossO), &ct.o, &d_o);
            let mut d_ctx = vec![F::ZERO; n * inner];
            ca.o.backward_into(&mut d_ctx, &d_o, n);
            let (dq, dk, dv) = self.attention_backward(&ct.q, ck, cv, &ct.probs, &d_ctx, n, m);
            visit(0, id(T5Proj::CrossQ), &ct.q, &dq);
            visit(0, id(T5Proj::CrossK), ck, &dk);
            visit(0, id(T5Proj::CrossV), cv, &dv);
            let mut d_h = vec![F::ZERO; n * d];
            ca.q.backward_into(&mut d_h, &dq, n);
            rms_norm_backward(dx, &d_h, &ct.x_in, &ct.inv_rms, norm);
            ca.k.backward_into(d_enc, &dk, m);
            ca.v.backward_into(d_enc, &dv, m);
        }

        // Self-attention: x_c = x_in + o(attn(q, k, v)(norm(x_in)))
        let a = &t.attn;
        let d_o = dx.to_vec();
        for c in 0..copies {
            visit(c, id(T5Proj::O), &a.o, &d_o[part(c, d)]);
        }
        let mut d_ctx = vec![F::ZERO; rows * inner];
        block.self_attn.o.backward_into(&mut d_ctx, &d_o, rows);
        let (mut dq, mut dk, mut dv) =
            (Vec::with_capacity(rows * inner), Vec::with_capacity(rows * inner), Vec::with_capacity(rows * inner));
        for c in 0..copies {
            let (q, k, v) = self.attention_backward(&a.q, &a.k, &a.v, &a.probs, &d_ctx[part(c, inner)], n, n);
            visit(c, id(T5Proj::Q), &a.q, &q);
            visit(c, id(T5Proj::K), &a.k, &k);
            visit(c, id(T5Proj::V), &a.v, &v);
            dq.extend_from_slice(&q);
            dk.extend_from_slice(&k);
            dv.extend_from_slice(&v);
        }
        let mut d_h = vec![F::ZERO; rows * d];
        block.self_attn.q.backward_into(&mut d_h, &dq, rows);
        block.self_attn.k.backward_into(&mut d_h, &dk, rows);
        block.self_attn.v.backward_into(&mut d_h, &dv, rows);
        for c in 0..copies {
            let r = part(c, d);
            rms_norm_backward(&mut dx[r.clone()], &d_h[r], &a.x_in, &a.inv_rms, &block.self_norm);
        }
    }

    /// `log P(candidate | prompt)` and the activation gradient at every site: one forward and one
    /// backward pass. Encoder sites and the cross-attention keys/values are visited with encoder
    /// rows (the prompt's tokens), the other decoder sites with decoder rows (the candidate's).
    pub fn logprob_and_grads(
        &self,
        prompt: &[u32],
        candidate: &[u32],
        mut hook: Option<ForwardHook<'_, F>>,
        visit: GradVisitor<'_, F>,
    ) -> f64 {
        if candidate.is_empty() {
            return 0.0;
        }
        let enc = self.run_encoder(prompt, &mut hook);
        let cross = self.cross_kv(&enc.out, prompt.len(), &mut hook);
        let mut visit = |_: usize, site: usize, a: &[F], g: &[F]| visit(site, a, g);
        let (total, d_enc) = self.decoder_backward(&enc, &cross, candidate, &mut hook, 0, &mut visit);
        self.encoder_backward(&enc, d_enc, 1, &mut visit);
        total
    }

    /// Decoder forward for one candidate over a traced encoder pass, then the backward pass
    /// through the decoder, visiting the decoder's sites as candidate `copy`. Returns the
    /// candidate's log-probability and the gradient at the encoder output (`[m × d_model]`), for
    /// [`Self::encoder_backward`]. The encoder trace is only read, so several candidates of one
    /// prompt share it.
    pub(super) fn decoder_backward(
        &self,
        enc: &StackTrace<F>,
        cross: &[(Vec<F>, Vec<F>)],
        candidate: &[u32],
        hook: &mut Option<ForwardHook<'_, F>>,
        copy: usize,
        visit: CandidateGradVisitor<'_, F>,
    ) -> (f64, Vec<F>) {
        let (d, vocab) = (self.cfg.d_model, self.cfg.vocab_size);
        let m = enc.out.len() / d;
        let n = candidate.len();
        let dec_in = self.decoder_input(candidate);
        let parts = [DecoderPart { rows: Rows::single(0, n), enc: 0..m }];
        let dec = self.run_decoder(&dec_in, &parts, cross, None, true, hook);
        let logits = self.logits(&dec.out, n);
        let total =
            candidate.iter().enumerate().map(|(i, &t)| log_prob_of(&logits[i * vocab..(i + 1) * vocab], t)).sum();
        let d_logits = crate::model::logits::d_logprob_d_logits(&logits, candidate, vocab);
        let mut d_hidden = vec![F::ZERO; n * d];
        self.head().backward_into(&mut d_hidden, &d_logits, n, vocab);
        if self.cfg.scale_decoder_outputs {
            let s = self.output_scale();
            for v in &mut d_hidden {
                *v *= s;
            }
        }
        let mut dx = vec![F::ZERO; n * d];
        rms_norm_backward(&mut dx, &d_hidden, &dec.final_in, &dec.final_inv_rms, &self.decoder.final_norm);
        // The encoder output feeds every decoder block through its cross-attention keys and values.
        let mut d_enc = vec![F::ZERO; m * d];
        let mut visit = |_: usize, site: usize, a: &[F], g: &[F]| visit(copy, site, a, g);
        for l in (0..self.cfg.num_decoder_layers).rev() {
            let (ck, cv) = &cross[l];
            let c = Some(CrossGrad { k: ck, v: cv, d_enc: &mut d_enc });
            self.block_backward(StackKind::Decoder, l, &dec.blocks[l], &mut dx, n, 1, c, &mut visit);
        }
        (total, d_enc)
    }

    /// The backward pass through the encoder from `copies` stacked gradients at its output
    /// (`[copies·m × d_model]`, one per candidate), all at once: copy `c`'s sites are visited as
    /// candidate `c`.
    pub(super) fn encoder_backward(
        &self,
        enc: &StackTrace<F>,
        d_enc: Vec<F>,
        copies: usize,
        visit: CandidateGradVisitor<'_, F>,
    ) {
        let d = self.cfg.d_model;
        let m = enc.out.len() / d;
        let mut dx = vec![F::ZERO; copies * m * d];
        for (dxc, dec) in dx.chunks_exact_mut(m * d).zip(d_enc.chunks_exact(m * d)) {
            rms_norm_backward(dxc, dec, &enc.final_in, &enc.final_inv_rms, &self.encoder.final_norm);
        }
        for l in (0..self.cfg.num_layers).rev() {
            self.block_backward(StackKind::Encoder, l, &enc.blocks[l], &mut dx, m, copies, None, visit);
        }
    }
}
