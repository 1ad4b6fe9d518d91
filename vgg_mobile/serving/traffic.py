"""Traffic policies over a model repository's versions: a canary share, an A/B split sticky per
client, or a shadow that sees every request and only has its answers compared.

A policy is a small TOML file (`serve-model --policy FILE`), or the same from flags
(`serve-model --stable 1 --canary 2:0.1`, `policy_from_flags`):

    stable = 1              # the version that answers by default
    [canary]                # at most one of [canary], [ab], [shadow]
    version = 2
    share = 0.1             # of the requests, answered by version 2
    header = "X-Client-Id"  # optional: the same key always lands on the same side

    [ab]
    header = "X-Client-Id"
    shares = { "1" = 0.5, "2" = 0.5 }   # version -> share; they add up to 1

    [shadow]
    version = 2             # runs every request too; stable answers

A request is placed by its client key when the policy names a header and the request has it
(a hash of the value, so a client stays on its side), else by a random draw. Every request
answered by a version other than `stable` is run on `stable` too, and a shadow runs every
request, after the answer and off its path: the top-1 agreement of the two is counted
(`Comparisons`). Comparisons wait for nothing: when too many are already waiting, the new one
is skipped and counted as skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import random
import threading
import tomllib
from pathlib import Path

from vgg_mobile.core.errors import BadInputError, clip
from vgg_mobile.serving.rollback import Rules, build_rules

MODES = ("canary", "ab", "shadow")
_KEYS = {"": {"stable", "rollback", *MODES}, "canary": {"version", "share", "header"},
         "ab": {"header", "shares"}, "shadow": {"version"}}
# Comparisons kept for the rolling agreement (`Comparisons.window`).
WINDOW = 500


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which versions answer which requests.

    Attributes:
        stable: The version that answers by default, and the reference of every comparison.
        mode: `canary`, `ab`, `shadow`, or `None` (stable answers everything).
        shares: For `canary` and `ab`: `(version, share)` pairs, adding up to 1, stable's
            included; empty for `shadow` and `None`.
        shadow: The version that runs every request without answering, or `None`.
        header: The request header whose value keeps a client on one side, or `None`.
        source: The file the policy was read from, for messages.
    """

    stable: int
    mode: str | None = None
    shares: tuple[tuple[int, float], ...] = ()
    shadow: int | None = None
    header: str | None = None
    source: str = "the policy"
    rules: Rules | None = None

    @property
    def versions(self) -> tuple[int, ...]:
        """Every version the policy names, stable first."""
        named = [self.stable, *(version for version, _ in self.shares)]
        if self.shadow is not None:
            named.append(self.shadow)
        return tuple(dict.fromkeys(named))

    def key_of(self, version: int) -> str:
        """The policy key that names `version`, for messages."""
        if version == self.stable:
            return "stable"
        return {"canary": "canary.version", "ab": "ab.shares", "shadow": "shadow.version"}[
            self.mode]

    def describe(self) -> dict:
        """What `GET /model` reports."""
        return {"mode": self.mode or "stable", "stable": self.stable,
                "shares": {str(version): share for version, share in self.shares},
                "shadow": self.shadow, "header": self.header,
                "rollback": None if self.rules is None else self.rules.describe()}

    def place(self, key: str | None) -> float:
        """Where in [0, 1) a request falls: a hash of its client key, else a random draw."""
        if key is None:
            return random.random()
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def route(self, key: str | None) -> tuple[int, int | None]:
        """`(answering version, version to compare with or None)` of one request."""
        if self.mode == "shadow":
            return self.stable, self.shadow
        if not self.shares:
            return self.stable, None
        point, total = self.place(key), 0.0
        chosen = self.shares[-1][0]
        for version, share in self.shares:
            total += share
            if point < total:
                chosen = version
                break
        return chosen, (None if chosen == self.stable else self.stable)


def _fail(where: str, key: str, value, why: str) -> BadInputError:
    return BadInputError(f"{where}: {key} = {clip(repr(value), 80)}: {why}")


