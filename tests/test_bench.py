"""`spinenet bench diagnose` runs and prints its figures for both engines (the figures are not asserted)."""

from __future__ import annotations

import re

import pytest

from spinenet.cli import main as cli_main

pytest.importorskip("onnxruntime")


def test_bench_diagnose_prints_both_engines(capsys):
    rc = cli_main(["bench", "diagnose", "--images", "4", "--distinct", "2", "--batch-size", "2", "--repeats", "1",
                   "--threads", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"FLOPs per image: U-Net 1\.\d+ G \+ DiscNet", out)  # 8->256 U-Net at 256x256
    assert re.search(r"segmenter precision \(torch\): (32|bf16),", out)
    for engine in ("torch", "onnxruntime"):
        assert re.search(rf"^{engine}\s+batch\s+2: end to end\s+[\d.]+ images/s", out, re.M), engine
    assert "onnxruntime / torch (best batch each, same run):" in out
    assert re.search(r"best: [\d.]+ images/s end to end with (torch|onnxruntime)", out)


def test_every_benchmark_has_a_command_line(capsys):
    """A benchmark listed in spinenet.bench.BENCHMARKS is runnable as ``spinenet bench <name>`` (one was
    listed without a parser and raised a KeyError)."""
    from spinenet.bench import BENCHMARKS
    from spinenet.cli import main as cli_main
    from spinenet.cli.bench import _RUNNERS

    assert set(_RUNNERS) == set(BENCHMARKS)
    for name in BENCHMARKS:
        with pytest.raises(SystemExit) as done:
            cli_main(["bench", name, "--help"])
        assert done.value.code == 0
        assert f"spinenet bench {name}" in capsys.readouterr().out


def test_a_config_error_in_bench_train_is_one_line(capsys):
    """A config that Hydra composes outside ``spinenet train`` (here ``bench train --override``) fails on one
    line naming the setting, not with a traceback."""
    from spinenet.cli import main as cli_main

    rc = cli_main(["bench", "train", "--experiment", "demo", "--override", "model=smp", "--steps", "1",
                   "--warmup", "0", "--rounds", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("spinenet bench: error: model.net: unknown option(s) ['base_channels', 'depth'")
    assert "Traceback" not in "\n".join(err)
