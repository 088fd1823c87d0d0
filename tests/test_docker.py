"""The images cannot be built here (no Docker engine): lint them as text."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest))
    return out


def test_lean_image_pins_one_tag_runs_non_root_with_bubblewrap():
    ins = _instructions(DOCKER / "lean-verifier.Dockerfile")
    ops = [op for op, _ in ins]
    assert ops[0] == "FROM" and all(op in {"FROM", "ARG", "RUN", "USER", "WORKDIR", "ENV", "COPY", "CMD"} for op in ops)
    args = {rest.split("=")[0]: rest.split("=")[1] for op, rest in ins if op == "ARG"}
    # toolchain, Mathlib and REPL at the same tag
    assert args["LEAN_TAG"] == args["MATHLIB_TAG"] == args["REPL_TAG"]
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    assert "bubblewrap" in runs and "lake exe cache get" in runs and "torch==2.13.0" in runs
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1] != "root"
    assert ops.index("USER") < ops.index("CMD")


def test_gpu_image_installs_the_gpu_extra():
    ins = _instructions(DOCKER / "gpu.Dockerfile")
    assert ins[0][0] == "FROM" and "vllm" in ins[0][1]
    assert any(op == "RUN" and "[gpu]" in rest for op, rest in ins)


def test_compose_has_broker_database_flower_and_workers():
    spec = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = spec["services"]
    assert {"redis", "postgres", "flower", "verify", "gpu"} <= set(services)
    for name in ("verify", "gpu"):
        env = services[name]["environment"]
        assert env["PROVER_DB_URL"].startswith("postgresql://")
        assert env["PROVER_BROKER_URL"].startswith("redis://")
        assert "worker" in services[name]["command"]
    assert "verify" in services["verify"]["command"][services["verify"]["command"].index("--queues") + 1]
    for name in ("verify", "gpu"):
        build = services[name]["build"]
        assert (DOCKER.parent / build["context"].replace("..", ".") / build["dockerfile"]).exists() or (
            DOCKER / Path(build["dockerfile"]).name).exists()
