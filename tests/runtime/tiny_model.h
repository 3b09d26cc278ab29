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

}  // namespace cadre::runtime::testing
