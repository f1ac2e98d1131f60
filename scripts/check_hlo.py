#!/usr/bin/env python3
"""Executes lowered silica programs (serialized XLA HloModuleProtos) on XLA CPU through jax and
compares their outputs with the CPU reference backend's.

    check_hlo.py CASES_DIR [--filter SUBSTRING] [--verbose]
    check_hlo.py --model DIR [--model DIR ...] [--tp N] [--quantize int8|fp8] [--silica PATH] [--atol 1e-4]

With --model: `silica compile --target hlo` the folder's prefill (16-token bucket) and decode
programs, execute them on XLA CPU with the checkpoint's weights (the prompt of the folder's
reference.json when it has one, else fixed ids), and compare logits with `silica logits` on the
same ids (and with transformers' reference logits when the folder is an HF fixture). Prints
max |diff| per comparison; exits non-zero above --atol (default 1e-4, for f32). The silica
binary is --silica, else $SILICA_BIN, else built with `cargo build --release -p silica`.
With --tp N the programs are compiled as one rank's of N (`silica compile --tp N`) and run on N
XLA CPU devices, rank r with shard r of every weight, cut here from the checkpoint as the
manifest's `source.shard` says (an independent reading of the shard layout); every rank's logits
are compared.
With --quantize, the programs take every weight matrix as bytes and per-row scales (`silica
compile --quantize`); this script quantizes the checkpoint itself with NumPy as the manifest's
`source.quantize` says (an independent implementation of the scheme: np.rint, ml_dtypes'
float8_e4m3fn), and compares with `silica logits --quantize` (transformers has no such model).

Every folder under CASES_DIR that holds a `module.pb` is a case:
  module.pb             serialized xla.HloModuleProto (silica_hlo::lower)
  inputs.safetensors    in0, in1, ... in parameter order
  expected.safetensors  out0, out1, ... in output (result tuple) order
  case.json             {"name": ..., "atol": ..., "rtol": ..., "world": N, "aliases": [[output, parameter], ...]}
A tensor-parallel case ("world" N > 1: its collectives span N ranks) has per-rank files instead,
inputs.rank{r}.safetensors and expected.rank{r}.safetensors: its module is compiled for N
replicas (cross-replica collectives, replica r on XLA CPU device r; the checker asks XLA for as
many host devices as the largest world under CASES_DIR) and rank r's outputs are compared with
expected.rank{r}.
An output passes when |got - expected| <= atol + rtol * |expected| elementwise (NaN matches NaN,
infinities must match exactly); integer and boolean outputs must be equal; the module's
input_output_alias, as XLA parsed it, must be the case's aliases. One line per case;
the exit status is non-zero if any case fails or cannot be compiled.

Needs the pinned jax of scripts/requirements-hlo.txt (private xla_client API; see docs/architecture.md,
"Lowering"): `bash scripts/check_hlo.sh` makes .venv-hlo with it.
"""

import json
import os
import re
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path



def _host_devices(argv):
    """XLA CPU devices this run needs: the largest "world" of the case folders (1 for --model).
    Must be known before jax is imported: the device count is an XLA flag read at startup."""
    if "--model" in argv:
        return int(argv[argv.index("--tp") + 1]) if "--tp" in argv[:-1] and argv[argv.index("--tp") + 1].isdigit() else 1
    world = 1
    for a in argv[1:]:
        if a.startswith("--") or not Path(a).is_dir():
            continue
        for meta in Path(a).rglob("case.json"):
            try:
                world = max(world, int(json.loads(meta.read_text()).get("world", 1)))
            except (ValueError, TypeError, AttributeError):
                pass  # reported when the case runs
    return world


# XLA may otherwise skip the rounding of f16/bf16 intermediates inside fusions; silica's CPU
# reference rounds after every op, as neuronx-cc with --auto-cast none does.
_flags = os.environ.get("XLA_FLAGS", "") + " --xla_allow_excess_precision=false"
_world = _host_devices(sys.argv)
if _world > 1:
    _flags += f" --xla_force_host_platform_device_count={_world}"
os.environ["XLA_FLAGS"] = _flags.strip()

