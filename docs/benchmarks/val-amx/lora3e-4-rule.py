import json, statistics as st, os
V='docs/benchmarks/val-amx'
tags=['single_object','two_object','counting','colors','position','color_attr']
diffs=[]; ok_extra=True
for s in [0,1,2]:
    new=f'docs/benchmarks/val-amx/lora3e-4-relation-attention-g24-s{s}'; old=f'{V}/relation-attention-g24-s{s}'
    if not os.path.exists(f'{new}/eval/epoch_0040.json'): print('missing',s); continue
    cn=json.load(open(f'{new}/config.json')); co=json.load(open(f'{old}/config.json'))
    dif={k:(co.get(k),cn.get(k)) for k in set(cn)|set(co) if cn.get(k)!=co.get(k)}
    print('config diff', dif)
    e=lambda d,ep: json.load(open(f'{d}/eval/epoch_{ep:04d}.json'))
    print('base equal', e(new,0)['overall/strict']==e(old,0)['overall/strict'], e(new,0)['overall/strict'])
    curve=lambda d: ' '.join(f"{e(d,k)['overall/strict']:.3f}" for k in (0,10,20,30,40))
    print(f's{s} new', curve(new)); print(f's{s} old', curve(old))
    gn=e(new,40)['overall/strict']-e(new,0)['overall/strict']; go=e(old,40)['overall/strict']-e(old,0)['overall/strict']
    diffs.append(gn-go)
    xb, xn = e(new,0)['monitor/extra_objects'], e(new,40)['monitor/extra_objects']
    ok_extra &= xn <= xb+0.05
    print(f'  gain new {gn:+.3f} old {go:+.3f} diff {gn-go:+.3f}; extra {xb:.3f}->{xn:.3f}')
    print('  tags new', ' '.join(f"{t[:5]} {e(new,0)[t+'/strict']:.2f}->{e(new,40)[t+'/strict']:.2f}" for t in tags))
    print('  tags old', ' '.join(f"{t[:5]} {e(old,0)[t+'/strict']:.2f}->{e(old,40)[t+'/strict']:.2f}" for t in tags))
if len(diffs)>1:
    m=st.mean(diffs); se=st.stdev(diffs)/len(diffs)**0.5
    print(f'mean diff {m:+.4f} SE {se:.4f} t {m/se:.2f} n {len(diffs)}; extra ok {ok_extra}; ADOPT {m>0 and m>2*se and ok_extra and len(diffs)==3}')
