// The small decoder the single-process runtime tests build (hidden 32, 4 heads / 2 KV heads of 8).
#pragma once

#include "scheduler/config.pb.h"

namespace cadre::runtime::testing {

inline config::ModelConfig tiny_model(bool tied, int layers = 2) {
  config::ModelConfig m;
  m.set_preset("custom");
  m.set_num_layers(layers);
  m.set_hidden_size(32);
  m.set_num_heads(4);
  m.set_num_kv_heads(2);
  m.set_head_dim(8);
  m.set_ffn_hidden_size(48);
  m.set_vocab_size(50);
  m.set_tie_embeddings(tied);
  m.set_rope_theta(10000);
  return m;
}

// A small latent-attention (MLA) model in DeepSeek's export layout: 4 heads with 8 non-rotary + 8
// rotary query/key values (so each head's rotary block has 4 pairs to permute) and 6 value
// values, a latent of 16, optionally a query latent (q_latent > 0). Norm eps 1e-6, DeepSeek's
// value: transformers normalises the latents with 1e-6 whatever rms_norm_eps is.
inline config::ModelConfig mla_export_model(int q_latent, bool tied, int layers = 2) {
  config::ModelConfig m;
  m.set_preset("custom");
  m.set_num_layers(layers);
  m.set_hidden_size(32);
  m.set_num_heads(4);
  m.set_num_kv_heads(4);
  m.set_head_dim(8);
  m.set_rope_head_dim(8);
  m.set_kv_latent_dim(16);
  m.set_q_latent_dim(q_latent);
  m.set_v_head_dim(6);
  m.set_ffn_hidden_size(40);
  m.set_vocab_size(50);
  m.set_tie_embeddings(tied);
  m.set_rope_theta(10000);
  m.set_norm_eps(1e-6);
  return m;
}

}  // namespace cadre::runtime::testing