import numpy as np
import ml_dtypes
import jax
import jax.extend.backend
from jax._src.lib import xla_client as xc

# f64/i64 inputs must reach XLA unchanged (jax would canonicalize them to 32 bits).
jax.config.update("jax_enable_x64", True)

SAFETENSORS_DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I32": np.int32,
    "I64": np.int64,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F32": np.float32,
    "F64": np.float64,
}


def read_safetensors(path):
    """A minimal safetensors reader (the format is an 8-byte header length, JSON, raw bytes)."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dt = SAFETENSORS_DTYPES[info["dtype"]]
        arr = np.frombuffer(data[base + start : base + end], dtype=dt).reshape(info["shape"])
        out[name] = arr.copy()
    return out


def ordered(tensors, prefix):
    return [tensors[f"{prefix}{i}"] for i in range(len(tensors))]


def compare(got, want, atol, rtol):
    """Returns (ok, max_abs_diff, message)."""
    got = np.asarray(got)
    if got.shape != want.shape:
        return False, float("inf"), f"shape {got.shape} != expected {want.shape}"
    if got.dtype != want.dtype:
        return False, float("inf"), f"dtype {got.dtype} != expected {want.dtype}"
    if got.size == 0:
        return True, 0.0, ""
    if want.dtype == np.bool_ or np.issubdtype(want.dtype, np.integer):
        bad = got != want
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        if bad.any():
            i = np.unravel_index(np.argmax(bad), bad.shape)
            return False, diff, f"{int(bad.sum())} mismatches, first at {i}: {got[i]} vs {want[i]}"
        return True, diff, ""
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    both_nan = np.isnan(g) & np.isnan(w)
    same_inf = np.isinf(w) & (g == w)
    with np.errstate(invalid="ignore"):
        d = np.abs(g - w)
    d = np.where(both_nan | same_inf, 0.0, d)
    d = np.where(np.isnan(d), np.inf, d)
    bad = d > atol + rtol * np.abs(np.where(np.isfinite(w), w, 0.0))
    diff = float(d.max())
    if bad.any():
        i = np.unravel_index(np.argmax(bad), bad.shape)
        return False, diff, f"{int(bad.sum())} of {bad.size} beyond tolerance, first at {i}: {g[i]} vs {w[i]}"
    return True, diff, ""


def compile_group(backend, module, world):
    """Compiles `module` for `world` replicas of one partition, replica r on CPU device r (the
    cross-replica form silica lowers collectives to). Returns (executable, devices)."""
    devs = backend.local_devices()
    if len(devs) < world:
        raise RuntimeError(f"needs {world} XLA CPU devices, have {len(devs)} "
                           "(--xla_force_host_platform_device_count)")
    devs = devs[:world]
    options = xc.CompileOptions()
    options.num_replicas = world
    options.num_partitions = 1
    # Shape (replicas, computations): replica r runs on device id r.
    options.device_assignment = xc.DeviceAssignment.create(
        np.array([[d.id] for d in devs], dtype=np.int32))
    return backend.compile_and_load(module, xc.DeviceList(tuple(devs)), options), devs


def execute_group(exe, devs, per_rank_inputs):
    """Runs a replicated executable with rank r's inputs on device r; returns per-rank outputs.

    The executable takes one array per parameter spanning every device; its shard on device r is
    replica r's argument. Replicas differ in their arguments, which no jax sharding describes, so
    each array is assembled from the per-device buffers under a replicated sharding of the
    per-rank shape (jax does not compare the shards' contents; XLA only reads each replica's
    own buffer)."""
    world = len(devs)
    mesh = jax.sharding.Mesh(np.array(devs), ("replica",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    args = []
    for k in range(len(per_rank_inputs[0])):
        shards = [jax.device_put(per_rank_inputs[r][k], devs[r]) for r in range(world)]
        args.append(jax.make_array_from_single_device_arrays(shards[0].shape, replicated, shards))
    per_output = exe.execute_sharded(args).disassemble_into_single_device_arrays()
    by_device = [{a.devices().pop(): np.asarray(a) for a in outs} for outs in per_output]
    return [[outs[devs[r]] for outs in by_device] for r in range(world)]


def run_case(backend, devices, folder):
    meta = json.loads((folder / "case.json").read_text())
    world = int(meta.get("world", 1))
    if world > 1:
        return run_group_case(backend, folder, meta, world)
    proto = (folder / "module.pb").read_bytes()
    inputs = ordered(read_safetensors(folder / "inputs.safetensors"), "in")
    expected = ordered(read_safetensors(folder / "expected.safetensors"), "out")
    t0 = time.perf_counter()
    computation = xc.XlaComputation(proto)
    bad = check_aliases(computation, meta)
    if bad:
        return meta["name"], False, float("inf"), bad, (0.0, 0.0)
    module = xc._xla.mlir.xla_computation_to_mlir_module(computation)
    exe = backend.compile_and_load(module, devices, xc.CompileOptions())
    t1 = time.perf_counter()
    args = [jax.device_put(x, devices[0]) for x in inputs]
    outs = exe.execute(args)
    outs = [np.asarray(o) for o in outs]
    t2 = time.perf_counter()
    if len(outs) != len(expected):
        return meta["name"], False, float("inf"), f"{len(outs)} outputs, expected {len(expected)}", (t1 - t0, t2 - t1)
    worst, msgs, ok_all = 0.0, [], True
    for k, (g, w) in enumerate(zip(outs, expected)):
        ok, diff, msg = compare(g, w, meta["atol"], meta["rtol"])
        worst = max(worst, diff)
        if not ok:
            ok_all = False
            msgs.append(f"out{k}: {msg}")
    return meta["name"], ok_all, worst, "; ".join(msgs), (t1 - t0, t2 - t1)


def check_aliases(computation, meta):
    """None if the module's input_output_alias, as XLA parsed it, is the case's; else why not."""
    header = computation.as_hlo_text().split("\n", 1)[0]
    got = sorted([int(o), int(p)] for o, p in re.findall(r"\{(\d+)\}: \((\d+), \{\}, may-alias\)", header))
    want = sorted(meta.get("aliases", []))
    return None if got == want else f"aliases {got} != expected {want}: {header}"


def run_group_case(backend, folder, meta, world):
    """A tensor-parallel case: rank r's inputs on replica r, each rank's outputs compared."""
    name = meta["name"]
    inputs = [ordered(read_safetensors(folder / f"inputs.rank{r}.safetensors"), "in") for r in range(world)]
    expected = [ordered(read_safetensors(folder / f"expected.rank{r}.safetensors"), "out") for r in range(world)]
    t0 = time.perf_counter()
    computation = xc.XlaComputation((folder / "module.pb").read_bytes())
    bad = check_aliases(computation, meta)
    if bad:
        return name, False, float("inf"), bad, (0.0, 0.0)
    module = xc._xla.mlir.xla_computation_to_mlir_module(computation)
    exe, devs = compile_group(backend, module, world)
    t1 = time.perf_counter()
    outs = execute_group(exe, devs, inputs)
    t2 = time.perf_counter()
    worst, msgs = 0.0, []
    for r in range(world):
        if len(outs[r]) != len(expected[r]):
            return name, False, float("inf"), f"rank {r}: {len(outs[r])} outputs, expected {len(expected[r])}", (t1 - t0, t2 - t1)
        for k, (g, w) in enumerate(zip(outs[r], expected[r])):
            ok, diff, msg = compare(g, w, meta["atol"], meta["rtol"])
            worst = max(worst, diff)
            if not ok:
                msgs.append(f"rank {r} out{k}: {msg}")
    return name, not msgs, worst, "; ".join(msgs), (t1 - t0, t2 - t1)


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    verbose = "--verbose" in argv
    flt = None
    if "--filter" in argv:
        flt = argv[argv.index("--filter") + 1]
        args.remove(flt)
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(args[0])
    cases = sorted(p.parent for p in root.rglob("module.pb"))
    if flt:
        cases = [c for c in cases if flt in c.name]
    if not cases:
        print(f"no case folders (with module.pb) under {root}", file=sys.stderr)
        return 2
    backend = jax.extend.backend.get_backend("cpu")
    devices = xc.DeviceList(tuple(backend.local_devices()[:1]))
    print(f"check_hlo: jax {jax.__version__}, XLA {backend.platform} ({backend.platform_version}), {len(cases)} cases")
    failed = 0
    t_start = time.perf_counter()
    def attempt(folder):
        try:
            return run_case(backend, devices, folder)
        except Exception as e:  # noqa: BLE001 - report and go on with the other cases
            hlo = ""
            if verbose:
                try:
                    hlo = "\n" + xc.XlaComputation((folder / "module.pb").read_bytes()).as_hlo_text()
                except Exception as e2:  # noqa: BLE001
                    hlo = f"\n(cannot print HLO: {e2})"
            return folder.name, False, float("nan"), f"{type(e).__name__}: {e}{hlo}", (0.0, 0.0)

    # XLA compiles without holding the GIL: a few threads keep every core busy.
    workers = int(os.environ.get("CHECK_HLO_THREADS", "0")) or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for name, ok, diff, msg, (tc, te) in pool.map(attempt, cases):
            failed += not ok
            status = "ok  " if ok else "FAIL"
            line = f"{status} {name:<40} max|diff| {diff:.3e}  compile {tc * 1e3:7.1f} ms  run {te * 1e3:7.1f} ms"
            if msg:
                line += f"\n     {msg}"
            print(line, flush=True)
    total = time.perf_counter() - t_start
    print(f"check_hlo: {len(cases) - failed} passed, {failed} failed, {total:.1f} s")
    return 1 if failed else 0


# ---- --model mode: whole-model prefill + decode against `silica logits` -------------------------

def find_silica(explicit):
    import subprocess
    if explicit:
        return Path(explicit)
    if os.environ.get("SILICA_BIN"):
        return Path(os.environ["SILICA_BIN"])
    root = Path(__file__).resolve().parent.parent
    target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
    if not target.is_absolute():
        target = root / target
    print("check_hlo: building silica (cargo build --release -p silica)", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "silica"], cwd=root, check=True)
    return target / "release" / "silica"


def load_checkpoint(folder):
    """Every tensor of the folder's safetensors files (single or sharded), by name."""
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        if f.name.startswith("reference"):
            continue
        out.update(read_safetensors(f))
    return out


