// Step-cost calibration: what each segment of a training step costs (linear segments, LM head and
// loss, recomputation, embedding, optimizer step, core attention, transfers, host overhead,
// memory), loaded from a calibration file (cluster.calibration) or the built-in H200 one, and
// fitted by `cadre calibrate` from training profiles and `bench kernel` / `bench comm` results.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "scheduler/config.pb.h"
#include "scheduler/cost_model.h"
#include "scheduler/profile.pb.h"

namespace cadre::scheduler {

// fixed_us + us_per_unit x work (work in `unit`, see segment_work).
struct SegmentCost {
  std::string kind, direction, unit;
  double us_per_unit = 0;
  double fixed_us = 0;
  int samples = 0;
  double rms_relative_error = 0;
  std::string source;
  double us(double work) const { return work > 0 ? fixed_us + us_per_unit * work : 0.0; }
};

// latency_us + bytes / (gbps x 1e3).
struct LinkCost {
  double latency_us = 0;
  double gbps = 0;
  int samples = 0;
  std::string source;
  double us(double bytes) const { return bytes > 0 ? latency_us + bytes / (gbps * 1e3) : 0.0; }
};

struct StepCalibration {
  std::string device;
  std::vector<std::string> sources, notes;
  std::map<std::string, SegmentCost> segments;  // by "kind/direction"
  double attention_forward_scale = 1, attention_backward_scale = 1, attention_call_us = 0;
  // Per sequence of a fused attention call and query head on the GPU (profiles' fit; 0 in older
  // files).
  double attention_forward_sequence_us = 0, attention_backward_sequence_us = 0;
  // Core-attention kernel tables, at most one per (GQA or MHA, head_dim); attention_table_for
  // picks a model's. Empty: the built-in tables (default_calibration_for).
  std::vector<CalibrationTable> attention_tables;
  std::map<std::string, LinkCost> links;  // intra_node, inter_node, all_reduce
  double step_overhead_us = 0, call_overhead_us = 0;
  double activation_memory_scale = 1, memory_fixed_gib = 0;

  // Throws cadre::Error naming the segment and the ones the calibration has.
  const SegmentCost& segment(const std::string& kind, const std::string& direction) const;
  // The link's cost, or nullptr if the calibration has none (the cluster config prices it).
  const LinkCost* link(const std::string& name) const;
};

// The segment kinds and directions a calibration prices (kind/direction).
const std::vector<std::pair<std::string, std::string>>& calibrated_segments();

// Work of one call of a segment, in its unit: forward GFLOPs of the segment on one TP rank for
// qkv, out_mlp and head_loss (tokens x the segment's weights x 2); million hidden values
// (tokens x hidden) for the embedding; million parameters of one TP rank for the optimizer
// (`parameters`; tokens unused).
double segment_work(const std::string& kind, const config::ModelConfig& model, int32_t tp,
                    int64_t tokens, double parameters = 0);
std::string segment_unit(const std::string& kind);

// Whether a kernel table measured multi-head attention (kv_heads == heads); kv_heads 0 (not
// recorded) counts as GQA.
bool is_mha_table(const CalibrationTable& table);
// The calibration's kernel table for a model on TP-way tensor parallelism, or nullptr when it has
// none (callers then use cluster.attention_calibration or the built-in table). Tables whose
// GQA-ness matches the model's are preferred (MHA: each TP rank has as many query heads as K/V
// heads, latent attention counted by its expanded heads; otherwise GQA), any table when none
// does; among those, the one whose head_dim is nearest the model's query/key head width
// (qk_head_dim: exact first), ties to the earlier in the list.
const CalibrationTable* attention_table_for(const StepCalibration& calibration,
                                            const config::ModelConfig& model,
                                            int32_t tensor_parallel);

// The built-in calibration (scheduler/data/h200_calibration.json, fitted by `cadre calibrate`
// from the committed H200 results; docs/simulation.md says from which).
const StepCalibration& default_step_calibration();
StepCalibration parse_step_calibration(const std::string& json, const std::string& source);
StepCalibration load_step_calibration(const std::string& path);
// cluster.calibration, or the built-in one when empty.
StepCalibration step_calibration_for(const config::ClusterConfig& cluster);
// Deterministic JSON (fields in schema order, fixed number formatting).
std::string step_calibration_json(const StepCalibration& calibration);

// Throws cadre::Error naming the profile, step, rank and what is missing or inconsistent: schema,
// model shape, a worker rank without a segment (kind, direction, layer, nano-batch) the executor
// runs, tokens that differ from the nano-batch's, attention calls that do not match layers x
// nano-batches, buckets without bytes.
void validate_profile(const profile::RunProfile& profile, const std::string& name);
// Parses profile JSON (scheduler/profile.proto) and validates it.
profile::RunProfile parse_profile_json(const std::string& json, const std::string& name);

struct CalibrationInputs {
  std::vector<profile::RunProfile> profiles;
  std::vector<std::string> profile_names;
  std::vector<std::string> kernel_json, kernel_names;  // `bench kernel` results or kernel tables
  std::vector<std::string> comm_json, comm_names;      // `bench comm` results
  // Used when no profile or benchmark measures a link.
  config::ClusterConfig cluster;
};

// Fits every coefficient (docs/simulation.md, "Calibration"): per segment a weighted least
// squares line through (work, us) over every measured step of every worker rank (relative error
// weights; the fixed cost is 0 when all samples have the same work, or if the fit makes it
// negative); attention scales against the kernel table; links from `bench comm` rows and profile
// buckets; host overhead and memory from step totals. Deterministic: the same inputs give the
// same bytes of step_calibration_json. Each kernel input adds one attention table (ordered GQA
// before MHA, then by head_dim). Throws cadre::Error if a segment has no samples, or if two kernel
// inputs give tables of the same head_dim and GQA-ness (naming both).
StepCalibration fit_step_calibration(const CalibrationInputs& inputs);

}  // namespace cadre::scheduler
