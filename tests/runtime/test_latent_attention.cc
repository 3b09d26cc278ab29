// Multi-head latent attention in LlamaModel against a reference written here from the
// DeepSeek-V2 formulas (expanded and absorbed forms), and TPLA: one slice is MLA bit for bit, two
// slices are another function whose gradients match finite differences and whose loss falls on
// a learnable task; the Hadamard transform keeps an MLA checkpoint's function at one slice.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "attention_server/kernel.h"
#include "common/error.h"
#include "runtime/attention_op.h"
#include "runtime/model.h"
#include "runtime/optimizer.h"
#include "scheduler/plan.h"
#include "tests/expect_error.h"

namespace cadre::runtime {
namespace {

// Tiny MLA sizes: 4 heads, no-RoPE key 8, rotary 4, value 6 (unequal, so a mixed-up width
// shows), latent 16.
config::ModelConfig mla_model(int q_latent = 0) {
  config::ModelConfig m;
  m.set_preset("custom");
  m.set_num_layers(2);
  m.set_hidden_size(32);
  m.set_num_heads(4);
  m.set_num_kv_heads(4);
  m.set_head_dim(8);
  m.set_rope_head_dim(4);
  m.set_kv_latent_dim(16);
  m.set_v_head_dim(6);
  m.set_q_latent_dim(q_latent);
  m.set_ffn_hidden_size(48);
  m.set_vocab_size(50);
  m.set_tie_embeddings(false);
  m.set_rope_theta(10000);
  return m;
}

std::map<std::string, torch::Tensor> weights_of(const LlamaModel& model) {
  std::map<std::string, torch::Tensor> w;
  for (const auto& p : model.parameters()) w[p.name] = p.value.detach().to(torch::kDouble);
  return w;
}

// --- the reference, from the DeepSeek-V2 paper's equations, fp64 -------------------------------
torch::Tensor ref_norm(const torch::Tensor& x, const torch::Tensor& g, double eps) {
  return x / torch::sqrt(x.pow(2).mean(-1, true) + eps) * g;
}

// Rotate-half RoPE of x [n, heads, d] at positions p with frequencies theta^(-2i/d).
torch::Tensor ref_rope(const torch::Tensor& x, const torch::Tensor& positions, double theta) {
  const int64_t d = x.size(-1), half = d / 2;
  auto out = x.clone();
  for (int64_t i = 0; i < half; ++i) {
    auto angle = positions.to(torch::kDouble) * std::pow(theta, -2.0 * i / d);  // [n]
    auto c = angle.cos().view({-1, 1}), s = angle.sin().view({-1, 1});
    auto a = x.select(2, i), b = x.select(2, i + half);
    out.select(2, i).copy_(a * c - b * s);
    out.select(2, i + half).copy_(a * s + b * c);
  }
  return out;
}

struct RefAttention {
  torch::Tensor q_nope, q_rope, c, k_rope;  // per token
  torch::Tensor w_uk, w_uv;                 // [heads, nope, latent], [heads, v, latent]
};

// The attention part of layer l: everything up to the per-head scores.
RefAttention ref_attention_inputs(const config::ModelConfig& m,
                                  std::map<std::string, torch::Tensor>& w, int l,
                                  const torch::Tensor& x, const torch::Tensor& positions) {
  const std::string p = "layers." + std::to_string(l) + ".";
  const int64_t n = x.size(0), H = m.num_heads(), dn = m.head_dim(), dr = m.rope_head_dim();
  const int64_t dc = m.kv_latent_dim(), dv = m.v_head_dim();
  auto h = ref_norm(x, w[p + "attention_norm"], m.norm_eps());
  torch::Tensor q;
  if (m.q_latent_dim() == 0) {
    q = torch::mm(h, w[p + "wq"].t());
  } else {
    auto cq = ref_norm(torch::mm(h, w[p + "wq_a"].t()), w[p + "q_norm"], m.norm_eps());
    q = torch::mm(cq, w[p + "wq_b"].t());
  }
  q = q.view({n, H, dn + dr});
  RefAttention r;
  r.q_nope = q.narrow(2, 0, dn);
  r.q_rope = ref_rope(q.narrow(2, dn, dr).contiguous(), positions, m.rope_theta());
  auto kv_a = torch::mm(h, w[p + "wkv_a"].t());
  r.c = ref_norm(kv_a.narrow(1, 0, dc), w[p + "kv_norm"], m.norm_eps());
  r.k_rope =
      ref_rope(kv_a.narrow(1, dc, dr).reshape({n, 1, dr}).contiguous(), positions, m.rope_theta())
          .view({n, dr});
  auto up = w[p + "wkv_b"].view({H, dn + dv, dc});
  r.w_uk = up.narrow(1, 0, dn);
  r.w_uv = up.narrow(1, dn, dv);
  return r;
}

// Causal attention inside each document, expanded form: per-head keys k_i = c W_UK,i^T and
// values v_i = c W_UV,i^T. Returns [n, heads, v].
torch::Tensor ref_expanded(const config::ModelConfig& m, const RefAttention& a,
                           const std::vector<int64_t>& docs) {
  const int64_t H = m.num_heads();
  const double scale = 1.0 / std::sqrt(static_cast<double>(m.head_dim() + m.rope_head_dim()));
  auto k_nope = torch::einsum("tc,hdc->thd", {a.c, a.w_uk});
  auto v = torch::einsum("tc,hdc->thd", {a.c, a.w_uv});
  std::vector<torch::Tensor> outs;
  int64_t begin = 0;
  for (int64_t len : docs) {
    auto rows = [&](const torch::Tensor& t) { return t.narrow(0, begin, len); };
    auto s = (torch::einsum("qhd,khd->hqk", {rows(a.q_nope), rows(k_nope)}) +
              torch::einsum("qhd,kd->hqk", {rows(a.q_rope), rows(a.k_rope)})) *
             scale;
    auto mask = torch::ones({len, len}, torch::kBool).triu(1);
    s = s.masked_fill(mask.unsqueeze(0).expand({H, len, len}), -INFINITY);
    outs.push_back(torch::einsum("hqk,khd->qhd", {torch::softmax(s, -1), rows(v)}));
    begin += len;
  }
  return torch::cat(outs, 0);
}

// The same in absorbed form: W_UK folded into the query (q~_i = q_nope_i W_UK,i, 16 wide),
// scores against the latent itself, the latent-space output ō_i = sum p c then times W_UV,i^T.
torch::Tensor ref_absorbed(const config::ModelConfig& m, const RefAttention& a,
                           const std::vector<int64_t>& docs) {
  const int64_t H = m.num_heads();
  const double scale = 1.0 / std::sqrt(static_cast<double>(m.head_dim() + m.rope_head_dim()));
  auto q_absorbed = torch::einsum("thd,hdc->thc", {a.q_nope, a.w_uk});
  std::vector<torch::Tensor> outs;
  int64_t begin = 0;
  for (int64_t len : docs) {
    auto rows = [&](const torch::Tensor& t) { return t.narrow(0, begin, len); };
    auto s = (torch::einsum("qhc,kc->hqk", {rows(q_absorbed), rows(a.c)}) +
              torch::einsum("qhd,kd->hqk", {rows(a.q_rope), rows(a.k_rope)})) *
             scale;
    auto mask = torch::ones({len, len}, torch::kBool).triu(1);
    s = s.masked_fill(mask.unsqueeze(0).expand({H, len, len}), -INFINITY);
    auto latent_out = torch::einsum("hqk,kc->qhc", {torch::softmax(s, -1), rows(a.c)});
    outs.push_back(torch::einsum("qhc,hvc->qhv", {latent_out, a.w_uv}));
    begin += len;
  }
  return torch::cat(outs, 0);
}

torch::Tensor ref_layer_output(const config::ModelConfig& m,
                               std::map<std::string, torch::Tensor>& w, int l,
                               const torch::Tensor& x, const torch::Tensor& o) {
  const std::string p = "layers." + std::to_string(l) + ".";
  auto y = x + torch::mm(o.reshape({x.size(0), -1}), w[p + "wo"].t());
  auto h = ref_norm(y, w[p + "mlp_norm"], m.norm_eps());
  auto gate = torch::mm(h, w[p + "w_gate"].t());
  auto act = gate * torch::sigmoid(gate) * torch::mm(h, w[p + "w_up"].t());
  return y + torch::mm(act, w[p + "w_down"].t());
}

// ---------------------------------------------------------------------------------------------

TEST(LatentAttention, LayerMatchesTheDeepSeekFormulasInExpandedAndAbsorbedForm) {
  for (int q_latent : {0, 12}) {
    const config::ModelConfig m = mla_model(q_latent);
    LlamaModel model(m, 7);
    model.set_compute_dtype(torch::kDouble);
    auto w = weights_of(model);
    const std::vector<int64_t> docs = {5, 1, 9};
    auto positions = document_positions(docs);
    torch::manual_seed(3);
    auto x = torch::randn({15, m.hidden_size()}, torch::kDouble);
    auto kernel = attention_server::make_cpu_kernel();
    auto op = make_colocated_attention(scheduler::layout_from_rank_documents({docs}), 0, *kernel);
    for (int l = 0; l < 2; ++l) {
      auto qkv = model.attention_inputs(l, x, model.rope(positions));
      ASSERT_EQ(qkv[0].sizes(), (std::vector<int64_t>{15, 4, 12}));
      ASSERT_EQ(qkv[1].sizes(), (std::vector<int64_t>{15, 4, 12}));
      ASSERT_EQ(qkv[2].sizes(), (std::vector<int64_t>{15, 4, 6}));
      auto o = (*op)(qkv[0], qkv[1], qkv[2]);
      auto ref_in = ref_attention_inputs(m, w, l, x, positions);
      auto expanded = ref_expanded(m, ref_in, docs);
      auto absorbed = ref_absorbed(m, ref_in, docs);
      EXPECT_TRUE(torch::allclose(absorbed, expanded, 1e-9, 1e-11)) << "layer " << l;
      EXPECT_TRUE(torch::allclose(o, expanded, 1e-6, 1e-8))  // fp32 rotary tables
          << "layer " << l << " q_latent " << q_latent << ": max diff "
          << (o - expanded).abs().max().item<double>();
      auto out = model.layer_output(l, x, o);
      EXPECT_TRUE(torch::allclose(out, ref_layer_output(m, w, l, x, expanded), 1e-6, 1e-8));
      x = out.detach();
    }
  }
}

TEST(LatentAttention, ParametersCarryTheDocumentedNames) {
  LlamaModel direct(mla_model(0), 1), low_rank(mla_model(12), 1);
  std::vector<std::string> names;
  for (const auto& p : direct.parameters()) names.push_back(p.name);
  EXPECT_EQ(std::vector<std::string>(names.begin(), names.begin() + 10),
            (std::vector<std::string>{"embedding", "layers.0.attention_norm", "layers.0.wq",
                                      "layers.0.wkv_a", "layers.0.kv_norm", "layers.0.wkv_b",
                                      "layers.0.wo", "layers.0.mlp_norm", "layers.0.w_gate",
                                      "layers.0.w_up"}));
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& p : low_rank.parameters()) shapes[p.name] = p.full_shape;
  EXPECT_EQ(shapes["layers.1.wq_a"], (std::vector<int64_t>{12, 32}));
  EXPECT_EQ(shapes["layers.1.q_norm"], (std::vector<int64_t>{12}));
  EXPECT_EQ(shapes["layers.1.wq_b"], (std::vector<int64_t>{4 * 12, 12}));
  EXPECT_EQ(shapes["layers.1.wkv_a"], (std::vector<int64_t>{16 + 4, 32}));
  EXPECT_EQ(shapes["layers.1.wkv_b"], (std::vector<int64_t>{4 * (8 + 6), 16}));
  EXPECT_EQ(shapes["layers.1.wo"], (std::vector<int64_t>{32, 4 * 6}));
  EXPECT_EQ(shapes.count("layers.1.wq"), 0u);
}

// Loss and every gradient of one packed batch.
struct LossAndGrads {
  double loss;
  std::vector<torch::Tensor> grads;
};
LossAndGrads loss_and_grads(const LlamaModel& model, const torch::Tensor& tokens,
                            const std::vector<int64_t>& docs) {
  for (const auto& p : model.parameters()) {
    if (p.value.grad().defined()) p.value.mutable_grad().zero_();
  }
  auto kernel = attention_server::make_cpu_kernel();
  auto op = make_colocated_attention(scheduler::layout_from_rank_documents({docs}), 0, *kernel);
  auto loss = model.loss_sum(tokens, docs, *op);
  loss.backward();
  LossAndGrads out{loss.item<double>(), {}};
  for (const auto& p : model.parameters()) out.grads.push_back(p.value.grad().clone());
  return out;
}

TEST(LatentAttention, TplaWithOneSliceIsMlaBitForBit) {
  auto tpla = mla_model(12);
  tpla.set_tpla(true);
  LlamaModel a(mla_model(12), 5), b(tpla, 5);
  ASSERT_EQ(b.tpla_parts(), 1);
  torch::manual_seed(1);
  auto tokens = torch::randint(0, 50, {20}, torch::kLong);
  const std::vector<int64_t> docs = {12, 8};
  auto ga = loss_and_grads(a, tokens, docs), gb = loss_and_grads(b, tokens, docs);
  EXPECT_EQ(ga.loss, gb.loss);
  for (size_t i = 0; i < ga.grads.size(); ++i) {
    EXPECT_TRUE(torch::equal(ga.grads[i], gb.grads[i])) << a.parameters()[i].name;
  }
}

TEST(LatentAttention, HadamardFormOfAnMlaCheckpointKeepsItsFunctionAtOneSlice) {
  auto h = hadamard_matrix(16);
  EXPECT_TRUE(torch::allclose(torch::mm(h, h.t()), torch::eye(16), 0, 1e-6));
  EXPECT_THROW(hadamard_matrix(12), Error);
  auto tpla = mla_model();
  tpla.set_tpla(true);
  tpla.set_tpla_transform("hadamard");
  LlamaModel mla(mla_model(), 5), rotated(tpla, 9);
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < mla.parameters().size(); ++i) {
      const auto& p = mla.parameters()[i];
      auto value = p.value;
      if (p.name.find("wkv_b") != std::string::npos) value = tpla_up_projection(value, tpla);
      rotated.parameters()[i].value.copy_(value);
    }
  }
  torch::manual_seed(2);
  auto tokens = torch::randint(0, 50, {20}, torch::kLong);
  const std::vector<int64_t> docs = {20};
  const double a = loss_and_grads(mla, tokens, docs).loss;
  const double b = loss_and_grads(rotated, tokens, docs).loss;
  EXPECT_NEAR(a, b, 1e-4 * std::abs(a));
  // Without converting the up-projection the rotated latent is another function.
  LlamaModel unconverted(tpla, 5);
  EXPECT_GT(std::abs(loss_and_grads(unconverted, tokens, docs).loss - a), 1e-3);
}

