# Section 42's readout: val gains read at 20 ODE steps (the runs' own evaluations) and at 40 (vgpo eval, commands.sh).
# Run from the repository root: python docs/benchmarks/val-amx/steps40/read.py
import json, glob, os
O='docs/benchmarks/val-amx/steps40'
V='docs/benchmarks/val-amx'
tags=['single_object','two_object','counting','colors','position','color_attr']
def m(p): 
    d=json.load(open(p)); return d.get('metrics',d)
b20c=m(f'{O}/b20-s3.json')['overall/strict']; print('check base20 s3', b20c, m(f'{V}/relation-attention-g24-s3/eval/epoch_0000.json')['overall/strict'])
rows=[]
# run name here -> its stored val run (20-step evaluations) in docs/benchmarks/val-amx/
STORED={'ema90-s3':'relation-attention-g24-s3','ema90-s4':'relation-attention-g24-s4',
        **{f'ema98-s{i}':f'ema98-relation-attention-g24-s{i}' for i in range(5)}}
for n,stored in STORED.items():
    s=n[-1]
    p=f'{O}/r40-{n}.json'
    if not os.path.exists(p): continue
    a40=m(p); b40=m(f'{O}/b40-s{s}.json')
    a20=m(f'{V}/{stored}/eval/epoch_0040.json'); b20=m(f'{V}/{stored}/eval/epoch_0000.json')
    g20=a20['overall/strict']-b20['overall/strict']; g40=a40['overall/strict']-b40['overall/strict']
    rows.append((n,g20,g40))
    print(f"{n}: 20 steps {b20['overall/strict']:.3f}->{a20['overall/strict']:.3f} ({g20:+.3f}); 40 steps {b40['overall/strict']:.3f}->{a40['overall/strict']:.3f} ({g40:+.3f})")
    print('   tags 20:', ' '.join(f"{t[:5]} {b20[t+'/strict']:.2f}->{a20[t+'/strict']:.2f}" for t in tags))
    print('   tags 40:', ' '.join(f"{t[:5]} {b40[t+'/strict']:.2f}->{a40[t+'/strict']:.2f}" for t in tags))
import statistics as st
if rows:
    for i,l in [(1,'g20'),(2,'g40')]:
        v=[r[i] for r in rows]; print(l, f"{st.mean(v):+.3f} sd {st.stdev(v) if len(v)>1 else 0:.3f} n {len(v)}")
    d=[r[2]-r[1] for r in rows]; print(f"g40 - g20 {st.mean(d):+.4f} sd {st.stdev(d):.4f} (SE {st.stdev(d)/len(d)**0.5:.4f})")
