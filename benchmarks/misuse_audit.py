"""Misuse audit: each case run as a user would, through the real `vgg-mobile` command.

    uv run python benchmarks/misuse_audit.py [--keep DIR] [--only-hostile]

`--only-hostile` runs only the files and values crafted to break the readers (a manifest
nested 100,000 deep, labels that are not UTF-8, a TOML nested 10,000 deep, `inf` and 10^20
settings, a 50 MB value, names that are not UTF-8, classes of one image), on the sample data
and a 1-epoch run.

Builds a small world in a temporary folder (the sample data, a 1-epoch MobileNetV2 run, its
export and demo), then runs every case: `--force` on folders vgg-mobile did not write, outputs
that overlap inputs, names that climb out of `--out`, models that would run code, damaged
files, bad flag values, a second writer, Ctrl-C during a replacement, the demo server, and the
prediction server (`serve-model`): idle connections under a 1,024 open-file limit, decode
bombs, uploads cut short, formats training does not read, a client that hangs up, a model that
fails only when run. For each case it prints the exit code (the HTTP status for the prediction
server) and whether what must be kept was kept (a SHA-256 of every file before and after). A
row that breaks its rule is marked `FAIL` and the script exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from vgg_mobile.cli.common import served_address
from vgg_mobile.core import processes
from vgg_mobile.core.outputs import replacing_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))


def vgg(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgg_mobile", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def digest(path: Path) -> dict:
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


@dataclasses.dataclass
class Row:
    case: str
    code: int | str
    expected: str
    kept: str
    ok: bool
    message: str


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:150]


def user_folder(path: Path) -> Path:
    (path / "photos").mkdir(parents=True)
    (path / "photos" / "beach.jpg").write_bytes(b"jpeg")
    (path / "thesis.docx").write_text("chapter 1")
    (path / "manifest.json").write_text('{"name": "app"}')
    return path


def dot_folder(path: Path) -> Path:
    (path / ".git").mkdir(parents=True)
    (path / ".git" / "config").write_text("[core]")
    (path / ".env").write_text("TOKEN=1")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="Work here and keep it.")
    parser.add_argument("--only-hostile", action="store_true",
                        help="Run only the hostile-input cases (files and values crafted to "
                             "break the readers), on the sample data and a 1-epoch run.")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="vgg-misuse-"))
    base.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []

    def case(name: str, argv: list, expect: int | tuple, keep: list[Path] = (),
             extra: Callable[[subprocess.CompletedProcess], tuple[bool, str]] | None = None,
             timeout: float = 600):
        before = {str(p): digest(p) for p in keep}
        result = vgg(*argv, timeout=timeout)
        expected = expect if isinstance(expect, tuple) else (expect,)
        kept = all(Path(p).exists() and digest(Path(p)) == d for p, d in before.items())
        ok = result.returncode in expected and kept and "Traceback" not in result.stderr
        note = "all" if keep else "-"
        if extra is not None:
            extra_ok, note = extra(result)
            ok = ok and extra_ok
        if keep and not kept:
            note = "LOST"
        rows.append(Row(name, result.returncode, "/".join(map(str, expected)), note, ok,
                        last_line(result.stderr)))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: exit {result.returncode}", flush=True)

    data = base / "data"
    print(f"building the world in {base} ...", flush=True)
    vgg("sample-data", data, "--images-per-class", "12", "--image-size", "32", check=True)
    run = base / "run"
    tiny = ["--architecture", "mobilenet_v2_0.35", "--head-units", "0", "--image-size", "32",
            "--weights", "none", "--batch-size", "8"]
    vgg("train", data, "--out", run, "--epochs", "1", *tiny, "--quiet", check=True)
    hostile_input_cases(base, data, run, tiny, case)
    if args.only_hostile:
        return report(rows, base, args.keep)
    export = base / "export"
    vgg("convert", run, "--out", export, "--flavour", "dynamic", "--tfjs-quantization", "none",
        check=True)
    site = base / "site"
    vgg("web-demo", site, "--model", export, check=True)

    # --force on folders vgg-mobile did not write.
    work, repo = user_folder(base / "vA"), dot_folder(base / "repo")
    for folder in (work, repo):
        label = "someone's folder with its own manifest.json" if folder == work else "a folder of dotfiles only"
        case(f"train --force over {label}",
             ["train", data, "--out", folder, "--force", *tiny, "--epochs", "1"], 2, [folder])
    case("distill --force over someone's folder",
         ["distill", "--teacher", run, "--data", data, "--out", work, "--force", "--image-size", "32"],
         2, [work])
    case("prune --force over someone's folder",
         ["prune", run, "--data", data, "--out", work, "--force"], 2, [work])
    case("qat --force over someone's folder", ["qat", run, "--data", data, "--out", work, "--force"],
         2, [work])

    # Names and paths.
    important = base / "abs" / "important_dynamic.tflite"
    important.parent.mkdir()
    important.write_bytes(b"keep")
    case("convert --name ../../evil (budget missed too)",
         ["convert", run, "--out", base / "o1", "--name", "../../evil", "--flavour", "dynamic",
          "--no-tfjs", "--max-size", "1kB"], 2, [run],
         lambda r: (not list(base.parent.glob("evil*")) and not (base / "o1").exists(),
                    "nothing written"))
    case("convert --name /abs/path/important",
         ["convert", run, "--out", base / "o2", "--name", important.parent / "important",
          "--flavour", "dynamic", "--no-tfjs"], 2, [important])
    config = base / "evil.toml"
    config.write_text('[export]\nname = "../../evil"\n')
    case("pipeline with [export] name = \"../../evil\"",
         ["pipeline", data, "--out", base / "p1", "--config", config], 2, [],
         lambda r: (not (base / "p1").exists(), "nothing written"))

    # A run directory that would run code, or point outside itself.
    marker = base / "PWNED"
    evil = base / "evil_run"
    shutil.copytree(run, evil)
    _lambda_h5(evil / "model.h5", marker)
    manifest = json.loads((evil / "manifest.json").read_text())
    manifest["model_file"] = "model.h5"
    (evil / "manifest.json").write_text(json.dumps(manifest))
    case("evaluate a run whose model.h5 holds a Lambda",
         ["evaluate", evil, "--data", data], 2, [evil],
         lambda r: (not marker.exists(), "no code ran" if not marker.exists() else "CODE RAN"))
    outside = base / "outside_run"
    shutil.copytree(run, outside)
    manifest = json.loads((outside / "manifest.json").read_text())
    manifest["model_file"] = str((run / "model.keras").resolve())
    (outside / "manifest.json").write_text(json.dumps(manifest))
    case("evaluate a run whose model_file is an absolute path elsewhere",
         ["evaluate", outside, "--data", data], 2, [outside])

    # --force on inputs.
    case("convert RUN --out RUN --force", ["convert", run, "--out", run, "--force"], 2, [run])
    case("convert --data D --out D --force",
         ["convert", run, "--data", data, "--out", data, "--force"], 2, [data])
    assets = base / "app" / "src" / "main" / "assets"
    assets.mkdir(parents=True)
    (assets / "fonts.ttf").write_bytes(b"font")
    case("convert --android app/src/main/assets --force (other assets there)",
         ["convert", run, "--out", base / "o3", "--android", assets, "--force", "--no-tfjs"], 2,
         [assets])
    case("web-demo wx --model wx --force", ["web-demo", export, "--model", export, "--force"], 2,
         [export])
    case("train D --out D/run", ["train", data, "--out", data / "run", *tiny, "--epochs", "1"], 2,
         [data])

    # Ctrl-C two seconds into `train --force` over a finished run.
    before = digest(run)
    process = subprocess.Popen([sys.executable, "-m", "vgg_mobile", "train", data, "--out", run,
                                "--force", *tiny, "--epochs", "3", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Two seconds into the command itself: on a loaded machine the interpreter may still be
    # starting after two seconds of wall time.
    deadline = time.monotonic() + 120
    while not replacing_path(run).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    kept = digest(run) == before
    rows.append(Row("Ctrl-C 2 s into train --force over a finished run", process.returncode,
                    "130", "all" if kept else "LOST",
                    process.returncode == 130 and kept and "left as it was" in stderr,
                    last_line(stderr)))

    # Two pipelines on one OUT.
    out = base / "pipe"
    first = subprocess.Popen([sys.executable, "-m", "vgg_mobile", "pipeline", data, "--out", out],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = base / ".pipe.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    case("a second pipeline on the same --out", ["pipeline", data, "--out", out], 4, [],
         lambda r: ("pid" in r.stderr, "first keeps running"))
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=300)

    # Hidden leftovers of a killed export.
    leftover = base / ".export2.a1b2.partial"
    leftover.mkdir()
    (base / ".export2.replacing").mkdir()
    case("convert after a killed one left hidden folders",
         ["convert", run, "--out", base / "export2", "--flavour", "dynamic", "--no-tfjs"], 0, [],
         lambda r: (not leftover.exists() and not (base / ".export2.replacing").exists(),
                    "leftovers removed"))

    # Damaged model files.
    tflite = next(export.glob("*.tflite"))
    rng = random.Random(0)
    codes = []
    for i in range(12):
        data_bytes = bytearray(tflite.read_bytes())
        for _ in range(4):
            data_bytes[rng.randrange(len(data_bytes))] = rng.randrange(256)
        damaged = base / f"damaged_{i}.tflite"
        damaged.write_bytes(bytes(data_bytes))
        codes.append(vgg("inspect", damaged).returncode)
    rows.append(Row("inspect: 12 .tflite files with 4 random bytes changed",
                    ",".join(sorted({str(c) for c in codes})), "0/2", "-",
                    set(codes) <= {0, 2}, ""))

    # Flag values and files of the wrong type.
    for name, argv in [
        ("--max-size nan", ["convert", run, "--out", base / "o4", "--max-size", "nan"]),
        ("--max-size inf", ["convert", run, "--out", base / "o4", "--max-size", "inf"]),
        ("--min-agreement abc", ["convert", run, "--out", base / "o4", "--min-agreement", "abc"]),
        ("--max-accuracy-drop x", ["convert", run, "--out", base / "o4", "--max-accuracy-drop", "x"]),
        ("serve --port 99999", ["serve", site, "--port", "99999"]),
        ("evaluate --batch-size 0", ["evaluate", run, "--data", data, "--batch-size", "0"]),
        ("train --image-size 20000", ["train", data, "--out", base / "big", "--image-size", "20000"]),
    ]:
        case(name, argv, 2)
    wrong = base / "wrong_type"
    shutil.copytree(run, wrong)
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["input"] = {"size": "big"}
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    case("evaluate: a manifest field of the wrong type", ["evaluate", wrong, "--data", data], 2)
    mismatch = base / "mismatch"
    shutil.copytree(run, mismatch)
    manifest = json.loads((mismatch / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][:3]
    manifest["num_classes"] = 3
    (mismatch / "manifest.json").write_text(json.dumps(manifest))
    (mismatch / "labels.txt").write_text("".join(f"{c}\n" for c in manifest["classes"]))
    three = base / "data_three"
    shutil.copytree(data, three, ignore=shutil.ignore_patterns("triangle"))
    case("evaluate: a model that does not match its manifest",
         ["evaluate", mismatch, "--data", three], 2, [],
         lambda r: ("outputs 4 classes but the manifest lists 3" in r.stderr, "-"))

    # Data folders.
    selfclass = base / "data_self"
    shutil.copytree(data, selfclass)
    (selfclass / "selfclass").symlink_to(".")
    case("train on a folder with a symlink class -> .",
         ["train", selfclass, "--out", base / "r_self", *tiny, "--epochs", "1"], 2)
    newline = base / "data_newline"
    shutil.copytree(data, newline)
    os.rename(newline / "circle", newline / "cir\ncle")
    case("train on a class folder named with a newline",
         ["train", newline, "--out", base / "r_nl", *tiny, "--epochs", "1"], 2)
    nested = base / "data_nested"
    shutil.copytree(data, nested)
    shutil.copytree(run, nested / "old_run")
    case("train on a folder holding an earlier run",
         ["train", nested, "--out", base / "r_nested", *tiny, "--epochs", "1"], 2)

    # The demo server.
    (site / ".env").write_text("TOKEN=1")
    server = subprocess.Popen([sys.executable, "-m", "vgg_mobile", "serve", site, "--host",
                               "0.0.0.0", "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        answers = {}
        for path in ("/.env", "/.git/config", "/index.html%00.js", "/index.html"):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", path)
            answers[path] = connection.getresponse().status
            connection.close()
    finally:
        server.send_signal(signal.SIGINT)
        _, server_err = server.communicate(timeout=30)
    warned = "every interface" in server_err or "beyond this machine" in server_err
    ok = (answers["/.env"] == 404 and answers["/.git/config"] == 404
          and answers["/index.html%00.js"] in (400, 404) and answers["/index.html"] == 200
          and warned and "Traceback" not in server_err)
    rows.append(Row("serve --host 0.0.0.0; GET /.env, /.git/config, a %00 path, then /index.html",
                    " ".join(str(v) for v in answers.values()), "404 404 4xx 200",
                    "warned" if warned else "no warning", ok, ""))

    rows += serving_cases(base, export)
    report(rows, base, args.keep)


def report(rows: list[Row], base: Path, keep: Path | None) -> None:
    """Prints the table and the messages, removes the world unless kept, exits 1 on a FAIL."""
    print()
    print("| case | exit | expected | kept | result |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.case} | {row.code} | {row.expected} | {row.kept} | "
              f"{'ok' if row.ok else 'FAIL'} |")
    print()
    for row in rows:
        if row.message:
            print(f"- {row.case}: `{row.message}`")
    if keep is None:
        shutil.rmtree(base, ignore_errors=True)
    sys.exit(0 if all(row.ok for row in rows) else 1)


def hostile_input_cases(base: Path, data: Path, run: Path, tiny: list[str], case: Callable) -> None:
    """Files and values crafted to break the readers: each must exit 2 with one line naming
    the file or field (or, for a file name that is not UTF-8, be skipped and named printably)."""
    from PIL import Image

    def copied_run(name: str, manifest_text: str | None = None, labels: bytes | None = None) -> Path:
        folder = base / name
        shutil.copytree(run, folder)
        if manifest_text is not None:
            (folder / "manifest.json").write_text(manifest_text)
        if labels is not None:
            (folder / "labels.txt").write_bytes(labels)
        return folder

    def one_line(result) -> tuple[bool, str]:
        lines = result.stderr.strip().splitlines()
        return len(lines) == 1 and len(lines[0]) < 2_100, f"{len(result.stderr)} chars"

    manifest = json.loads((run / "manifest.json").read_text())
    deep = copied_run("deep_run", "[" * 100_000 + "]" * 100_000)
    case("evaluate: manifest.json nested 100,000 deep", ["evaluate", deep, "--data", data], 2,
         [deep], lambda r: ("manifest.json: not valid JSON" in r.stderr, "-"))
    big = copied_run("big_run", json.dumps({**manifest, "input": "big"}))
    case('evaluate: "input": "big" in manifest.json', ["evaluate", big, "--data", data], 2, [big],
         lambda r: ("input must be an object" in r.stderr, "-"))
    latin = copied_run("latin_run", labels="".join(f"{c}\n" for c in manifest["classes"])
                       .replace("circle", "cercle\xe9").encode("latin-1"))
    case("evaluate: labels.txt not UTF-8", ["evaluate", latin, "--data", data], 2, [latin],
         lambda r: ("labels.txt: not UTF-8" in r.stderr, "-"))

    def pipeline_case(name: str, text: str, words: str) -> None:
        config, out = base / "hostile.toml", base / "p_hostile"
        config.write_text(text)
        case(name, ["pipeline", data, "--out", out, "--config", config], 2, [config],
             lambda r: (words in r.stderr and not out.exists() and one_line(r)[0],
                        one_line(r)[1]))

    pipeline_case("pipeline: TOML nested 10,000 deep",
                  "[teacher]\nepochs = " + "[" * 10_000 + "]" * 10_000 + "\n", "nested too deep")
    pipeline_case("pipeline: learning_rate = inf", "[teacher]\nlearning_rate = inf\n",
                  "learning_rate=inf")
    pipeline_case("pipeline: epochs = 10^20", "[teacher]\nepochs = 100000000000000000000\n",
                  "epochs=100000000000000000000")
    pipeline_case("pipeline: a 50 MB string value",
                  '[teacher]\narchitecture = "' + "x" * 50_000_000 + '"\n', "(50000002 chars)")

    odd = base / "data_not_utf8"
    shutil.copytree(data, odd)
    first = sorted((odd / "circle").iterdir())[0]
    shutil.copy(first, odd / "circle" / os.fsdecode(b"caf\xe9" + first.suffix.encode()))
    case("train: an image named with bytes that are not UTF-8",
         ["train", odd, "--out", base / "r_odd", *tiny, "--epochs", "1"], 0, [odd],
         lambda r: ("caf\\xe9" in r.stdout + r.stderr, "skipped, named caf\\xe9"))
    os.rename(odd / "square", odd / os.fsdecode(b"squ\xe0re"))
    case("train: a class folder named with bytes that are not UTF-8",
         ["train", odd, "--out", base / "r_odd2", *tiny, "--epochs", "1"], 2, [odd],
         lambda r: ("b'squ\\xe0re' is not valid UTF-8" in r.stderr
                    and not (base / "r_odd2").exists(), "nothing written"))

    singles = base / "data_singles"
    for i in range(1_000):
        (singles / f"c{i:04d}").mkdir(parents=True)
        Image.new("RGB", (8, 8), (i % 256, i // 4 % 256, 0)).save(singles / f"c{i:04d}" / "0.png")
    case("train: 1,000 classes of one image each",
         ["train", singles, "--out", base / "r_singles", *tiny, "--epochs", "1"], 2, [singles],
         lambda r: ("no image can be held out for validation" in r.stderr
                    and not (base / "r_singles").exists(), "nothing written"))
    lone = base / "data_lone"
    shutil.copytree(data, lone)
    for extra in sorted((lone / "triangle").iterdir())[1:]:
        extra.unlink()
    out = base / "r_lone"

    def unmeasured(result) -> tuple[bool, str]:
        if not (out / "manifest.json").is_file():
            return False, "no run"
        metrics = json.loads((out / "manifest.json").read_text())["metrics"]
        said = "have no validation image ('triangle'" in result.stdout + result.stderr
        return said and metrics.get("unmeasured_classes") == ["triangle"], (
            f"warned; unmeasured {metrics.get('unmeasured_classes')}")

    case("train: a class of one image", ["train", lone, "--out", out, *tiny, "--epochs", "1"], 0,
         [lone], unmeasured)


class ServeModel:
    """A `vgg-mobile serve-model` process on a free loopback port; stderr kept in a file."""

    def __init__(self, artifact: Path, *flags, open_files: int | None = None):
        self.stderr = tempfile.TemporaryFile()
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
                 ) if open_files else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vgg_mobile", "serve-model", str(artifact), "--port", "0",
             "--no-access-log", *map(str, flags)], stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, preexec_fn=limit)
        line = self.process.stdout.readline()
        self.address = served_address(line)
        if self.address is None:
            self.process.kill()
            raise SystemExit(f"serve-model did not start: {line}")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, dict]:
        """`(status, JSON answer or {}, response headers)`."""
        connection = http.client.HTTPConnection(*self.address, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            text = response.read()
            return response.status, json.loads(text) if text else {}, dict(response.getheaders())
        finally:
            connection.close()

    def errors(self, reason: str) -> float:
        """The server's `vgg_mobile_errors_total` of `reason`."""
        connection = http.client.HTTPConnection(*self.address, timeout=30)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        for line in text.splitlines():
            if line.startswith(f'vgg_mobile_errors_total{{reason="{reason}"}}'):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> str:
        processes.stop(self.process)
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")


