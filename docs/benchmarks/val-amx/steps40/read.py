"""Section 42's readout: val gains read at 20 ODE steps (the runs' own evaluations) and at 40 (`commands.sh`).

Run from the repository root: python docs/benchmarks/val-amx/steps40/read.py
"""

import json
import statistics as st

HERE = "docs/benchmarks/val-amx/steps40"
VAL = "docs/benchmarks/val-amx"
TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
# run name here -> its stored val run (20-step evaluations) in docs/benchmarks/val-amx/
STORED = {
    "ema90-s3": "relation-attention-g24-s3",
    "ema90-s4": "relation-attention-g24-s4",
    **{f"ema98-s{i}": f"ema98-relation-attention-g24-s{i}" for i in range(5)},
}


def metrics(path: str) -> dict:
    d = json.load(open(path))
    return d.get("metrics", d)


def tags(before: dict, after: dict) -> str:
    return " ".join(f"{t[:5]} {before[t + '/strict']:.2f}->{after[t + '/strict']:.2f}" for t in TAGS)


check = metrics(f"{HERE}/b20-s3.json")["overall/strict"]
print("check base20 s3", check, metrics(f"{VAL}/relation-attention-g24-s3/eval/epoch_0000.json")["overall/strict"])
rows = []
for name, stored in STORED.items():
    seed = name[-1]
    a40, b40 = metrics(f"{HERE}/r40-{name}.json"), metrics(f"{HERE}/b40-s{seed}.json")
    a20 = metrics(f"{VAL}/{stored}/eval/epoch_0040.json")
    b20 = metrics(f"{VAL}/{stored}/eval/epoch_0000.json")
    g20 = a20["overall/strict"] - b20["overall/strict"]
    g40 = a40["overall/strict"] - b40["overall/strict"]
    rows.append((g20, g40))
    print(
        f"{name}: 20 steps {b20['overall/strict']:.3f}->{a20['overall/strict']:.3f} ({g20:+.3f}); "
        f"40 steps {b40['overall/strict']:.3f}->{a40['overall/strict']:.3f} ({g40:+.3f})"
    )
    print("   tags 20:", tags(b20, a20))
    print("   tags 40:", tags(b40, a40))
for i, label in [(0, "g20"), (1, "g40")]:
    v = [r[i] for r in rows]
    print(label, f"{st.mean(v):+.3f} sd {st.stdev(v):.3f} n {len(v)}")
d = [g40 - g20 for g20, g40 in rows]
print(f"g40 - g20 {st.mean(d):+.4f} sd {st.stdev(d):.4f} (SE {st.stdev(d) / len(d) ** 0.5:.4f})")
