"""Kernel configs as data (qkernels.configs) and the tuner's selection (qkernels.bench.tune).

CPU tests: the JSON schema, the choice of file by GPU name and $QKERNELS_CONFIGS, validation
against what the library reports as compiled (a synthetic library description here, and the real
one when the library is built), the fallback (logged, never a crash) for a kernel that was not
built, an unknown key or a malformed file, the compiled-in defaults round trip, and the tuner's
pure selection function on synthetic timings.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from qkernels import _loader, configs
from qkernels.bench import tune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SM90_PARAMS = [
    {"name": "raster", "doc": "", "values": [0, 1, 2], "labels": ["heuristic", "along_m", "along_n"], "default": 0},
    {"name": "swizzle", "doc": "", "values": [1, 2, 4, 8], "labels": ["1", "2", "4", "8"], "default": 1},
    {"name": "splits", "doc": "", "values": [0, 1, 2, 4, 8],
     "labels": ["heuristic", "none", "split_k_2", "split_k_4", "split_k_8"], "default": 0},
]


def _bucket(max_m, kernel, **params):
    full = {"raster": 0, "swizzle": 1, "splits": 0}
    full.update(params)
    return {"max_m": max_m, "kernel": kernel, "params": full}


def fake_library() -> dict:
    """A library description in the format of qkernels::dispatch_tables (qkernels.dispatch/1)."""
    default = [_bucket(16, "k_small"), _bucket(None, "k_large")]
    return {"schema": "qkernels.dispatch/1", "keys": {
        "fam/sm90/fp8": {
            "doc": "", "params": SM90_PARAMS,
            "kernels": [{"name": "k_small", "description": "stream-K", "params": ["raster", "swizzle", "splits"]},
                        {"name": "k_large", "description": "persistent", "params": ["raster", "swizzle"]},
                        {"name": "k_plain", "description": "not persistent", "params": []}],
            "default": default, "active": copy.deepcopy(default), "active_source": "default"},
        "fam/sm80/int8": {
            "doc": "", "params": [],
            "kernels": [{"name": "a", "description": "", "params": []}, {"name": "b", "description": "", "params": []}],
            "default": [{"max_m": None, "kernel": "a", "params": {}}],
            "active": [{"max_m": None, "kernel": "a", "params": {}}], "active_source": "default"},
    }}


class FakeLib:
    """Stands in for the library's three dispatch ops (records the calls)."""

    def __init__(self):
        self.desc = fake_library()
        self.calls = []

    def tables(self):
        return copy.deepcopy(self.desc)

    def op(self, name):
        def call(*args):
            self.calls.append((name,) + args)
            if name == "set_dispatch_table" and args[0] not in self.desc["keys"]:
                raise RuntimeError("no such key")
        return call


@pytest.fixture
def fake(monkeypatch):
    lib = FakeLib()
    monkeypatch.setattr(configs, "library_tables", lib.tables)
    monkeypatch.setattr(configs, "_lib_op", lib.op)
    saved = configs._state
    yield lib
    configs._state = saved


def doc(tables, **extra):
    d = {"schema": configs.SCHEMA, "gpu": "NVIDIA H100 80GB HBM3", "provenance": {"origin": "hand-written"},
         "tables": tables}
    d.update(extra)
    return d