def serving_cases(base: Path, export: Path) -> list[Row]:
    """The prediction server's cases: each an HTTP status against the one expected."""
    import io as _io

    from PIL import Image

    from serving_models import multipart, onnx_failing_when_run, png16_rgba, png_1_bit

    rows: list[Row] = []

    def row(case: str, status, expected: str, ok: bool, note: str = "-", message: str = ""):
        rows.append(Row(case, status, expected, note, ok, message))
        print(f"{'ok  ' if ok else 'FAIL'} {case}: {status}", flush=True)

    small = _io.BytesIO()
    Image.new("RGB", (40, 40), (200, 40, 40)).save(small, format="PNG")
    small = small.getvalue()

    # 1,100 idle connections under a 1,024 open-file limit (soft and hard), then /health.
    server = ServeModel(export, open_files=1024)
    idle = []
    try:
        for _ in range(1100):
            try:
                idle.append(socket.create_connection(server.address, timeout=5))
            except OSError:
                break
        time.sleep(3)
        try:
            status = server.request("GET", "/health", timeout=10)[0]
        except OSError as err:
            status = type(err).__name__
    finally:
        for sock in idle:
            sock.close()
        stderr = server.stop()
    row("serve-model, open files 1,024: 1,100 idle connections, then GET /health", status,
        "200", status == 200 and len(stderr) < 100_000, f"stderr {len(stderr):,} B",
        last_line(stderr))

    server = ServeModel(export)
    try:
        # Eight 16-bit RGBA 6300 x 6300 PNGs (320 KB each) at once.
        bomb = png16_rgba(6300)
        answers: list[tuple[int, str | None]] = []

        def send():
            status, _, headers = server.request("POST", "/predict", bomb,
                                                {"content-type": "image/png"}, timeout=300)
            answers.append((status, headers.get("retry-after")))

        senders = [threading.Thread(target=send) for _ in range(8)]
        for sender in senders:
            sender.start()
        time.sleep(1)
        began = time.monotonic()
        health = server.request("GET", "/health")[0]
        health_s = time.monotonic() - began
        for sender in senders:
            sender.join(600)
        statuses = sorted(status for status, _ in answers)
        ok = (all(s == 200 or (s == 503 and retry) for s, retry in answers) and 503 in statuses
              and health == 200 and health_s < 1)
        row(f"serve-model: 8 concurrent 16-bit RGBA 6300x6300 PNGs ({len(bomb) // 1024} KB "
            "each)", " ".join(map(str, statuses)), "200 or 503+Retry-After", ok,
            f"/health {health_s * 1000:.0f} ms")

        body, headers = multipart([(f"{i}.png", png_1_bit(6000)) for i in range(32)])
        status, answer, _ = server.request("POST", "/predict", body, headers)
        row(f"serve-model: 32 one-bit 6000x6000 PNGs in one multipart ({len(body) // 1024} KB)",
            status, "413", status == 413 and answer.get("error") == "too_many_pixels_in_request",
            message=answer.get("detail", ""))

        body, headers = multipart([(f"{i}.png", small) for i in range(3)], closed=False)
        status, answer, _ = server.request("POST", "/predict", body, headers)
        row("serve-model: multipart without its closing boundary", status, "400",
            status == 400 and answer.get("error") == "bad_multipart",
            message=answer.get("detail", ""))

        qoi = _io.BytesIO()
        Image.new("RGB", (40, 40), (200, 40, 40)).save(qoi, format="QOI")
        eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
               b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")
        for case, data in (("a truncated QOI", qoi.getvalue()[:40]),
                           ("a PPM with a bad header number", b"P6\n4 4\n70000\n" + bytes(96)),
                           ("an EPS (Ghostscript)", eps)):
            status, answer, _ = server.request("POST", "/predict", data,
                                               {"content-type": "application/octet-stream"})
            row(f"serve-model: {case}", status, "400",
                status == 400 and answer.get("error") == "not_an_image",
                message=answer.get("detail", ""))

        sock = socket.create_connection(server.address)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 50000\r\n\r\n" + small[:100])
        time.sleep(0.3)
        sock.close()
        time.sleep(1)
        dropped, internal = server.errors("client_disconnected"), server.errors("internal")
        row("serve-model: a client hangs up mid-upload", f"{dropped:g} / {internal:g}",
            "client_disconnected 1 / internal 0", dropped == 1 and internal == 0)

        status, _, headers = server.request("HEAD", "/health")
        row("serve-model: HEAD /health", status, "200", status == 200)
    finally:
        stderr = server.stop()

    broken = base / "broken.onnx"
    broken.write_bytes(onnx_failing_when_run())
    result = vgg("serve-model", broken, "--port", "0", timeout=300)
    rows.append(Row("serve-model: a model that fails only when run", result.returncode, "2", "-",
                    result.returncode == 2 and "fails when run" in result.stderr
                    and "Traceback" not in result.stderr, last_line(result.stderr)))
    served = base / "served.onnx"
    served.write_bytes(_plain_onnx())
    server = ServeModel(served)
    try:
        served.write_bytes(broken.read_bytes())
        status, answer, _ = server.request("POST", "/admin/reload")
        still = server.request("GET", "/health")[0]
    finally:
        server.stop()
    row("serve-model: POST /admin/reload of a model that fails only when run", status, "422",
        status == 422 and answer.get("error") == "model_refused" and still == 200,
        "old one serves" if still == 200 else "-", answer.get("detail", ""))
    return rows


