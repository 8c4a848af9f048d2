"""Party processes: free ports, timeouts, crashes, Ctrl-C, and `run()` end to end — with fake MP-SPDZ parties.

The fake tree has a `compile.py` and `*-party.x` scripts that behave like MP-SPDZ's at the interface the runtime
uses (argv, port base + party number, Player-Data inputs, the end-of-run report, party 1's output lines).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from compiler.backend import write_client_input
from compiler.errors import MPSPDZError, UserError
from compiler.runtime import run
from compiler.runtime.mpspdz import MPSPDZ, mpspdz_version, protocol_spec
from compiler.runtime.processes import free_port_base, run_parties

FAKE_PARTY = r'''#!PYTHON
"""Fake MP-SPDZ party: FAKE_MODE = ok | crash | lost | hang (FAKE_BAD_PARTY picks the party that misbehaves;
FAKE_WHEN=v: only when party 1's input holds v; FAKE_ONCE=path: only while path does not exist, then creates it).
FAKE_LOOP: party 1's input is binary, as mpcvit-compile writes it: the int64 number of batches, then float64s."""
import os, socket, struct, subprocess, sys, time
args = sys.argv[1:]
index, program, base = int(args[-2]), args[-1], int(args[args.index("-pn") + 1])
listener = socket.socket()
listener.bind(("127.0.0.1", base + index))  # fails if another run uses the same port
print("Trying to run 64-bit computation", flush=True)
if os.environ.get("FAKE_LOOP"):
    raw = open("Player-Data/Input-Binary-P1-0", "rb").read()[8:]
    x = list(struct.unpack(f"<{len(raw) // 8}d", raw))
else:
    x = [float(v) for v in open("Player-Data/Input-P1-0").read().split()]
mode = os.environ.get("FAKE_MODE", "ok") if str(index) == os.environ.get("FAKE_BAD_PARTY", "1") else "ok"
if os.environ.get("FAKE_WHEN") and float(os.environ["FAKE_WHEN"]) not in x:
    mode = "ok"
if os.environ.get("FAKE_ONCE") and mode != "ok":
    if os.path.exists(os.environ["FAKE_ONCE"]):
        mode = "ok"
    else:
        open(os.environ["FAKE_ONCE"], "w").close()
if mode == "crash":
    print("Fatal error at prog-0:0 (INPUTMIXED): not enough inputs", flush=True)
    sys.exit(1)
if mode == "lost":
    print("Timed out waiting for peer. See https://mp-spdz.readthedocs.io/", flush=True)
    sys.exit(1)
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.environ["FAKE_PID_FILE"], "w").write(f"{os.getpid()} {child.pid}")
    time.sleep(600)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
