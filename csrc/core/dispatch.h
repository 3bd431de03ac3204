// Dispatch tables as data: for each *dispatch key* (a family's arch / operand dtype / epilogue,
// e.g. "scaled_mm/sm90/fp8") the compiled candidate kernels, by name, and the active table
// "M bucket -> kernel + run-time parameters". Family-agnostic; used by the glue files.
//
//   glue, at library load:  a Key per (family, arch, variant) with its candidates (kernel objects of
//                           the family's own type, held here as `const void*`), its run-time
//                           parameters and its compiled-in default table;
//   glue, at call time:     `key.pick(m)` -> the bucket (kernel + params); one atomic load, no lock,
//                           no allocation, no host sync (CUDA-graph and torch.compile safe);
//   Python, once per run:   `torch.ops.qkernels.set_dispatch_table(...)` replaces a key's table
//                           (qkernels/configs: the per-GPU JSON), `dispatch_tables()` lists the
//                           keys, their candidates, parameters, default and active tables (JSON).
//
// A replaced table is kept alive until the library unloads (a call racing with the replacement may
// still be reading it); replacements are rare (a few per process), so this costs bytes.
// A CUDA graph captured before a replacement keeps the kernels it captured.
// How a family registers its keys: docs/CONTRIBUTING.md, "Dispatch tables".
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/cuda_utils.h"

namespace qk::dispatch {

constexpr int kMaxParams = 4;                                    // run-time parameters per key
constexpr int64_t kAnyM = std::numeric_limits<int64_t>::max();   // the last bucket's max_m
using Params = std::array<int64_t, kMaxParams>;

// A run-time parameter of a key's kernels (e.g. the tile scheduler's raster order). Values are
// integers; `labels` (one per value) are the names configs may use instead.
struct Param {
  std::string name;
  std::string doc;
  std::vector<int64_t> values;
  std::vector<std::string> labels;
  int64_t default_value;
};

// One compiled kernel that may serve the key.
struct Candidate {
  std::string name;          // unique within the key, e.g. "sm90_fp8_m16"
  std::string description;   // tile / schedule, for humans
  const void* impl;          // the family's kernel object (Key::kernel<T> casts it back)
  uint32_t params_mask;      // bit i set: the kernel takes the key's param i; others stay at their default
};

// A table entry: M in (previous max_m, max_m] runs `kernel` with `params`.
struct Bucket {
  int64_t max_m;
  int kernel;                // index into the key's candidates
  Params params;             // one value per key param (unused slots 0)
};

// A compiled-in default entry, naming its kernel by object (checked at registration).
struct DefaultBucket {
  int64_t max_m;
  const void* impl;
  Params params;             // all defaults when left out
  bool explicit_params = false;
  DefaultBucket(int64_t m, const void* k) : max_m(m), impl(k), params{} {}
  DefaultBucket(int64_t m, const void* k, Params p) : max_m(m), impl(k), params(p), explicit_params(true) {}
};

class Key {
 public:
  Key(std::string name, std::string doc, std::vector<Param> params, std::vector<Candidate> candidates,
      const std::vector<DefaultBucket>& defaults);
  Key(const Key&) = delete;
  Key& operator=(const Key&) = delete;

  // The bucket serving `m` (the first with m <= max_m; tables always end with kAnyM).
  const Bucket& pick(int64_t m) const {
    const Table* t = active_.load(std::memory_order_acquire);
    for (const Bucket& b : t->buckets) {
      if (m <= b.max_m) return b;
    }
    return t->buckets.back();
  }
  // The family's kernel object of a bucket.
  template <class T>
  const T& kernel(const Bucket& b) const {
    return *static_cast<const T*>(candidates_[b.kernel].impl);
  }
  const Candidate& candidate(const Bucket& b) const { return candidates_[b.kernel]; }

  // Replace the active table (validated; throws c10::Error naming the key, with what is allowed).
  // `kernels[i]` serves M <= max_m[i] (max_m[last] < 0: any M); `params` holds, per bucket, one
  // value per key param, in the key's param order.
  void set(const std::vector<int64_t>& max_m, const std::vector<std::string>& kernels,
           const std::vector<int64_t>& params, const std::string& source);
  void reset();  // back to the compiled-in default

  const std::string& name() const { return name_; }
  const std::string& doc() const { return doc_; }
  const std::vector<Param>& params() const { return params_; }
  const std::vector<Candidate>& candidates() const { return candidates_; }
  const std::vector<Bucket>& defaults() const { return default_->buckets; }
  std::vector<Bucket> active(std::string* source) const;

 private:
  struct Table {
    std::vector<Bucket> buckets;
    std::string source;  // "default", or what the caller of set() named (a config file)
  };
  void publish(std::unique_ptr<Table> t);

  std::string name_, doc_;
  std::vector<Param> params_;
  std::vector<Candidate> candidates_;
  std::atomic<const Table*> active_{nullptr};
  const Table* default_ = nullptr;              // set once, in the constructor
  std::vector<std::unique_ptr<Table>> tables_;  // [0] is the default; every table ever published
  mutable std::mutex mu_;
};

// Registers a key (at library load, from a glue file's namespace-scope initializer) and returns
// it; the reference stays valid for the library's lifetime. Names must be unique.
Key& add_key(std::string name, std::string doc, std::vector<Param> params, std::vector<Candidate> candidates,
             const std::vector<DefaultBucket>& defaults);
Key* find_key(const std::string& name);  // nullptr when not compiled in
std::vector<Key*> all_keys();            // sorted by name

// ---- the run-time parameters of CUTLASS 3.x sm90 persistent tile schedulers (core/cuda_utils.h
// TileSchedulerArgs), shared by every family with such kernels. Param order: raster, swizzle, splits.
constexpr uint32_t kNoParams = 0;
constexpr uint32_t kPersistentParams = 0b011;  // raster + swizzle (persistent / ping-pong / cooperative)
constexpr uint32_t kStreamKParams = 0b111;     // + splits (stream-K scheduler)
std::vector<Param> sm90_scheduler_params();
TileSchedulerArgs sm90_scheduler_args(const Bucket& b);

}  // namespace qk::dispatch