TEST(LatentAttention, TplaWithTwoSlicesIsAnotherFunctionWithExactGradients) {
  auto tpla = mla_model();
  tpla.set_tpla(true);
  tpla.set_num_layers(1);
  auto mla = mla_model();
  mla.set_num_layers(1);
  LlamaModel exact(mla, 5), sliced(tpla, 5, torch::kCPU, nullptr, 2);
  ASSERT_EQ(sliced.tpla_parts(), 2);
  ASSERT_EQ(sliced.local_heads(), 8);  // every head once per slice
  sliced.set_compute_dtype(torch::kDouble);
  exact.set_compute_dtype(torch::kDouble);
  torch::manual_seed(4);
  auto tokens = torch::randint(0, 50, {14}, torch::kLong);
  const std::vector<int64_t> docs = {9, 5};
  auto g = loss_and_grads(sliced, tokens, docs);
  EXPECT_GT(std::abs(g.loss - loss_and_grads(exact, tokens, docs).loss), 1e-4);
  // Central differences on a few elements of every attention weight.
  auto kernel = attention_server::make_cpu_kernel();
  auto op = make_colocated_attention(scheduler::layout_from_rank_documents({docs}), 0, *kernel);
  const auto& params = sliced.parameters();
  int checked = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string& name = params[i].name;
    if (name.find("layers.0.w") == std::string::npos && name.find("kv_norm") == std::string::npos)
      continue;
    auto flat = params[i].value.detach().view({-1});
    for (int64_t e : {int64_t{0}, flat.numel() / 2, flat.numel() - 1}) {
      const float saved = flat[e].item<float>();
      const double step = 1e-3;
      double f[2];
      for (int side = 0; side < 2; ++side) {
        torch::NoGradGuard no_grad;
        flat[e] = saved + (side == 0 ? step : -step);
        f[side] = sliced.loss_sum(tokens, docs, *op).item<double>();
      }
      flat[e] = saved;
      const double numeric = (f[0] - f[1]) / (2 * step);
      const double analytic = g.grads[i].view({-1})[e].item<double>();
      EXPECT_NEAR(analytic, numeric, 1e-4 + 1e-3 * std::abs(numeric)) << name << "[" << e << "]";
      ++checked;
    }
  }
  EXPECT_GE(checked, 3 * 7);
}

