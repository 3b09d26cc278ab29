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

}  // namespace cadre::scheduler::testing
