// The dispatch-table registry (core/dispatch.h) and its three ops:
//   qkernels::set_dispatch_table(str key, int[] max_m, str[] kernels, int[] params, str source) -> ()
//   qkernels::reset_dispatch_table(str key) -> ()          ("" resets every key)
//   qkernels::dispatch_tables() -> str                     (JSON, schema "qkernels.dispatch/1")
// Unlike the compute ops, these schemas are defined here, not in qkernels/ops/schemas.py: they
// control this library's own state and mean nothing without it. They take no tensors and run on
// the host only. Python side: qkernels/configs/__init__.py.
#include <algorithm>
#include <sstream>

#include "core/dispatch.h"
#include "core/torch_utils.h"

namespace qk::dispatch {
namespace {

std::vector<std::unique_ptr<Key>>& registry() {
  static std::vector<std::unique_ptr<Key>> keys;
  return keys;
}
std::mutex& registry_mutex() {
  static std::mutex mu;
  return mu;
}

std::string join_candidates(const std::vector<Candidate>& c) {
  std::string s;
  for (const auto& k : c) s += (s.empty() ? "" : ", ") + k.name;
  return s;
}

std::string describe_values(const Param& p) {
  std::string s;
  for (size_t i = 0; i < p.values.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(p.values[i]);
    if (i < p.labels.size()) s += " (" + p.labels[i] + ")";
  }
  return s;
}

}  // namespace

// ----------------------------------------------------------------- Key
Key::Key(std::string name, std::string doc, std::vector<Param> params, std::vector<Candidate> candidates,
         const std::vector<DefaultBucket>& defaults)
    : name_(std::move(name)), doc_(std::move(doc)), params_(std::move(params)), candidates_(std::move(candidates)) {
  TORCH_CHECK(params_.size() <= static_cast<size_t>(kMaxParams), "qkernels dispatch key ", name_, ": ",
              params_.size(), " params; at most ", kMaxParams, ".");
  TORCH_CHECK(!candidates_.empty() && !defaults.empty(), "qkernels dispatch key ", name_,
              ": needs candidates and a default table.");
  for (const auto& p : params_) {
    TORCH_CHECK(std::find(p.values.begin(), p.values.end(), p.default_value) != p.values.end(),
                "qkernels dispatch key ", name_, ": param ", p.name, " default not among its values.");
    TORCH_CHECK(p.labels.empty() || p.labels.size() == p.values.size(), "qkernels dispatch key ", name_, ": param ",
                p.name, " needs one label per value.");
  }
  for (size_t i = 0; i < candidates_.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      TORCH_CHECK(candidates_[i].name != candidates_[j].name, "qkernels dispatch key ", name_,
                  ": duplicate candidate ", candidates_[i].name, ".");
    }
  }
  std::vector<int64_t> max_m;
  std::vector<std::string> kernels;
  std::vector<int64_t> flat;
  for (const auto& d : defaults) {
    auto it = std::find_if(candidates_.begin(), candidates_.end(), [&](const Candidate& c) { return c.impl == d.impl; });
    TORCH_CHECK(it != candidates_.end(), "qkernels dispatch key ", name_,
                ": a default bucket names a kernel that is not among its candidates.");
    max_m.push_back(d.max_m == kAnyM ? -1 : d.max_m);
    kernels.push_back(it->name);
    for (size_t i = 0; i < params_.size(); ++i) flat.push_back(d.explicit_params ? d.params[i] : params_[i].default_value);
  }
  set(max_m, kernels, flat, "default");
  default_ = active_.load();
}