TEST(LatentAttention, TplaLossFallsOnALearnableTask) {
  auto tpla = mla_model();
  tpla.set_tpla(true);
  LlamaModel model(tpla, 11, torch::kCPU, nullptr, 2);
  AdamWOptions options;
  options.weight_decay = 0;
  AdamW optimizer(model.parameter_tensors(), options);
  // Documents that repeat a short cycle: the next token is predictable from the previous ones.
  std::vector<int64_t> tokens;
  const std::vector<int64_t> docs = {24, 24, 16};
  for (int64_t len : docs)
    for (int64_t i = 0; i < len; ++i) tokens.push_back((i * 7 + len) % 11 + 3);
  auto batch = torch::tensor(tokens, torch::kLong);
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    auto r = loss_and_grads(model, batch, docs);
    if (step == 0) first = r.loss;
    last = r.loss;
    optimizer.step(3e-3);
  }
  EXPECT_LT(last, 0.5 * first) << "loss " << first << " -> " << last;
}

// Runs `make` and expects a cadre::Error whose message holds every piece.
using cadre::testing::expect_error;

// The model's own checks (the config loader's, one per inconsistent setting, are in
// tests/launch/test_config.cc).
TEST(LatentAttention, BadSizesAreRefused) {
  auto bad_rope = mla_model();
  bad_rope.set_rope_head_dim(3);
  expect_error([&] { LlamaModel(bad_rope, 1); }, {"even model.rope_head_dim", "got 3"});
  auto bad_heads = mla_model();
  bad_heads.set_num_kv_heads(2);
  expect_error([&] { LlamaModel(bad_heads, 1); }, {"num_kv_heads (2) must equal num_heads (4)"});
  auto tpla = mla_model();
  tpla.set_tpla(true);
  expect_error([&] { LlamaModel(tpla, 1, torch::kCPU, nullptr, 3); },
               {"kv_latent_dim=16", "not divisible by the 3 TPLA slices"});
  auto hadamard = mla_model();
  hadamard.set_kv_latent_dim(12);
  hadamard.set_tpla(true);
  hadamard.set_tpla_transform("hadamard");
  expect_error([&] { LlamaModel(hadamard, 1, torch::kCPU, nullptr, 2); },
               {"hadamard", "power-of-two", "got 12"});
  auto no_latent = mla_model();
  no_latent.set_kv_latent_dim(0);
  expect_error([&] { LlamaModel(no_latent, 1); }, {"rope_head_dim", "kv_latent_dim > 0"});
  LlamaModel two(tpla, 1, torch::kCPU, nullptr, 2);
  expect_error([&] { two.set_latent_outputs(true); }, {"one latent slice per rank", "2 TPLA"});
}

}  // namespace
}  // namespace cadre::runtime