if index == 1:  # the client: logits = 2 * its input, 3 per image
    for b in range(len(x) // 3):
        print(f"MPCVIT_OUT {b} [{', '.join(str(2 * v) for v in x[3 * b:3 * b + 3])}]")
print("Spent 0.1 seconds (1 MB, 30 rounds) on the online phase and 0.15 seconds (0.5 MB, 10 rounds) on the "
      "preprocessing/offline phase.")
print("Time = 0.25 seconds ")
print("Time1 = 0.125 seconds (0.5 MB, 7 rounds)")
print(f"Data sent = 1.5 MB in ~40 rounds (party {index} only; use '-v' for more details)")
print("Global data sent = 4.5 MB (all parties)")
'''
FAKE_COMPILE = ('#!PYTHON\nimport os, sys\nopen("compiled.txt", "w").write(" ".join(sys.argv[1:]))\n'
                'print("  " + os.environ.get("FAKE_TRIPLES", "12") + " integer triples")\n')


@pytest.fixture
def fake_mpspdz(tmp_path: Path) -> MPSPDZ:
    home = tmp_path / "MP-SPDZ"
    (home / "Compiler").mkdir(parents=True)
    (home / "Player-Data").mkdir()
    for i in range(3):
        (home / "Player-Data" / f"P{i}.pem").write_text("cert")
    for name, text in [("compile.py", FAKE_COMPILE), ("replicated-ring-party.x", FAKE_PARTY),
                       ("semi2k-party.x", FAKE_PARTY)]:
        (home / name).write_text(text.replace("PYTHON", sys.executable))
        (home / name).chmod(0o755)
    return MPSPDZ(home)


@pytest.fixture
def program_dir(tmp_path: Path) -> Path:
    """A backend output: batch 2, 3 logits per image, compiled for replicated-ring."""
    out = tmp_path / "out"
    (out / "Player-Data").mkdir(parents=True)
    (out / "prog.mpc").write_text("# fake\n")
    (out / "Player-Data" / "Input-P0-0").write_text("0\n")
    (out / "Player-Data" / "Input-P1-0").write_text("1 2 3 4 5 6\n")
    manifest = {"name": "prog", "protocol": "replicated-ring", "compile_flags": ["-E", "replicated-ring", "-R", "64"],
                "batch": 2, "output_shape": [2, 3], "f": 16, "k": 31, "expected": {"bytes_all": 4.5e6}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def write_floats(manifest: dict, images: np.ndarray, path: Path) -> None:
    path.write_text(" ".join(str(v) for v in images.ravel()) + "\n")


def pids_alive(*pids: int, grace_s: float = 2.0) -> list[int]:
    """The pids still running after `grace_s` (SIGKILL of a grandchild lands asynchronously)."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = [pid for pid in pids if _running(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:  # a zombie (exited, not yet reaped by init) is not a running orphan
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_free_port_base_gives_consecutive_bindable_ports() -> None:
    base = free_port_base(4)
    sockets = [socket.socket() for _ in range(4)]
    try:
        for offset, sock in enumerate(sockets):
            sock.bind(("127.0.0.1", base + offset))
        assert free_port_base(4) not in range(base - 3, base + 4)  # held ports are never handed out
    finally:
        for sock in sockets:
            sock.close()


def test_two_concurrent_runs_do_not_collide(fake_mpspdz: MPSPDZ, program_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SLEEP", "0.5")  # both runs hold their ports at the same time
    results: list = [None, None]

    def one(i: int) -> None:
        results[i] = run(program_dir, mpspdz=fake_mpspdz, log=lambda m: None)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.rounds for r in results] == [40, 40]


def test_crashing_party_stops_the_others(tmp_path: Path, fake_mpspdz: MPSPDZ, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    monkeypatch.setenv("FAKE_BAD_PARTY", "2")
    monkeypatch.setenv("FAKE_PID_FILE", str(tmp_path / "pids"))
    (tmp_path / "Player-Data").mkdir()
    (tmp_path / "Player-Data" / "Input-P1-0").write_text("1 2 3\n")
    spec = protocol_spec("replicated-ring")
    base = free_port_base(4)
    binary = str(fake_mpspdz.binary(spec.binary))
    commands = [[binary, *spec.party_command(i, base, "prog")[1:]] for i in range(3)]
    commands[0] = [sys.executable, "-c", "import sys, time; time.sleep(0.3); print('Fatal error: boom'); sys.exit(3)"]
    start = time.monotonic()
    with pytest.raises(MPSPDZError, match=r"party 0 failed \(exit code 3\); its last lines:\nFatal error: boom"):
        run_parties(commands, tmp_path, 30, tmp_path / "logs")
    assert time.monotonic() - start < 10
    assert pids_alive(*map(int, (tmp_path / "pids").read_text().split())) == []  # the hung party and its child


def test_timeout_kills_hanging_party_and_its_children(tmp_path: Path, fake_mpspdz: MPSPDZ, program_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    monkeypatch.setenv("FAKE_PID_FILE", str(tmp_path / "pids"))
    json_path = tmp_path / "result.json"
    with pytest.raises(MPSPDZError, match=r"timeout after 2 s: replicated-ring-party.x party 1 still running"):
        run(program_dir, timeout_s=2, json_path=json_path, mpspdz=fake_mpspdz, log=lambda m: None)
    assert not json_path.exists()  # a failed run never leaves a results file
    assert pids_alive(*map(int, (tmp_path / "pids").read_text().split())) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_cleans_up(tmp_path: Path, sig: int) -> None:
    pid_file = tmp_path / "pid"
    sleeper = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                     "time.sleep(600)"]
    threading.Timer(1.0, os.kill, (os.getpid(), sig)).start()
    with pytest.raises(KeyboardInterrupt):
        run_parties([sleeper, sleeper[:2] + ["import time; time.sleep(600)"]], tmp_path, 60, tmp_path / "logs")
    assert pids_alive(int(pid_file.read_text())) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's only


def test_run_parses_compares_and_writes_json(fake_mpspdz: MPSPDZ, program_dir: Path, tmp_path: Path) -> None:
    images = np.arange(9, dtype=np.float32).reshape(3, 3)  # 3 images → 2 batches of 2, the last one padded
    np.savez(tmp_path / "data.npz", x=images, y=np.array([2, 2, 0]))
    json_path = tmp_path / "res" / "result.json"

    def plain(x: np.ndarray) -> np.ndarray:  # image 0's logits reversed: its argmax differs, error 4
        logits = 2 * x
        logits[0] = logits[0, ::-1]
        return logits

    result = run(program_dir, "replicated-ring", data=tmp_path / "data.npz", network="wan", json_path=json_path,
                 mpspdz=fake_mpspdz, client_input_writer=write_floats, reference=plain, log=lambda m: None)
    # the fake party prints 2·x with repr precision: the parsed value is the float64 product, up to 1 ulp
    np.testing.assert_allclose(result.logits, 2 * images, rtol=1e-15, atol=0)
    assert (result.images, result.batches) == (3, 2)
    assert (result.time_s, result.bytes_party0, result.global_bytes, result.rounds) == (0.5, 3_000_000, 9_000_000, 80)
    assert result.top1_agreement == pytest.approx(2 / 3) and result.max_logit_error == pytest.approx(4)
    saved = json.loads(json_path.read_text())
    assert saved["accuracy"]["mpc_accuracy"] == pytest.approx(2 / 3)
    assert saved["network_emulation"] == "model"
    wan = saved["network_model"]  # 80 rounds × 20 ms one way + 3 MB at 100 Mbit/s (the cost model's WAN)
    assert wan["model_time_s"] == pytest.approx(80 * 0.02 + 3e6 * 8 / 100e6)
    assert saved["timers"]["1"] == {"seconds": 0.25, "bytes": 1_000_000, "rounds": 14}
    assert saved["protocol"] == "replicated-ring" and saved["online_only"] is False
    assert not list(fake_mpspdz.home.glob("Programs")) and not (fake_mpspdz.home / "compiled.txt").exists()


def test_missing_binary_and_certificates_are_named(fake_mpspdz: MPSPDZ, program_dir: Path) -> None:
    (fake_mpspdz.home / "Player-Data" / "P2.pem").unlink()
    with pytest.raises(MPSPDZError, match=r"replicated-ring needs SSL certificates P2\.pem .*setup-ssl\.sh 3"):
        run(program_dir, mpspdz=fake_mpspdz)
    manifest = json.loads((program_dir / "manifest.json").read_text())
    (program_dir / "manifest.json").write_text(json.dumps({**manifest, "protocol": "dealer-ring"}))
    with pytest.raises(MPSPDZError, match=r"lacks dealer-ring-party\.x .*make dealer-ring-party\.x"):
        run(program_dir, "dealer", mpspdz=fake_mpspdz)
    with pytest.raises(UserError, match="compiled for dealer-ring: recompile it with --protocol semi2k"):
        run(program_dir, "semi2k", mpspdz=fake_mpspdz)


def test_online_only_too_big_for_files_uses_the_v_split(fake_mpspdz: MPSPDZ, program_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Preprocessing files for 10M tuples would be ~40 GB: the run stays live and reports the online phase."""
    monkeypatch.setenv("FAKE_TRIPLES", "10000000")
    manifest = json.loads((program_dir / "manifest.json").read_text())
    (program_dir / "manifest.json").write_text(json.dumps({**manifest, "protocol": "semi2k"}))
    notes: list[str] = []
    result = run(program_dir, online_only=True, mpspdz=fake_mpspdz, log=notes.append)
    assert result.online_only and (result.time_s, result.bytes_party0, result.rounds) == (0.1, 1_000_000, 30)
    assert result.global_bytes is None and "11,001,000 preprocessing tuples" in notes[0]
    assert "online phase of MP-SPDZ's -v split" in result.to_json()["preprocessing"]


def _write_bad_data(path: Path, kind: str) -> None:
    if kind == "pickled":
        np.save(path.with_suffix(".npy"), np.array([{"x": 1}], dtype=object), allow_pickle=True)
        path.with_suffix(".npy").rename(path)
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), np.zeros((2, 3)))
        path.with_suffix(".npy").rename(path)
    elif kind == "truncated":
        np.savez(path.with_suffix(".tmp.npz"), x=np.zeros((2, 3)))
        path.write_bytes(path.with_suffix(".tmp.npz").read_bytes()[:60])
    else:
        arrays = {"empty": {"x": np.zeros((0, 3))}, "no_batch_axis": {"x": np.float32(1)},
                  "text": {"x": np.array(["a", "b"])}, "labels": {"x": np.zeros((2, 3)), "y": np.zeros(5)},
                  "shape": {"x": np.zeros((2, 4))}, "labels_only": {"y": np.zeros(2)},
                  "fractional_labels": {"x": np.zeros((2, 3)), "y": np.array([0.5, 1.0])},
                  "negative_labels": {"x": np.zeros((2, 3)), "y": np.array([1, -3])},
                  "label_beyond_classes": {"x": np.zeros((2, 3)), "y": np.array([1, 99])}}[kind]
        np.savez(path, **arrays)


@pytest.mark.parametrize("kind, message", [
    ("pickled", "holds pickled Python objects, which are not loaded"), ("npy", "a single .npy array, not an .npz archive"),
    ("truncated", "not a readable .npz archive"), ("empty", r"x has shape \[0, 3\]; give at least one image"),
    ("no_batch_axis", r"x has shape \[\]"), ("text", "arrays x/y are unreadable or not numeric"),
    ("labels", r"labels y have shape \[5\], expected \[2\]"),
    ("shape", r"images of shape \[4\], but the program was compiled for \[3\]; give x as \[N, 3\]"),
    ("labels_only", r"no image array \(found y\)"),
    ("fractional_labels", r"labels y must be whole class indices \(found dtype float64"),
    ("negative_labels", r"labels y must be class indices from 0 \(found -3\)"),
    ("label_beyond_classes", r"label 99 is not a class of this model's \d+ outputs"),
])
def test_bad_data_files_stop_before_any_party_runs(fake_mpspdz: MPSPDZ, program_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, kind: str, message: str) -> None:
    manifest = json.loads((program_dir / "manifest.json").read_text())
    (program_dir / "manifest.json").write_text(json.dumps({**manifest, "input_shape": [2, 3]}))
    monkeypatch.setenv("FAKE_MODE", "crash")  # a party that starts would fail with an MPSPDZError instead
    data = tmp_path / "data.npz"
    _write_bad_data(data, kind)
    with pytest.raises(UserError, match=rf"^--data {data}: {message}"):
        run(program_dir, data=data, mpspdz=fake_mpspdz, client_input_writer=write_floats, log=lambda m: None)


@pytest.mark.parametrize("images", [0, -3])
def test_non_positive_image_counts_are_rejected(fake_mpspdz: MPSPDZ, program_dir: Path, tmp_path: Path,
                                               images: int) -> None:
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 3)))  # x[:-3] would silently run 1 image
    with pytest.raises(UserError, match=rf"--images {images}: give a positive number of images"):
        run(program_dir, images=images, data=tmp_path / "data.npz", mpspdz=fake_mpspdz,
            client_input_writer=write_floats, reference=lambda x: 2 * x, log=lambda m: None)


@pytest.mark.parametrize("text", ["", "{truncated", "[1, 2]"])
def test_unreadable_manifest_is_one_line(fake_mpspdz: MPSPDZ, program_dir: Path, text: str) -> None:
    (program_dir / "manifest.json").write_text(text)
    with pytest.raises(UserError, match=r"manifest\.json: not (valid JSON|a JSON object).*recompile"):
        run(program_dir, mpspdz=fake_mpspdz)


def test_semi2k_warning_counts_every_execution_of_the_run(fake_mpspdz: MPSPDZ, program_dir: Path, tmp_path: Path) -> None:
    """1.5 GB per execution is fine once; 3 images in batches of 2 are two executions, 3 GB: warn with the total."""
    manifest = json.loads((program_dir / "manifest.json").read_text())
    (program_dir / "manifest.json").write_text(json.dumps(
        {**manifest, "protocol": "semi2k", "expected": {"bytes_all": 1.5e9, "time_s": 100.0}}))
    np.savez(tmp_path / "data.npz", x=np.zeros((3, 3)))
    notes: list[str] = []
    run(program_dir, data=tmp_path / "data.npz", mpspdz=fake_mpspdz, client_input_writer=write_floats,
        reference=lambda x: 2 * x, log=notes.append)
    assert [n for n in notes if n.startswith("warning")] == [
        "warning: semi2k generates every multiplication triple by OT: the cost model expects 3.0 GB and ~200 s for 2 "
        "execution(s) of this program; consider --online-only or replicated-ring/dealer"]


def test_unwritable_json_path_fails_before_the_run(fake_mpspdz: MPSPDZ, program_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "crash")  # a run that started would end in an MPSPDZError instead
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"--json .* is a folder; give a file path such as .*result\.json"):
        run(program_dir, json_path=tmp_path, mpspdz=fake_mpspdz)
    with pytest.raises(UserError, match=r"--json .*a_file/sub/r\.json: cannot create it under .*a_file"):
        run(program_dir, json_path=tmp_path / "a_file" / "sub" / "r.json", mpspdz=fake_mpspdz)


def test_digits_eval_images_are_the_normalised_test_split() -> None:
    from sklearn.datasets import load_digits

    from compiler.runtime.datasets import eval_images

    metadata = {"mpcvit.dataset": "digits", "mpcvit.input_mean": "[0.3]", "mpcvit.input_std": "[0.4]"}
    x, y = eval_images(metadata, 360)
    assert x.shape == (360, 1, 8, 8) and y.shape == (360,)
    pixels = np.round((x.astype(np.float64) * 0.4 + 0.3) * 16) + 0.0  # sklearn's 0..16 grey levels (no -0.0)
    digits = load_digits()
    label_of = {image.tobytes(): label for image, label in zip(digits.images, digits.target)}
    assert [label_of[image[0].tobytes()] for image in pixels] == y.tolist()  # sklearn's images, right labels
    assert np.bincount(y, minlength=10).min() >= 35  # stratified: every class ~36 times
    with pytest.raises(UserError, match="the test set has only 360 images"):
        eval_images(metadata, 361)


@pytest.mark.parametrize("layout, expected", [
    ("git", {"commit": "3a0a7b1d5e80e9f7e1b1ce76ae8b8a43931e80f4", "release": "0.4.2",
             "version": "commit 3a0a7b1d5e80e9f7e1b1ce76ae8b8a43931e80f4"}),
    ("archive", {"commit": None, "release": "0.4.2", "version": "release 0.4.2 or later"}),
    ("bare", {"commit": None, "release": None, "version": "unknown"}),
])
def test_mpspdz_version_whatever_way_the_tree_was_obtained(tmp_path: Path, layout: str, expected: dict) -> None:
    """A git checkout gives its commit; a release archive (no .git) its CHANGELOG release; else 'unknown'."""
    if layout != "bare":
        (tmp_path / "CHANGELOG.md").write_text("The changelog explains changes.\n\n## 0.4.2 (Dec 24, 2025)\n\n"
                                               "- x\n\n## 0.4.1 (Jun 1, 2025)\n")
    if layout == "git":
        (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
        (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
        (tmp_path / ".git" / "refs" / "heads" / "master").write_text(expected["commit"] + "\n")
    assert mpspdz_version(MPSPDZ(tmp_path)) == expected


def test_argmax_reveal_compares_classes_not_logits() -> None:
    """--reveal argmax programs reveal each image's class index [B, 1]: compared as classes (it crashed
    reshaping [B, C] logits into [B, 1], and the index's own argmax made every prediction class 0)."""
    from compiler.runtime.runner import compare_logits

    plain = np.array([[0.0, 1.0, 5.0], [3.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    report = compare_logits(np.array([[2.0], [0.0], [2.0]]), plain, np.array([2, 1, 1]), argmax=True)
    assert report["top1_agreement"] == pytest.approx(2 / 3) and report["mpc_accuracy"] == pytest.approx(1 / 3)
    assert "max_logit_error" not in report and report["plaintext_accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("missing", ["prog.mpc", "Player-Data/Input-P0-0"])
def test_incomplete_program_folder_is_one_line(fake_mpspdz: MPSPDZ, program_dir: Path, missing: str) -> None:
    """A folder with a manifest but without its program or weights fails before any party starts (it was a
    FileNotFoundError traceback from the overlay)."""
    name = json.loads((program_dir / "manifest.json").read_text())["name"]
    (program_dir / missing.replace("prog", name)).unlink()
    with pytest.raises(UserError, match=f"lacks {missing.replace('prog', name)}: it is not a complete compiled"):
        run(program_dir, "replicated-ring", mpspdz=fake_mpspdz, log=lambda m: None)


def test_one_image_without_its_batch_axis_runs_as_check_takes_it(fake_mpspdz: MPSPDZ, program_dir: Path,
                                                                   tmp_path: Path) -> None:
    from compiler.runtime.runner import _select_images

    manifest = json.loads((program_dir / "manifest.json").read_text())
    np.savez(tmp_path / "one.npz", x=np.arange(6.0).reshape(2, 3))  # the image shape [2, 3], no batch axis
    x, y = _select_images({**manifest, "input_shape": [4, 2, 3]}, None, tmp_path / "one.npz")
    assert x.shape == (1, 2, 3) and y is None


def test_data_images_may_be_named_like_the_model_input(fake_mpspdz: MPSPDZ, program_dir: Path, tmp_path: Path) -> None:
    """The file written for mpcvit-compile --check --data (the array named like the input) serves mpcvit run too."""
    from compiler.runtime.datasets import image_array

    images = np.random.default_rng(2).uniform(-1, 1, (3, 3))
    np.savez(tmp_path / "named.npz", image=images)
    result = run(program_dir, "replicated-ring", data=tmp_path / "named.npz", mpspdz=fake_mpspdz,
                 client_input_writer=write_floats, reference=lambda x: 2 * x, log=lambda m: None)
    # write_floats writes 6 decimals (0.5e-6 rounding) and the fake party doubles them; its print adds ~1e-8
    np.testing.assert_allclose(result.logits, 2 * images, rtol=0, atol=1.1e-6)
    assert image_array(["y", "image", "x"], "image") == "image" and image_array(["y", "b", "x"]) == "x"
    assert image_array(["y", "b"]) == "b" and image_array(["y"]) is None


def test_non_positive_timeout_is_rejected(fake_mpspdz: MPSPDZ, program_dir: Path) -> None:
    with pytest.raises(UserError, match=r"--timeout 0: give a positive number of seconds"):
        run(program_dir, "replicated-ring", timeout_s=0, mpspdz=fake_mpspdz, log=lambda m: None)


@pytest.fixture
def looped_dir(program_dir: Path) -> Path:
    """The fake program as mpcvit-compile writes it now: it loops over the batches party 1 sends (count first)."""
    manifest = json.loads((program_dir / "manifest.json").read_text())
    looped = {**manifest, "batch_loop": True, "input_shape": [2, 3], "expected": {"time_s": 0.5},
              "input_files": {"0": "Player-Data/Input-P0-0", "1": "Player-Data/Input-Binary-P1-0"}}
    (program_dir / "manifest.json").write_text(json.dumps(looped))
    write_client_input(looped, np.arange(1, 13, dtype=np.float64).reshape(4, 3),
                       program_dir / "Player-Data" / "Input-Binary-P1-0")
    return program_dir


def test_every_run_reports_its_error_on_the_compiled_in_images(fake_mpspdz: MPSPDZ, looped_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --images/--data the float model runs on the images party 1's compiled-in file holds (it said null)."""
    monkeypatch.setenv("FAKE_LOOP", "1")
    seen: list[np.ndarray] = []

    def plain(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return 2 * x + np.array([0.0, 0.0, 0.25])  # 0.25 off in the last logit: the error reported

    result = run(looped_dir, mpspdz=fake_mpspdz, reference=plain, log=lambda m: None)
    np.testing.assert_array_equal(seen[0], np.arange(1, 13).reshape(4, 3))  # exact decimals, read back exactly
    assert result.images == 4 and result.max_logit_error == pytest.approx(0.25) and result.top1_agreement == 1.0
    assert result.details["compiled_in_input"] and result.details["throughput"]["executions"] == 1


def test_images_per_execution_from_the_cost_model() -> None:
    """Start-up (1 s) at most 5 % of an execution: 0.5 s per batch -> 40 batches, spread evenly over executions."""
    from compiler.runtime.runner import images_per_execution

    manifest = {"batch": 2, "expected": {"time_s": 0.5}}
    assert images_per_execution(manifest, 200) == 68  # 100 batches: 3 executions of 34, 34, 32
    assert images_per_execution(manifest, 7) == 8  # one execution, whole batches
    assert images_per_execution({"batch": 1, "expected": {"time_s": 60.0}}, 10) == 1  # long batches: one each


def test_results_stream_and_a_transient_failure_is_retried(fake_mpspdz: MPSPDZ, looped_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """5 images, 2 per execution: the execution holding image value 7 loses a peer once and is repeated."""
    monkeypatch.setenv("FAKE_LOOP", "1")
    monkeypatch.setenv("FAKE_MODE", "lost")
    monkeypatch.setenv("FAKE_BAD_PARTY", "2")
    monkeypatch.setenv("FAKE_WHEN", "7")
    monkeypatch.setenv("FAKE_ONCE", str(tmp_path / "failed-once"))
    images = np.arange(15, dtype=np.float64).reshape(5, 3)
    np.savez(tmp_path / "data.npz", x=images)
    notes: list[str] = []
    json_path = tmp_path / "result.json"
    result = run(looped_dir, data=tmp_path / "data.npz", per_execution=2, json_path=json_path, mpspdz=fake_mpspdz,
                 reference=lambda x: 2 * x, log=notes.append)
    np.testing.assert_array_equal(result.logits, 2 * images)
    saved = json.loads(json_path.read_text())
    assert saved["complete"] is True and [e["attempts"] for e in saved["executions"]] == [1, 2, 1]
    assert saved["throughput"]["retried_executions"] == 1 and "Timed out waiting for peer" in notes[-1]
    monkeypatch.setenv("FAKE_ONCE", str(tmp_path / "again"))
    with pytest.raises(MPSPDZError, match="party 2 failed"):  # a second loss of the same execution is final
        run(looped_dir, data=tmp_path / "data.npz", per_execution=2, retries=0, mpspdz=fake_mpspdz,
            reference=lambda x: 2 * x, log=notes.append)


def test_an_interrupted_run_keeps_its_executions_and_resumes(fake_mpspdz: MPSPDZ, looped_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LOOP", "1")
    images = np.arange(30, dtype=np.float64).reshape(10, 3)
    np.savez(tmp_path / "data.npz", x=images)
    json_path = tmp_path / "result.json"
    options = dict(data=tmp_path / "data.npz", per_execution=2, json_path=json_path, mpspdz=fake_mpspdz,
                   reference=lambda x: 2 * x, log=lambda m: None)
    monkeypatch.setenv("FAKE_MODE", "crash")  # not transient: the execution holding value 19 stops the run
    monkeypatch.setenv("FAKE_WHEN", "19")
    with pytest.raises(MPSPDZError, match="party 1 failed"):
        run(looped_dir, **options)
    saved = json.loads(json_path.read_text())
    assert saved["complete"] is False and [e["first"] for e in saved["executions"]] == [0, 2, 4]
    with pytest.raises(UserError, match=r"records another run \(its images_per_execution differ"):
        run(looped_dir, **{**options, "per_execution": 4}, resume=True)
    monkeypatch.setenv("FAKE_MODE", "ok")
    result = run(looped_dir, **options, resume=True)
    np.testing.assert_array_equal(result.logits, 2 * images)
    saved = json.loads(json_path.read_text())
    assert saved["complete"] is True and saved["batches"] == 5 and len(saved["executions"]) == 5
    with pytest.raises(UserError, match="already complete"):
        run(looped_dir, **options, resume=True)


def test_host_files_and_party_failures_are_one_line(tmp_path: Path) -> None:
    from compiler.runtime.hosts import explain_failure, read_hosts
    from compiler.runtime.processes import PartyFailure

    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# parties 0..2\n10.0.0.1\n\n10.0.0.2:7001\n10.0.0.3:7002\n")
    assert read_hosts(hosts, 3) == [("10.0.0.1", 5000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)]  # 5000 + party
    with pytest.raises(UserError, match=r"--hosts .*: 3 host line\(s\), the protocol needs 4"):
        read_hosts(hosts, 4)
    hosts.write_text("10.0.0.1:http\n")
    with pytest.raises(UserError, match=r"line 1 '10.0.0.1:http' is not host or host:port"):
        read_hosts(hosts, 1)
    parsed = [("10.0.0.1", 5000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)]

    def failure(last: str) -> str:
        return str(explain_failure(PartyFailure(f"party failed (exit code 1); its last lines:\n{last}", False), 0,
                                   parsed, "ab" * 32, tmp_path))

    assert failure("cannot connect from P0 to 10.0.0.2:7001 after 40 attempts in 60 seconds because Connection "
                   "refused.") == ("party 0: no answer from party 1 at 10.0.0.2:7001; start `mpcvit run --party 1` "
                                   "on that host with the same --hosts file, and open that port")
    assert failure("Binding to socket on P0:5000 failed (Address already in use), trying again").startswith("party 0: port 5000 on this host is in use")
    assert "the certificates differ; make them once with `mpcvit certs`" in failure(
        "Server-side handshake with P2 failed. Make sure both sides have the necessary certificate")
    assert "different programs (bytecode sha256 here abababab" in failure("program differs between parties")


def test_certificates_follow_setup_ssl(tmp_path: Path) -> None:
    """Party i's folder: its own key, every party's certificate (CN P<j>) and the c_rehash links MP-SPDZ needs."""
    import shutil
    import subprocess

    from compiler.runtime.hosts import make_certificates

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folders = make_certificates(tmp_path / "certs", 3)
    assert [f.name for f in folders] == ["party0", "party1", "party2"] and not (tmp_path / "certs" / "keys").exists()
    for i, folder in enumerate(folders):
        names = sorted(p.name for p in folder.iterdir() if not p.is_symlink())
        assert names == sorted([f"P{i}.key", "P0.pem", "P1.pem", "P2.pem"])
        assert len([p for p in folder.iterdir() if p.is_symlink() and p.name.endswith(".0")]) == 3
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(folders[0] / "P2.pem")],
                             capture_output=True, text=True).stdout
    assert "CN = P2" in subject or "CN=P2" in subject


def test_party_port_in_use_is_one_line_before_mpspdz_starts(fake_mpspdz: MPSPDZ, looped_dir: Path,
                                                            tmp_path: Path) -> None:
    from compiler.runtime.hosts import run_party

    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("P1.key", "P0.pem", "P1.pem", "P2.pem"):
        (certs / name).write_text("x")
    base = free_port_base(3)
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("".join(f"127.0.0.1:{base + i}\n" for i in range(3)))
    holder = socket.socket()
    holder.bind(("127.0.0.1", base + 1))
    holder.listen()
    try:  # MP-SPDZ itself would retry binding for 10 minutes
        with pytest.raises(UserError, match=rf"party 1: port {base + 1} on this host is in use"):
            run_party(looped_dir, 1, hosts, certs=certs, mpspdz=fake_mpspdz, log=lambda m: None)
        with pytest.raises(UserError, match=r"--batches 3: party 1's 4 images are 2 batches of 2; give that number"):
            run_party(looped_dir, 1, hosts, certs=certs, batches=3, mpspdz=fake_mpspdz, log=lambda m: None)
    finally:
        holder.close()
    (certs / "P1.key").unlink()
    with pytest.raises(UserError, match=r"lacks P1\.key; make the parties' certificates with `mpcvit certs"):
        run_party(looped_dir, 1, hosts, certs=certs, mpspdz=fake_mpspdz, log=lambda m: None)


def test_a_port_left_in_time_wait_by_a_finished_run_is_free() -> None:
    """A rerun right after a run: the earlier listener's accepted connection lingers in TIME_WAIT (closed by the
    listener's side first), which MP-SPDZ's SO_REUSEADDR bind ignores, so the probe must too; a live listener is
    still refused."""
    from compiler.runtime.hosts import check_port_free

    port = free_port_base(1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    with pytest.raises(UserError, match=rf"party 1: port {port} on this host is in use"):
        check_port_free(port, 1, "hosts.txt")
    accepted.close()  # the listening side closes first: its end of the connection enters TIME_WAIT
    listener.close()
    client.close()
    check_port_free(port, 1, "hosts.txt")


def test_certificates_refuse_a_bad_folder_or_validity_in_one_line(tmp_path: Path) -> None:
    from compiler.runtime.hosts import make_certificates

    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"mpcvit certs: cannot make the folder .*afile \(Not a directory\)"):
        make_certificates(tmp_path / "afile", 3)
    with pytest.raises(UserError, match=r"--days 0: certificates must stay valid for at least 1 day"):
        make_certificates(tmp_path / "certs", 3, days=0)
    assert not (tmp_path / "certs").exists()


def test_an_unwritable_json_path_fails_before_any_party_starts(fake_mpspdz: MPSPDZ, program_dir: Path) -> None:
    """/proc passes a permission check as root but takes no new file: probed with a real file, not os.access."""
    with pytest.raises(UserError, match=r"--json /proc/x\.json: cannot create it under /proc"):
        run(program_dir, json_path="/proc/x.json", mpspdz=fake_mpspdz)


def test_a_compiled_manifest_without_a_key_is_one_line(tmp_path: Path) -> None:
    from compiler.runtime.runner import load_manifest

    (tmp_path / "manifest.json").write_text(json.dumps({
        "name": "p", "protocol": "dealer", "compile_flags": [], "batch": 1, "output_shape": [1, 3], "f": 16,
        "k": 31, "input_files": {"0": "a", "1": "b"}}))
    with pytest.raises(UserError, match="lacks input_shape; recompile"):
        load_manifest(tmp_path)


def test_the_client_guard_names_non_finite_images() -> None:
    from compiler.calibrate import check_client_images

    manifest = {"calibration": {"input_bound": 8.0, "input_range": [-2.0, 2.0]}}
    with pytest.raises(UserError, match="NaN or infinite"):
        check_client_images(manifest, np.array([0.5, np.nan]))
    check_client_images(manifest, np.array([0.5, -7.9]))  # within the bound: accepted
