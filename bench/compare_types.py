#!/usr/bin/env python3
"""kvdial against llama.cpp per weight type: one row per GGUF file, tg and pp speed side by side, ratios.

For each file, `kvdial bench` and `llama-bench` run back to back with the same -p/-n/-t/-r (the order
alternates from file to file), so both engines see the same machine load. The type column is the
file's preset (from its name, the part after the last '-': smollm2-135m-Q4_K_M.gguf -> Q4_K_M) and the
tensor types it holds by share of the tensor bytes (from `kvdial info`: presets mix types).
Writes a Markdown table and, beside it, a JSON file with every raw result and the load averages.
This script never downloads, builds or quantizes anything: pass the files and the binaries.
  python3 bench/compare_types.py --llamacpp ../ref/llama.cpp/build/bin/llama-bench ../ref/models/*.gguf
"""
import argparse
import json
import os

from benchlib import emit_table, machine_line, sh


def tensor_types(kvdial, path):
    """[(type, share %)] of the tensor bytes, largest first, from the 'tensor types:' part of kvdial info."""
    out, rows, inside = sh([kvdial, "info", path]), [], False
    for line in out.splitlines():
        if line.startswith("tensor types:"):
            inside = True
        elif inside and line.startswith("  ") and "%" in line and not line.strip().startswith("type"):
            cells = line.split()
            rows.append((cells[0], float(cells[4].rstrip("%"))))
        elif inside and not line.startswith("  "):
            break
    return sorted(rows, key=lambda r: -r[1])


def kvdial_bench(a, path):
    out = json.loads(sh([a.kvdial, "bench", "-m", path, "-p", str(a.n_prompt), "-n", str(a.n_gen), "-t",
                         str(a.threads), "-r", str(a.reps), "-o", "json", "--backend", a.backend]))
    return {r["test"]: r for r in out}


def llama_bench(a, path):
    out = json.loads(sh([a.llamacpp, "-m", path, "-p", str(a.n_prompt), "-n", str(a.n_gen), "-t",
                         str(a.threads), "-r", str(a.reps), "-o", "json"]))
    return {(f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"): r for r in out}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="GGUF files, one row each")
    ap.add_argument("--kvdial", default="build/kvdial")
    ap.add_argument("--llamacpp", help="path of llama.cpp's llama-bench (needed unless --from-json)")
    ap.add_argument("--llamacpp-version", default="b4747", help="name of the llama.cpp build in the table")
    ap.add_argument("--kvdial-version", default="unknown", help="kvdial version for the table when git is absent")
    ap.add_argument("--backend", default="cpu", help="kvdial --backend (cpu, cpu-q8)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--goal", type=float, default=1.3, help="flag rows where llama.cpp is more than this much faster")
    ap.add_argument("--note", action="append", default=[], help="a line to add under the table (repeatable)")
    ap.add_argument("--out", default="results/weight_types_vs_llamacpp.md")
    ap.add_argument("--from-json", help="render the table from this run's JSON (e.g. to add --note lines) instead of "
                    "measuring; the files are then not needed")
    ap.add_argument("--machine", help="with --from-json of a run that did not record it: its 'Measured ...' line")
    a = ap.parse_args()
    if a.from_json:
        saved = json.load(open(a.from_json))
        raw = saved["rows"] if isinstance(saved, dict) else saved
        a.machine = saved["machine"] if isinstance(saved, dict) else a.machine or "Measured (machine not recorded)"
        for k, v in (saved.get("args", {}) if isinstance(saved, dict) else {}).items():
            setattr(a, k, v)
        rows = [(r["preset"], r["tensor_types"], r.get("size_bytes") or os.path.getsize(r["file"]),
                 {k: r[k] for k in ("kvdial", "llama.cpp")}, r["load_1min"]) for r in raw]
        return write(a, rows, raw, f"{len(rows)} files measured (table rendered from {a.from_json})")
    if not a.llamacpp or not a.files:
        ap.error("give --llamacpp and the GGUF files (or --from-json)")
    a.machine = machine_line(a.kvdial_version) + f"; llama.cpp {a.llamacpp_version}"

    rows, raw = [], []
    for i, path in enumerate(a.files):
        load0 = os.getloadavg()[0]
        types = tensor_types(a.kvdial, path)
        runs = [("kvdial", kvdial_bench), ("llama.cpp", llama_bench)]
        res = {name: fn(a, path) for name, fn in (runs if i % 2 == 0 else runs[::-1])}
        load1 = os.getloadavg()[0]
        preset = os.path.basename(path).rsplit(".", 1)[0].rsplit("-", 1)[-1]
        rows.append((preset, types, os.path.getsize(path), res, (load0, load1)))
        raw.append({"file": path, "preset": preset, "tensor_types": types, "size_bytes": os.path.getsize(path),
                    "load_1min": [load0, load1],
                    "kvdial": res["kvdial"], "llama.cpp": res["llama.cpp"]})
        # Written after every file, so that an interrupted run keeps the rows it measured.
        write(a, rows, raw, f"{i + 1} of {len(a.files)} files measured")


def write(a, rows, raw, progress):
    tg, pp = f"tg{a.n_gen}", f"pp{a.n_prompt}"

    def cell(r, test):
        return f"{r[test]['avg_ts']:.1f} ± {r[test]['stddev_ts']:.1f}"

    lines = [a.machine, "",
             f"`kvdial bench -p {a.n_prompt} -n {a.n_gen} -t {a.threads} -r {a.reps} -o json --backend {a.backend}` "
             f"and `llama-bench -p {a.n_prompt} -n {a.n_gen} -t {a.threads} -r {a.reps} -o json` back to back per "
             "file (order alternating). t/s mean ± stddev over the repetitions; ratio = kvdial / llama.cpp "
             f"(below {1 / a.goal:.2f}: more than {a.goal}x slower, marked **). Types: share of tensor bytes.", "",
             f"| preset | tensor types | MB | kvdial {tg} | llama.cpp {tg} | ratio | kvdial {pp} | llama.cpp {pp} | ratio "
             "| load 1 min |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for preset, types, size, res, load in rows:
        kv, ll = res["kvdial"], res["llama.cpp"]
        ratios = []
        for test in (tg, pp):
            q = kv[test]["avg_ts"] / ll[test]["avg_ts"]
            ratios.append(f"**{q:.2f}**" if q < 1 / a.goal else f"{q:.2f}")
        mix = ", ".join(f"{t} {s:.0f}%" for t, s in types if s >= 1)
        lines.append(f"| {preset} | {mix} | {size / 1e6:.1f} | {cell(kv, tg)} | {cell(ll, tg)} | {ratios[0]} | "
                     f"{cell(kv, pp)} | {cell(ll, pp)} | {ratios[1]} | {load[0]:.1f}-{load[1]:.1f} |")
    lines += ["", progress] + a.note
    emit_table(lines, a.out)
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        args = {k: getattr(a, k) for k in ("threads", "n_prompt", "n_gen", "reps", "backend", "llamacpp_version")}
        json.dump({"machine": a.machine, "args": args, "rows": raw}, f, indent=1)


if __name__ == "__main__":
    main()
