// Model sizes shared by the scheduler tests.
#pragma once

#include "scheduler/config.pb.h"

namespace cadre::scheduler::testing {

// Llama-3-8B-like: 32 layers, hidden 4096, 32 query / 8 KV heads of 128, SwiGLU 14336.
inline config::ModelConfig llama8b() {
  config::ModelConfig m;
  m.set_num_layers(32);
  m.set_hidden_size(4096);
  m.set_num_heads(32);
  m.set_num_kv_heads(8);
  m.set_head_dim(128);
  m.set_ffn_hidden_size(14336);
  m.set_vocab_size(128256);
  return m;
}

// The deepseek-v2-lite-like preset: DeepSeek-V2-Lite's latent attention (16 heads, query/key
// 128 + rotary 64, value 128, latent 512, no query compression) with a dense FFN.
inline config::ModelConfig deepseek_v2_lite() {
  config::ModelConfig m;
  m.set_num_layers(27);
  m.set_hidden_size(2048);
  m.set_num_heads(16);
  m.set_num_kv_heads(16);
  m.set_head_dim(128);
  m.set_ffn_hidden_size(5632);
  m.set_vocab_size(102400);
  m.set_kv_latent_dim(512);
  m.set_rope_head_dim(64);
  m.set_v_head_dim(128);
  return m;
}

// The llama-1b preset (Llama-3.2-1B-like): 32 query heads, 8 K/V heads of 64.
inline config::ModelConfig llama1b() {
  config::ModelConfig m;
  m.set_num_layers(16);
  m.set_hidden_size(2048);
  m.set_num_heads(32);
  m.set_num_kv_heads(8);
  m.set_head_dim(64);
  m.set_ffn_hidden_size(8192);
  m.set_vocab_size(128256);
  return m;
}

}  // namespace cadre::scheduler::testing