def _version(where: str, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(where, key, value, "a version is a whole number >= 0 (a folder of the "
                    "model repository)")
    return value


def _share(where: str, key: str, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 < value < 1):
        raise _fail(where, key, value, "a share is a number between 0 and 1, both excluded")
    return float(value)


def _header(where: str, key: str, value) -> str:
    if not isinstance(value, str) or not value or not all(
            33 <= ord(c) < 127 and c not in '()<>@,;:\\"/[]?={}' for c in value):
        raise _fail(where, key, value, "a header name is letters, digits and - (such as "
                    "X-Client-Id)")
    return value.lower()


def build_policy(data: dict, where: str = "the policy") -> Policy:
    """A `Policy` from a parsed TOML document, its `[rollback]` rules included.

    Raises:
        BadInputError: See `_build_routes`; or `[rollback]` in a policy that tries out no
            version, or rules `build_rules` refuses.
    """
    policy = _build_routes(data, where)
    if "rollback" not in data:
        return policy
    if policy.mode is None:
        raise BadInputError(f"{where}: [rollback] without [canary], [ab] or [shadow]: there is "
                            "no version to roll back from")
    return dataclasses.replace(policy, rules=build_rules(data["rollback"], where))


def _build_routes(data: dict, where: str) -> Policy:
    """A `Policy`, but its rules, from a parsed TOML document.

    Raises:
        BadInputError: An unknown key, a missing one, a value of the wrong kind, shares that
            do not add up to 1, more than one mode, or one version in two roles; the message
            names the key and the value.
    """
    for section, allowed in _KEYS.items():
        table = data.get(section, {}) if section else data
        if section and not isinstance(table, dict):  # [rollback]: see build_rules
            raise _fail(where, section, table, "must be a table ([" + section + "])")
        unknown = sorted(set(table) - allowed)
        if unknown:
            name = f"{section}.{unknown[0]}" if section else unknown[0]
            raise _fail(where, name, table[unknown[0]], "unknown key; the keys are "
                        + ", ".join(sorted(allowed)))
    if "stable" not in data:
        raise BadInputError(f"{where}: stable is missing: name the version that answers by "
                            "default (stable = 1)")
    stable = _version(where, "stable", data["stable"])
    modes = [mode for mode in MODES if mode in data]
    if len(modes) > 1:
        raise BadInputError(f"{where}: [{modes[0]}] and [{modes[1]}] together: a policy has "
                            "one of [canary], [ab] and [shadow]")
    if not modes:
        return Policy(stable, source=where)
    mode, table = modes[0], data[modes[0]]
    missing = sorted({"canary": {"version", "share"}, "ab": {"shares"},
                      "shadow": {"version"}}[mode] - set(table))
    if missing:
        raise BadInputError(f"{where}: {mode}.{missing[0]} is missing")
    header = _header(where, f"{mode}.header", table["header"]) if "header" in table else None
    if mode == "shadow":
        shadow = _version(where, "shadow.version", table["version"])
        if shadow == stable:
            raise _fail(where, "shadow.version", shadow, "the shadow is the stable version")
        return Policy(stable, mode, shadow=shadow, source=where)
    if mode == "canary":
        canary = _version(where, "canary.version", table["version"])
        if canary == stable:
            raise _fail(where, "canary.version", canary, "the canary is the stable version")
        share = _share(where, "canary.share", table["share"])
        return Policy(stable, mode, ((stable, 1.0 - share), (canary, share)), header=header,
                      source=where)
    shares = table["shares"]
    if not isinstance(shares, dict) or len(shares) < 2:
        raise _fail(where, "ab.shares", shares, "name two versions or more, with their shares: "
                    '{ "1" = 0.5, "2" = 0.5 }')
    pairs = []
    for name, value in shares.items():
        if not name.isdigit() or not name.isascii():
            raise _fail(where, "ab.shares", name, "a version is a whole number")
        pairs.append((int(name), _share(where, f'ab.shares."{name}"', value)))
    total = sum(share for _, share in pairs)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise _fail(where, "ab.shares", shares, f"the shares add up to {total:g}, not 1")
    if stable not in dict(pairs):
        raise _fail(where, "ab.shares", shares, f"stable version {stable} has no share")
    if header is None:
        raise BadInputError(f"{where}: ab.header is missing: an A/B split keeps each client "
                            "on its side by a header (header = \"X-Client-Id\")")
    return Policy(stable, mode, tuple(sorted(pairs)), header=header, source=where)


def read_policy(path: str | Path) -> Policy:
    """The policy in a TOML file.

    Raises:
        BadInputError: Unreadable, not TOML, or refused by `build_policy`; the message names
            the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: cannot read the traffic policy ({err})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BadInputError(f"{path}: not valid TOML ({clip(err)})") from None
    except RecursionError:
        raise BadInputError(f"{path}: not a traffic policy: nested too deep") from None
    return build_policy(data, str(path))


class Comparisons:
    """The top-1 agreement of the answering version and the one compared with it, on live
    traffic: counted per pair, and over the last `WINDOW` comparisons of each pair.

    Args:
        metrics: The service's `ServingMetrics` (`compared`, `agreed`, `agreement`,
            `comparisons_skipped`).
        limit: Comparisons waiting to run at most; more are skipped.
    """

    def __init__(self, metrics, limit: int):
        self.metrics, self.limit = metrics, limit
        self.waiting = 0
        self._lock = threading.Lock()
        self._recent: dict[tuple[str, str], collections.deque] = {}
        self._tasks: set = set()

    def admit(self) -> bool:
        """Whether one more comparison may wait to run (else it is counted as skipped)."""
        with self._lock:
            if self.waiting >= self.limit:
                self.metrics.comparisons_skipped.inc()
                return False
            self.waiting += 1
            return True

    def done(self) -> None:
        with self._lock:
            self.waiting -= 1

    def start(self, comparison) -> None:
        """Runs a comparison coroutine on the event loop, holding it until it ends."""
        import asyncio

        task = asyncio.get_running_loop().create_task(comparison)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def record(self, answered: str, reference: str, agreed: list[bool]) -> tuple[float, int]:
        """Counts one request's comparisons (one per image); returns the rolling agreement
        and the images it is over."""
        labels = {"version": answered, "reference": reference}
        self.metrics.compared.labels(**labels).inc(len(agreed))
        self.metrics.agreed.labels(**labels).inc(sum(agreed))
        with self._lock:
            recent = self._recent.setdefault((answered, reference),
                                             collections.deque(maxlen=WINDOW))
            recent.extend(agreed)
            rate, count = sum(recent) / len(recent), len(recent)
        self.metrics.agreement.labels(**labels).set(rate)
        return rate, count


# The flags of a policy without a file, in the order they are shown.
FLAGS = ("stable", "canary", "ab", "shadow", "client_header")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _pairs(flag: str, text: str) -> list[tuple[int, float]]:
    """`VERSION:SHARE[,VERSION:SHARE...]` -> pairs; the values are checked by `build_policy`."""
    pairs = []
    for part in text.split(","):
        version, colon, share = part.strip().partition(":")
        try:
            pairs.append((int(version), float(share)))
        except ValueError:
            colon = ""
        if not colon:
            raise BadInputError(f"{_flag(flag)} {clip(repr(text), 80)}: not VERSION:SHARE"
                                + ("[,VERSION:SHARE...]" if flag == "ab" else "")
                                + " (for example " + ("1:0.5,2:0.5" if flag == "ab" else "2:0.1")
                                + ")")
    return pairs


def policy_from_flags(flags: dict) -> Policy | None:
    """The policy that `serve-model`'s `--stable`, `--canary VERSION:SHARE`, `--ab
    V:SHARE,V:SHARE`, `--shadow VERSION` and `--client-header NAME` give, checked as a policy
    file is (`build_policy`); `None` when none is set.

    Args:
        flags: `{name: value}` of `FLAGS` (`None`: not given), as the command line gave them.

    Raises:
        BadInputError: A value that does not parse, a mode without `--stable` (or
            `--stable` alone), or a policy `build_policy` refuses; the message shows the flags.
    """
    given = {name: flags[name] for name in FLAGS if flags.get(name) is not None}
    if not given:
        return None
    where = " ".join(f"{_flag(name)} {value}" for name, value in given.items())
    modes = [name for name in MODES if name in given]
    if "stable" not in given or not modes:
        raise BadInputError(f"{where}: a policy from flags needs --stable VERSION and one of "
                            "--canary, --ab and --shadow")
    if "ab" in modes and given.get("client_header") is None:
        raise BadInputError(f"{where}: --ab needs --client-header NAME: an A/B split keeps "
                            "each client on its side by a header")
    data: dict = {"stable": int(given["stable"])}
    for mode in modes:
        if mode == "shadow":
            data["shadow"] = {"version": int(given["shadow"])}
        elif mode == "canary":
            pairs = _pairs("canary", str(given["canary"]))
            if len(pairs) != 1:
                raise BadInputError(f"{where}: --canary names one version and its share; "
                                    "use --ab for more")
            data["canary"] = {"version": pairs[0][0], "share": pairs[0][1]}
        else:
            data["ab"] = {"shares": {str(v): share for v, share in _pairs("ab", given["ab"])}}
    header = given.get("client_header")
    if header is not None:
        if "shadow" in modes and len(modes) == 1:
            raise BadInputError(f"{where}: --client-header places requests of a canary or an "
                                "A/B split; a shadow runs every request")
        for mode in modes:
            if mode != "shadow":
                data[mode]["header"] = header
    return build_policy(data, where)
