"""Helpers the bench scripts share."""
import datetime
import os
import subprocess
import sys


def emit_table(lines, out):
    """Prints the Markdown lines and writes them to the file out (its folder created if needed)."""
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(text)


def sh(cmd):
    """Runs cmd (a list), returns its stdout; exits with its stderr's tail when it fails."""
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return p.stdout


def cpu_model():
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")


def git_commit(fallback="unknown"):
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip() if git.returncode == 0 else fallback


def machine_line(kvdial_version="unknown"):
    """'Measured DATE on CPU (N logical CPUs; ISA extensions); kvdial COMMIT' for a results file."""
    flags = open("/proc/cpuinfo").read()
    isa = ", ".join(f for f in ("avx512_vnni", "avx512_bf16", "amx_tile") if f in flags) or "no AVX-512 VNNI/BF16/AMX"
    return (f"Measured {datetime.date.today().isoformat()} on {cpu_model()} ({os.cpu_count()} logical CPUs; {isa}); "
            f"kvdial {git_commit(kvdial_version)}")


def llama_batched_decode(binary, model, depth, gen, extra):
    """Decode t/s after `depth` tokens from llama.cpp's llama-batched-bench (-npl 1); extra: more flags."""
    out = sh([binary, "-m", model, "-c", str(depth + gen + 16), "-b", "2048", "-ub", "512", "-npp", str(depth),
              "-ntg", str(gen), "-npl", "1"] + extra)
    for line in out.splitlines():  # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0] == str(depth):
            return float(cells[7])
    sys.exit("could not parse llama-batched-bench output:\n" + out)