void Key::set(const std::vector<int64_t>& max_m, const std::vector<std::string>& kernels,
              const std::vector<int64_t>& params, const std::string& source) {
  const size_t n = max_m.size(), np = params_.size();
  TORCH_CHECK(n > 0 && kernels.size() == n && params.size() == n * np, "qkernels.set_dispatch_table(", name_,
              "): got ", n, " max_m, ", kernels.size(), " kernels and ", params.size(), " params; expected one max_m "
              "and one kernel per bucket (at least one) and ", np, " params per bucket.");
  auto t = std::make_unique<Table>();
  t->source = source;
  int64_t prev = 0;
  for (size_t i = 0; i < n; ++i) {
    const bool last = i + 1 == n;
    const int64_t m = max_m[i] < 0 ? kAnyM : max_m[i];
    TORCH_CHECK(last == (m == kAnyM), "qkernels.set_dispatch_table(", name_, "): bucket ", i, " has max_m ", max_m[i],
                "; every bucket but the last needs a max_m > 0, and the last one max_m < 0 (any M).");
    TORCH_CHECK(m > prev, "qkernels.set_dispatch_table(", name_, "): max_m must increase (bucket ", i, ": ", m,
                " after ", prev, ").");
    prev = m;
    auto it = std::find_if(candidates_.begin(), candidates_.end(),
                           [&](const Candidate& c) { return c.name == kernels[i]; });
    TORCH_CHECK(it != candidates_.end(), "qkernels.set_dispatch_table(", name_, "): kernel '", kernels[i],
                "' is not compiled in this library for this key; compiled: ", join_candidates(candidates_), ".");
    Bucket b{m, static_cast<int>(it - candidates_.begin()), {}};
    for (size_t j = 0; j < np; ++j) {
      const Param& p = params_[j];
      const int64_t v = params[i * np + j];
      TORCH_CHECK(std::find(p.values.begin(), p.values.end(), v) != p.values.end(), "qkernels.set_dispatch_table(",
                  name_, "): param ", p.name, " = ", v, " for kernel ", it->name, "; allowed: ", describe_values(p), ".");
      TORCH_CHECK((it->params_mask >> j & 1u) || v == p.default_value, "qkernels.set_dispatch_table(", name_,
                  "): kernel ", it->name, " does not take param ", p.name, " (", it->description,
                  "); leave it at its default ", p.default_value, ".");
      b.params[j] = v;
    }
    t->buckets.push_back(b);
  }
  publish(std::move(t));
}

void Key::reset() {
  std::lock_guard<std::mutex> lock(mu_);
  active_.store(default_, std::memory_order_release);
}

void Key::publish(std::unique_ptr<Table> t) {
  std::lock_guard<std::mutex> lock(mu_);
  tables_.push_back(std::move(t));
  active_.store(tables_.back().get(), std::memory_order_release);
}

std::vector<Bucket> Key::active(std::string* source) const {
  const Table* t = active_.load(std::memory_order_acquire);
  if (source) *source = t->source;
  return t->buckets;
}

// ----------------------------------------------------------------- registry
Key& add_key(std::string name, std::string doc, std::vector<Param> params, std::vector<Candidate> candidates,
             const std::vector<DefaultBucket>& defaults) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (const auto& k : registry()) {
    TORCH_CHECK(k->name() != name, "qkernels: dispatch key ", name, " registered twice.");
  }
  registry().push_back(std::make_unique<Key>(std::move(name), std::move(doc), std::move(params),
                                             std::move(candidates), defaults));
  return *registry().back();
}

Key* find_key(const std::string& name) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (const auto& k : registry()) {
    if (k->name() == name) return k.get();
  }
  return nullptr;
}

std::vector<Key*> all_keys() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<Key*> out;
  for (const auto& k : registry()) out.push_back(k.get());
  std::sort(out.begin(), out.end(), [](const Key* a, const Key* b) { return a->name() < b->name(); });
  return out;
}

// ----------------------------------------------------------------- sm90 tile scheduler params
std::vector<Param> sm90_scheduler_params() {
  return {
      {"raster", "tile order of the persistent scheduler (CUTLASS RasterOrderOptions)", {0, 1, 2},
       {"heuristic", "along_m", "along_n"}, 0},
      {"swizzle", "max_swizzle_size: tiles grouped along the raster for L2 reuse", {1, 2, 4, 8}, {"1", "2", "4", "8"}, 1},
      {"splits", "stream-K kernels: K decomposition (heuristic: CUTLASS's stream-K heuristic)", {0, 1, 2, 4, 8},
       {"heuristic", "none", "split_k_2", "split_k_4", "split_k_8"}, 0},
  };
}

TileSchedulerArgs sm90_scheduler_args(const Bucket& b) {
  TileSchedulerArgs a;
  a.raster = static_cast<int>(b.params[0]);
  a.max_swizzle = static_cast<int>(b.params[1]);
  a.splits = static_cast<int>(b.params[2]);
  return a;
}

