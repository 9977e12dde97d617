#!/bin/bash
source /work/venv/bin/activate; cd /work/main
O=/work/runs/s42
vgpo eval --checkpoint checkpoints/shapes-base-relation-attention --split val --steps 20 --seed 3 --images-per-prompt 1 --threads 2 --json $O/b20-s3.json > /dev/null 2>&1
for s in 0 1 2 3 4; do vgpo eval --checkpoint checkpoints/shapes-base-relation-attention --split val --steps 40 --seed $s --images-per-prompt 1 --threads 2 --json $O/b40-s$s.json >/dev/null 2>&1; echo "$(date +%H:%M:%S) base s$s"; done
for r in s39/ema90-s3 s39/ema90-s4 s38/ema98-s0 s38/ema98-s1 s38/ema98-s2 s39/ema98-s3 s39/ema98-s4; do
  n=$(basename $r); s=${n: -1}
  vgpo eval --run /work/runs/$r --split val --steps 40 --seed $s --images-per-prompt 1 --threads 2 --json $O/r40-$n.json >/dev/null 2>&1; echo "$(date +%H:%M:%S) $r"; done
echo DONE