def np_dtype(name):
    return {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16, "f64": np.float64,
            "i32": np.int32, "i64": np.int64, "u8": np.uint8, "bool": np.bool_}[name]


def shard_weight(x, shard, rank):
    """Rank `rank`'s part of checkpoint tensor `x`, as the manifest's `source.shard` says."""
    kind = shard["kind"]
    if kind == "split":
        return np.split(x, shard["parts"], axis=shard["dim"])[rank]
    if kind == "kv_head":
        h, rows = rank // shard["ranks_per_head"], shard["rows"]
        return x[h * rows:(h + 1) * rows]
    if kind == "vocab":
        rows = shard["rows"]
        part = x[rank * rows:(rank + 1) * rows]
        pad = np.zeros((rows - part.shape[0],) + x.shape[1:], x.dtype)
        return np.concatenate([part, pad], axis=0)
    raise ValueError(f"unknown shard kind {kind!r}")


def quantize_weight(x, q):
    """The manifest's `source.quantize` of checkpoint matrix `x` [rows, cols]: its bytes (u8) or
    its per-row scales (f32), by the scheme the manifest names (silica_kernels::quant)."""
    x = np.asarray(x, np.float32)
    m = np.max(np.abs(x), axis=1)
    qmax = {"int8": np.float32(127.0), "fp8-e4m3": np.float32(448.0)}[q["format"]]
    scale = np.where((m == 0) | ~np.isfinite(m), np.float32(1.0), m / qmax).astype(np.float32)
    if q["part"] == "scales":
        return scale
    y = (x / scale[:, None]).astype(np.float32)
    if q["format"] == "int8":
        return np.clip(np.rint(y), -127, 127).astype(np.int8).view(np.uint8)
    import ml_dtypes
    y = np.clip(y, -448.0, 448.0)  # saturate, as silica does (e4m3fn has no infinity)
    return y.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def check_model(backend, devices, folder, silica, atol, tp=1, quantize=None):
    import subprocess
    import tempfile
    folder = Path(folder)
    ref_json = folder / "reference.json"
    ids = None
    if ref_json.exists():
        ids = json.loads(ref_json.read_text()).get("input_ids")
    config = json.loads((folder / "config.json").read_text())
    # A multimodal config (Gemma 3 4B and up) nests the text model's under text_config, which
    # may leave vocab_size at the class default; the ids below only need to exist, and ids under
    # 256 exist in every vocabulary.
    vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size") or 256
    if not ids:
        ids = [(7 * i + 3) % vocab for i in range(11)]
    ids = [int(i) for i in ids][:15]  # a 16-token prefill bucket, then one decode step
    n = len(ids) - 1
    prompt, next_id = ids[:n], ids[n]
    results = []
    with tempfile.TemporaryDirectory(prefix="silica-check-") as tmp:
        tmp = Path(tmp)
        out = tmp / "hlo"
        qargs = ["--quantize", quantize] if quantize else []
        subprocess.run([str(silica), "compile", "--model", str(folder), "--target", "hlo",
                        "--buckets", "1x16,1x1", "--logits", "all", "--max-context", "32",
                        "--tp", str(tp), "--out", str(out)] + qargs, check=True, capture_output=True, text=True)
        subprocess.run([str(silica), "logits", "--model", str(folder),
                        "--token-ids", ",".join(map(str, ids)), "--out", str(tmp / "logits.safetensors")] + qargs,
                       check=True, capture_output=True, text=True)
        want = read_safetensors(tmp / "logits.safetensors")["logits"]  # [n + 1, V]
        manifest = json.loads((out / "manifest.json").read_text())
        runtime_inputs = read_safetensors(out / manifest["runtime_inputs"]["file"])
        weights = load_checkpoint(folder)
        progs = {p["kind"]: p for p in manifest["programs"]}
        if manifest["tensor_parallel"]["degree"] != tp:
            raise ValueError(f"manifest degree {manifest['tensor_parallel']['degree']} != --tp {tp}")
        caches = [{} for _ in range(tp)]

        def run(prog, token_ids, start):
            t = prog["bucket"]["seq"]
            rt = {
                "input_ids": np.array([token_ids + [0] * (t - len(token_ids))], np.int32),
                "positions": np.array([list(range(start, start + t))], np.int32),
                "write_pos": np.array([start], np.int32),
                "rope_inv_freq": runtime_inputs["rope_inv_freq"],
            }
            per_rank = []
            for r in range(tp):
                args = []
                for spec in prog["inputs"]:
                    src, dt = spec["source"], np_dtype(spec["dtype"])
                    if "checkpoint" in src:
                        if "stack" in src:
                            # A mixture-of-experts layer's experts, stacked [E, ...].
                            x = np.stack([np.asarray(weights[n]) for n in src["stack"]])
                        else:
                            x = np.asarray(weights[src["checkpoint"]])
                        if "rows" in src:
                            # A projection inside a fused tensor (Phi-3's qkv_proj, gate_up_proj).
                            x = x[src["rows"]["start"]:src["rows"]["start"] + src["rows"]["count"]]
                        if "quantize" in src:
                            # Quantized whole, then cut like the weight.
                            x = quantize_weight(x, src["quantize"])
                        if "shard" in src:
                            x = shard_weight(x, src["shard"], r)
                    elif "kv_cache" in src:
                        x = caches[r].get(spec["name"], np.zeros(spec["shape"], dt))
                    else:
                        x = rt[src["runtime"]]
                    x = np.asarray(x).astype(dt)
                    if list(x.shape) != spec["shape"]:
                        raise ValueError(f"{spec['name']}: shape {list(x.shape)} != manifest {spec['shape']}")
                    args.append(x)
                per_rank.append(args)
            proto = (out / prog["file"]).read_bytes()
            m = xc._xla.mlir.xla_computation_to_mlir_module(xc.XlaComputation(proto))
            if tp == 1:
                exe = backend.compile_and_load(m, devices, xc.CompileOptions())
                outs = [[np.asarray(o) for o in exe.execute([jax.device_put(a, devices[0]) for a in per_rank[0]])]]
            else:
                exe, devs = compile_group(backend, m, tp)
                outs = [[np.asarray(o) for o in rank] for rank in execute_group(exe, devs, per_rank)]
            names = [o["name"] for o in prog["outputs"]]
            logits = []
            for r in range(tp):
                by_name = dict(zip(names, outs[r]))
                for a in prog["aliases"]:
                    caches[r][a["input"]] = by_name[a["output"]]
                logits.append(by_name["logits"][0])  # [T, V]
            # Every rank returns the whole (gathered) logits.
            spread = max(float(np.max(np.abs(l - logits[0]))) for l in logits)
            results.append((f"{prog['kind']} rank spread", spread))
            return logits[0]

        pre = run(progs["prefill"], prompt, 0)[:n]
        dec = run(progs["decode"], [next_id], n)[0]
        results.append(("prefill vs silica logits", float(np.max(np.abs(pre - want[:n])))))
        results.append(("decode vs silica logits", float(np.max(np.abs(dec - want[n])))))
        ref = folder / "reference.safetensors"
        if ref.exists() and ref_json.exists() and not quantize:
            hf = read_safetensors(ref)["logits"]
            if hf.shape[0] >= n + 1:
                results.append(("prefill vs transformers", float(np.max(np.abs(pre - hf[:n])))))
                results.append(("decode vs transformers", float(np.max(np.abs(dec - hf[n])))))
    ok = True
    for what, diff in results:
        good = diff <= atol
        ok &= good
        tag = (f" tp{tp}" if tp > 1 else "") + (f" {quantize}" if quantize else "")
        print(f"{'ok  ' if good else 'FAIL'} {folder.name + tag:<32} {what:<26} max|diff| {diff:.3e} (atol {atol:g})", flush=True)
    return ok


