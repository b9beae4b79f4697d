//! T5 scoring: candidate log-probabilities (prompts packed into one encoder pass, their candidates
//! into one decoder pass) and greedy generation.

use super::*;

impl<F: Float> T5Model<F> {
    /// `[decoder_start] + candidate[..len−1]`: teacher forcing shifts the target right.
    pub(super) fn decoder_input(&self, candidate: &[u32]) -> Vec<u32> {
        std::iter::once(self.cfg.decoder_start_token_id)
            .chain(candidate[..candidate.len().saturating_sub(1)].iter().copied())
            .collect()
    }

    /// Log-probability of every candidate: the encoder runs once, the cross-attention keys and
    /// values are computed once, and the candidates go through the decoder packed together.
    pub fn score_candidates(&self, prompt: &[u32], candidates: &[Vec<u32>]) -> Vec<f64> {
        self.score_batch(&[(prompt, candidates)]).pop().unwrap_or_default()
    }

    /// Log-probabilities of every candidate of every prompt. Prompts are packed into batches of at
    /// most `MAX_ENCODER_ROWS` encoder rows: a batch's encoder and cross-attention keys and values
    /// run once over all its rows (a few large matrix products instead of many small ones, which
    /// run far below the CPU's peak), then all its candidates go through the decoder packed
    /// together. Every number equals scoring the prompts one by one.
    pub fn score_batch(&self, items: &[(&[u32], &[Vec<u32>])]) -> Vec<Vec<f64>> {
        const MAX_ENCODER_ROWS: usize = 2048;
        let mut out = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            let (mut end, mut rows) = (start, 0);
            while end < items.len() && (end == start || rows + items[end].0.len() <= MAX_ENCODER_ROWS) {
                rows += items[end].0.len();
                end += 1;
            }
            let batch = &items[start..end];
            let lens: Vec<usize> = batch.iter().map(|(p, _)| p.len()).collect();
            let tokens: Vec<u32> = batch.iter().flat_map(|(p, _)| p.iter().copied()).collect();
            let enc = self.run_encoder_packed(&tokens, &lens, false, &mut None).out;
            let cross = self.cross_kv(&enc, tokens.len(), &mut None);
            let mut enc_start = 0;
            let prompts: Vec<(Range<usize>, &[Vec<u32>])> = batch
                .iter()
                .map(|(p, c)| {
                    enc_start += p.len();
                    (enc_start - p.len()..enc_start, *c)
                })
                .collect();
            out.extend(self.score_packed(&cross, &prompts));
            start = end;
        }
        out
    }

    /// Candidate log-probabilities over precomputed cross-attention keys and values: for each
    /// prompt, its encoder rows and its candidates. All candidates are packed into as few decoder
    /// passes as possible.
    pub(super) fn score_packed(&self, cross: &[(Vec<F>, Vec<F>)], prompts: &[(Range<usize>, &[Vec<u32>])]) -> Vec<Vec<f64>> {
        // Rows per decoder pass: bounds the logits buffer.
        const MAX_ROWS: usize = 512;
        let vocab = self.cfg.vocab_size;
        let mut out: Vec<Vec<f64>> = prompts.iter().map(|(_, c)| vec![0.0; c.len()]).collect();
        let all: Vec<(usize, usize)> =
            prompts.iter().enumerate().flat_map(|(p, (_, c))| (0..c.len()).map(move |j| (p, j))).collect();
        let candidate = |(p, j): (usize, usize)| &prompts[p].1[j];
        let mut start = 0;
        while start < all.len() {
            let (mut end, mut rows) = (start, 0);
            while end < all.len() && (end == start || rows + candidate(all[end]).len() <= MAX_ROWS) {
                rows += candidate(all[end]).len();
                end += 1;
            }
            let mut parts: Vec<DecoderPart> = Vec::new();
            let mut tokens = Vec::with_capacity(rows);
            for &(p, j) in &all[start..end] {
                let c = candidate((p, j));
                if c.is_empty() {
                    continue;
                }
                let enc = prompts[p].0.clone();
                let part = match parts.last_mut() {
                    Some(part) if part.enc == enc => part,
                    _ => {
                        parts.push(DecoderPart { rows: Rows::default(), enc });
                        parts.last_mut().expect("just pushed")
                    }
                };
                let dec_in = self.decoder_input(c);
                part.rows.seq.resize(part.rows.seq.len() + dec_in.len(), j as u32);
                part.rows.pos.extend(0..dec_in.len());
                tokens.extend(dec_in);
            }
            if !tokens.is_empty() {
                let dec = self.run_decoder(&tokens, &parts, cross, None, false, &mut None);
                let logits = self.logits(&dec.out, tokens.len());
                let targets: Vec<u32> = all[start..end].iter().flat_map(|&pj| candidate(pj).iter().copied()).collect();
                let row_lps: Vec<f64> = targets
                    .par_iter()
                    .enumerate()
                    .map(|(r, &t)| log_prob_of(&logits[r * vocab..(r + 1) * vocab], t))
                    .collect();
                let mut r = 0;
                for &(p, j) in &all[start..end] {
                    for _ in candidate((p, j)) {
                        out[p][j] += row_lps[r];
                        r += 1;
                    }
                }
            }
            start = end;
        }
        out
    }

    /// Greedy decoding with a self-attention cache; the cross-attention keys and values are
    /// computed once. Stops after any token of `stop` (included in the output).
    pub fn generate_greedy(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32> {
        let vocab = self.cfg.vocab_size;
        let m = prompt.len();
        let enc = self.encode(prompt);
        let cross = self.cross_kv(&enc, m, &mut None);
        let mut cache = DecoderCache { layers: vec![(Vec::new(), Vec::new()); self.cfg.num_decoder_layers], len: 0 };
        let mut out = Vec::new();
        let mut next = self.cfg.decoder_start_token_id;
        while out.len() < max_new {
            let rows = Rows::single(cache.len, 1);
            let parts = [DecoderPart { rows, enc: 0..m }];
            let dec = self.run_decoder(&[next], &parts, &cross, Some(&mut cache), false, &mut None);
            let logits = self.logits(&dec.out, 1);
            next = argmax(&logits[..vocab]) as u32;
            out.push(next);
            if stop.contains(&next) {
                break;
            }
        }
        out
    }
}
