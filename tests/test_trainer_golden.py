"""The trainer reproduces the results it gave before it became a composition of sampler, advantage and
objective (tests/data/trainer_golden.json: one record per host kind, made by that trainer there, since
last-bit rounding differences between CPU kernels grow past the tolerance below; see
tests/_trainer_golden.py). On a host kind with no record the test skips and says how to record one.

The one deliberate change since, the PPO update's CFG gradient (the unconditional branch is now
detached by default, as Flow-GRPO), is switched back for the comparison (cfg_uncond_grad); the golden runs
were float32, so the comparison pins the tiny model's precision to fp32 (bf16 is the default where the CPU
has it)."""

import json

import pytest

from _trainer_golden import CASES, GOLDEN_FILE, host_key, run_case

GOLDEN = json.loads(GOLDEN_FILE.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_trainer_reproduces_the_golden_runs(tmp_path, tiny_checkpoint, case):
    if host_key() not in GOLDEN:
        pytest.skip(
            f"no golden run recorded for host {host_key()} (recorded: {', '.join(sorted(GOLDEN))}); "
            "record one as tests/_trainer_golden.py says"
        )
    got = run_case(
        tiny_checkpoint,
        tmp_path / case,
        {**CASES[case], "cfg_uncond_grad": True, "model_options": {"precision": "fp32"}},
    )
    want = GOLDEN[host_key()][case]
    assert got["weights"].keys() == want["weights"].keys()
    for name, (w_sum, w_norm) in want["weights"].items():
        g_sum, g_norm = got["weights"][name]
        # A sum can be near 0: its tolerance is scaled by the tensor's norm, the norm's by itself.
        assert g_norm == pytest.approx(w_norm, rel=1e-5, abs=1e-8), name
        assert g_sum == pytest.approx(w_sum, rel=1e-5, abs=1e-5 * w_norm + 1e-8), name
    assert got["metrics"].keys() == want["metrics"].keys()
    for name, value in want["metrics"].items():
        # Losses near 0 (a PPO loss at ratio 1 is float noise around 0): absolute tolerance at that scale.
        assert got["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-9), name