def write(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


# ----------------------------------------------------------------- schema
@pytest.mark.parametrize("bad, match", [
    ([], "top level must be a JSON object"),
    ({"schema": "qkernels.configs/0", "provenance": {}, "tables": {}}, "this qkernels reads"),
    (dict(doc({}), extra=1), r"unknown top-level field\(s\) \['extra'\]"),
    ({"schema": configs.SCHEMA, "tables": {}}, "'provenance' must be an object"),
    ({"schema": configs.SCHEMA, "provenance": {}, "tables": []}, "'tables' must be an object"),
])
def test_document_schema_errors(bad, match):
    with pytest.raises(configs.ConfigError, match=match):
        configs.check_document(bad)


def test_document_schema_accepts_a_valid_document():
    configs.check_document(doc({"fam/sm90/fp8": [{"max_m": None, "kernel": "k_large"}]}, notes="x"))


@pytest.mark.parametrize("table, match", [
    ([], "non-empty list"),
    ({"max_m": None}, "non-empty list"),
    ([{"max_m": None}], "needs 'max_m' and a 'kernel'"),
    ([{"kernel": "k"}], "needs 'max_m' and a 'kernel'"),
    ([{"max_m": 16, "kernel": "k"}], r"last bucket must have \"max_m\": null"),
    ([{"max_m": 64, "kernel": "k"}, {"max_m": 16, "kernel": "k"}, {"max_m": None, "kernel": "k"}],
     "greater than the previous one"),
    ([{"max_m": 0, "kernel": "k"}, {"max_m": None, "kernel": "k"}], "greater than the previous one"),
    ([{"max_m": True, "kernel": "k"}, {"max_m": None, "kernel": "k"}], "int max_m"),
    ([{"max_m": None, "kernel": "k", "raster": 1.5}], "must be an int or a label"),
    ([{"max_m": None, "kernel": "k", "raster": True}], "must be an int or a label"),
    (["k"], "must be an object"),
])
def test_table_structure_errors(table, match):
    with pytest.raises(configs.ConfigError, match=match):
        configs.check_table("fam/sm90/fp8", table)


def test_load_reports_file_problems(tmp_path):
    with pytest.raises(configs.ConfigError, match="no such file"):
        configs.load(tmp_path / "nope.json")
    with pytest.raises(configs.ConfigError, match="not valid JSON"):
        configs.load(write(tmp_path, "bad.json", "{\"schema\": "))
    with pytest.raises(configs.ConfigError, match=r"wrong\.json: schema is"):
        configs.load(write(tmp_path, "wrong.json", {"schema": "x"}))


# ----------------------------------------------------------------- against the library's description
def test_resolve_table_maps_labels_defaults_and_any_m():
    key = fake_library()["keys"]["fam/sm90/fp8"]
    table = [{"max_m": 16, "kernel": "k_small", "splits": "split_k_4"},
             {"max_m": 128, "kernel": "k_large", "raster": "along_n", "swizzle": 4},
             {"max_m": None, "kernel": "k_plain"}]
    max_m, kernels, flat = configs.resolve_table("fam/sm90/fp8", table, key)
    assert max_m == [16, 128, -1]
    assert kernels == ["k_small", "k_large", "k_plain"]
    assert flat == [0, 1, 4, 2, 4, 0, 0, 1, 0]  # per bucket: raster, swizzle, splits
    # by value works as well as by label
    assert configs.resolve_table("fam/sm90/fp8", [{"max_m": None, "kernel": "k_large", "raster": 2}], key)[2] == [2, 1, 0]


@pytest.mark.parametrize("bucket, match", [
    ({"kernel": "k_missing"}, r"kernel 'k_missing' \(bucket 0\) was not built into this library; built for this "
                              r"key: k_small, k_large, k_plain"),
    ({"kernel": "k_large", "tile": 3}, "unknown param 'tile'"),
    ({"kernel": "k_large", "swizzle": 3}, r"param 'swizzle' = 3 is not allowed; allowed: 1, 2, 4, 8"),
    ({"kernel": "k_large", "raster": "diagonal"}, "'heuristic', 'along_m', 'along_n'"),
    ({"kernel": "k_large", "splits": "split_k_2"}, "kernel 'k_large' .* does not take param 'splits'"),
    ({"kernel": "k_plain", "raster": "along_m"}, "kernel 'k_plain' .* does not take param 'raster'"),
])
def test_resolve_table_rejects_what_the_library_cannot_run(bucket, match):
    key = fake_library()["keys"]["fam/sm90/fp8"]
    with pytest.raises(configs.ConfigError, match=match):
        configs.resolve_table("fam/sm90/fp8", [dict(bucket, max_m=None)], key)


def test_a_param_at_its_default_is_accepted_for_any_kernel():
    key = fake_library()["keys"]["fam/sm90/fp8"]
    assert configs.resolve_table("fam/sm90/fp8", [{"max_m": None, "kernel": "k_plain", "raster": "heuristic"}],
                                 key)[2] == [0, 1, 0]


def test_export_table_round_trips_through_resolve():
    key = fake_library()["keys"]["fam/sm90/fp8"]
    key["active"] = [_bucket(16, "k_small", splits=4), _bucket(None, "k_large", raster=2, swizzle=8)]
    exported = configs.export_table(key, "active")
    assert exported == [{"max_m": 16, "kernel": "k_small", "splits": "split_k_4"},
                        {"max_m": None, "kernel": "k_large", "raster": "along_n", "swizzle": 8}]
    assert configs.resolve_table("fam/sm90/fp8", exported, key) == ([16, -1], ["k_small", "k_large"],
                                                                    [0, 1, 4, 2, 8, 0])
    assert "M<=16 k_small (splits=split_k_4) | larger k_large" in configs.format_table(exported)


# ----------------------------------------------------------------- which file
def test_find_config_by_gpu_name(tmp_path, monkeypatch):
    monkeypatch.delenv(configs.ENV, raising=False)
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    write(tmp_path, "h100-sxm.json", doc({}))
    path, origin, reason = configs.find_config("NVIDIA H100 80GB HBM3")
    assert path == tmp_path / "h100-sxm.json" and origin == "package" and "h100-sxm.json" in reason
    path, origin, reason = configs.find_config("NVIDIA H200")
    assert path is None and origin == "default" and "no qkernels/configs/h200.json" in reason


def test_find_config_env_override(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    write(tmp_path, "h100-sxm.json", doc({}))
    mine = write(tmp_path, "mine.json", doc({}))
    monkeypatch.setenv(configs.ENV, str(mine))
    assert configs.find_config("NVIDIA H100 80GB HBM3")[:2] == (mine, "env")
    folder = tmp_path / "folder"
    folder.mkdir()
    write(folder, "h200.json", doc({}))
    monkeypatch.setenv(configs.ENV, str(folder))
    assert configs.find_config("NVIDIA H200")[:2] == (folder / "h200.json", "env")
    path, origin, reason = configs.find_config("NVIDIA H100 PCIe")
    assert path is None and "without h100-pcie.json" in reason
    monkeypatch.setenv(configs.ENV, "default")
    assert configs.find_config("NVIDIA H100 80GB HBM3")[:2] == (None, "env")


# ----------------------------------------------------------------- applying, fallbacks
def test_apply_sets_valid_keys_and_records_provenance(fake, tmp_path):
    p = write(tmp_path, "h100-sxm.json", doc(
        {"fam/sm90/fp8": [{"max_m": 64, "kernel": "k_small", "splits": "none"}, {"max_m": None, "kernel": "k_large"}]},
        provenance={"origin": "tuned", "gpu": "NVIDIA H100 80GB HBM3", "date": "2026-01-01"}))
    st = configs.apply(p, origin="package", reason="test")
    assert st.applied == ["fam/sm90/fp8"] and not st.rejected and st.path == str(p.resolve())
    assert fake.calls[0] == ("reset_dispatch_table", "")  # every key back to default first
    assert fake.calls[1] == ("set_dispatch_table", "fam/sm90/fp8", [64, -1], ["k_small", "k_large"],
                             [0, 1, 1, 0, 1, 0], str(p))
    assert st.provenance["origin"] == "tuned"
    lines = configs.describe()
    assert lines[0].startswith(f"Kernel configs: {p.resolve()}") and "origin tuned" in lines[0]


def test_a_kernel_that_was_not_built_falls_back_with_a_warning(fake, tmp_path):
    p = write(tmp_path, "cfg.json", doc({
        "fam/sm90/fp8": [{"max_m": None, "kernel": "sm90_fp8_from_the_future"}],
        "fam/sm80/int8": [{"max_m": None, "kernel": "b"}]}))
    with pytest.warns(configs.ConfigWarning) as rec:
        st = configs.apply(p)
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1, msgs
    assert str(p) in msgs[0] and "fam/sm90/fp8" in msgs[0] and "sm90_fp8_from_the_future" in msgs[0]
    assert "keeps its compiled-in default" in msgs[0]
    assert st.applied == ["fam/sm80/int8"] and list(st.rejected) == ["fam/sm90/fp8"]
    assert [c[1] for c in fake.calls if c[0] == "set_dispatch_table"] == ["fam/sm80/int8"]
    assert any("not applied: fam/sm90/fp8" in l for l in configs.describe())


def test_unknown_key_warns_and_an_unbuilt_family_is_only_logged(fake, tmp_path, caplog):
    p = write(tmp_path, "cfg.json", doc({
        "fam/sm90/fp16": [{"max_m": None, "kernel": "k_large"}],        # a family that is built: typo / newer file
        "w4a16/sm90/bf16": [{"max_m": None, "kernel": "anything"}]}))   # a family this build lacks
    with pytest.warns(configs.ConfigWarning, match=r"dispatch key 'fam/sm90/fp16' is not in this library; its keys: "
                                                   r"fam/sm80/int8, fam/sm90/fp8") as rec:
        with caplog.at_level("INFO", logger="qkernels.configs"):
            st = configs.apply(p)
    assert len(rec) == 1
    assert set(st.rejected) == {"fam/sm90/fp16", "w4a16/sm90/bf16"} and not st.applied
    assert "its family was not built" in st.rejected["w4a16/sm90/bf16"]
    assert any("w4a16/sm90/bf16" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"schema": "other"}), json.dumps([1, 2])])
def test_a_malformed_file_keeps_every_default(fake, tmp_path, content):
    p = write(tmp_path, "broken.json", content)
    with pytest.warns(configs.ConfigWarning, match=r"broken\.json.*Every kernel table stays at its compiled-in default"):
        st = configs.apply(p)
    assert st.path is None and "*" in st.rejected and not st.applied
    assert fake.calls == [("reset_dispatch_table", "")]


def test_a_missing_env_file_keeps_the_defaults(fake, tmp_path, monkeypatch):
    monkeypatch.setenv(configs.ENV, str(tmp_path / "missing.json"))
    path, origin, reason = configs.find_config("NVIDIA H100 80GB HBM3")
    with pytest.warns(configs.ConfigWarning, match="no such file"):
        st = configs.apply(path, origin=origin, reason=reason)
    assert not st.applied and st.path is None


def test_a_failing_library_call_falls_back(fake, tmp_path, monkeypatch):
    def refuse(name):
        def call(*args):
            if name == "set_dispatch_table":
                raise RuntimeError("qkernels.set_dispatch_table(fam/sm90/fp8): refused")
        return call

    monkeypatch.setattr(configs, "_lib_op", refuse)
    p = write(tmp_path, "cfg.json", doc({"fam/sm90/fp8": [{"max_m": None, "kernel": "k_large"}]}))
    with pytest.warns(configs.ConfigWarning, match="refused"):
        st = configs.apply(p)
    assert "fam/sm90/fp8" in st.rejected


def test_cuda_init_hook_never_raises(monkeypatch, fake):
    def boom(*a, **k):
        raise RuntimeError("device query failed")

    monkeypatch.setattr(configs, "apply_for_device", boom)
    with pytest.warns(configs.ConfigWarning, match="device query failed"):
        configs._on_cuda_init()
    assert "compiled-in defaults" in configs.state().reason


