"""Pretrained ImageNet weights: where Keras publishes them, and one careful download.

`fetch_weights` returns a weights file from the local Keras cache (`$KERAS_HOME/models`, by
default `~/.keras/models`, the folder `tf_keras.applications` fills) and downloads it there
when it is missing, as Keras would: from Keras's own URL, hash-checked against Keras's own
hash where tf_keras has one. Unlike Keras it writes a temporary file in the same folder and
renames it into place only when it is complete and checked, so a failed or interrupted
download never leaves a partial file under the final name; it reports progress through a
`log` callback (about one line per 10 %) instead of a progress bar; and a network failure is
one line that says what to do instead.

A file that is already in the cache is used as it is (not hash-checked): it may be one the
user put there, as the error messages suggest.

Environment:
    VGG_MOBILE_WEIGHTS_URL: A base URL that replaces Keras's, for mirrors and tests; the
        file name is appended to it (`file:///srv/weights/` works).
    VGG_MOBILE_OFFLINE: `1` (or `true`, `yes`, `on`) refuses every download, as `--offline`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from vgg_mobile.core.errors import BadInputError, VggMobileError, WriteError

WEIGHTS_URL_ENV = "VGG_MOBILE_WEIGHTS_URL"
OFFLINE_ENV = "VGG_MOBILE_OFFLINE"
# Seconds a connection, or one read from it, may take before the download is given up.
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20

# The base URLs of tf_keras.applications (vgg16.WEIGHTS_PATH_NO_TOP,
# mobilenet_v2.BASE_WEIGHT_PATH, mobilenet_v3.BASE_WEIGHT_PATH in tf_keras 2.21).
_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True)
class KerasWeights:
    """One no-top ImageNet weights file as `tf_keras.applications` downloads it.

    Attributes:
        file_name: Its name in the Keras cache (`Architecture.imagenet_file`).
        url: The URL Keras downloads it from.
        file_hash: The hash Keras checks it against: MD5 when 32 hex digits, SHA-256 when
            64 (Keras's own rule), or `None` where tf_keras has none. Defaults to `None`.
    """

    file_name: str
    url: str
    file_hash: str | None = None


def _table() -> dict[str, KerasWeights]:
    files = [
        # tf_keras vgg16.py: get_file(..., WEIGHTS_PATH_NO_TOP, file_hash=...).
        KerasWeights("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     _KERAS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     "6d6bbae143d832006294945121d1f1fc"),
        # tf_keras mobilenet_v3.py: WEIGHTS_HASHES["small_224_1.0_float"][1] and "large_...".
        KerasWeights("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                     _KERAS_BASE + "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                     "d3e8ec802a04aa4fc771ee12a9a9b836"),
        KerasWeights("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
                     _KERAS_BASE + "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
                     "07fb09a5933dd0c8eaafa16978110389"),
    ]
    # tf_keras mobilenet_v2.py calls get_file without a file_hash: it checks nothing, and
    # neither do we (no hash is invented here).
    for alpha in (0.35, 0.5, 0.75, 1.0):
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"
        files.append(KerasWeights(name, _KERAS_BASE + "mobilenet_v2/" + name, None))
    return {entry.file_name: entry for entry in files}


# Every no-top ImageNet weights file of the architecture registry, by file name.
KERAS_WEIGHTS: dict[str, KerasWeights] = _table()


def keras_cache_dir() -> Path:
    """The folder where Keras keeps downloaded weights (`$KERAS_HOME/models`)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def offline_from_env() -> bool:
    """Whether `VGG_MOBILE_OFFLINE` switches downloads off.

    Returns:
        `True` for `1`, `true`, `yes` or `on` (any case); `False` when unset, empty, `0`,
        `false`, `no` or `off`.

    Raises:
        BadInputError: Any other value.
    """
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise BadInputError(f"{OFFLINE_ENV} must be 1 or 0 (true/false, yes/no, on/off). "
                        f"Received: {OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r}")


def weights_url(file_name: str) -> str:
    """Where `file_name` is downloaded from: `$VGG_MOBILE_WEIGHTS_URL/<file_name>` when that
    is set, else Keras's own URL.

    Raises:
        BadInputError: No URL is known for `file_name` and no override is set.
    """
    base = os.environ.get(WEIGHTS_URL_ENV, "").strip()
    if base:
        return base.rstrip("/") + "/" + file_name
    if file_name not in KERAS_WEIGHTS:
        raise BadInputError(f"no download URL is known for {file_name!r}; set {WEIGHTS_URL_ENV} "
                            "to a folder that holds it")
    return KERAS_WEIGHTS[file_name].url


def _algorithm(file_hash: str) -> str:
    # Keras's rule (tf_keras.utils.data_utils.validate_file with algorithm="auto").
    return "sha256" if len(file_hash) == 64 else "md5"


def _reason(err: BaseException, timeout: float) -> str:
    """A short reason for a failed download, on one line (e.g. "connection refused")."""
    import urllib.error

    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        if not isinstance(err.reason, BaseException):
            return str(err.reason).replace("\n", " ")
        err = err.reason
    if isinstance(err, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[:1].lower() + err.strerror[1:]
    return (f"{type(err).__name__}: {err}" if str(err) else type(err).__name__).replace("\n", " ")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def download(url: str, dest: str | Path, file_hash: str | None = None, *,
             timeout: float = DEFAULT_TIMEOUT, log: Callable[[str], None] = lambda message: None,
             what: str | None = None, hint: str = "") -> Path:
    """Downloads `url` to `dest` atomically, checking its hash.

    The bytes go to a temporary file beside `dest`, which is renamed to `dest` only when the
    download is complete and its hash matches; on any failure (or an interrupt) the temporary
    file is removed and `dest` is left as it was.

    Args:
        url: What to download (`https://`, `http://` or `file://`).
        dest: The final path; its folder is created.
        file_hash: MD5 (32 hex digits) or SHA-256 (64) the file must have; `None` checks
            nothing. Defaults to `None`.
        timeout: Seconds the connection, and each read, may take. Defaults to `30.0`.
        log: Receives the start, about one line per 10 % downloaded (per 10 MB when the size
            is unknown) and the end. Defaults to discarding them.
        what: What is downloaded, for the messages. Defaults to `dest`'s file name.
        hint: What to do without a network, appended to that error. Defaults to `""`.

    Returns:
        `dest`.

    Raises:
        VggMobileError: The download failed (no network, refused, timed out, HTTP error):
            one line naming what, from where, why, and `hint`; or the hash does not match
            (naming the file and both hashes).
        WriteError: The cache folder cannot be written.
    """
    import urllib.request

    dest = Path(dest)
    what = what or dest.name

    def failed(reason: str) -> VggMobileError:
        return VggMobileError(f"cannot download {what} from {url}: {reason}"
                              + (f"; {hint}" if hint else ""))

    t0 = time.perf_counter()
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - any scheme, by design
    except (OSError, ValueError) as err:  # URLError is an OSError
        raise failed(_reason(err, timeout)) from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        # Created only now, so that a failed connection leaves nothing behind.
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part",
                                            dir=dest.parent)
        except OSError as err:
            raise WriteError(f"cannot write {what} into {dest.parent} ({_reason(err, timeout)}); "
                             "set KERAS_HOME to a writable folder") from None
        tmp = Path(tmp_name)
        try:
            log(f"downloading {what} from {url}"
                + (f" ({_megabytes(total)})" if total else "") + f" into {dest.parent}")
            with os.fdopen(fd, "wb") as out:
                done, got = _copy(response, out, total, _algorithm(file_hash) if file_hash else None,
                                  lambda line: log(f"{dest.name}: {line}"),
                                  lambda err: failed(_reason(err, timeout)))
                if total is not None and done != total:
                    raise failed(f"the connection closed after {done} of {total} bytes")
                out.flush()
                os.fsync(out.fileno())
            if file_hash and got != file_hash.lower():
                raise VggMobileError(
                    f"{dest.name} downloaded from {url} has {_algorithm(file_hash)} {got}, "
                    f"expected {file_hash}: the download is corrupt or not the file Keras "
                    "publishes; nothing was kept")
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    log(f"downloaded {what} ({_megabytes(done)} in {time.perf_counter() - t0:.1f} s) to {dest}; "
        + (f"{_algorithm(file_hash)} checked" if file_hash
           else "Keras publishes no hash for it, not checked"))
    return dest


def _copy(response, out, total: int | None, algorithm: str | None,
          progress: Callable[[str], None], failed: Callable[[BaseException], Exception]):
    """Copies `response` to `out`; returns (bytes copied, hex digest or `None`).

    Reports each 10 % of `total` through `progress` (each 10 MB when `total` is `None`); a
    read error is raised as `failed(error)`, a write error as it is.
    """
    digest = hashlib.new(algorithm) if algorithm else None
    done, next_report, step = 0, 0.1, 0
    while True:
        try:
            chunk = response.read(_CHUNK)
        except Exception as err:  # socket errors, timeouts, http.client.IncompleteRead
            raise failed(err) from None
        if not chunk:
            return done, digest.hexdigest() if digest is not None else None
        out.write(chunk)
        if digest is not None:
            digest.update(chunk)
        done += len(chunk)
        if total:
            while next_report <= 1.0 and done >= next_report * total:
                progress(f"{round(next_report * 100)}% ({_megabytes(done)} of {_megabytes(total)})")
                next_report = round(next_report + 0.1, 1)
        elif done // 10_000_000 > step:
            step = done // 10_000_000
            progress(f"{_megabytes(done)} so far")


def fetch_weights(file_name: str, *, offline: bool = False, what: str | None = None,
                  flag: str = "--weights", log: Callable[[str], None] = lambda message: None,
                  timeout: float = DEFAULT_TIMEOUT) -> Path:
    """The local path of a Keras weights file, downloaded into the Keras cache when missing.

    Args:
        file_name: A file name of `KERAS_WEIGHTS` (or any name, with `VGG_MOBILE_WEIGHTS_URL`).
        offline: Refuse to download; `VGG_MOBILE_OFFLINE=1` does the same. Defaults to `False`.
        what: What the file is, for the messages (e.g. "ImageNet weights for vgg16").
            Defaults to `file_name`.
        flag: The option that asked for it, for the messages (e.g. `"--student-weights"`, or
            `"[teacher] weights ="` for a config key). Defaults to `"--weights"`.
        log: Receives the download's progress lines. Defaults to discarding them.
        timeout: Seconds the connection, and each read, may take. Defaults to `30.0`.

    Returns:
        `keras_cache_dir() / file_name`, which exists.

    Raises:
        BadInputError: The file is missing and downloads are off.
        VggMobileError: The download failed or its hash did not match.
        WriteError: The cache folder cannot be written.
    """
    path = keras_cache_dir() / file_name
    if path.is_file():
        return path
    what = what or file_name
    todo = (f"copy {file_name} to {path.parent} (or set KERAS_HOME to a folder whose models/ "
            f"holds it), or choose {flag} PATH (a local file) or {flag} none")
    if offline or offline_from_env():
        raise BadInputError(f"{what} not found at {path}, and downloads are off (--offline or "
                            f"{OFFLINE_ENV}=1): {todo}")
    url = weights_url(file_name)
    entry = KERAS_WEIGHTS.get(file_name)
    return download(url, path, entry.file_hash if entry else None, timeout=timeout, log=log,
                    what=f"{what} ({file_name})" if what != file_name else what,
                    hint=f"without a network, {todo}")