// ----------------------------------------------------------------- ops
namespace {

std::string json_str(const std::string& s) {
  std::ostringstream o;
  o << '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': o << "\\\""; break;
      case '\\': o << "\\\\"; break;
      case '\n': o << "\\n"; break;
      case '\t': o << "\\t"; break;
      default:
        if (c < 0x20) {
          const char* hex = "0123456789abcdef";
          o << "\\u00" << hex[c >> 4] << hex[c & 15];
        } else {
          o << c;
        }
    }
  }
  o << '"';
  return o.str();
}

std::string json_table(const Key& k, const std::vector<Bucket>& buckets) {
  std::ostringstream o;
  o << '[';
  for (size_t i = 0; i < buckets.size(); ++i) {
    const Bucket& b = buckets[i];
    o << (i ? ", " : "") << "{\"max_m\": ";
    if (b.max_m == kAnyM) {
      o << "null";
    } else {
      o << b.max_m;
    }
    o << ", \"kernel\": " << json_str(k.candidate(b).name) << ", \"params\": {";
    for (size_t j = 0; j < k.params().size(); ++j) o << (j ? ", " : "") << json_str(k.params()[j].name) << ": " << b.params[j];
    o << "}}";
  }
  o << ']';
  return o.str();
}

std::string dispatch_tables() {
  std::ostringstream o;
  o << "{\"schema\": \"qkernels.dispatch/1\", \"keys\": {";
  const auto keys = all_keys();
  for (size_t i = 0; i < keys.size(); ++i) {
    const Key& k = *keys[i];
    o << (i ? ", " : "") << json_str(k.name()) << ": {\"doc\": " << json_str(k.doc()) << ", \"params\": [";
    for (size_t j = 0; j < k.params().size(); ++j) {
      const Param& p = k.params()[j];
      o << (j ? ", " : "") << "{\"name\": " << json_str(p.name) << ", \"doc\": " << json_str(p.doc) << ", \"values\": [";
      for (size_t v = 0; v < p.values.size(); ++v) o << (v ? ", " : "") << p.values[v];
      o << "], \"labels\": [";
      for (size_t v = 0; v < p.labels.size(); ++v) o << (v ? ", " : "") << json_str(p.labels[v]);
      o << "], \"default\": " << p.default_value << '}';
    }
    o << "], \"kernels\": [";
    for (size_t c = 0; c < k.candidates().size(); ++c) {
      const Candidate& cand = k.candidates()[c];
      o << (c ? ", " : "") << "{\"name\": " << json_str(cand.name) << ", \"description\": " << json_str(cand.description)
        << ", \"params\": [";
      bool first = true;
      for (size_t j = 0; j < k.params().size(); ++j) {
        if (cand.params_mask >> j & 1u) {
          o << (first ? "" : ", ") << json_str(k.params()[j].name);
          first = false;
        }
      }
      o << "]}";
    }
    std::string source;
    const auto active = k.active(&source);
    o << "], \"default\": " << json_table(k, k.defaults()) << ", \"active\": " << json_table(k, active)
      << ", \"active_source\": " << json_str(source) << '}';
  }
  o << "}}";
  return o.str();
}

Key& key_or_throw(const std::string& key) {
  Key* k = find_key(key);
  if (!k) {
    std::string names;
    for (const Key* x : all_keys()) names += (names.empty() ? "" : ", ") + x->name();
    TORCH_CHECK(false, "qkernels: no dispatch key '", key, "' in this library; compiled keys: ",
                names.empty() ? "none" : names, ".");
  }
  return *k;
}

void set_dispatch_table(std::string key, std::vector<int64_t> max_m, std::vector<std::string> kernels,
                        std::vector<int64_t> params, std::string source) {
  key_or_throw(key).set(max_m, kernels, params, source);
}

void reset_dispatch_table(std::string key) {
  if (key.empty()) {
    for (Key* k : all_keys()) k->reset();
    return;
  }
  key_or_throw(key).reset();
}

}  // namespace
}  // namespace qk::dispatch

TORCH_LIBRARY_FRAGMENT(qkernels, m) {
  m.def("set_dispatch_table(str key, int[] max_m, str[] kernels, int[] params, str source) -> ()",
        &qk::dispatch::set_dispatch_table);
  m.def("reset_dispatch_table(str key) -> ()", &qk::dispatch::reset_dispatch_table);
  m.def("dispatch_tables() -> str", &qk::dispatch::dispatch_tables);
}
