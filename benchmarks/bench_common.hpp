// SPDX-License-Identifier: Apache-2.0
//
// What the benchmarks share: the GPT-style model whose optimizer step bench_cpu (one process) and
// bench_mpi (data-parallel) time, as a list of tensors, so both time the same model.
#pragma once

#include <string>
#include <vector>

#include <Eigen/Core>

namespace bench {

/// One tensor of the benchmark model: its name (which orthopt's router reads), its shape, and how many
/// row blocks it is registered as (the fused QKV as three d×d blocks, with orthopt::split_rows).
struct gpt_tensor {
  std::string name;
  Eigen::Index rows, cols, blocks;
};

/// A GPT-style transformer (d_model 512, 4 layers, MLP 4×, vocabulary 8192, context 256): the router
/// sends the fused QKV, the attention output and both MLP matrices to the Muon-family rule; the
/// embeddings, the head, the norms' gains and biases to AdamW.
struct gpt_dims {
  static constexpr Eigen::Index d = 512, layers = 4, vocab = 8192, context = 256;
};

inline std::vector<gpt_tensor> gpt_tensors() {
  using g = gpt_dims;
  std::vector<gpt_tensor> t;
  t.push_back({"embed_tokens", g::vocab, g::d, 1});
  t.push_back({"embed_positions", g::context, g::d, 1});
  for (Eigen::Index l = 0; l < g::layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    t.push_back({p + "ln1.weight", 1, g::d, 1});
    t.push_back({p + "ln1.bias", 1, g::d, 1});
    t.push_back({p + "attn.qkv", 3 * g::d, g::d, 3});
    t.push_back({p + "attn.out", g::d, g::d, 1});
    t.push_back({p + "ln2.weight", 1, g::d, 1});
    t.push_back({p + "ln2.bias", 1, g::d, 1});
    t.push_back({p + "mlp.fc1", 4 * g::d, g::d, 1});
    t.push_back({p + "mlp.fc2", g::d, 4 * g::d, 1});
  }
  t.push_back({"ln_f.weight", 1, g::d, 1});
  t.push_back({"lm_head", g::vocab, g::d, 1});
  return t;
}

}  // namespace bench