def test_without_a_library_apply_is_a_no_op(monkeypatch):
    monkeypatch.setattr(configs, "library_tables", lambda: None)
    saved = configs._state
    try:
        st = configs.apply(None, origin="default")
        assert "no CUDA library" in st.reason and not st.applied
    finally:
        configs._state = saved


def test_import_does_not_initialise_cuda_and_defers_the_choice():
    code = ("import torch, qkernels; from qkernels import configs, _loader;"
            "print(torch.cuda.is_initialized(), configs.state().pending, _loader.library_path is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=ROOT)).stdout.split()
    assert out[0] == "False", "importing qkernels must not initialise CUDA"
    if out[2] == "True":  # a library: the choice waits for the first CUDA use
        assert out[1] == "True"


def test_torch_has_the_lazy_cuda_hook():
    # configs.install_cuda_init_hook relies on it; if a torch drops it, the fallback says so.
    assert callable(getattr(torch.cuda, "_lazy_call", None))


# ----------------------------------------------------------------- the real library (CI builds it)
needs_lib = pytest.mark.skipif(configs.library_tables() is None,
                               reason=f"no CUDA library with dispatch tables here ({_loader.load_error})")


@needs_lib
def test_library_keys_match_the_build():
    lib = configs.library_tables()
    assert lib["schema"] == "qkernels.dispatch/1"
    groups = _loader.build_info.get("groups", {})
    for key in lib["keys"]:
        fam, tag = key.split("/")[:2]  # a key's family may be a sub-path of a built family (w4a16_hopper: w4a16)
        built = [f for f in groups if fam == f or fam.startswith(f + "_")]
        assert any(tag.upper() in groups[f] for f in built), f"{key} registered but no {tag.upper()} group of " \
                                                             f"{fam} in the build info {groups}"
    if "SM90" in groups.get("scaled_mm", {}):
        assert {"scaled_mm/sm90/fp8", "scaled_mm/sm90/int8", "scaled_mm/sm90/int8_azp"} <= set(lib["keys"])
    if "SM90" in groups.get("sparse24", {}):
        assert "sparse24/sm90/fp8" in lib["keys"]
    if "SM90" in groups.get("fp8_block", {}):
        assert "fp8_block/sm90/fp8" in lib["keys"]


@needs_lib
def test_scaled_mm_candidates_are_the_generated_kernels():
    sys.path.insert(0, os.path.join(ROOT, "csrc", "scaled_mm", "kernels"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    lib = configs.library_tables()["keys"]
    for key, entries in generate.keys().items():
        if key in lib:
            assert [k["name"] for k in lib[key]["kernels"]] == [e[1] for e in entries], key
            for k, e in zip(lib[key]["kernels"], entries):
                want = {"none": [], "persistent": ["raster", "swizzle"],
                        "streamk": ["raster", "swizzle", "splits"]}[e[5]]
                assert k["params"] == want, (key, k)


@needs_lib
def test_compiled_in_defaults_round_trip_as_a_config(tmp_path):
    """The default tables exist only in the C++ glue (one source of truth); exported as a config
    they validate, apply, and give back the same active tables."""
    lib = configs.library_tables()
    tables = {k: configs.export_table(v, "default") for k, v in lib["keys"].items()}
    for key, t in tables.items():
        assert t[-1]["max_m"] is None, key
        configs.resolve_table(key, t, lib["keys"][key])
    saved = configs._state
    try:
        st = configs.apply(write(tmp_path, "defaults.json", doc(tables)))
        assert not st.rejected and sorted(st.applied) == sorted(tables)
        after = configs.library_tables()["keys"]
        for key in tables:
            assert after[key]["active"] == after[key]["default"], key
            assert after[key]["active_source"].endswith("defaults.json")
    finally:
        torch.ops.qkernels.reset_dispatch_table("")
        configs._state = saved
    assert all(v["active_source"] == "default" for v in configs.library_tables()["keys"].values())


@needs_lib
def test_set_dispatch_table_validates_in_cpp_too():
    lib = configs.library_tables()
    key = sorted(lib["keys"])[0]
    info = lib["keys"][key]
    n = len(info["params"])
    first = info["kernels"][0]["name"]
    try:
        with pytest.raises(RuntimeError, match=r"kernel 'nope' is not compiled in this library for this key"):
            torch.ops.qkernels.set_dispatch_table(key, [-1], ["nope"], [p["default"] for p in info["params"]], "t")
        with pytest.raises(RuntimeError, match="max_m must increase"):
            torch.ops.qkernels.set_dispatch_table(key, [64, 16, -1], [first] * 3,
                                                  [p["default"] for p in info["params"]] * 3, "t")
        with pytest.raises(RuntimeError, match="the last one max_m < 0"):
            torch.ops.qkernels.set_dispatch_table(key, [16], [first], [p["default"] for p in info["params"]], "t")
        with pytest.raises(RuntimeError, match="no dispatch key 'nope/sm0/x'"):
            torch.ops.qkernels.set_dispatch_table("nope/sm0/x", [-1], [first], [0] * n, "t")
        torch.ops.qkernels.set_dispatch_table(key, [-1], [first], [p["default"] for p in info["params"]], "t")
        now = configs.library_tables()["keys"][key]
        assert now["active"] == [dict(now["default"][0], max_m=None, kernel=first)] or now["active"][0]["kernel"] == first
        assert now["active_source"] == "t"
    finally:
        torch.ops.qkernels.reset_dispatch_table(key)
    assert configs.library_tables()["keys"][key]["active"] == info["default"]


# ----------------------------------------------------------------- the tuner's selection (pure)
GRID = [16, 128, None]
DEFAULTS = {"k": [{"max_m": 16, "kernel": "small"}, {"max_m": None, "kernel": "big"}]}


def row(max_m, N, M, kernel, t, status="ok", **params):
    return {"key": "k", "max_m": max_m, "N": N, "K": 4096, "M": M, "kernel": kernel, "params": params,
            "status": status, "time_us": t if status == "ok" else None, "error": None if status == "ok" else "x"}


def test_select_picks_least_total_time_and_merges_buckets():
    rows = [
        # M <= 16: "split" wins on total (10 + 30 < 12 + 29)
        row(16, 4096, 16, "small", 12.0), row(16, 8192, 16, "small", 29.0),
        row(16, 4096, 16, "small", 10.0, splits="split_k_4"), row(16, 8192, 16, "small", 30.0, splits="split_k_4"),
        # (16, 128]: "big" beats the default "big"? the default for this bucket is "big" itself
        row(128, 4096, 128, "big", 50.0), row(128, 8192, 128, "big", 90.0),
        row(128, 4096, 128, "mid", 40.0), row(128, 8192, 128, "mid", 80.0),
        # larger: "mid" again -> merged with the previous bucket
        row(None, 4096, 4096, "big", 500.0), row(None, 8192, 4096, "big", 900.0),
        row(None, 4096, 4096, "mid", 450.0), row(None, 8192, 4096, "mid", 800.0),
    ]
    tables, report = tune.select_tables(rows, {"k": GRID}, DEFAULTS, min_gain=0.02)
    assert tables["k"] == [{"max_m": 16, "kernel": "small", "splits": "split_k_4"}, {"max_m": None, "kernel": "mid"}]
    b = report["k"]["buckets"]
    assert b[0]["chosen"] == "small (splits=split_k_4)" and b[0]["default"] == "small"
    assert b[1]["gain"] == pytest.approx(140.0 / 120.0 - 1.0)


def test_a_wrong_candidate_is_never_chosen_anywhere_in_its_key():
    rows = [row(16, 4096, 16, "small", 10.0), row(16, 4096, 16, "fast_but_wrong", 1.0),
            row(128, 4096, 128, "big", 50.0), row(128, 4096, 128, "fast_but_wrong", 0.0, status="wrong"),
            row(None, 4096, 4096, "big", 500.0)]
    tables, report = tune.select_tables(rows, {"k": GRID}, DEFAULTS)
    assert all(b["kernel"] != "fast_but_wrong" for b in tables["k"])
    assert "wrong at N=4096 K=4096 M=128" in report["k"]["excluded"]["fast_but_wrong"]


def test_the_default_stays_unless_the_gain_is_real():
    rows = [row(16, 4096, 16, "small", 10.0), row(16, 4096, 16, "other", 9.9),
            row(128, 4096, 128, "big", 10.0), row(128, 4096, 128, "other", 9.0),
            row(None, 4096, 4096, "big", 10.0)]
    tables, _ = tune.select_tables(rows, {"k": GRID}, DEFAULTS, min_gain=0.02)
    assert tables["k"] == [{"max_m": 16, "kernel": "small"}, {"max_m": 128, "kernel": "other"},
                           {"max_m": None, "kernel": "big"}]


def test_a_candidate_must_be_measured_on_every_sample_of_the_bucket():
    rows = [row(16, 4096, 16, "small", 10.0), row(16, 8192, 16, "small", 10.0),
            row(16, 4096, 16, "partial", 1.0),  # never ran on N=8192
            row(128, 4096, 128, "big", 1.0), row(None, 4096, 4096, "big", 1.0)]
    tables, report = tune.select_tables(rows, {"k": GRID}, DEFAULTS)
    assert tables["k"][0]["kernel"] == "small" and report["k"]["buckets"][0]["candidates"] == 1


def test_a_bucket_without_a_correct_candidate_keeps_its_default_and_says_why():
    rows = [row(16, 4096, 16, "small", None, status="wrong"), row(16, 4096, 16, "other", None, status="wrong"),
            row(128, 4096, 128, "big", 2.0), row(128, 4096, 128, "mid", 1.0)]  # the last bucket: not measured
    tables, report = tune.select_tables(rows, {"k": GRID}, DEFAULTS)
    assert tables["k"] == [{"max_m": 16, "kernel": "small"}, {"max_m": 128, "kernel": "mid"},
                           {"max_m": None, "kernel": "big"}]
    b = report["k"]["buckets"]
    assert "no candidate was correct" in b[0]["kept_default"] and "itself was excluded" in b[0]["kept_default"]
    assert "not measured" in b[2]["kept_default"] and "kept_default" not in b[1]
    assert any("default kept" in l for l in tune._summary_lines(report))
    tables, report = tune.select_tables([], {"k": GRID}, DEFAULTS)
    assert tables == {} and "keeps its compiled-in default" in report["k"]["dropped"]


def test_grid_samples_and_variants():
    defaults = [{"max_m": 32, "kernel": "a"}, {"max_m": None, "kernel": "b"}]
    assert tune.bucket_grid(defaults, quick=True) == [16, 32, 64, 128, 1024, None]
    ms = tune.sample_ms([16, 128, None], quick=True)
    assert ms == {16: [1, 16], 128: [128], None: [512]}
    assert tune.sample_ms([1024, None], quick=True)[None] == [4096]
    full = tune.sample_ms([16, 128, None], quick=False)
    assert full[128] == [17, 72, 128] and full[None][-1] == 512
    key = fake_library()["keys"]["fam/sm90/fp8"]
    kernels = {k["name"]: k for k in key["kernels"]}
    sk = tune.param_variants(kernels["k_small"], key, quick=True)
    assert {"splits": "none"} in sk and {"splits": "split_k_8"} in sk and {"raster": "along_n"} in sk
    per = tune.param_variants(kernels["k_large"], key, quick=False)
    assert len(per) == 3 * 4 - 1 and {"raster": "along_m", "swizzle": 8} in per and {} not in per
    assert len(tune.param_variants(kernels["k_large"], key, quick=True)) == 3 * 2 - 1
    assert tune.param_variants(kernels["k_plain"], key, quick=True) == []
    # every variant is something the library would accept for that kernel
    for k in ("k_small", "k_large"):
        for v in tune.param_variants(kernels[k], key, quick=False):
            configs.resolve_table("fam/sm90/fp8", [dict({"max_m": None, "kernel": k}, **v)], key)


# ----------------------------------------------------------------- CLI
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_tune_without_gpu_says_so(capsys):
    from qkernels import cli

    assert cli.main(["tune", "--quick", "--out", "/nonexistent"]) == 1
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_tune_check_validates_a_file(tmp_path, capsys):
    ok = write(tmp_path, "ok.json", doc({}))
    assert tune.main(["--check", str(ok)]) == 0
    bad = write(tmp_path, "bad.json", doc({"fam/sm90/fp8": [{"max_m": 16, "kernel": "k"}]}))
    assert tune.main(["--check", str(bad)]) == 1
    assert "REJECTED" in capsys.readouterr().err


def test_info_shows_the_config_in_use():
    import io

    from qkernels import cli

    buf = io.StringIO()
    assert cli.info(out=buf) == 0
    text = buf.getvalue()
    assert "Kernel configs:" in text
    if configs.library_tables() is not None:
        for key in configs.library_tables()["keys"]:
            assert key in text


SHIPPED = sorted(configs.CONFIG_DIR.glob("*.json"))


@pytest.mark.parametrize("path", SHIPPED or [None], ids=[p.name for p in SHIPPED] or ["none"])
def test_shipped_configs_are_valid(path):
    if path is None:
        pytest.skip("no per-GPU config is shipped yet (qkernels tune on a GPU writes them)")
    d = configs.load(path)
    assert configs.gpu_slug(d["gpu"]) == path.stem, f"{path.name} is named for another GPU than {d['gpu']!r}"
    assert d["provenance"].get("origin") in ("tuned", "hand-written"), path
    for key, table in d["tables"].items():
        configs.check_table(key, table)
        lib = configs.library_tables()
        if lib is not None and key in lib["keys"]:
            configs.resolve_table(key, table, lib["keys"][key])


# ----------------------------------------------------------------- the tuner's orchestration, on CPU
class _FakeTimer:
    """Times a call by the kernel/params the fake library has active: a made-up cost model."""

    def __init__(self, lib):
        self.lib = lib

    def time(self, fn):
        from qkernels.testing.timing import Timing

        out = fn()
        kernel, params, M = self.lib.active["kernel"], self.lib.active["params"], out.shape[0]
        t = {"k_small": 10.0 + M, "k_large": 40.0 + M / 8}[kernel]
        if kernel == "k_small" and params[2] == 4:  # splits = split_k_4: faster at small M
            t *= 0.7
        if kernel == "k_large" and params[0] == 2:  # raster along_n: slightly faster
            t *= 0.9
        return Timing(t, t, t, "fake")


class _FakeDriver:
    family = "fam"

    def __init__(self, lib):
        self.lib = lib

    def keys(self, arch):
        return ["fam/sm90/fp8"]

    def weight(self, key, N, K, device):
        return {"N": N}

    def case(self, key, w, M, device):
        ref = torch.arange(M * w["N"], dtype=torch.float32).reshape(M, w["N"]) + 1.0

        def run(f):
            if self.lib.active["kernel"] == "k_plain":  # a broken kernel: writes nothing useful
                return torch.zeros_like(ref)
            return ref * f

        return tune.Case(run, ref.to(torch.bfloat16), 1e-2)


def test_tuner_orchestration_on_cpu(tmp_path, monkeypatch):
    from qkernels.bench.shapes import LinearShape

    lib = FakeLib()

    def op(name):
        def call(*args):
            lib.calls.append((name,) + args)
            if name == "set_dispatch_table":
                lib.active = {"kernel": args[2][0], "params": args[3]}
        return call

    monkeypatch.setattr(configs, "library_tables", lib.tables)
    monkeypatch.setattr(configs, "_lib_op", op)
    logs = []
    tuner = tune.Tuner(tmp_path, quick=True, models=["m"], keys=None, time_limit_s=600, min_gain=0.02,
                       log=logs.append, device=torch.device("cpu"), gpu_name="NVIDIA H100 80GB HBM3",
                       timer=_FakeTimer(lib))
    shapes = [LinearShape(N=256, K=512, model="m", layer="a"), LinearShape(N=128, K=512, model="m", layer="b")]
    desc = lib.tables()
    key = "fam/sm90/fp8"
    for stage in (1, 2):
        tuner.run_key(key, desc["keys"][key], _FakeDriver(lib), shapes, stage)
    assert lib.calls[-1] == ("reset_dispatch_table", key)
    doc, report = tuner.write(desc, [key], "qkernels tune --quick", final=True)
    # the broken kernel was checked, found wrong, never timed, never chosen
    wrong = [r for r in tuner.rows if r["kernel"] == "k_plain"]
    assert wrong and all(r["status"] == "wrong" and r["time_us"] is None for r in wrong)
    assert "k_plain" in report[key]["excluded"]
    table = doc["tables"][key]
    assert table[0] == {"max_m": 16, "kernel": "k_small", "splits": "split_k_4"}
    assert table[-1]["kernel"] == "k_large" and table[-1].get("raster") == "along_n"
    assert all(b["kernel"] != "k_plain" for b in table)
    # the file is a valid config for this library, with provenance, and the .jsonl has every row
    saved = configs.load(tmp_path / "h100-sxm.json")
    configs.resolve_table(key, saved["tables"][key], desc["keys"][key])
    assert saved["provenance"]["origin"] == "tuned" and saved["provenance"]["tune"]["quick"] is True
    lines = [json.loads(l) for l in (tmp_path / "tune-h100-sxm.jsonl").read_text().splitlines()]
    assert sum(l["type"] == "row" for l in lines) == len(tuner.rows) and lines[-1]["type"] == "selection"
    assert any("pass 2" in l for l in logs)


# ----------------------------------------------------------------- GPU: every candidate through the op
gpu = pytest.mark.gpu


def _runnable_keys():
    lib = configs.library_tables()
    if lib is None or not torch.cuda.is_available():
        return []
    arch = tune._effective_arch()
    return [(k, d) for fam, d in tune.DRIVERS.items() for k in d.keys(arch) if k in lib["keys"]]


@gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
def test_cuda_init_applied_the_per_gpu_choice():
    torch.empty(1, device="cuda")
    st = configs.state()
    if configs.library_tables() is None:
        pytest.skip("no library")
    assert not st.pending and st.gpu == torch.cuda.get_device_name(torch.cuda.current_device())


@gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
def test_every_candidate_and_scheduler_variant_matches_the_reference():
    """Each compiled candidate of each key that runs here, forced through the dispatch table, with
    its default params and every variant the tuner would try, on shapes with several tiles in both
    directions and several k-tiles (M = 1, 17, 200): the op's result equals the reference."""
    keys = _runnable_keys()
    if not keys:
        pytest.skip("no dispatch key of this library runs on this GPU")
    from qkernels.bench.shapes import LinearShape

    dev = torch.device("cuda")
    failures = []
    try:
        for key, drv in keys:
            info = configs.library_tables()["keys"][key]
            shape = LinearShape(N=640, K=4096)
            w = drv.weight(key, shape.N, shape.K, dev)
            for M in (1, 17, 200):
                case = drv.case(key, w, M, dev)
                for k in info["kernels"]:
                    for params in [{}] + tune.param_variants(k, info, quick=False):
                        args = configs.resolve_table(key, [dict({"max_m": None, "kernel": k["name"]}, **params)], info)
                        torch.ops.qkernels.set_dispatch_table(key, *args, "test")
                        out = case.run(1.5)
                        err = tune._rel_err(out, case.ref, 1.5)
                        if not err <= case.tol:
                            failures.append(f"{key} {tune.cand_str(tune.cand_of(k['name'], params))} M={M}: {err:.3e}")
    finally:
        torch.ops.qkernels.reset_dispatch_table("")
    assert not failures, failures[:20]


@gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
def test_a_cuda_graph_keeps_the_kernel_it_captured():
    keys = _runnable_keys()
    if not keys:
        pytest.skip("no dispatch key of this library runs on this GPU")
    key, drv = keys[0]
    info = configs.library_tables()["keys"][key]
    dev = torch.device("cuda")
    case = drv.case(key, drv.weight(key, 512, 2048, dev), 16, dev)
    first, last = info["kernels"][0]["name"], info["kernels"][-1]["name"]
    nparams = [p["default"] for p in info["params"]]
    try:
        torch.ops.qkernels.set_dispatch_table(key, [-1], [first], nparams, "test")
        case.run(1.0)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = case.run(1.0)
        torch.ops.qkernels.set_dispatch_table(key, [-1], [last], nparams, "test")  # no effect on the graph
        out.zero_()
        g.replay()
        torch.cuda.synchronize()
        assert tune._rel_err(out, case.ref, 1.0) <= case.tol
    finally:
        torch.ops.qkernels.reset_dispatch_table("")


def test_tuner_stops_at_the_time_limit_and_keeps_defaults(tmp_path, monkeypatch):
    from qkernels.bench.shapes import LinearShape

    lib = FakeLib()
    monkeypatch.setattr(configs, "library_tables", lib.tables)
    monkeypatch.setattr(configs, "_lib_op", lib.op)
    tuner = tune.Tuner(tmp_path, quick=True, models=["m"], keys=None, time_limit_s=0.0, min_gain=0.02,
                       log=lambda s: None, device=torch.device("cpu"), gpu_name="NVIDIA H200", timer=_FakeTimer(lib))
    desc = lib.tables()
    tuner.run_key("fam/sm90/fp8", desc["keys"]["fam/sm90/fp8"], _FakeDriver(lib),
                  [LinearShape(N=128, K=256, model="m", layer="a")], 1)
    assert tuner.rows == [] and any("time limit" in n for n in tuner.notes)
    doc, report = tuner.write(desc, ["fam/sm90/fp8"], "qkernels tune", final=True)
    assert doc["tables"] == {} and report["fam/sm90/fp8"]["dropped"]
    assert (tmp_path / "h200.json").is_file()


# ----------------------------------------------------------------- thresholds (Python-side choices)
HOPPER_MIN_M = "w4a16/sm90/hopper_min_m"  # registered by qkernels.ops.w4a16_hopper


@pytest.fixture
def thresholds_restored(monkeypatch):
    """apply() replaces the thresholds dict as a whole: the original comes back after the test."""
    monkeypatch.setattr(configs, "_threshold_values", dict(configs._threshold_values))
    saved = configs._state
    yield
    configs._state = saved


def test_hopper_threshold_is_registered_with_its_default():
    from qkernels.ops import w4a16_hopper as H

    value, t = configs.thresholds()[HOPPER_MIN_M]
    assert t.default == H.W4A16_HOPPER_MIN_M and t.minimum == 1 and "Hopper" in t.doc
    with pytest.raises(KeyError, match=r"no threshold 'w4a16/sm90/nope' is registered; registered: .*hopper_min_m"):
        configs.threshold("w4a16/sm90/nope")
    with pytest.raises(ValueError, match="registered twice with different definitions"):
        configs.register_threshold(HOPPER_MIN_M, t.default + 1, t.doc)
    assert configs.register_threshold(HOPPER_MIN_M, t.default, t.doc) == t  # the same definition again: fine


def test_a_config_sets_a_threshold_and_info_shows_it(fake, tmp_path, thresholds_restored):
    from qkernels.ops import w4a16_hopper as H

    p = write(tmp_path, "h100-sxm.json", doc({"fam/sm90/fp8": [{"max_m": None, "kernel": "k_large"}]},
                                             thresholds={HOPPER_MIN_M: 48}))
    st = configs.apply(p)
    assert st.thresholds == {HOPPER_MIN_M: 48} and st.applied == ["fam/sm90/fp8"] and not st.rejected
    assert configs.threshold(HOPPER_MIN_M) == 48 and H.hopper_min_m() == 48
    line = next(l for l in configs.describe() if HOPPER_MIN_M in l)
    assert f"48 [config, default {H.W4A16_HOPPER_MIN_M}]" in line
    configs.apply(None)  # back to the compiled-in defaults: the thresholds too
    assert configs.threshold(HOPPER_MIN_M) == H.W4A16_HOPPER_MIN_M
    assert "[default]" in next(l for l in configs.describe() if HOPPER_MIN_M in l)


@pytest.mark.parametrize("value", [0, -5, "64", True, 1.5, None])
def test_a_bad_threshold_keeps_its_default_with_a_warning(fake, tmp_path, thresholds_restored, value):
    from qkernels.ops import w4a16_hopper as H

    p = write(tmp_path, "cfg.json", doc({"fam/sm90/fp8": [{"max_m": None, "kernel": "k_large"}]},
                                        thresholds={HOPPER_MIN_M: value, "w4a16/sm90/typo": 4}))
    with pytest.warns(configs.ConfigWarning) as rec:
        st = configs.apply(p)
    msgs = sorted(str(w.message) for w in rec)
    assert len(msgs) == 2, msgs
    assert f"threshold '{HOPPER_MIN_M}' = {value!r} must be an int >= 1" in msgs[0]
    assert "keeps its default 128" in msgs[0]
    assert "unknown threshold 'w4a16/sm90/typo'" in msgs[1] and "ignored" in msgs[1]
    assert configs.threshold(HOPPER_MIN_M) == H.W4A16_HOPPER_MIN_M and not st.thresholds
    assert st.applied == ["fam/sm90/fp8"]  # the tables are not affected
    assert set(st.rejected) == {f"threshold {HOPPER_MIN_M}", "threshold w4a16/sm90/typo"}


def test_thresholds_must_be_an_object_and_apply_without_a_library(monkeypatch, tmp_path, thresholds_restored):
    with pytest.raises(configs.ConfigError, match="'thresholds' .* must be an object"):
        configs.check_document(doc({}, thresholds=[64]))
    monkeypatch.setattr(configs, "library_tables", lambda: None)
    st = configs.apply(write(tmp_path, "cfg.json", doc({"fam/sm90/fp8": [{"max_m": None, "kernel": "x"}]},
                                                       thresholds={HOPPER_MIN_M: 300})))
    assert configs.threshold(HOPPER_MIN_M) == 300 and "kernel tables not applied (thresholds only)" in st.reason
    with pytest.warns(configs.ConfigWarning, match="Every kernel table stays"):
        configs.apply(write(tmp_path, "bad.json", doc({}, thresholds={HOPPER_MIN_M: "x"}) | {"thresholds": 5}))
    assert configs.threshold(HOPPER_MIN_M) == 128  # a rejected file: every threshold back to its default


def test_use_hopper_follows_the_config_threshold(monkeypatch, tmp_path, thresholds_restored):
    from qkernels.ops import w4a16_hopper as H

    monkeypatch.setattr(configs, "library_tables", lambda: None)
    monkeypatch.setattr(H, "supported", lambda cap: cap == 90)  # as on an H100 with the sm90a kernels
    configs.apply(None)  # the defaults (a GPU machine may have applied its tuned file)
    assert H.use_hopper(128, 90) and not H.use_hopper(127, 90)
    configs.apply(doc({}, thresholds={HOPPER_MIN_M: 32}))
    assert H.use_hopper(32, 90) and not H.use_hopper(31, 90) and not H.use_hopper(10**6, 80)
    assert H.use_hopper(31, 90, min_m=16) and not H.use_hopper(32, 90, group_size=32)


def test_tune_check_validates_thresholds(tmp_path, capsys):
    assert tune.main(["--check", str(write(tmp_path, "ok.json", doc({}, thresholds={HOPPER_MIN_M: 64})))]) == 0
    assert f"threshold {HOPPER_MIN_M}: ok  64" in capsys.readouterr().out
    assert tune.main(["--check", str(write(tmp_path, "bad.json", doc({}, thresholds={HOPPER_MIN_M: 0})))]) == 1
    assert "REJECTED" in capsys.readouterr().err


# ----------------------------------------------------------------- the Marlin -> Hopper crossover (pure)
def xrow(N, M, path, t, status="ok"):
    return {"threshold": HOPPER_MIN_M, "N": N, "K": 4096, "M": M, "path": path, "status": status,
            "time_us": t if status == "ok" else None, "error": None if status == "ok" else "boom"}


def crossover(marlin: dict, hopper: dict, shapes=(4096, 8192)):
    """Rows from per-M times (the same on every shape, scaled by N / 4096)."""
    return [xrow(N, M, path, t * N / 4096) for N in shapes for path, d in (("marlin", marlin), ("hopper", hopper))
            for M, t in d.items()]


def test_select_threshold_is_the_smallest_m_from_which_hopper_wins():
    marlin = {32: 10.0, 64: 12.0, 128: 20.0, 256: 40.0, 512: 80.0}
    hopper = {32: 30.0, 64: 25.0, 128: 19.0, 256: 30.0, 512: 50.0}
    value, rep = tune.select_threshold(crossover(marlin, hopper), default=128)
    assert value == 128 and rep["chosen"] == 128 and rep["shapes"] == 2
    assert [e["hopper_wins"] for e in rep["per_m"]] == [False, False, True, True, True]
    assert rep["per_m"][2]["marlin_us"] == pytest.approx(20.0 + 40.0)
    # a win at small M followed by a loss does not count: the threshold is where Hopper wins for good
    value, _ = tune.select_threshold(crossover(marlin, {**hopper, 32: 5.0, 64: 13.0}), default=128)
    assert value == 128
    value, _ = tune.select_threshold(crossover(marlin, {**hopper, 64: 11.0}), default=128)
    assert value == 64
    # Hopper wins everywhere: the smallest M measured
    value, _ = tune.select_threshold(crossover(marlin, {m: t / 2 for m, t in marlin.items()}), default=128)
    assert value == 32
    # min_gain: a 1 % win is not enough at 2 %
    value, _ = tune.select_threshold(crossover(marlin, {**hopper, 128: 19.9}), default=128, min_gain=0.02)
    assert value == 256


def test_select_threshold_switches_hopper_off_when_it_never_wins_and_keeps_the_default_unmeasured():
    marlin = {64: 10.0, 256: 40.0, 512: 80.0}
    value, rep = tune.select_threshold(crossover(marlin, {m: t * 1.5 for m, t in marlin.items()}), default=128)
    assert value == configs.NEVER and "does not win at the largest M measured (512)" in rep["never"]
    assert tune._summary_lines({HOPPER_MIN_M: dict(rep, threshold=True)})[-1].startswith(f"{HOPPER_MIN_M:<24} = never")
    value, rep = tune.select_threshold(crossover(marlin, {64: 5.0, 256: 30.0, 512: 90.0}), default=128)
    assert value == configs.NEVER  # wins, then loses at the largest M: no crossover, switched off
    assert configs.check_threshold(HOPPER_MIN_M, value) == value  # a config may carry it
    value, rep = tune.select_threshold([], default=128)
    assert value is None and "not measured" in rep["kept_default"]
    lines = tune._summary_lines({HOPPER_MIN_M: dict(rep, threshold=True)})
    assert lines == [f"{HOPPER_MIN_M:<24} default 128 kept: {rep['kept_default']}"]


def test_select_threshold_distrusts_a_failed_path_and_drops_a_partial_shape():
    marlin = {64: 10.0, 256: 40.0}
    hopper = {64: 20.0, 256: 20.0}
    rows = crossover(marlin, hopper) + [xrow(1024, 64, "hopper", None, status="wrong")]
    value, rep = tune.select_threshold(rows, default=128)
    assert value is None and "hopper wrong at N=1024 K=4096 M=64: boom" in rep["kept_default"]
    # a third shape measured at M=64 only (time limit): left out, the two complete shapes decide
    rows = crossover(marlin, hopper) + [xrow(1024, 64, "marlin", 1.0), xrow(1024, 64, "hopper", 1000.0)]
    value, rep = tune.select_threshold(rows, default=128)
    assert value == 256 and rep["shapes"] == 2


class _CrossoverDriver:
    """Both paths on CPU: a made-up cost model through the fake timer (Hopper: fixed cost, cheap per row)."""

    threshold = HOPPER_MIN_M
    key = None

    def __init__(self, timer, broken=None):
        self.timer, self.broken = timer, broken

    def weight(self, N, K, device):
        return None if N == 96 else {"N": N}

    def cases(self, w, M, device):
        ref = torch.arange(M * w["N"], dtype=torch.float32).reshape(M, w["N"]) + 1.0

        def run(path):
            def go(f):
                self.timer.path = path
                return torch.zeros_like(ref) if path == self.broken else ref * f
            return go

        return {p: tune.Case(run(p), ref.to(torch.bfloat16), 1e-2) for p in ("marlin", "hopper")}


class _PathTimer:
    path = None

    def time(self, fn):
        from qkernels.testing.timing import Timing

        out = fn()
        M, N = out.shape
        t = (1.0 + M / 8) * N / 128 if self.path == "marlin" else (20.0 + M / 32) * N / 128
        return Timing(t, t, t, "fake")


def test_tuner_writes_the_measured_crossover_as_a_threshold(tmp_path, monkeypatch, thresholds_restored):
    from qkernels.bench.shapes import LinearShape

    monkeypatch.setattr(configs, "library_tables", lambda: None)
    timer = _PathTimer()
    tuner = tune.Tuner(tmp_path, quick=True, models=["m"], keys=None, time_limit_s=600, min_gain=0.02,
                       log=lambda s: None, device=torch.device("cpu"), gpu_name="NVIDIA H100 80GB HBM3", timer=timer)
    shapes = [LinearShape(N=256, K=512, model="m", layer="a"), LinearShape(N=128, K=512, model="m", layer="b"),
              LinearShape(N=96, K=512, model="m", layer="c")]  # the last: not run by both paths
    tuner.run_crossover(_CrossoverDriver(timer), shapes)
    assert len(tuner.crossover_rows) == 2 * 2 * len(tune.QUICK_CROSSOVER_MS)
    doc, report = tuner.write({"keys": {}}, [], "qkernels tune --quick", final=True)
    # marlin 1 + M/8 vs hopper 20 + M/32 (x N/128): hopper wins from M > 202.7, i.e. 256 of the quick grid
    assert tune.QUICK_CROSSOVER_MS == (32, 64, 128, 256, 512)
    assert doc["thresholds"] == {HOPPER_MIN_M: 256} and report[HOPPER_MIN_M]["chosen"] == 256
    assert any(l.endswith(f"{HOPPER_MIN_M:<24} = 256") for l in tune._summary_lines(report))
    st = configs.apply(tmp_path / "h100-sxm.json")
    assert configs.threshold(HOPPER_MIN_M) == 256 and st.thresholds == {HOPPER_MIN_M: 256}
    lines = [json.loads(l) for l in (tmp_path / "tune-h100-sxm.jsonl").read_text().splitlines()]
    assert sum(l["type"] == "crossover" for l in lines) == len(tuner.crossover_rows)
    # a path that fails its check: no threshold written
    tuner2 = tune.Tuner(tmp_path / "b", quick=True, models=["m"], keys=None, time_limit_s=600, min_gain=0.02,
                        log=lambda s: None, device=torch.device("cpu"), gpu_name="NVIDIA H100 80GB HBM3", timer=timer)
    tuner2.run_crossover(_CrossoverDriver(timer, broken="hopper"), shapes[:1])
    doc, report = tuner2.write({"keys": {}}, [], "qkernels tune --quick", final=True)
    assert "thresholds" not in doc and "hopper wrong" in report[HOPPER_MIN_M]["kept_default"]
    assert all(r["time_us"] is None for r in tuner2.crossover_rows if r["path"] == "hopper")


def test_the_threshold_is_measured_early_in_a_short_time_limit():
    """The Hopper key's pass 1, then the threshold (it uses that table), then the other keys' pass 1,
    then pass 2: `qkernels tune --quick --time-limit 45` reaches it, not only after every key's pass 1."""
    keys = ["scaled_mm/sm90/fp8", "scaled_mm/sm90/int8", "sparse24/sm90/fp8", "w4a16_hopper/sm90/bf16",
            "w4a16_hopper/sm90/fp16", "fp8_block/sm90/fp8", "scaled_mm/sm90/int8_azp"]
    assert tune.CROSSOVER.key == "w4a16_hopper/sm90/bf16"
    order = tune.work_order(keys, [HOPPER_MIN_M], (1, 2))
    assert order[:3] == [("key", "w4a16_hopper/sm90/bf16", 1), ("threshold", HOPPER_MIN_M, 1),
                         ("key", "scaled_mm/sm90/fp8", 1)]
    assert [k for w, k, st in order if st == 1 and w == "key"][1:] == [k for k in keys if k != tune.CROSSOVER.key]
    assert [k for w, k, st in order if st == 2] == keys and len(order) == 2 * len(keys) + 1
    assert tune.work_order(keys, [], (1,)) == [("key", k, 1) for k in keys]  # no threshold here: the keys' order
    assert tune.work_order([], [HOPPER_MIN_M], (1, 2)) == [("threshold", HOPPER_MIN_M, 1)]  # --key the threshold


def test_the_crossover_driver_says_where_it_cannot_run():
    why = tune.CROSSOVER.unavailable(80)
    assert why is not None and "sm90" in why
    assert tune.THRESHOLD_DRIVERS[HOPPER_MIN_M] is tune.CROSSOVER
    assert HOPPER_MIN_M in configs.thresholds()


# ----------------------------------------------------------------- forcing one kernel (tests, benchmarks)
def test_forced_kernel_sets_one_bucket_and_restores_the_default(fake):
    with configs.forced_kernel("fam/sm90/fp8", "k_small", splits="split_k_4", raster=2):
        assert fake.calls == [("set_dispatch_table", "fam/sm90/fp8", [-1], ["k_small"], [2, 1, 4],
                               "forced_kernel(k_small)")]
    assert fake.calls[-1] == ("reset_dispatch_table", "fam/sm90/fp8")
    fake.calls.clear()
    with pytest.raises(KeyError):  # an exception inside the block: the table comes back all the same
        with configs.forced_kernel("fam/sm80/int8", "b"):
            raise KeyError("boom")
    assert fake.calls == [("set_dispatch_table", "fam/sm80/int8", [-1], ["b"], [], "forced_kernel(b)"),
                          ("reset_dispatch_table", "fam/sm80/int8")]


def test_forced_kernel_restores_a_table_a_config_had_set(fake):
    key = fake.desc["keys"]["fam/sm90/fp8"]
    key["active"] = [_bucket(64, "k_small", splits=1), _bucket(None, "k_large", swizzle=4)]
    key["active_source"] = "/configs/h100-sxm.json"
    with configs.forced_kernel("fam/sm90/fp8", "k_plain"):
        pass
    assert fake.calls[-1] == ("set_dispatch_table", "fam/sm90/fp8", [64, -1], ["k_small", "k_large"],
                              [0, 1, 1, 0, 4, 0], "/configs/h100-sxm.json")


@pytest.mark.parametrize("key, kernel, params, match", [
    ("fam/sm90/fp16", "k_small", {}, r"dispatch key 'fam/sm90/fp16' is not in this library; its keys: fam/sm80/int8, "
                                     r"fam/sm90/fp8"),
    ("fam/sm90/fp8", "nope", {}, r"kernel 'nope' \(bucket 0\) was not built into this library; built for this key: "
                                 r"k_small, k_large, k_plain"),
    ("fam/sm90/fp8", "k_large", {"splits": "split_k_2"}, "kernel 'k_large' .* does not take param 'splits'"),
])
def test_forced_kernel_refuses_what_the_library_cannot_run(fake, key, kernel, params, match):
    with pytest.raises(configs.ConfigError, match=match):
        with configs.forced_kernel(key, kernel, **params):
            raise AssertionError("the block must not run")
    assert fake.calls == []


def test_forced_kernel_needs_the_library(monkeypatch):
    monkeypatch.setattr(configs, "library_tables", lambda: None)
    with pytest.raises(configs.ConfigError, match="no CUDA library with dispatch tables is loaded"):
        with configs.forced_kernel("fam/sm90/fp8", "k_small"):
            pass


# ----------------------------------------------------------------- fp8_block/sm90/fp8
def _fp8_block_generate():
    """csrc/fp8_block/kernels/generate.py as a module of its own name (scaled_mm has a generate.py too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("qk_fp8_block_generate",
                                                  os.path.join(ROOT, "csrc", "fp8_block", "kernels", "generate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_lib
def test_fp8_block_candidates_are_the_generated_kernels():
    gen = _fp8_block_generate()
    lib = configs.library_tables()["keys"]
    if gen.DISPATCH_KEY not in lib:
        pytest.skip(f"{gen.DISPATCH_KEY} is not in this library (fp8_block's SM90 group was not built)")
    info = lib[gen.DISPATCH_KEY]
    assert [k["name"] for k in info["kernels"]] == [e[0] for e in gen.KERNELS]
    for k, e in zip(info["kernels"], gen.KERNELS):
        assert k["params"] == {"persistent": ["raster", "swizzle"], "streamk": ["raster", "swizzle", "splits"]}[e[2]], k
    assert [p["name"] for p in info["params"]] == ["raster", "swizzle", "splits"]
    # the compiled-in default: the table the glue had before it was a dispatch key (README.md)
    assert configs.export_table(info, "default") == [
        {"max_m": 16, "kernel": "sm90_fp8_block_m16"}, {"max_m": 32, "kernel": "sm90_fp8_block_m32"},
        {"max_m": 64, "kernel": "sm90_fp8_block_m64"}, {"max_m": 2048, "kernel": "sm90_fp8_block_sk"},
        {"max_m": None, "kernel": "sm90_fp8_block_large"}]


def test_fp8_block_driver_keys_and_shapes():
    from qkernels.bench.shapes import DEEPSEEK_V3_SHAPES, LinearShape, PRESETS, unique_shapes

    drv = tune.DRIVERS["fp8_block"]
    assert drv.keys(90) == ["fp8_block/sm90/fp8"] and drv.keys(89) == [] and drv.keys(80) == []
    odd = LinearShape(N=1000, K=4096, model="m", layer="x")  # N % 16 != 0: the op refuses it
    run = unique_shapes([PRESETS["qwen3-30b-a3b"]], synthetic=False) + [odd]
    full = tune.driver_shapes(drv, run, quick=False)
    nk = [(s.N, s.K) for s in full]
    assert set((s.N, s.K) for s in DEEPSEEK_V3_SHAPES) <= set(nk) and (1000, 4096) not in nk
    assert set((s.N, s.K) for s in run[:-1]) <= set(nk) and len(nk) == len(set(nk))
    quick = [(s.N, s.K) for s in tune.driver_shapes(drv, run, quick=True)]
    assert (2112, 7168) in quick and (32768, 512) not in quick
    assert tune.driver_shapes(tune.DRIVERS["scaled_mm"], run, quick=True) == run  # no shapes(): the run's
    assert drv.weight("fp8_block/sm90/fp8", 256, 200, "cpu") is None  # K % 128 != 0


@pytest.mark.parametrize("M", [1, 37])
def test_fp8_block_driver_case_checks_against_the_reference_on_cpu(M):
    """On CPU the op is its reference: the driver's inputs pass the op's checks, the check factor
    scales the output (and keeps the kernels' column-major scale layout), the tolerance is met;
    a wrong result (here: the output of another M's inputs) is not."""
    from qkernels.reference import fp8_block as ref

    drv = tune.DRIVERS["fp8_block"]
    torch.manual_seed(M)
    w = drv.weight("fp8_block/sm90/fp8", 144, 512, "cpu")  # N = 144: a partial last 128-block
    assert w["b"].shape == (512, 144) and w["b"].stride() == (1, 512) and w["b_scales"].shape == (2, 4)
    case = drv.case("fp8_block/sm90/fp8", w, M, "cpu")
    assert case.ref.shape == (M, 144) and case.ref.dtype == torch.bfloat16
    for f in (1.0, tune.CHECK_FACTORS[0], tune.CHECK_FACTORS[-1]):
        assert tune._rel_err(case.run(f), case.ref, f) <= case.tol, f
    other = drv.case("fp8_block/sm90/fp8", w, M, "cpu")
    assert tune._rel_err(other.run(1.5), case.ref, 1.5) > case.tol
    seen = []
    real = ref.scaled_mm

    def spy(a, b, a_scales, *rest):
        seen.append(ref.is_column_major_aligned(a_scales))
        return real(a, b, a_scales, *rest)

    import unittest.mock

    with unittest.mock.patch.object(ref, "scaled_mm", spy):
        case.run(2.5)
        case.run(1.0)
    assert seen == [True, True], "the op gets the column-major TMA-aligned scales (no copy in the timed call)"


@needs_lib
def test_forced_kernel_on_the_library():
    """Every key of the built library: each candidate forced in turn (with a non-default param it
    takes, if any) is the key's active table inside the block; the default is back after it."""
    lib = configs.library_tables()["keys"]
    for key, info in lib.items():
        params = {p["name"]: p for p in info["params"]}
        for k in info["kernels"]:
            extra = {}
            if k["params"]:
                p = params[k["params"][-1]]
                extra = {p["name"]: next(v for v in p["values"] if v != p["default"])}
            with configs.forced_kernel(key, k["name"], **extra):
                now = configs.library_tables()["keys"][key]
                assert [b["kernel"] for b in now["active"]] == [k["name"]] and now["active"][0]["max_m"] is None
                assert all(now["active"][0]["params"][n] == v for n, v in extra.items())
                assert now["active_source"] == f"forced_kernel({k['name']})"
            after = configs.library_tables()["keys"][key]
            assert after["active"] == info["default"] and after["active_source"] == "default", key
