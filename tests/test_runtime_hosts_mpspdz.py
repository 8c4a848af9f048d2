"""Every party on its own host: each in its own network namespace (`ip netns`, a veth pair into one bridge), under
the real MP-SPDZ. Skipped where MP-SPDZ or namespaces are unavailable (not root, no `ip`), never faked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from compiler.runtime import run
from compiler.runtime.emulation import namespaces_available, party_namespaces
from compiler.runtime.hosts import make_certificates
from compiler.runtime.mpspdz import MPSPDZ

pytestmark = pytest.mark.mpspdz

REPO = Path(__file__).resolve().parents[1]
PARTIES = 3
IMAGES = 4


@pytest.fixture
def namespaces() -> Iterator[list[tuple[str, str]]]:
    """(namespace, address) per party, on a private bridge (compiler.runtime.emulation); removed afterwards."""
    reason = namespaces_available()
    if reason:
        pytest.skip(f"network namespaces unavailable here: {reason}")
    with party_namespaces(PARTIES) as net:
        yield list(zip(net.namespaces, net.addresses))


def test_digits_model_with_every_party_in_its_own_namespace(mpspdz: MPSPDZ, tmp_path: Path,
                                                           namespaces: list[tuple[str, str]]) -> None:
    from benchmarks.models import ModelSpec, export_spec
    from benchmarks.pipeline import compile_model

    onnx_path = export_spec(ModelSpec("vit_2_4_8", "mu0.5"), tmp_path / "digits.onnx")
    out = tmp_path / "out"
    compile_model(onnx_path, "replicated-ring", 1, out)
    single = run(out, images=IMAGES, mpspdz=mpspdz, log=lambda m: None)

    hosts = tmp_path / "hosts.txt"
    hosts.write_text("".join(f"{address}:{6000 + i}\n" for i, (_, address) in enumerate(namespaces)))
    folders = make_certificates(tmp_path / "certs", PARTIES)
    env = {**os.environ, "MP_SPDZ_HOME": str(mpspdz.home)}
    procs = []
    for i, (ns, _) in enumerate(namespaces):
        command = ["ip", "netns", "exec", ns, sys.executable, "-m", "mpcvit.cli", "run", str(out), "--party", str(i),
                   "--hosts", str(hosts), "--certs", str(folders[i]), "--json", str(tmp_path / f"party{i}.json"),
                   "--timeout", "300", *(["--images", str(IMAGES)] if i == 1 else [])]
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        printed, errors = zip(*(proc.communicate(timeout=360) for proc in procs))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0, 0], errors
    results = [json.loads((tmp_path / f"party{i}.json").read_text()) for i in range(PARTIES)]
    # the same program everywhere: MP-SPDZ compared the hashes at start-up; each party printed its own
    assert len({r["bytecode_sha256"] for r in results}) == 1
    assert all(f"bytecode sha256 {results[0]['bytecode_sha256']}" in e for e in errors)
    assert "outputs" not in results[0] and "outputs" not in results[2]  # only the client receives the logits
    logits = np.array(results[1]["outputs"][0]["values"])
    # MP-SPDZ's probabilistic truncation draws fresh randomness in every run, so two runs on the same inputs differ
    # in the last fixed-point bits (a few 2^-16 per truncation, accumulated over the layers): 1e-3
    np.testing.assert_allclose(logits, single.logits, rtol=0, atol=1e-3)
    assert results[1]["max_logit_error"] < 0.05 and results[1]["top1_agreement"] == 1.0
    # the client's stdout and --json name each image's class (the run on one host found the same ones)
    classes = single.logits.argmax(axis=1).tolist()
    assert json.loads(printed[1])["predicted_class"] == results[1]["predicted_class"] == classes
    for ns, _ in namespaces:  # nothing left running in any namespace
        left = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        assert left == []
