"""Bench reports record what a Jetson or RTX run needs to be reproduced: versions, L4T, power mode, clocks and
tegrastats samples; here, without the probes, each field says why it is absent."""

from __future__ import annotations

import json
import os
import stat
import time

from moai_edge.bench.machine import machine_info
from moai_edge.bench.tegrastats import Tegrastats, parse_line

FIELDS = {"onnxruntime", "onnxruntime_gpu", "onnxruntime_providers", "cuda_python", "cuda_runtime", "cuda_driver",
          "cuda_toolkit", "gpu", "cudnn", "tensorrt", "l4t", "power_mode", "clocks"}


def test_the_report_records_every_gpu_field_or_why_it_is_absent(tiny_packages):
    info = machine_info(threads=1, engine_dir=tiny_packages["moai"])
    assert set(info["gpu_platform"]) == FIELDS
    json.dumps(info)
    if not os.path.exists("/etc/nv_tegra_release"):
        assert "not a Jetson" in info["gpu_platform"]["l4t"]["absent"]
        assert "nvpmodel" in info["gpu_platform"]["power_mode"]["absent"]


def test_power_mode_and_tegrastats_are_read_from_the_jetson_tools(tmp_path, monkeypatch):
    """Fake nvpmodel and tegrastats on PATH print what the real ones print on an Orin."""
    from moai_edge.engines.platform_info import power_mode

    for name, text in (("nvpmodel", "NV Power Mode: MAXN\\n0"),
                       ("tegrastats", "RAM 3000/15000MB CPU [5%@729] EMC_FREQ 12%@3199 GR3D_FREQ 87%@1300 "
                                      "VDD_IN 9876mW/9000mW")):
        tool = tmp_path / name
        body = f"echo '{text}'\nsleep 30\n" if name == "tegrastats" else f"echo '{text}'\n"
        tool.write_text("#!/bin/sh\n" + body)
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert power_mode().value == "NV Power Mode: MAXN 0"
    with Tegrastats(interval_ms=100) as t:
        time.sleep(0.5)  # a benchmark runs while it samples
    summary = t.summary()
    assert summary["samples"] == 1 and summary["median"] == {"gpu_load_pct": 87, "emc_load_pct": 12, "power_mw": 9876}
    assert parse_line("nothing here") == {}
    assert Tegrastats().summary()["skipped"].startswith("no tegrastats")