def main_model(argv):
    folders, silica, atol, tp, quantize = [], None, 1e-4, 1, None
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("--model", "--silica", "--atol", "--tp", "--quantize") and i + 1 < len(argv):
            v = argv[i + 1]
            if a == "--model":
                folders.append(v)
            elif a == "--quantize":
                if v not in ("int8", "fp8"):
                    print(f"--quantize {v!r}: expected int8 or fp8", file=sys.stderr)
                    return 2
                quantize = v
            elif a == "--silica":
                silica = v
            elif a == "--tp":
                if not v.isdigit() or int(v) < 1:
                    print(f"--tp {v!r}: expected a positive integer", file=sys.stderr)
                    return 2
                tp = int(v)
            else:
                atol = float(v)
            i += 2
        else:
            print(f"unexpected argument {a!r}\n{__doc__}", file=sys.stderr)
            return 2
    for f in folders:
        if not (Path(f) / "config.json").exists():
            print(f"--model {f}: not a Hugging Face model folder (no config.json)", file=sys.stderr)
            return 2
    silica = find_silica(silica)
    backend = jax.extend.backend.get_backend("cpu")
    devices = xc.DeviceList(tuple(backend.local_devices()[:1]))
    print(f"check_hlo --model: jax {jax.__version__}, XLA {backend.platform}, silica {silica}")
    def attempt(f):
        import subprocess
        try:
            return check_model(backend, devices, f, silica, atol, tp, quantize)
        except subprocess.CalledProcessError as e:
            print(f"FAIL {Path(f).name}: {' '.join(map(str, e.cmd))} exited {e.returncode}\n{e.stderr or ''}", flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on with the other folders
            print(f"FAIL {Path(f).name}: {type(e).__name__}: {e}", flush=True)
        return False

    failed = [f for f in folders if not attempt(f)]
    print(f"check_hlo --model: {len(folders) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if "--model" in sys.argv:
        sys.exit(main_model(sys.argv))
    sys.exit(main(sys.argv))
