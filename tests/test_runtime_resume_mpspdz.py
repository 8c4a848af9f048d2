"""A party killed in the middle of a 20-execution run under the real MP-SPDZ (skipped without it): the executions
done are kept in the results file, `--resume` runs the rest, and the result is the uninterrupted run's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from compiler.runtime import run
from compiler.runtime.mpspdz import MPSPDZ

pytestmark = pytest.mark.mpspdz

REPO = Path(__file__).resolve().parents[1]
IMAGES = 20


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the runner starts the parties directly)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def done_executions(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["executions"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_killed_party_resume_equals_uninterrupted_run(mpspdz: MPSPDZ, tmp_path: Path) -> None:
    from benchmarks.models import ModelSpec, export_spec
    from benchmarks.pipeline import compile_model

    onnx_path = export_spec(ModelSpec("vit_1_4_8", "mu0.5"), tmp_path / "m.onnx")
    out = tmp_path / "out"
    compile_model(onnx_path, "replicated-ring", 1, out)
    whole = run(out, images=IMAGES, per_execution=1, mpspdz=mpspdz, log=lambda m: None)

    json_path = tmp_path / "run.json"
    command = [sys.executable, "-m", "mpcvit.cli", "run", str(out), "--images", str(IMAGES), "--per-execution", "1",
               "--retries", "0", "--json", str(json_path)]
    runner = subprocess.Popen(command, cwd=REPO, env={**os.environ, "MP_SPDZ_HOME": str(mpspdz.home)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parties: set[int] = set()
    killed = None
    deadline = time.monotonic() + 300
    while runner.poll() is None and killed is None and time.monotonic() < deadline:
        if done_executions(json_path) >= 5:
            for pid in children(runner.pid):
                parties.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)  # a party of the execution in flight (a process this test started)
                    killed = pid
                    break
                except ProcessLookupError:
                    continue
        time.sleep(0.01)
    _, stderr = runner.communicate(timeout=120)
    assert killed is not None, "no party was running to be killed"
    assert runner.returncode == 2 and "failed (exit code" in stderr  # one error, not a traceback
    assert "--resume" in stderr  # and it says how to continue
    saved = json.loads(json_path.read_text())
    kept = len(saved["executions"])
    assert saved["complete"] is False and 5 <= kept < IMAGES
    assert [e["first"] for e in saved["executions"]] == list(range(kept))
    assert not [pid for pid in children(runner.pid) + sorted(parties) if alive(pid)]  # nothing left behind

    resumed = run(out, images=IMAGES, per_execution=1, json_path=json_path, resume=True, mpspdz=mpspdz,
                  log=lambda m: None)
    final = json.loads(json_path.read_text())
    assert final["complete"] is True and final["images"] == IMAGES and len(final["executions"]) == IMAGES
    kept_logits = np.array([e["outputs"][0] for e in saved["executions"]]).reshape(kept, -1)
    np.testing.assert_array_equal(resumed.logits[:kept], kept_logits)  # the kept executions are not rerun
    # MP-SPDZ's probabilistic truncation draws fresh randomness every run, so two runs differ in the last bits of
    # the fixed point (a few 2^-16 per truncation, accumulated over the layers): 1e-3, the bound
    np.testing.assert_allclose(resumed.logits, whole.logits, rtol=0, atol=1e-3)
    assert (resumed.logits.argmax(1) == whole.logits.argmax(1)).all()
    assert resumed.max_logit_error < 0.05 and resumed.rounds == whole.rounds