def _plain_onnx() -> bytes:
    """A working `.onnx` classifier with labels in its metadata (averages the colours)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from vgg_mobile.converters import onnx as onnx_converter
    from serving_models import CLASSES, SIZE

    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(CLASSES)])
    nodes = [helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
             helper.make_node("Div", ["mean", "scale"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    constants = [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                 numpy_helper.from_array(np.array(255, np.float32), "scale")]
    model = helper.make_model(helper.make_graph(nodes, "mean_colour", [pixels], [probs],
                                                constants),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return onnx_converter.add_metadata(model.SerializeToString(), {
        "labels": list(CLASSES), "version": "1", "name": "mean_colour",
        "input": {"size": [SIZE, SIZE]}})


def _lambda_h5(path: Path, marker: Path) -> None:
    """An .h5 model whose Lambda layer creates `marker` when the model is deserialised."""
    code = (f"import tf_keras as keras\n"
            f"inputs = keras.Input((32, 32, 3))\n"
            f"x = keras.layers.Lambda(lambda t: (open({str(marker)!r}, 'w').write('x'), t)[1])(inputs)\n"
            f"x = keras.layers.GlobalAveragePooling2D()(x)\n"
            f"outputs = keras.layers.Dense(4, activation='softmax', name='probs')(x)\n"
            f"keras.Model(inputs, outputs).save({str(path)!r})\n")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    marker.unlink(missing_ok=True)  # built while saving: only a load may create it now


if __name__ == "__main__":
    main()
