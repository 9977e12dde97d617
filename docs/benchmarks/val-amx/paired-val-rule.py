"""Sections 45 and 46's reading: a val recipe against another, val seeds 0-2, paired by seed.

Run from the repository root:
    python docs/benchmarks/val-amx/paired-val-rule.py     # section 45: LoRA (PEFT's layers) minus full fine-tuning
    python docs/benchmarks/val-amx/paired-val-rule.py lora-merged-relation-attention-g24     # section 46, merged LoRA
    python docs/benchmarks/val-amx/paired-val-rule.py lora-merged-relation-attention-g24 lora3e-4-relation-attention-g24
The arguments name run folders under val-amx/ without their ``-s<seed>`` suffix: the new recipe, then the one it is
read against (default: the preset's stored runs); a name with a "/" is a path from the repository root instead
(section 49: ``docs/benchmarks/val-zen4/lora1e-3-merged-relation-attention-g24
docs/benchmarks/val-zen4/lora3e-4-merged-relation-attention-g24``). Rule (declared before the runs, both
sections): the new recipe is better iff the mean paired difference of val strict at epoch 40 is > 0 and > 2 SE, with
extra objects at 40 within +0.05 of the base on each seed. The last lines give the same paired difference at epochs
10, 20 and 30 (how fast a recipe gets there: section 49 reads epoch 20). ``--epoch N`` reads the rule (gain, extra
objects, tags) at epoch N instead of 40, for runs that stop there (section 51's 20-epoch runs).
"""

import json
import statistics as st
import sys

sys.path.insert(0, "benchmarks")
from paired_recipes import paired_t  # noqa: E402  (the paired statistic the test-split tables use)

VAL = "docs/benchmarks/val-amx"
TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def evaluation(run: str, epoch: int) -> dict:
    return json.load(open(f"{run}/eval/epoch_{epoch:04d}.json"))


args = sys.argv[1:]
RULE = 40  # the epoch the rule reads
if "--epoch" in args:
    at = args.index("--epoch")
    RULE = int(args[at + 1])
    del args[at : at + 2]
EPOCHS = [k for k in (10, 20, 30, 40) if k <= RULE]


def curve(run: str) -> str:
    return " ".join(f"{evaluation(run, k)['overall/strict']:.3f}" for k in (0, *EPOCHS))


def tags(run: str) -> str:
    b, a = evaluation(run, 0), evaluation(run, RULE)
    return " ".join(f"{t[:5]} {b[t + '/strict']:.2f}->{a[t + '/strict']:.2f}" for t in TAGS)


extra_ok = True
diffs_at = {k: [] for k in EPOCHS}  # per epoch, the paired gain difference of each seed
diffs = diffs_at[RULE]  # what the rule reads
NEW = args[0] if args else "lora3e-4-relation-attention-g24"
OLD = args[1] if len(args) > 1 else "relation-attention-g24"
for s in (0, 1, 2):
    new, old = (f"{name if '/' in name else f'{VAL}/{name}'}-s{s}" for name in (NEW, OLD))
    cn, co = json.load(open(f"{new}/config.json")), json.load(open(f"{old}/config.json"))
    print("config diff", {k: (co.get(k), cn.get(k)) for k in sorted(set(cn) | set(co)) if cn.get(k) != co.get(k)})
    base_new, base_old = evaluation(new, 0)["overall/strict"], evaluation(old, 0)["overall/strict"]
    print("base equal", base_new == base_old, base_new)
    print(f"s{s} new", curve(new))
    print(f"s{s} old", curve(old))
    gain_new = evaluation(new, RULE)["overall/strict"] - base_new
    gain_old = evaluation(old, RULE)["overall/strict"] - base_old
    for k, at_k in diffs_at.items():
        at_k.append(evaluation(new, k)["overall/strict"] - base_new - evaluation(old, k)["overall/strict"] + base_old)
    x0, x_n = evaluation(new, 0)["monitor/extra_objects"], evaluation(new, RULE)["monitor/extra_objects"]
    extra_ok &= x_n <= x0 + 0.05
    print(f"  gain new {gain_new:+.3f} old {gain_old:+.3f} diff {gain_new - gain_old:+.3f}; extra {x0:.3f}->{x_n:.3f}")
    print("  tags new", tags(new))
    print("  tags old", tags(old))
m, (t, p) = st.mean(diffs), paired_t(diffs)
better = m > 0 and t > 2 and extra_ok  # t = mean / (sd / sqrt n): "beyond 2 SE"
print(f"mean diff {m:+.4f} SE {m / t:.4f} t {t:.2f} p {p:.3f} n {len(diffs)}; extra ok {extra_ok}; BETTER {better}")
for k in EPOCHS[:-1]:
    at_k = diffs_at[k]
    mk, (tk, pk) = st.mean(at_k), paired_t(at_k)
    per_seed = " ".join(f"{d:+.3f}" for d in at_k)
    print(f"epoch {k}: mean diff {mk:+.4f} SE {mk / tk:.4f} t {tk:.2f} p {pk:.3f} ({per_seed})")
