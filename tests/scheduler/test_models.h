// Model sizes shared by the scheduler tests.
#pragma once

#include "scheduler/config.pb.h"

namespace cadre::scheduler::testing {

// A model of these sizes (the latent-attention fields unset).
inline config::ModelConfig dense_model(int layers, int hidden, int heads, int kv_heads,
                                       int head_dim, int ffn, int vocab) {
  config::ModelConfig m;
  m.set_num_layers(layers);
  m.set_hidden_size(hidden);
  m.set_num_heads(heads);
  m.set_num_kv_heads(kv_heads);
  m.set_head_dim(head_dim);
  m.set_ffn_hidden_size(ffn);
  m.set_vocab_size(vocab);
  return m;
}

// Llama-3-8B-like: 32 layers, hidden 4096, 32 query / 8 KV heads of 128, SwiGLU 14336.
inline config::ModelConfig llama8b() { return dense_model(32, 4096, 32, 8, 128, 14336, 128256); }

// The deepseek-v2-lite-like preset: DeepSeek-V2-Lite's latent attention (16 heads, query/key
// 128 + rotary 64, value 128, latent 512, no query compression) with a dense FFN.
inline config::ModelConfig deepseek_v2_lite() {
  config::ModelConfig m = dense_model(27, 2048, 16, 16, 128, 5632, 102400);
  m.set_kv_latent_dim(512);
  m.set_rope_head_dim(64);
  m.set_v_head_dim(128);
  return m;
}

// The llama-1b preset (Llama-3.2-1B-like): 32 query heads, 8 K/V heads of 64.
inline config::ModelConfig llama1b() { return dense_model(16, 2048, 32, 8, 64, 8192, 128256); }

}  // namespace cadre::scheduler::testing
